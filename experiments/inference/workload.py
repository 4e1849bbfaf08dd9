"""The requests: drawn with the bench's seed from the validation half of the scenario's held-out
set (the half calibration measured the exits on, never the half that trained them), the same
for every policy; each device sends its own at a fixed rate, open loop.

The held-out set is the serving edge's: the scenario's own (``data``) or its dataset's test
split, as the training edge reads it (``edge_service.run_state.held_out_data``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from schemas import encode_frame, to_meta
from schemas.serving import ServeRequestMeta
from serving.artifact import ModelArtifact
from serving.calibration import stratified_halves
from splitnn import load_dataset
from splitnn.data import ArrayDataset
from splitnn.datasets.local import load_local
from testbed.scenario import Scenario

__all__ = ["PlannedRequest", "Workload", "held_out_set", "make_workload", "request_frame"]

HOLDOUT_FRACTION = 0.5  # calibration's: the validation half it measures the exits on


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    device: str
    id: str
    sample: int  # index in the held-out set
    truth: int
    at_s: float  # when it is sent, from the start of the load
    payload: bytes  # a request frame: the sample as float32


@dataclass(frozen=True)
class Workload:
    requests: tuple[PlannedRequest, ...]  # by send time
    samples: tuple[int, ...]  # the distinct held-out samples drawn
    full_accuracy: float  # the unsplit model's on exactly the requests sent
    warmup_sample: np.ndarray  # what warm-up requests carry (a held-out sample)
    deadline_ms: float

    def warmup_payload(self, request_id: str) -> bytes:
        return request_frame(request_id, self.warmup_sample, self.deadline_ms)


def request_frame(request_id: str, sample: np.ndarray, deadline_ms: float) -> bytes:
    """A request frame: ``sample`` as float32, with its id and deadline."""
    meta = to_meta(ServeRequestMeta(id=request_id, deadline_ms=deadline_ms))
    return encode_frame(meta, {"input": sample.astype(np.float32)})


def held_out_set(scenario: Scenario, seed: int) -> ArrayDataset:
    """The serving edge's held-out set for ``scenario`` (``seed`` shapes synthetic data)."""
    if scenario.data is not None:
        local = load_local(
            scenario.data, "test", input_shape=scenario.input_shape, classes=scenario.classes
        )
        return local.dataset
    return load_dataset(scenario.dataset, "test", data_dir=scenario.data_dir, seed=seed)


def make_workload(
    data: ArrayDataset,
    artifact: ModelArtifact,
    devices: tuple[str, ...],
    *,
    per_device: int,
    rate: float,
    seed: int,
    deadline_ms: float,
) -> Workload:
    """``per_device`` requests for each device, ``1 / rate`` seconds apart; devices are
    staggered evenly within one interval so the fleet's requests do not arrive in bursts."""
    _, validation = stratified_halves(data.y, HOLDOUT_FRACTION, seed)
    rng = np.random.default_rng((seed, 15))
    planned: list[PlannedRequest] = []
    for position, device in enumerate(devices):
        picks = rng.choice(validation, size=per_device, replace=per_device > len(validation))
        offset = position / (rate * len(devices))
        for k, sample in enumerate(int(i) for i in picks):
            request_id = f"{device}-{k:06d}"
            payload = request_frame(request_id, data.x[sample], deadline_ms)
            truth = int(data.y[sample])
            planned.append(
                PlannedRequest(device, request_id, sample, truth, offset + k / rate, payload)
            )
    planned.sort(key=lambda r: r.at_s)
    samples = tuple(sorted({r.sample for r in planned}))
    full = _full_accuracy(artifact, data, planned)
    warmup = data.x[int(validation[0])]
    return Workload(tuple(planned), samples, full, warmup, deadline_ms)


def _full_accuracy(
    artifact: ModelArtifact, data: ArrayDataset, planned: list[PlannedRequest]
) -> float:
    """The unsplit model's accuracy on the requests, in one plain forward pass each batch."""
    model = artifact.build_model().eval()
    index = np.asarray([r.sample for r in planned], dtype=np.int64)
    labels = []
    with torch.inference_mode():
        for start in range(0, len(index), 256):
            x = torch.from_numpy(data.x[index[start : start + 256]])
            labels.append(model(x).argmax(dim=1).numpy())
    predicted = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    truth = np.asarray([r.truth for r in planned], dtype=np.int64)
    return float((predicted == truth).mean()) if len(truth) else 0.0
