"""Driving the run: wait for devices, then round after round plan, start, serve, average,
evaluate, account and persist.

One round: the planner prices the devices online now and its policy picks each one's cut; the
``RoundRunner`` serves their batches until each has uploaded its part, dropped out or the
deadline passed; FedAvg averages whatever finished. Torch and planning work runs in the compute
thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from edge_service.accounting import round_report
from edge_service.evaluation import Evaluation
from edge_service.fanout import gather_bounded
from edge_service.loop_lag import LoopLagMonitor
from edge_service.outbox import Outbox
from edge_service.planning import RoundPlan
from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters, Rejected
from edge_service.rounds import DeviceResult, RoundContext, RoundRunner, prepare_parts
from edge_service.run_state import RunState
from schemas import (
    DevicePlanEntry,
    PlanMessage,
    RoundAbort,
    RoundClose,
    RoundStart,
    TrainConfig,
    to_json,
    usable_wire_dtype,
    wire_itemsize,
)
from schemas.messages import EdgeState, WireDtype
from splitnn.fedavg import fedavg
from splitnn.tensors import state_to_arrays
from transport import LinkError

log = logging.getLogger(__name__)

# Tells everyone what the edge is doing now (the retained edge status), with the evaluation of
# the round just averaged when there is one.
Announce = Callable[[EdgeState, Evaluation | None], Awaitable[None]]


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
        """Every configured round not yet done."""
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
        for round_no in range(run.first_round, settings.rounds + 1):
            await self.devices.wait_for_devices(1, settings.registration_timeout_s)
            self.round_no = round_no
            started = time.perf_counter()
            plan, results = await self._run_round(round_no)
            ok = [r for r in results if r.contributed]
            if ok:
                # In a worker thread: averaging hundreds of models blocks for a while.
                run.global_state = await loop.run_in_executor(
                    self.executor,
                    fedavg,
                    [r.state for r in ok if r.state is not None],
                    [r.samples for r in ok],
                )
            else:
                log.warning("round %d: no device finished; the model is unchanged", round_no)
            await self.announce("evaluating", None)
            evaluation = await loop.run_in_executor(self.executor, run.evaluate)
            duration = time.perf_counter() - started
            self._record(round_no, plan, results, evaluation, duration)
            await loop.run_in_executor(self.executor, run.persist, round_no, plan)
            await self.announce("training", evaluation)

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
                arrays = state_to_arrays(device.device_state)
                self.outbox.spawn(self.outbox.send_ctrl(device_id, device.start, arrays))

    async def abort(self, reason: str) -> None:
        """Tell the devices of the round in flight that it is abandoned."""
        runner = self.current
        if runner is not None:
            abort = RoundAbort(session=self.session, round=runner.round_no, reason=reason)
            await gather_bounded(
                (self.outbox.send_ctrl(d, abort) for d in runner.devices), return_exceptions=True
            )

    # --- one round ------------------------------------------------------------------------------

    async def _run_round(self, round_no: int) -> tuple[RoundPlan, list[DeviceResult]]:
        settings, run = self.settings, self.run
        loop = asyncio.get_running_loop()
        online = self.devices.online()
        batches = {d: self._batches(r.hello.samples) for d, r in online.items()}
        readings = {
            d: self.devices.readings(
                d,
                wire_itemsize(self._wire_dtype(d)),
                # Plan for the samples this round really processes.
                samples=min(r.hello.samples, batches[d] * settings.batch_size),
            )
            for d, r in online.items()
        }
        # Pure computation, ~25 ms for 500 devices: in a worker thread, off the event loop.
        round_plan = await loop.run_in_executor(self.executor, run.planner.plan, readings)
        deadline = self._round_deadline(round_plan)
        plan = {
            device_id: (entry.cut, self._train_config(device_id, batches[device_id], entry))
            for device_id, entry in round_plan.devices.items()
        }
        # Off the event loop: hundreds of server sessions take a good part of a second.
        parts = await loop.run_in_executor(
            self.executor, prepare_parts, self.context, round_no, run.global_state, plan
        )
        runner = RoundRunner(self.context, round_no, run.global_state, plan, parts)
        self.current = runner
        try:
            await self._publish_plan(round_no, round_plan)
            await self.announce("training", None)
            await gather_bounded(
                self._start_device(runner, d, cut, train, deadline)
                for d, (cut, train) in plan.items()
            )
            results = await runner.run(deadline)
        finally:
            self.current = None
        for result in results:
            if result.state is None:  # it handed in nothing: make sure it stops
                abort = RoundAbort(session=self.session, round=round_no, reason=result.detail)
                self.outbox.spawn(self.outbox.send_ctrl(result.device_id, abort))
        return round_plan, results

    async def _publish_plan(self, round_no: int, plan: RoundPlan) -> None:
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
            cut=cut,
            model=self.run.model_info,
            train=train,
            deadline_s=deadline,
        )
        device.started, device.start = time.perf_counter(), message
        try:
            await self.outbox.send_ctrl(device_id, message, state_to_arrays(device.device_state))
        except LinkError as exc:
            runner.drop(device_id, f"round start not delivered: {exc}")

    async def _close_device(self, device_id: str) -> None:
        await self.outbox.send_ctrl(
            device_id, RoundClose(session=self.session, round=self.round_no)
        )

    def _record(
        self,
        round_no: int,
        plan: RoundPlan,
        results: list[DeviceResult],
        evaluation: Evaluation,
        duration: float,
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
                global_state=self.run.global_state,
            )
        )
        report.final_accuracy = evaluation.accuracy
        self.run.stamp(self.counters, self.loop_lag)  # so the checkpoint carries them
        log.info("round %d: accuracy %.4f loss %.4f in %.2f s", round_no, evaluation.accuracy,
                 evaluation.loss, duration)  # fmt: skip

    # --- the round's settings per device ---------------------------------------------------------

    def _wire_dtype(self, device_id: str) -> WireDtype:
        wanted = self.settings.wire_dtypes.get(device_id, self.settings.wire_dtype)
        return usable_wire_dtype(wanted, self.devices[device_id].hello.wire_dtypes)

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
            wire_dtype=self._wire_dtype(device_id),
        )
