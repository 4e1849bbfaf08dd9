"""The edge's half of one device's round: its server part, its optimiser, its batch sequence.

``check_activation`` validates a decoded frame against what this session expects (its wire
format included); ``step`` runs server forward, loss, backward and the optimiser step (in a
worker thread) and returns the encoded gradient frame, in the same wire format: a quantised
activation is dequantised there, and the gradient quantised (with error feedback if asked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edge_service.error_feedback import ErrorFeedback
from edge_service.rejections import Rejected
from schemas import (
    PROTOCOL_VERSION,
    Frame,
    GradientMeta,
    ProtocolVersion,
    TrainConfig,
    WireTensor,
    encode_frame,
    from_wire,
    to_meta,
    to_wire,
    wire_format,
)
from schemas.quantization import quant_format
from splitnn.models import ModelSpec, num_blocks
from splitnn.partition import build_part, load_part_state
from splitnn.tensors import from_numpy, to_numpy

ACTIVATION_TENSORS = frozenset({"act", "labels"})


@dataclass
class SessionStats:
    batches: int = 0
    samples: int = 0
    server_s: float = 0.0
    loss_sum: float = 0.0  # summed over samples
    correct: int = 0
    # Receipt to reply, summed: server_s plus the waits for a compute thread (the queueing).
    service_s: float = 0.0


class ServerSession:
    """Server part of the model for one device and one round (not used when cut == L)."""

    def __init__(
        self,
        *,
        device_id: str,
        round_no: int,
        spec: ModelSpec,
        cut: int,
        server_state: dict[str, torch.Tensor],
        train: TrainConfig,
        act_shape: tuple[int, ...],
        torch_device: torch.device,
        max_frame_bytes: int,
        protocol: ProtocolVersion = PROTOCOL_VERSION,  # the device's: its gradients speak it
        error_feedback: bool = False,  # on quantised gradients
        attempt: int = 0,  # which start of the round (a repeated round is a new attempt)
    ) -> None:
        self.device_id = device_id
        self.round_no = round_no
        self.attempt = attempt
        self.cut = cut
        self.train = train
        self.act_shape = act_shape
        self.num_classes = spec.num_classes
        self.max_frame_bytes = max_frame_bytes
        self.protocol = protocol
        self.torch_device = torch_device
        self.part: nn.Module = build_part(spec, cut, num_blocks(spec))
        load_part_state(self.part, server_state)
        self.part.to(torch_device).train()
        self.optimizer = torch.optim.SGD(
            self.part.parameters(),
            lr=train.lr,
            momentum=train.momentum,
            weight_decay=train.weight_decay,
        )
        self.loss_fn = nn.CrossEntropyLoss()
        self.stats = SessionStats()
        self.next_seq = 0
        self.last_reply: bytes | None = None  # re-sent when the device repeats a batch
        quantised = quant_format(train.wire_dtype)
        self.feedback = ErrorFeedback(quantised) if error_feedback and quantised else None

    def check_activation(self, frame: Frame) -> tuple[WireTensor, np.ndarray]:
        """Validate an activation frame's tensors; raise Rejected with the reason."""
        act, labels = frame.tensor("act"), frame.tensors.get("labels")
        if frame.names() != ACTIVATION_TENSORS or act is None or labels is None:
            raise Rejected("bad_tensors", f"expected tensors {sorted(ACTIVATION_TENSORS)}")
        if wire_format(act) != self.train.wire_dtype:
            raise Rejected(
                "bad_dtype", f"act is {wire_format(act)}, expected {self.train.wire_dtype}"
            )
        batch = act.shape[0] if act.ndim else 0
        if act.shape[1:] != self.act_shape or not 1 <= batch <= self.train.batch_size:
            raise Rejected(
                "bad_shape",
                f"act has shape {act.shape}, expected (1..{self.train.batch_size}, "
                f"{', '.join(map(str, self.act_shape))}) at cut {self.cut}",
            )
        if labels.dtype != np.int64 or labels.shape != (batch,):
            raise Rejected("bad_labels", f"labels must be int64 of shape ({batch},)")
        if batch and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise Rejected("bad_labels", f"labels must lie in [0, {self.num_classes})")
        # A quantised tensor's values are finite by construction (the codec checked its scales).
        if isinstance(act, np.ndarray) and not np.isfinite(act).all():
            raise Rejected("not_finite", "activations contain NaN or Inf")
        return act, labels

    def step(self, seq: int, act: WireTensor, labels: np.ndarray, received: float) -> bytes:
        """One server step; returns the encoded gradient frame. Runs in a worker thread.

        ``received``: perf_counter() when the batch arrived, so the reply can tell the device
        the edge's whole share of the round trip (its downlink estimate subtracts it).
        """
        started = time.perf_counter()
        inputs = from_numpy(from_wire(act)).to(self.torch_device, torch.float32).requires_grad_()
        targets = from_numpy(labels).to(self.torch_device)
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self.part(inputs)
        loss = self.loss_fn(outputs, targets)
        loss.backward()
        self.optimizer.step()
        assert inputs.grad is not None
        grad = self._to_wire(to_numpy(inputs.grad.to(torch.float32)))
        loss_value = float(loss.item())
        correct = int((outputs.argmax(dim=1) == targets).sum().item())
        elapsed = time.perf_counter() - started

        batch = int(labels.shape[0])
        self.stats.batches += 1
        self.stats.samples += batch
        self.stats.server_s += elapsed
        self.stats.loss_sum += loss_value * batch
        self.stats.correct += correct
        service = time.perf_counter() - received
        self.stats.service_s += service
        meta = GradientMeta(
            round=self.round_no,
            attempt=self.attempt,
            seq=seq,
            loss=loss_value,
            correct=correct,
            server_s=service,
        )
        return encode_frame(
            to_meta(meta, self.protocol), {"grad": grad}, max_bytes=self.max_frame_bytes
        )

    def _to_wire(self, grad: np.ndarray) -> WireTensor:
        if self.feedback is not None:
            return self.feedback.quantize(grad)
        return to_wire(grad, self.train.wire_dtype)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.part.state_dict().items()}
