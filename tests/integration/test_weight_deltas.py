"""The device part's weights as int8 deltas through a real Mosquitto: round starts and parts
really travel as deltas after the first round, in about a quarter of float32's bytes, and the
runs reach the float32 runs' accuracy within 1 point (same seeds, shards, data order and cut);
a device that lacks a round start's base asks for it and gets it in full."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from device_agent import DeviceAgent
from device_agent.session import SessionEvents
from edge_service import EdgeService, RunReport
from schemas import DeviceChannel, Topics, decode_frame
from tests.integration.helpers import device_settings, edge_settings, mqtt, train
from transport import MqttLink

ROUNDS = 8
SEEDS = (0, 1, 2)
CUT = 3  # small_cnn: its two convolutions and the pooling on the device


@dataclass
class Seen:
    """Per round of dev-0: (weights_base, quantised tensors) of each round start, and the
    number of quantised tensors of its part."""

    starts: dict[int, list[tuple[int | None, int]]] = field(default_factory=dict)
    parts: dict[int, int] = field(default_factory=dict)


async def _run(
    mosquitto, weight_wire: str, seed: int, devices: int = 2, rounds: int = ROUNDS,
    tweak: Callable[[DeviceAgent], None] = lambda _: None,
) -> tuple[RunReport, Seen]:  # fmt: skip
    settings = edge_settings(
        mosquitto, rounds=rounds, batch_size=16, split=CUT, seed=seed, weight_wire=weight_wire,
        min_devices=devices, client_id=f"edge-{weight_wire}-{seed}",
    )  # fmt: skip
    topics = Topics()
    watched = [(topics.device("dev-0", c), 1) for c in (DeviceChannel.CTRL, DeviceChannel.WEIGHTS)]
    seen = Seen()
    async with MqttLink(mqtt(mosquitto), f"watcher-{weight_wire}-{seed}", watched) as watcher:

        async def watch() -> None:
            while True:
                message = await watcher.receive()
                frame = decode_frame(message.payload)
                kind, round_no = frame.meta.get("kind"), int(frame.meta.get("round", -1))
                if kind == "round_start":
                    start = (frame.meta.get("weights_base"), len(frame.quantized))
                    seen.starts.setdefault(round_no, []).append(start)
                elif kind == "weights":
                    seen.parts[round_no] = len(frame.quantized)

        watching = asyncio.create_task(watch())
        agents = [DeviceAgent(device_settings(mosquitto, i, devices, seed=seed))
                  for i in range(devices)]  # fmt: skip
        tweak(agents[0])
        report = await train(EdgeService(settings), agents)
        watching.cancel()
    assert not any(k.startswith("rejected") for k in report.counters), report.counters
    return report, seen


async def test_int8_weight_deltas_reach_float32_accuracy_within_one_point(mosquitto):
    float32: list[float] = []
    int8: list[float] = []
    for seed in SEEDS:
        full, _ = await _run(mosquitto, "float32", seed)
        delta, seen = await _run(mosquitto, "int8-delta", seed)
        for report in (full, delta):
            assert [r.devices["dev-0"].status for r in report.rounds] == ["ok"] * ROUNDS
        assert full.final_accuracy is not None
        assert delta.final_accuracy is not None
        float32.append(full.final_accuracy)
        int8.append(delta.final_accuracy)
        # Round 1 starts from full weights (nothing held yet); every later start and every
        # part (the last may still be in flight when the watcher stops) travel as deltas.
        assert seen.starts[1] == [(None, 0)]
        assert all(seen.starts[r] == [(r - 1, 4)] for r in range(2, ROUNDS + 1)), seen.starts
        assert all(seen.parts[r] == 4 for r in range(1, ROUNDS)), seen.parts
        whole = full.rounds[-1].devices["dev-0"].weights_bytes
        sent = delta.rounds[-1].devices["dev-0"].weights_bytes
        assert whole is not None
        assert sent is not None
        assert sent < 0.3 * whole
    assert min(float32) > 0.9
    assert abs(statistics.mean(int8) - statistics.mean(float32)) <= 0.01, (int8, float32)


class ForgetsItsStart(SessionEvents):
    """Loses the round start it holds right after its first part went out (as a device whose
    part the edge never accepted holds another start than the edge believes)."""

    def __init__(self, agent: DeviceAgent) -> None:
        self.agent = agent
        self.uploads = 0
        self.resyncs = 0

    def uploaded(self) -> None:
        self.uploads += 1
        if self.uploads == 1:
            self.agent.weight_base.held = None

    def weights_resync(self) -> None:
        self.resyncs += 1


async def test_a_device_that_lacks_the_base_gets_full_weights(mosquitto):
    events: list[ForgetsItsStart] = []

    def forgetful(agent: DeviceAgent) -> None:
        events.append(ForgetsItsStart(agent))
        agent.events = events[0]

    report, seen = await _run(mosquitto, "int8-delta", 0, devices=1, rounds=3, tweak=forgetful)
    assert [r.devices["dev-0"].status for r in report.rounds] == ["ok"] * 3
    assert report.counters["weights_resync"] == 1
    assert events[0].resyncs == 1
    # Round 2: the delta start it could not apply, then the same start in full; round 3 is
    # a delta again, against round 2's full start.
    assert seen.starts[2] == [(1, 4), (None, 0)]
    assert seen.starts[3] == [(2, 4)]
    sent = [r.devices["dev-0"].weights_bytes or 0 for r in report.rounds]
    assert sent[1] > sent[0] > sent[2]  # deltas and a full start; full and a delta; deltas
