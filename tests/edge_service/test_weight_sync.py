"""Weight deltas at the edge: a round start is a delta against what the device holds (whole
for another agent instance or blocks it never held), an uploaded delta is rebuilt on the
round's start, every delta that does not fit is rejected with a reason and counted while the
round goes on, a device that lacks the base gets its round start again in full, and the
report counts the bytes really sent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import pytest
import torch

from edge_service import EdgeService, EdgeSettings
from edge_service.accounting import _weights_transfer_s
from edge_service.registry import LinkEstimate
from edge_service.rejections import Rejected
from edge_service.rounds import DeviceResult, DeviceRound, RoundRunner
from edge_service.weight_sync import HeldStart, StartWeights
from schemas import (
    DeviceChannel,
    Frame,
    Hello,
    RoundStart,
    TrainConfig,
    WeightsMeta,
    WeightsResync,
    decode_frame,
    encode_frame,
    parse_ctrl,
    to_json,
    to_meta,
)
from schemas.quantization import QuantizedTensor, header_of, quantize
from schemas.weight_delta import WEIGHT_WIRES, apply_weights, encode_weights
from splitnn.tensors import state_to_arrays
from tests.fuzzing import FailureLog, FakeLink
from tests.fuzzing import settle as settle_background
from transport import Message

DEVICE = "dev-0"
INSTANCE = "agent-1"
CUT = 2  # small_cnn: blocks 0 and 1 on the device, two convolutions
FLOAT32_PART_BYTES = 4 * (16 * 9 + 16 + 32 * 16 * 9 + 32)


@dataclass
class Edge:
    service: EdgeService
    link: FakeLink
    failures: FailureLog

    def feed(self, channel: DeviceChannel, payload: bytes) -> None:
        """One message from the device, as the inbox's dispatcher handles it."""
        inbox = self.service.inbox
        assert inbox is not None
        message = Message(self.service.topics.device(DEVICE, channel), payload, False)
        try:
            inbox.handle(DEVICE, channel, message)
        except Rejected as exc:
            inbox.reject(DEVICE, channel, exc)

    async def settle(self) -> None:
        await settle_background(self.service.outbox.background, self.failures)


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    settings = EdgeSettings(
        dataset="digits", model="small_cnn", policy="sl", torch_threads=1, checkpoint=None
    )
    service = EdgeService(settings)
    await service.start_up()  # everything but the network
    link = FakeLink()
    service.outbox.link = link  # type: ignore[assignment]
    edge = Edge(service, link, FailureLog())
    hello = Hello(
        device_id=DEVICE, instance=INSTANCE, agent_version="0", samples=100, dataset="digits",
        input_shape=(1, 8, 8), num_classes=10, weight_wires=WEIGHT_WIRES,
    )  # fmt: skip
    edge.feed(DeviceChannel.HELLO, to_json(hello))
    await edge.settle()
    try:
        yield edge
    finally:
        assert service.executor is not None
        service.executor.shutdown(wait=True)


def open_round(
    edge: Edge, round_no: int, state: dict[str, torch.Tensor], instance: str = INSTANCE
) -> DeviceRound:
    """The round's runner for the device, its start weights and round start (as the driver
    makes them), current at the edge."""
    driver = edge.service.driver
    assert driver is not None
    train = TrainConfig(lr=0.01, batch_size=8, batches=4, batch_timeout_s=30,
                        weight_wire="int8-delta")  # fmt: skip
    runner = RoundRunner(driver.context, round_no, state, {DEVICE: (CUT, train)})
    device = runner.devices[DEVICE]
    device.weights = driver.weight_sync.starts(
        {DEVICE: device.device_state}, {DEVICE: instance}, {DEVICE: "int8-delta"}
    )[DEVICE]
    device.start = RoundStart(
        session=driver.session, round=round_no, cut=CUT, model=driver.run.model_info,
        train=train, deadline_s=60, weights_base=weights_of(device).base_round,
    )  # fmt: skip
    weights_of(device).sent_bytes += weights_of(device).data_bytes
    driver.current, driver.round_no = runner, round_no
    return device


def weights_of(device: DeviceRound) -> StartWeights:
    assert device.weights is not None
    return device.weights


def nudged(state: dict[str, torch.Tensor], step: float) -> dict[str, torch.Tensor]:
    """The next round's average: every weight moved a little."""
    generator = torch.Generator().manual_seed(int(step * 1e6))
    return {k: v + step * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def start_frame(weights: StartWeights) -> dict[str, Any]:
    """The round start's tensors as the device decodes them."""
    frame = decode_frame(encode_frame({}, weights.tensors))
    return {**frame.tensors, **frame.quantized}


def upload(round_no: int, tensors: dict[str, Any], base: int | None) -> bytes:
    meta = WeightsMeta(device_id=DEVICE, round=round_no, cut=CUT, samples=8, batches=1,
                       busy_s=0.1, weights_base=base)  # fmt: skip
    return encode_frame(to_meta(meta), tensors)


def trained(held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {k: v + 0.02 * rng.standard_normal(v.shape).astype(np.float32) for k, v in held.items()}


async def test_deltas_go_down_against_what_the_device_holds_and_come_back_rebuilt(edge):
    service = edge.service
    device = open_round(edge, 1, service.global_state)
    weights = weights_of(device)
    assert weights.base_round is None  # nothing held yet: whole
    assert not any(isinstance(t, QuantizedTensor) for t in weights.tensors.values())
    held = apply_weights(start_frame(weights), None)  # what the device holds now

    part = trained(held)
    sent = encode_weights(part, held, "int8")
    edge.feed(DeviceChannel.WEIGHTS, upload(1, sent.tensors, base=1))
    result = device.result.result()
    assert result.status == "ok"
    assert result.state is not None
    for name in held:  # the edge rebuilt exactly what the device sent, near what it trained
        np.testing.assert_array_equal(result.state[name].numpy(), sent.held[name])
        np.testing.assert_allclose(result.state[name].numpy(), part[name], atol=2e-3)
    assert result.weights_down_bytes == FLOAT32_PART_BYTES
    assert result.weights_up_bytes == sent.data_bytes < 0.3 * FLOAT32_PART_BYTES

    driver = service.driver
    driver._keep_held(1, device)
    device = open_round(edge, 2, nudged(service.global_state, 0.01))
    weights = weights_of(device)
    assert weights.base_round == 1
    assert all(isinstance(t, QuantizedTensor) for t in weights.tensors.values())
    assert weights.data_bytes < 0.3 * FLOAT32_PART_BYTES
    rebuilt = apply_weights(start_frame(weights), held)
    for name, value in rebuilt.items():  # bit for bit what the edge believes the device holds
        np.testing.assert_array_equal(value, weights.held[name])
        np.testing.assert_allclose(value, device.device_state[name].numpy(), atol=2e-3)
    await edge.settle()


async def test_another_agent_instance_or_a_deeper_cut_gets_those_weights_whole(edge):
    service = edge.service
    driver = service.driver
    shallow = {k: v for k, v in state_to_arrays(service.global_state).items() if k[0] == "0"}
    driver.weight_sync.held.keep(DEVICE, _held(INSTANCE, 1, shallow))
    device = open_round(edge, 2, nudged(service.global_state, 0.01))
    kinds = {k: isinstance(t, QuantizedTensor) for k, t in weights_of(device).tensors.items()}
    assert kinds == {"0.0.weight": True, "0.0.bias": True, "1.0.weight": False, "1.0.bias": False}
    assert weights_of(device).base_round == 1

    device = open_round(edge, 3, nudged(service.global_state, 0.02), instance="agent-2")
    assert weights_of(device).base_round is None  # a restarted agent holds nothing
    assert not any(isinstance(t, QuantizedTensor) for t in weights_of(device).tensors.values())


def _held(instance: str, round_no: int, weights: dict[str, np.ndarray]) -> HeldStart:
    return HeldStart(instance, round_no, {k: v.copy() for k, v in weights.items()})


def _bad_header() -> bytes:
    """A delta whose header says one of its rows has scale 0."""
    tensor = quantize(np.ones((16, 1, 3, 3), np.float32), "int8", axis=0)
    header = {**header_of("0.0.weight", tensor), "scale": np.zeros(16, "<f4").tobytes()}
    meta = to_meta(WeightsMeta(device_id=DEVICE, round=1, cut=CUT, samples=8, batches=1,
                               busy_s=0.1, weights_base=1))  # fmt: skip
    return msgpack.packb([meta, [header, tensor.data.tobytes()]], use_bin_type=True)


def _malformed(case: str, held: dict[str, np.ndarray]) -> bytes:
    tensors: dict[str, Any] = dict(encode_weights(trained(held), held, "int8").tensors)
    if case == "wrong base round":
        return upload(1, tensors, base=0)
    if case == "deltas naming no base":
        return upload(1, tensors, base=None)
    if case == "unknown tensor":
        tensors["3.1.weight"] = quantize(np.ones((64, 512), np.float32), "int8", axis=0)
        return upload(1, tensors, base=1)
    if case == "wrong shape":
        tensors["1.0.bias"] = quantize(np.ones(31, np.float32), "int8")
        return upload(1, tensors, base=1)
    assert case == "bad header"
    return _bad_header()


MALFORMED = {
    "wrong base round": "bad_base",
    "deltas naming no base": "bad_base",
    "unknown tensor": "unknown_tensor",
    "wrong shape": "bad_shape",
    "bad header": "bad_scale",
}


@pytest.mark.parametrize(("case", "reason"), MALFORMED.items())
async def test_a_delta_that_does_not_fit_is_rejected_and_counted_and_the_round_goes_on(
    edge, case, reason
):
    service = edge.service
    device = open_round(edge, 1, service.global_state)
    held = apply_weights(start_frame(weights_of(device)), None)
    edge.feed(DeviceChannel.WEIGHTS, _malformed(case, held))
    await edge.settle()
    assert service.counters[f"rejected.{reason}"] == 1
    assert not device.result.done()
    errors = edge.link.on(service.topics.device(DEVICE, DeviceChannel.ERROR))
    assert [e for e in errors if reason.encode() in e], errors  # the device is told why
    good = encode_weights(trained(held), held, "int8").tensors
    edge.feed(DeviceChannel.WEIGHTS, upload(1, good, base=1))
    assert device.result.result().status == "ok"


async def test_a_device_that_lacks_the_base_gets_its_round_start_in_full(edge):
    service = edge.service
    driver = service.driver
    driver.weight_sync.held.keep(DEVICE, _held(INSTANCE, 1, state_to_arrays(service.global_state)))
    device = open_round(edge, 2, nudged(service.global_state, 0.01))
    assert weights_of(device).base_round == 1
    delta_bytes = weights_of(device).sent_bytes
    request = WeightsResync(device_id=DEVICE, round=2, weights_base=1, held=None, reason="x")
    edge.feed(DeviceChannel.WEIGHTS, encode_frame(to_meta(request)))
    await edge.settle()
    assert service.counters["weights_resync"] == 1
    assert driver.weight_sync.held.of(DEVICE, INSTANCE) is None
    [frame] = round_starts(edge)
    start = parse_ctrl(frame.meta)
    assert isinstance(start, RoundStart)
    assert (start.round, start.weights_base, frame.quantized) == (2, None, {})
    for name, value in frame.tensors.items():
        np.testing.assert_array_equal(value, device.device_state[name].numpy())
    # The part then comes up against the full start; both sends are counted.
    held = apply_weights({**frame.tensors}, None)
    edge.feed(DeviceChannel.WEIGHTS, upload(2, encode_weights(held, held, "int8").tensors, 2))
    result = device.result.result()
    assert result.status == "ok"
    assert result.weights_down_bytes == delta_bytes + FLOAT32_PART_BYTES

    # A request for a round the device is not in is rejected, not answered.
    late = WeightsResync(device_id=DEVICE, round=2, weights_base=1, reason="again")
    edge.feed(DeviceChannel.WEIGHTS, encode_frame(to_meta(late)))
    await edge.settle()
    assert service.counters["rejected.not_in_round"] == 1
    assert len(round_starts(edge)) == 1


def round_starts(edge: Edge) -> list[Frame]:
    ctrl = edge.link.on(edge.service.topics.device(DEVICE, DeviceChannel.CTRL))
    frames = [decode_frame(payload) for payload in ctrl]
    return [f for f in frames if f.meta["kind"] == "round_start"]


def test_the_report_prices_the_weight_bytes_really_sent():
    link = LinkEstimate(uplink_bps=8000.0, downlink_bps=16000.0, source="measured")
    state = {"0.0.weight": torch.zeros(250), "1.0.weight": torch.zeros(1000)}
    sent = DeviceResult(DEVICE, 1, "ok", weights_down_bytes=1000, weights_up_bytes=500)
    assert _weights_transfer_s(sent, link, state) == (0.5, 0.5)
    # Not counted (a result from before the count): float32 weights at the cut, estimated.
    estimated = DeviceResult(DEVICE, 1, "ok", state={})
    assert _weights_transfer_s(estimated, link, state) == (1.0, 0.5)
