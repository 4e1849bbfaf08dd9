"""Driving the run: wait for devices, then round after round plan, start, serve, average,
evaluate, account and persist.

One round: the planner prices the devices online now and its policy picks each one's cut; the
``RoundRunner`` serves their batches until each has uploaded its part, dropped out or the
deadline passed; FedAvg adds each part to a running sum as it arrives, so the average exists
right after the last one. The next round is planned and started from it at once: the held-out
evaluation of round k's average, its record in the report and the checkpoint run behind, while
round k+1 trains; its accuracy goes into the edge status when round k+1 has averaged. Torch and
planning work runs in the compute thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace

import torch

from edge_service.accounting import round_report
from edge_service.evaluation import Evaluation
from edge_service.fanout import gather_bounded
from edge_service.loop_lag import LoopLagMonitor
from edge_service.outbox import Outbox
from edge_service.overhead import OverheadLearner
from edge_service.overhead_feed import round_observations, with_overheads
from edge_service.planning import DeviceReadings, RoundPlan
from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters, Rejected
from edge_service.rounds import (
    DeviceResult,
    DeviceRound,
    RoundContext,
    RoundRunner,
    prepare_parts,
)
from edge_service.run_state import RunState, Stamp
from edge_service.weight_sync import WeightSync
from edge_service.wire_calibration import WireAccuracy
from edge_service.wire_options import allowed_summary, wire_options
from planner import WireOption
from schemas import (
    DevicePlanEntry,
    PlanMessage,
    RoundAbort,
    RoundClose,
    RoundStart,
    TrainConfig,
    WeightsResync,
    to_json,
    usable_wire_dtype,
    wire_itemsize,
)
from schemas.messages import WIRE_DTYPES, EdgeState, WireDtype
from schemas.weight_delta import WeightWire, usable_weight_wire, weight_scale
from splitnn.codec_profile import measure_codec_costs
from splitnn.fedavg import FedAvgSum
from splitnn.tensors import state_to_arrays
from transport import LinkError

log = logging.getLogger(__name__)

# How long the next round's plan waits for the last round's telemetry (a device sends it right
# after its part; it is usually there within milliseconds).
ROUND_TELEMETRY_WAIT_S = 0.5

# Tells everyone what the edge is doing now (the retained edge status), with the evaluation of
# the round just averaged when there is one.
Announce = Callable[[EdgeState, Evaluation | None], Awaitable[None]]


@dataclass(frozen=True)
class PlannedRound:
    """A round's plan: the planner's entries, each device's cut and training, the deadline,
    and the readings it was priced from."""

    plan: RoundPlan
    assignments: dict[str, tuple[int, TrainConfig]]
    deadline_s: float
    readings: Mapping[str, DeviceReadings]


class RoundDriver:
    def __init__(
        self,
        *,
        session: str,
        run: RunState,
        devices: DeviceRegistry,
        outbox: Outbox,
        counters: Counters,
        executor: Executor,
        announce: Announce,
        reject: Callable[[str, Rejected, int | None], None],
        loop_lag: LoopLagMonitor,
    ) -> None:
        self.session = session
        self.run = run
        self.settings = run.settings
        self.devices = devices
        self.outbox = outbox
        self.counters = counters
        self.executor = executor
        self.announce = announce
        self.loop_lag = loop_lag
        self.current: RoundRunner | None = None  # the round in flight
        self.round_no = run.first_round - 1  # the round in flight, else the last one run
        self._reporting: list[str] = []  # the devices that contributed to the last round
        self.overheads = OverheadLearner()  # what the cost model misses, learned per round
        self.weight_sync = WeightSync()  # what each device holds, for weight deltas
        # Wire formats chosen with the cuts: the edge's codec speed and the last calibration.
        self._choosing_formats = run.planner.chooses_formats and len(self.settings.wire_formats) > 1
        self._edge_codec: dict[str, float] = {}
        self._wire_accuracy: WireAccuracy | None = None
        self._since_calibration_s = 0.0  # rounds' time since the last calibration
        self.context = RoundContext(
            spec=run.spec,
            torch_device=run.torch_device,
            max_frame_bytes=self.settings.mqtt.max_payload_bytes,
            executor=executor,
            counters=counters,
            publish_grad=outbox.publish_grad,
            reject=reject,
            close_device=self._close_device,
            close_grace_s=self.settings.close_grace_s,
            count_partial=self.settings.count_partial,
            protocol_of=lambda device_id: devices[device_id].protocol,
            grad_error_feedback=self.settings.grad_error_feedback,
        )

    async def train(self) -> None:
        """Every configured round not yet done; returns when the last one is evaluated and
        persisted."""
        settings, run = self.settings, self.run
        await self.announce("waiting", None)
        await self.devices.wait_for_devices(settings.min_devices, settings.registration_timeout_s)
        # Every policy, not only the planning ones: round 1 must not time devices still busy
        # profiling (it skewed fl and sl against ares), and its predictions need the profiles.
        await self.devices.wait_for_profiles(settings.profile_timeout_s)
        loop = asyncio.get_running_loop()
        if run.report.initial_accuracy is None:
            initial = await loop.run_in_executor(self.executor, run.evaluate)
            run.report.initial_accuracy = initial.accuracy
            log.info("initial accuracy %.4f loss %.4f", initial.accuracy, initial.loss)
        if self._choosing_formats:
            costs = await loop.run_in_executor(self.executor, measure_codec_costs, WIRE_DTYPES)
            self._edge_codec = {f: c.encode_s_per_mb + c.decode_s_per_mb for f, c in costs.items()}
            await self._calibrate_wire(run.global_state, run.first_round - 1)
        # The last round's evaluation, record and checkpoint, running behind the next round.
        behind: asyncio.Task[Evaluation] | None = None
        try:
            for round_no in range(run.first_round, settings.rounds + 1):
                await self.devices.wait_for_devices(1, settings.registration_timeout_s)
                self.round_no = round_no
                started = time.perf_counter()
                plan, results, average = await self._run_round(round_no)
                if average is not None:
                    run.global_state = average
                else:
                    log.warning("round %d: no device finished; the model is unchanged", round_no)
                if behind is not None:
                    await self._announce_concluded(behind)
                duration = time.perf_counter() - started  # to the next round's plan
                stamp = run.take_stamp(self.counters, self.loop_lag)  # before the next round
                behind = asyncio.create_task(
                    self.conclude(round_no, plan, results, run.global_state, duration, stamp),
                    name=f"conclude-round-{round_no}",
                )
            if behind is not None:
                if not behind.done():
                    await self.announce("evaluating", None)
                await self._announce_concluded(behind)
        finally:
            if behind is not None and not behind.done():
                # Stopping (SIGTERM) or failing mid-round: the round before it is finished, so
                # it still gets evaluated and checkpointed, as it did before the next began.
                await asyncio.wait([behind])
                if not behind.cancelled() and behind.exception() is not None:
                    log.error("the last finished round was not concluded: %s",
                              behind.exception())  # fmt: skip

    async def _announce_concluded(self, behind: asyncio.Task[Evaluation]) -> None:
        """Between two rounds (no batch in flight), the round concluded behind the last one:
        its accuracy in the edge status. Mid-round, a status would make every device re-send
        its batch in flight (it reads a status as the edge announcing itself after a
        reconnect). Waits for the conclusion only if the evaluation took longer than a round,
        so at most one round is ever behind."""
        evaluation = await behind  # a failed checkpoint stops the run here
        await self.announce("training", evaluation)

    async def conclude(
        self,
        round_no: int,
        plan: RoundPlan,
        results: list[DeviceResult],
        average: dict[str, torch.Tensor],
        duration: float,
        stamp: Stamp,
    ) -> Evaluation:
        """Evaluate a round's average, record the round and checkpoint it (while the next round
        trains; the one before it was concluded before this one started)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        evaluation = await loop.run_in_executor(self.executor, self.run.evaluate, average)
        log.debug("round %d evaluated in %.2f s behind the next round", round_no,
                  time.perf_counter() - started)  # fmt: skip
        if self._calibration_due(round_no, duration):
            await self._calibrate_wire(average, round_no)
        self._record(round_no, plan, results, evaluation, duration, average)
        self.run.apply_stamp(stamp)  # the checkpoint carries the run's figures at the round's end
        # Only now: a checkpoint never holds a round whose evaluation did not happen. A crash
        # before this write resumes from the round before, and runs this one again.
        await loop.run_in_executor(self.executor, self.run.persist, round_no, plan, average)
        return evaluation

    def _calibration_due(self, round_no: int, round_s: float) -> bool:
        """Whether to measure the formats again behind this round: only while a round follows,
        and only once the rounds since the last measurement took long enough that it costs at
        most ``wire_calibration_share`` of the edge's time (it runs on the compute threads)."""
        if not self._choosing_formats or round_no >= self.settings.rounds:
            return False
        self._since_calibration_s += round_s
        last = self._wire_accuracy.elapsed_s if self._wire_accuracy else 0.0
        return self._since_calibration_s * self.settings.wire_calibration_share >= last

    async def _calibrate_wire(self, state: dict[str, torch.Tensor], round_no: int) -> None:
        """Measure the lossy formats' accuracy cost on ``state`` (round ``round_no``'s average);
        the next plan allows each format where it is within the bound."""
        loop = asyncio.get_running_loop()
        self._wire_accuracy = await loop.run_in_executor(
            self.executor, self.run.calibrate_wire, state, round_no
        )
        self._since_calibration_s = 0.0
        s = self.settings
        log.info("wire formats on round %d's model, %s", round_no, allowed_summary(
            self._wire_accuracy, s.wire_formats, self.run.planner.blocks, s.wire_accuracy_bound
        ))  # fmt: skip

    def evicted(self, device_id: str) -> None:
        """The device is gone (it did not answer a ping): it leaves the round in flight."""
        runner = self.current
        if runner is not None and device_id in runner.devices:
            log.warning("device %s went offline mid-round", device_id)
            runner.drop(device_id, "device went offline")
        else:  # between rounds, e.g. a device that exits when training is over
            log.info("device %s went offline", device_id)

    async def resend_in_flight(self) -> None:
        """After a reconnect: what the broker may have acknowledged and then lost with a
        restart. Each device's last gradient (a device past it ignores it) and, to a device not
        heard from this round, its round start (a device that has it ignores the repeat)."""
        runner = self.current
        if runner is None:
            return
        for device_id, device in runner.devices.items():
            if device.result.done() or device.start is None:
                continue
            session = device.session
            if session is not None and session.last_reply is not None:
                self.outbox.spawn(self.outbox.publish_grad(device_id, session.last_reply))
            elif session is None or session.next_seq == 0:
                self.outbox.spawn(self._send_start(device_id, device))

    def resync_weights(self, device_id: str, request: WeightsResync) -> None:
        """The device cannot apply its round start's weight deltas (it does not hold their
        base): send it the round start again with full weights."""
        runner = self.current
        device = runner.devices.get(device_id) if runner is not None else None
        if device is None or device.start is None or device.result.done():
            raise Rejected("not_in_round", f"no round start of round {request.round} in flight")
        self.counters.add("weights_resync")
        log.info("%s holds no round %s start (%s; it holds %s): full weights", device_id,
                 request.weights_base, request.reason, request.held)  # fmt: skip
        sent = device.weights
        device.weights = self.weight_sync.resync(
            device_id, device.device_state, sent.instance if sent else ""
        )
        device.weights.sent_bytes = sent.sent_bytes if sent else 0  # the deltas went, too
        device.start = device.start.model_copy(update={"weights_base": None})
        self.outbox.spawn(self._send_start(device_id, device))

    async def abort(self, reason: str) -> None:
        """Tell the devices of the round in flight that it is abandoned."""
        runner = self.current
        if runner is not None:
            abort = RoundAbort(
                session=self.session, round=runner.round_no, attempt=runner.attempt, reason=reason
            )
            await gather_bounded(
                (self.outbox.send_ctrl(d, abort) for d in runner.devices), return_exceptions=True
            )

    # --- one round ------------------------------------------------------------------------------

    async def _run_round(
        self, round_no: int
    ) -> tuple[RoundPlan, list[DeviceResult], dict[str, torch.Tensor] | None]:
        """Plan, start and serve a round; its plan, its devices' results and the average of
        their parts (None: none counted)."""
        planned = await self.plan_round(round_no)
        await self.publish_plan(round_no, planned.plan)
        await self.announce("training", None)
        results, total = await self.serve_round(
            round_no, planned.assignments, planned.deadline_s, self.run.global_state
        )
        self.learn_from(planned, results)
        average = None
        if total.parts:
            average = await asyncio.get_running_loop().run_in_executor(self.executor, total.average)
        return planned.plan, results, average

    async def plan_round(self, round_no: int) -> PlannedRound:
        """Price the devices online now and plan their cuts (and formats) for the round."""
        settings, run = self.settings, self.run
        loop = asyncio.get_running_loop()
        if self._reporting:
            # The planner prices each device by its last round's telemetry (its compute drift),
            # sent right after its part: with no evaluation in between, it may be in flight.
            late = await self.devices.wait_for_round_telemetry(
                self._reporting, round_no - 1, ROUND_TELEMETRY_WAIT_S
            )
            if late:
                log.info("round %d: planning without round %d's telemetry of %s", round_no,
                         round_no - 1, ", ".join(late))  # fmt: skip
        online = self.devices.online()
        batches = {d: self._batches(r.hello.samples) for d, r in online.items()}
        readings = {
            d: replace(
                self.devices.readings(
                    d,
                    wire_itemsize(self._wire_dtype(d)),
                    # Plan for the samples this round really processes.
                    samples=min(r.hello.samples, batches[d] * settings.batch_size),
                ),
                wire_options=self._wire_options(d),
                weight_scale=weight_scale(self._weight_wire(d)),
            )
            for d, r in online.items()
        }
        readings = with_overheads(readings, self.overheads)
        # Pure computation, ~25 ms for 500 devices: in a worker thread, off the event loop.
        round_plan = await loop.run_in_executor(self.executor, run.planner.plan, readings)
        # Every entry names the format its device uses (the planner's choice, else its own).
        round_plan = replace(round_plan, devices={
            d: e if e.wire_dtype else e.model_copy(update={"wire_dtype": self._wire_dtype(d)})
            for d, e in round_plan.devices.items()
        })  # fmt: skip
        assignments = {
            device_id: (entry.cut, self._train_config(device_id, batches[device_id], entry))
            for device_id, entry in round_plan.devices.items()
        }
        for device_id, (cut, _) in assignments.items():  # which of its timings follow a split
            self.devices[device_id].started(round_no, split=cut < run.planner.blocks)
        return PlannedRound(round_plan, assignments, self._round_deadline(round_plan), readings)

    async def serve_round(
        self,
        round_no: int,
        plan: Mapping[str, tuple[int, TrainConfig]],
        deadline_s: float,
        global_state: dict[str, torch.Tensor],
        attempt: int = 0,
    ) -> tuple[list[DeviceResult], FedAvgSum]:
        """Start and serve the devices of ``plan`` (device -> cut and training) from
        ``global_state``; their results and the FedAvg sum of the parts that count."""
        loop = asyncio.get_running_loop()
        self.round_no = round_no
        plan = dict(plan)
        # Off the event loop: hundreds of server sessions take a good part of a second.
        parts = await loop.run_in_executor(
            self.executor, prepare_parts, self.context, round_no, global_state, plan, attempt
        )
        # The weights each round start carries: deltas against what each device holds.
        starts = await loop.run_in_executor(
            self.executor, self.weight_sync.starts, {d: parts[d][0] for d in plan},
            {d: self.devices[d].hello.instance for d in plan},
            {d: self._weight_wire(d) for d in plan},
        )  # fmt: skip
        runner = RoundRunner(self.context, round_no, global_state, plan, parts, attempt=attempt)
        for device_id, weights in starts.items():
            runner.devices[device_id].weights = weights
        # FedAvg as the parts arrive: each is added to the running sum in the compute pool.
        total = FedAvgSum()
        adding: dict[str, asyncio.Future[None]] = {}

        def add_part(result: DeviceResult) -> None:
            if result.contributed and result.state is not None and result.device_id not in adding:
                adding[result.device_id] = loop.run_in_executor(
                    self.executor, total.add, result.state, result.samples
                )

        for device in runner.devices.values():
            device.result.add_done_callback(
                lambda done: None if done.cancelled() else add_part(done.result())
            )
        self.current = runner
        try:
            await gather_bounded(
                self._start_device(runner, d, cut, train, deadline_s)
                for d, (cut, train) in plan.items()
            )
            results = await runner.run(deadline_s)
        finally:
            self.current = None
        for device in runner.devices.values():
            self._keep_held(round_no, device)
        for result in results:
            if result.state is None:  # it handed in nothing: make sure it stops
                abort = RoundAbort(
                    session=self.session, round=round_no, attempt=attempt, reason=result.detail
                )
                self.outbox.spawn(self.outbox.send_ctrl(result.device_id, abort))
        for result in results:
            add_part(result)  # any whose callback has not run yet
        await asyncio.gather(*adding.values())  # the last part's addition; the rest are done
        return results, total

    def learn_from(self, planned: PlannedRound, results: list[DeviceResult]) -> None:
        """What the round took beside what its plan priced (edge_service.overhead); and who
        reported, so that the next plan waits for their telemetry."""
        self._reporting = [r.device_id for r in results if r.contributed]
        plan = planned.plan
        observations = round_observations(results, plan, planned.readings, self.run.planner)
        served = sum(1 for e in plan.devices.values() if e.cut < self.run.planner.blocks)
        for problem in self.overheads.observe(observations, served_at_once=served):
            self.counters.add("overhead_observations_rejected")
            log.warning("not learning from a round's times: %s", problem)

    async def publish_plan(self, round_no: int, plan: RoundPlan) -> None:
        message = PlanMessage(
            session=self.session,
            round=round_no,
            policy=plan.policy,
            alpha=plan.alpha,
            objective=plan.objective,
            devices=plan.devices,
            sitting_out=plan.sitting_out,
        )
        await self.outbox.publish_informative(self.outbox.topics.edge_plan, to_json(message))
        log.info("round %d plan (%s, objective %.4f):", round_no, plan.policy,
                 plan.objective)  # fmt: skip
        for device_id, entry in plan.devices.items():
            log.info("  %s: cut %d, %.2f s, %.2f J predicted; %s [%s]", device_id,
                     entry.cut, entry.predicted_time_s, entry.predicted_energy_j,
                     entry.reason, entry.inputs)  # fmt: skip

    async def _start_device(
        self, runner: RoundRunner, device_id: str, cut: int, train: TrainConfig, deadline: float
    ) -> None:
        # The runner already cut this device's part from the global model.
        device = runner.devices[device_id]
        message = RoundStart(
            session=self.session,
            round=runner.round_no,
            attempt=runner.attempt,
            cut=cut,
            model=self.run.model_info,
            train=train,
            deadline_s=deadline,
            weights_base=device.weights.base_round if device.weights else None,
        )
        device.started, device.start = time.perf_counter(), message
        try:
            await self._send_start(device_id, device)
        except LinkError as exc:
            runner.drop(device_id, f"round start not delivered: {exc}")

    async def _send_start(self, device_id: str, device: DeviceRound) -> None:
        """The device's round start with its weights (counted as sent once published)."""
        assert device.start is not None
        weights = device.weights
        tensors = weights.tensors if weights else state_to_arrays(device.device_state)
        await self.outbox.send_ctrl(device_id, device.start, tensors)
        if weights is not None:
            weights.sent_bytes += weights.data_bytes

    def _keep_held(self, round_no: int, device: DeviceRound) -> None:
        """A device whose part the edge accepted holds its round start (the base of the next
        round start's deltas)."""
        if device.weights is not None and device.result.result().weights_up_bytes is not None:
            self.weight_sync.accepted(device.device_id, round_no, device.weights)

    async def _close_device(self, device_id: str) -> None:
        runner = self.current
        attempt = runner.attempt if runner is not None else 0
        await self.outbox.send_ctrl(
            device_id, RoundClose(session=self.session, round=self.round_no, attempt=attempt)
        )

    def _record(
        self,
        round_no: int,
        plan: RoundPlan,
        results: list[DeviceResult],
        evaluation: Evaluation,
        duration: float,
        average: dict[str, torch.Tensor],
    ) -> None:
        report = self.run.report
        report.rounds.append(
            round_report(
                round_no=round_no,
                plan=plan,
                results=results,
                accuracy=evaluation.accuracy,
                loss=evaluation.loss,
                duration_s=duration,
                devices=self.devices,
                assumed_power=self.run.planner.defaults.power,
                global_state=average,
            )
        )
        report.final_accuracy = evaluation.accuracy
        log.info("round %d: accuracy %.4f loss %.4f in %.2f s", round_no, evaluation.accuracy,
                 evaluation.loss, duration)  # fmt: skip

    # --- the round's settings per device ---------------------------------------------------------

    def _wire_dtype(self, device_id: str) -> WireDtype:
        wanted = self.settings.wire_dtypes.get(device_id, self.settings.wire_dtype)
        return usable_wire_dtype(wanted, self.devices[device_id].hello.wire_dtypes)

    def _wire_options(self, device_id: str) -> tuple[WireOption, ...]:
        """The formats the planner may choose from for this device (none: it keeps its own)."""
        s = self.settings
        if not self._choosing_formats or device_id in s.wire_dtypes:
            return ()
        record = self.devices[device_id]
        return wire_options(
            configured=s.wire_dtype,
            candidates=s.wire_formats,
            supported=record.hello.wire_dtypes,
            blocks=self.run.planner.blocks,
            accuracy=self._wire_accuracy,
            bound_points=s.wire_accuracy_bound,
            edge_codec_s_per_mb=self._edge_codec,
            device_codec_s_per_mb=record.compute.codec_s_per_mb if record.compute else None,
        )

    def _weight_wire(self, device_id: str) -> WeightWire:
        return usable_weight_wire(
            self.settings.weight_wire, self.devices[device_id].hello.weight_wires
        )

    def _batches(self, samples: int) -> int:
        return self.settings.batches_per_round or math.ceil(samples / self.settings.batch_size)

    def _round_deadline(self, plan: RoundPlan) -> float:
        """Slack times the slowest predicted device, within the configured floor and cap."""
        s = self.settings
        slowest = max((e.predicted_time_s for e in plan.devices.values()), default=0.0)
        return min(s.round_timeout_s, max(s.deadline_floor_s, s.deadline_slack * slowest))

    def _train_config(self, device_id: str, batches: int, entry: DevicePlanEntry) -> TrainConfig:
        s = self.settings
        predicted_batch_s = entry.predicted_time_s / batches
        return TrainConfig(
            lr=s.lr,
            momentum=s.momentum,
            weight_decay=s.weight_decay,
            batch_size=s.batch_size,
            batches=batches,
            batch_timeout_s=max(s.batch_timeout_s, s.deadline_slack * predicted_batch_s),
            wire_dtype=entry.wire_dtype or self._wire_dtype(device_id),
            weight_wire=self._weight_wire(device_id),
        )
