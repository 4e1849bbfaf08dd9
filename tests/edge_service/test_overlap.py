"""A round's evaluation runs behind the next round: the next round starts from the average at
once, the report and the edge status still get every round's accuracy, in order, and the
checkpoint never holds a round before its evaluation happened.

A real edge and two device agents in one event loop over the in-memory broker; the evaluation of
round 1's average is held until round 2's start has gone out. Every wait is on an event: the
bound only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings
from edge_service.checkpoint import read_checkpoint
from edge_service.driver import RoundDriver
from edge_service.evaluation import Evaluation
from edge_service.registry import DeviceRegistry
from edge_service.rounds import RoundRunner
from edge_service.run_state import RunState
from schemas import Hello, Telemetry, Topics, TrainConfig
from transport import MemoryBroker

HANG_S = 300.0  # a hang guard, never a pass criterion


@dataclass
class Probe:
    """Holds the evaluation of round ``held``'s average until round ``held + 1`` has started."""

    held: int
    checkpoint: Path
    next_round_started: threading.Event = field(default_factory=threading.Event)
    events: list[str] = field(default_factory=list)
    evaluations: list[Evaluation] = field(default_factory=list)  # the rounds', in call order
    checkpoint_at_next_start: Any = "unread"  # the checkpoint when round held + 1 started
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Probe]:
    probe = Probe(held=1, checkpoint=tmp_path / "edge.ckpt")
    evaluate, start_device = RunState.evaluate, RoundDriver._start_device
    round_of: dict[int, int] = {}  # id of an average -> its round (the driver's order)
    averaged = RoundDriver._run_round

    async def run_round(self: RoundDriver, round_no: int) -> Any:
        plan, results, average = await averaged(self, round_no)
        if average is not None:
            round_of[id(average)] = round_no
        return plan, results, average

    def slow_evaluate(self: RunState, state: dict[str, torch.Tensor] | None = None) -> Evaluation:
        if state is None:  # the initial model
            return evaluate(self)
        round_no = round_of[id(state)]
        probe.note(f"evaluating {round_no}")
        if round_no == probe.held:
            assert probe.next_round_started.wait(HANG_S), "the next round never started"
        result = evaluate(self, state)
        with probe.lock:
            probe.evaluations.append(result)
        probe.note(f"evaluated {round_no}")
        return result

    async def noting_start(
        self: RoundDriver,
        runner: RoundRunner,
        device_id: str,
        cut: int,
        train: TrainConfig,
        deadline: float,
    ) -> None:
        await start_device(self, runner, device_id, cut, train, deadline)
        probe.note(f"started {runner.round_no} {device_id}")
        if runner.round_no == probe.held + 1 and not probe.next_round_started.is_set():
            probe.checkpoint_at_next_start = read_checkpoint(probe.checkpoint)
            probe.next_round_started.set()

    monkeypatch.setattr(RoundDriver, "_run_round", run_round)
    monkeypatch.setattr(RunState, "evaluate", slow_evaluate)
    monkeypatch.setattr(RoundDriver, "_start_device", noting_start)
    yield probe
    probe.next_round_started.set()  # never leave a worker thread waiting


def edge(broker: MemoryBroker, checkpoint: Path, rounds: int, **changes: Any) -> EdgeService:
    settings = EdgeSettings(
        policy="sl", split=2, rounds=rounds, batches_per_round=2, batch_size=16,
        min_devices=2, checkpoint=checkpoint, torch_threads=1,
        # One worker for the evaluation held behind, one for the next round.
        compute_workers=2, registration_timeout_s=HANG_S, profile_timeout_s=HANG_S,
        **changes,
    )  # fmt: skip
    return EdgeService(settings, connect=broker.connect)


def agents(broker: MemoryBroker) -> list[DeviceAgent]:
    devices = []
    for i in range(2):
        settings = DeviceSettings(device_id=f"dev-{i}", shard_index=i, num_shards=2,
                                  exit_on_finish=True, torch_threads=1)  # fmt: skip
        devices.append(DeviceAgent(settings, connect=broker.connect))
    return devices


def statuses(broker: MemoryBroker) -> list[dict[str, Any]]:
    topic = Topics().edge_status
    return [json.loads(m.payload) for m in broker.published if m.topic == topic and m.payload]


async def test_the_next_round_starts_while_the_last_one_is_evaluated(
    probe: Probe, tmp_path: Path
) -> None:
    broker = MemoryBroker()
    service = edge(broker, probe.checkpoint, rounds=3)
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        for agent in agents(broker):
            tasks.create_task(agent.run())
        report = await service.run()

    events = probe.events
    # Round 2 went out to both devices before round 1's evaluation ended.
    assert events.index("started 2 dev-0") < events.index("evaluated 1")
    assert events.index("started 2 dev-1") < events.index("evaluated 1")
    # ... and at that moment no checkpoint claimed round 1: it had not been evaluated.
    assert probe.checkpoint_at_next_start is None
    # Every round's accuracy, in order, is the evaluation of its own average.
    assert [r.round for r in report.rounds] == [1, 2, 3]
    assert [r.accuracy for r in report.rounds] == [e.accuracy for e in probe.evaluations]
    assert [r.loss for r in report.rounds] == [e.loss for e in probe.evaluations]
    assert report.final_accuracy == probe.evaluations[-1].accuracy
    # The edge status carried each round's accuracy once it was recorded...
    carried = {(s["rounds_done"], s["accuracy"]) for s in statuses(broker)}
    for number, evaluation in enumerate(probe.evaluations, start=1):
        assert (number, evaluation.accuracy) in carried
    # ... and never mid-round: a device re-sends its batch in flight on an edge status.
    assert report.counters.get("duplicate_batches", 0) == 0
    # The last checkpoint is the last round's, with its evaluation, and the model it evaluated.
    checkpoint = read_checkpoint(probe.checkpoint)
    assert checkpoint is not None
    assert checkpoint.round == 3
    assert [r["accuracy"] for r in checkpoint.report["rounds"]] == [
        e.accuracy for e in probe.evaluations
    ]
    assert all(torch.equal(checkpoint.global_state[k], v) for k, v in service.global_state.items())


async def test_an_edge_stopped_mid_round_checkpoints_the_round_before_and_resumes_after_it(
    probe: Probe, tmp_path: Path
) -> None:
    broker = MemoryBroker()
    first = edge(broker, probe.checkpoint, rounds=3)
    devices = agents(broker)
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        for agent in devices:
            tasks.create_task(agent.run())
        run = tasks.create_task(first.run())
        # Stop the edge (as SIGTERM does) once round 2 has started, round 1 still evaluating.
        await asyncio.to_thread(probe.next_round_started.wait, HANG_S)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        # The finished round was still evaluated and checkpointed; round 2 was not.
        checkpoint = read_checkpoint(probe.checkpoint)
        assert checkpoint is not None
        assert checkpoint.round == 1
        assert [r["round"] for r in checkpoint.report["rounds"]] == [1]
        assert checkpoint.report["rounds"][0]["accuracy"] == probe.evaluations[0].accuracy
        # A new edge carries on from it: round 2 again, then 3.
        report = await edge(broker, probe.checkpoint, rounds=3).run()
    assert [r.round for r in report.rounds] == [1, 2, 3]
    assert [r.accuracy for r in report.rounds] == [e.accuracy for e in probe.evaluations]
    assert [r["after_round"] for r in report.resumed] == [1]
    # The checkpoint's counters were the first round's end's: round 2's batches count once.
    listed = sum(d.batches for r in report.rounds for d in r.devices.values())
    assert report.counters["batches"] == listed
    final = read_checkpoint(probe.checkpoint)
    assert final is not None
    assert final.round == 3


async def test_the_next_plan_waits_for_the_last_rounds_telemetry_within_a_bound() -> None:
    registry = DeviceRegistry(assumed_link_bps=20e6, stale_after_s=60)
    for device_id in ("a", "b"):
        registry.register(device_id, Hello(device_id=device_id, instance="i", agent_version="x",
                                           samples=64, dataset="digits", input_shape=(1, 8, 8),
                                           num_classes=10))  # fmt: skip
    registry.take_telemetry("a", Telemetry(device_id="a", round=1))
    # b's telemetry of round 1 is in flight: the wait ends when it arrives...
    waiting = asyncio.create_task(registry.wait_for_round_telemetry(["a", "b"], 1, HANG_S))
    await asyncio.sleep(0)  # let it start waiting
    assert not waiting.done()
    registry.take_telemetry("b", Telemetry(device_id="b"))  # a periodic one does not count
    registry.take_telemetry("b", Telemetry(device_id="b", round=1))
    assert await waiting == []
    # ... and a device that never sends it costs the bound once, and is named.
    assert await registry.wait_for_round_telemetry(["a", "b"], 2, 0.0) == ["a", "b"]
    registry.mark_offline("b")  # a device gone is not waited for
    registry.take_telemetry("a", Telemetry(device_id="a", round=2))
    assert await registry.wait_for_round_telemetry(["a", "b"], 2, HANG_S) == []
