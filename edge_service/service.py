"""The edge service: registers devices, runs rounds, aggregates and evaluates.

Phases: ``run()`` connects (the MQTT link is an async context manager), waits for enough devices,
runs the configured rounds and finally tells the devices training is over. Inbound messages are
read by one dispatcher task that validates them cheaply and routes them; the server compute of
each device runs in its own worker (see ``rounds``), so no device waits behind another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from edge_service.checkpoint import (
    Checkpoint,
    check_compatible,
    read_checkpoint,
    settings_fingerprint,
    write_checkpoint,
)
from edge_service.evaluation import Evaluation, evaluate
from edge_service.fanout import gather_bounded
from edge_service.heap import frozen_heap
from edge_service.loop_lag import LoopLagMonitor
from edge_service.metrics import DeviceView, EdgeCollector, EdgeView, MetricsServer
from edge_service.planning import DeviceReadings, PlanDefaults, RoundPlan, SplitPlanner
from edge_service.rejections import Counters, Rejected
from edge_service.report import DeviceRoundReport, RoundReport, RunReport
from edge_service.rounds import DeviceResult, RoundContext, RoundRunner, prepare_parts
from edge_service.settings import EdgeSettings
from planner.energy import device_energy_j
from schemas import (
    ActivationMeta,
    CodecError,
    ComputeProfile,
    DeviceChannel,
    DevicePlanEntry,
    DeviceStatus,
    EdgeStatus,
    ErrorReport,
    Finish,
    Frame,
    Hello,
    ModelInfo,
    Ping,
    PlanMessage,
    RoundAbort,
    RoundClose,
    RoundStart,
    SchemaError,
    Telemetry,
    Topics,
    TrainConfig,
    WeightsMeta,
    Welcome,
    WireModel,
    decode_frame,
    encode_frame,
    parse_json,
    parse_meta,
    to_json,
    to_meta,
    wire_itemsize,
)
from schemas.messages import EdgeState, RoundTraffic, WireDtype
from schemas.topics import DEVICE_TO_EDGE
from splitnn.data import load_dataset
from splitnn.fedavg import fedavg
from splitnn.models import ModelSpec, build_model, num_blocks
from splitnn.partition import block_index, validate_cut
from splitnn.profiling import profile_blocks
from splitnn.tensors import state_to_arrays, warm_up_torch
from transport import Connect, LastWill, Link, LinkError, Message, mqtt_connector
from transport.tasks import BackgroundTasks

log = logging.getLogger(__name__)
SHUTDOWN_NOTICE_S = 3.0  # how long a stopping edge spends telling the devices
# Beyond the longest wait of one phase: evaluation, checkpoint and publishes (see health_problem).
STALL_MARGIN_S = 300.0
T = TypeVar("T", bound=RoundTraffic)


@dataclass
class DeviceRecord:
    hello: Hello
    state: str  # online, training or offline
    last_seen: float
    telemetry: Telemetry | None = None
    telemetry_at: float = 0.0  # time.monotonic() of the last telemetry
    compute: ComputeProfile | None = None  # the latest block timings the device measured
    # The last good link estimate: a later telemetry without one does not erase it.
    measured_link: tuple[float, float | None] | None = None

    def take_telemetry(self, telemetry: Telemetry) -> None:
        self.telemetry, self.telemetry_at = telemetry, time.monotonic()
        if telemetry.compute is not None:
            self.compute = telemetry.compute
        if telemetry.uplink_bps is not None:
            self.measured_link = (telemetry.uplink_bps, telemetry.downlink_bps)

    def readings(self, wire_itemsize: int, stale_after_s: float, samples: int) -> DeviceReadings:
        """Latest readings for the planner, with fallbacks: the newest measured link rates
        (marked stale when old), then what hello declared, then (in the planner) defaults."""
        live = self.telemetry
        uplink, downlink, source = self.hello.uplink_bps, self.hello.downlink_bps, "declared"
        if self.measured_link is not None:
            uplink, downlink = self.measured_link
            fresh = time.monotonic() - self.telemetry_at <= stale_after_s
            source = "measured" if fresh else "measured (stale)"
        return DeviceReadings(
            samples=samples,
            compute=self.compute,
            power=self.hello.power,
            memory_bytes=self.hello.memory_bytes,
            battery_pct=live.battery_pct if live else None,
            uplink_bps=uplink,
            downlink_bps=downlink,
            link_source=source,
            wire_itemsize=wire_itemsize,
            allowed_cuts=self.hello.allowed_cuts,
        )


def resolve_torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class EdgeService:
    def __init__(self, settings: EdgeSettings, connect: Connect | None = None) -> None:
        """``connect`` opens the edge's link (default: MQTT to ``settings.mqtt``)."""
        self._connect = connect or mqtt_connector(settings.mqtt)
        self.settings = settings
        self.session = uuid.uuid4().hex[:12]
        self.topics = Topics(settings.mqtt.prefix)
        self.counters = Counters()
        self.devices: dict[str, DeviceRecord] = {}
        self.torch_device = resolve_torch_device(settings.torch_device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        warm_up_torch()

        self.test_data = load_dataset(
            settings.dataset, "test", data_dir=settings.data_dir, seed=settings.seed
        )
        channels, size, _ = self.test_data.input_shape
        self.spec = ModelSpec(settings.model, channels, size, self.test_data.num_classes)
        torch.manual_seed(settings.seed)
        model = build_model(self.spec)
        self.global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.blocks = num_blocks(self.spec)
        self.default_split = settings.split or max(1, self.blocks // 2)
        for cut in (self.default_split, *settings.splits.values()):
            validate_cut(self.spec, cut)
        # The edge's own speed per block: the planner's C_s, and its guess for silent devices.
        self.server_profile = profile_blocks(
            self.spec,
            settings.batch_size,
            device=self.torch_device,
            wire_itemsize=4,  # per-device wire dtypes are applied by the planner
        )
        self.planner = SplitPlanner(
            policy=settings.policy,
            alpha=settings.alpha,
            model_name=self.spec.name,
            server=self.server_profile,
            defaults=PlanDefaults.from_settings(settings),
            fixed_split=self.default_split,
            fixed_splits=settings.splits,
        )

        self.fingerprint = settings_fingerprint(
            {
                "model": settings.model,
                "dataset": settings.dataset,
                "data_dir": settings.data_dir,
                "seed": settings.seed,
                "batch_size": settings.batch_size,
            }
        )
        self._first_round = 1
        self._wall_before_s = 0.0  # earlier processes' wall time (a resumed run)
        self._run_started = time.perf_counter()
        self._link: Link | None = None
        self._round: RoundRunner | None = None
        self._round_no = 0
        self.ready = asyncio.Event()  # connected and waiting for devices (systemd's READY=1)
        self.progress_at = time.monotonic()  # the main task's last phase change
        self._dispatcher: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None  # serving while run() runs, if configured
        self.loop_lag = LoopLagMonitor()  # sampling while run() runs; metrics read it
        self._devices_changed = asyncio.Event()
        self._pings: dict[str, tuple[str, asyncio.Event]] = {}  # device -> (nonce, answered)
        self._background = BackgroundTasks()
        self.report = RunReport(
            policy=settings.policy,
            alpha=settings.alpha,
            model=settings.model,
            dataset=settings.dataset,
            session=self.session,
            started_at=time.time(),
        )
        self._resume()

    def _resume(self) -> None:
        """Carry on from the last checkpoint, if there is one and we were not told otherwise."""
        path = self.settings.checkpoint
        if path is None or self.settings.fresh:
            return
        checkpoint = read_checkpoint(path)
        if checkpoint is None:
            return
        check_compatible(checkpoint, self.fingerprint, self.settings.model, self.settings.dataset)
        self.global_state = checkpoint.global_state
        self.report = RunReport.from_dict(checkpoint.report)
        self.report.session = self.session
        # Counters and wall time carry on: the report covers the run, not this process.
        self.counters.restore(self.report.counters)
        self._wall_before_s = self.report.wall_s
        self.report.resumed.append(
            {
                "after_round": checkpoint.round,
                "session": self.session,
                "checkpoint_at": checkpoint.created_at,
                "resumed_at": time.time(),
            }
        )
        self.planner.resume(checkpoint.previous_splits)
        self._first_round = checkpoint.round + 1
        self._round_no = checkpoint.round
        log.info("resuming from %s: round %d of %d done", path, checkpoint.round,
                 self.settings.rounds)  # fmt: skip

    def _persist(self, round_no: int, plan: RoundPlan) -> None:
        """Report and checkpoint after a round, in a worker thread: both grow with devices x
        rounds (500 x 10: 0.2 s of JSON) and must not stall the event loop. Nothing changes
        the report while the round loop awaits this. The checkpoint first: a report never
        lists a round that a resume after a crash between the two writes would run again."""
        self._checkpoint(round_no, plan)
        if self.settings.report is not None:
            self.report.write(self.settings.report)

    def _checkpoint(self, round_no: int, plan: RoundPlan) -> None:
        path = self.settings.checkpoint
        if path is None:
            return
        write_checkpoint(
            path,
            Checkpoint(
                session=self.session,
                round=round_no,
                global_state=self.global_state,
                previous_splits=plan.splits,
                report=self.report.to_dict(),
                model=self.settings.model,
                dataset=self.settings.dataset,
                fingerprint=self.fingerprint,
                created_at=time.time(),
            ),
        )

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Connect, train the configured rounds, tell the devices to stop; returns the report."""
        self._run_started = time.perf_counter()
        subscriptions = [(self.topics.all_devices(ch), 1) for ch in DEVICE_TO_EDGE]
        will = LastWill(self.topics.edge_status, to_json(self._status("stopped")))
        with (
            frozen_heap(),
            ThreadPoolExecutor(
                self.settings.compute_workers, thread_name_prefix="edge-compute"
            ) as executor,
        ):
            link = self._connect(
                self.settings.client_id, subscriptions, will=will, on_connect=self._announce
            )
            self._link = link  # before connecting: on_connect publishes through it
            async with self.loop_lag, link, self._metrics_endpoint(), asyncio.TaskGroup() as tasks:
                dispatcher = tasks.create_task(self._dispatch(link), name="edge-dispatch")
                self._dispatcher = dispatcher
                self.ready.set()
                try:
                    await self._train(executor)
                    await self._publish_status("finished")
                    if self.settings.finish_devices:
                        await self._finish_devices("training finished")
                except asyncio.CancelledError:
                    # SIGTERM: the round in flight is abandoned (the checkpoint holds the last
                    # finished one); tell the devices, within a bound, then go.
                    with contextlib.suppress(TimeoutError, LinkError):
                        async with asyncio.timeout(SHUTDOWN_NOTICE_S):
                            await self._stopping()
                    raise
                finally:
                    dispatcher.cancel()
                    # Bounded: a stopping edge must exit promptly (SIGTERM), not wait out publishes.
                    await self._background.drain(SHUTDOWN_NOTICE_S)
        self.report.wall_s = self._wall_s()
        self.report.counters = self.counters.snapshot()
        self._write_report()
        return self.report

    def _metrics_endpoint(self) -> contextlib.AbstractAsyncContextManager[object]:
        port = self.settings.metrics_port
        if port is None:
            return contextlib.nullcontext()
        loop = asyncio.get_running_loop()

        def view() -> EdgeView:
            # Scrapes come on the server's thread: take the snapshot on the event loop.
            return asyncio.run_coroutine_threadsafe(self._edge_view(), loop).result(2.0)

        self.metrics = MetricsServer(EdgeCollector(view), port, self.settings.metrics_host)
        return self.metrics

    async def _edge_view(self) -> EdgeView:
        last = self.report.rounds[-1].devices if self.report.rounds else {}
        devices = {}
        for device_id, record in self.devices.items():
            link = record.measured_link or (record.hello.uplink_bps, record.hello.downlink_bps)
            devices[device_id] = DeviceView(
                state=record.state,
                cut=last[device_id].cut if device_id in last else None,
                uplink_bps=link[0],
                downlink_bps=link[1],
                battery_pct=record.telemetry.battery_pct if record.telemetry else None,
                speed_ratio=record.telemetry.speed_ratio if record.telemetry else None,
            )
        return EdgeView(
            report=self.report,
            counters=self.counters.snapshot(),
            devices=devices,
            round_no=self._round_no,
            rounds_planned=self.settings.rounds,
            loop_lag_s=self.loop_lag.quantiles(),
        )

    async def _train(self, executor: Executor) -> None:
        settings = self.settings
        await self._publish_status("waiting")
        await self._wait_for_devices(settings.min_devices, settings.registration_timeout_s)
        # Every policy, not only the planning ones: round 1 must not time devices still busy
        # profiling (it skewed fl and sl against ares), and its predictions need the profiles.
        await self._wait_for_profiles(settings.profile_timeout_s)
        loop = asyncio.get_running_loop()
        if self.report.initial_accuracy is None:
            initial = await loop.run_in_executor(executor, self._evaluate)
            self.report.initial_accuracy = initial.accuracy
            log.info("initial accuracy %.4f loss %.4f", initial.accuracy, initial.loss)
        ctx = RoundContext(
            spec=self.spec,
            torch_device=self.torch_device,
            max_frame_bytes=settings.mqtt.max_payload_bytes,
            executor=executor,
            counters=self.counters,
            publish_grad=self._publish_grad,
            reject=self._reject_in_round,
            close_device=self._close_device,
            close_grace_s=settings.close_grace_s,
            count_partial=settings.count_partial,
        )
        for round_no in range(self._first_round, settings.rounds + 1):
            await self._wait_for_devices(1, settings.registration_timeout_s)
            self._round_no = round_no
            started = time.perf_counter()
            plan, results = await self._run_round(ctx, round_no)
            ok = [r for r in results if r.contributed]
            if ok:
                # In a worker thread: averaging hundreds of models blocks for a while.
                self.global_state = await loop.run_in_executor(
                    executor,
                    fedavg,
                    [r.state for r in ok if r.state is not None],
                    [r.samples for r in ok],
                )
            else:
                log.warning("round %d: no device finished; the model is unchanged", round_no)
            await self._publish_status("evaluating")
            evaluation = await loop.run_in_executor(executor, self._evaluate)
            duration = time.perf_counter() - started
            self._record_round(round_no, plan, results, evaluation, duration)
            await loop.run_in_executor(executor, self._persist, round_no, plan)
            await self._publish_status("training", evaluation)

    async def _run_round(
        self, ctx: RoundContext, round_no: int
    ) -> tuple[RoundPlan, list[DeviceResult]]:
        online = {d: r for d, r in self.devices.items() if r.state != "offline"}
        batches = {d: self._batches(r.hello.samples) for d, r in online.items()}
        readings = {
            d: r.readings(
                wire_itemsize(self._wire_dtype(d)),
                self.settings.telemetry_stale_s,
                # Plan for the samples this round really processes.
                samples=min(r.hello.samples, batches[d] * self.settings.batch_size),
            )
            for d, r in online.items()
        }
        # Pure computation, ~25 ms for 500 devices: in a worker thread, off the event loop.
        round_plan = await asyncio.get_running_loop().run_in_executor(
            ctx.executor, self.planner.plan, readings
        )
        deadline = self._round_deadline(round_plan)
        plan = {
            device_id: (entry.cut, self._train_config(device_id, batches[device_id], entry))
            for device_id, entry in round_plan.devices.items()
        }
        # Off the event loop: hundreds of server sessions take a good part of a second.
        parts = await asyncio.get_running_loop().run_in_executor(
            ctx.executor, prepare_parts, ctx, round_no, self.global_state, plan
        )
        runner = RoundRunner(ctx, round_no, self.global_state, plan, parts)
        self._round = runner
        try:
            message = PlanMessage(
                session=self.session,
                round=round_no,
                policy=round_plan.policy,
                alpha=round_plan.alpha,
                objective=round_plan.objective,
                devices=round_plan.devices,
                sitting_out=round_plan.sitting_out,
            )
            await self._publish_informative(self.topics.edge_plan, to_json(message))
            await self._publish_status("training")
            log.info("round %d plan (%s, objective %.4f):", round_no, round_plan.policy,
                     round_plan.objective)  # fmt: skip
            for device_id, entry in round_plan.devices.items():
                log.info("  %s: cut %d, %.2f s, %.2f J predicted; %s [%s]", device_id,
                         entry.cut, entry.predicted_time_s, entry.predicted_energy_j,
                         entry.reason, entry.inputs)  # fmt: skip
            await gather_bounded(
                self._start_device(runner, d, cut, train, deadline)
                for d, (cut, train) in plan.items()
            )
            results = await runner.run(deadline)
        finally:
            self._round = None
        for result in results:
            if result.state is None:  # it handed in nothing: make sure it stops
                self._background.spawn(
                    self._send_ctrl(
                        result.device_id,
                        RoundAbort(session=self.session, round=round_no, reason=result.detail),
                    )
                )
        return round_plan, results

    async def _start_device(
        self, runner: RoundRunner, device_id: str, cut: int, train: TrainConfig, deadline: float
    ) -> None:
        # The runner already cut this device's part from the global model.
        device_state = runner.devices[device_id].device_state
        message = RoundStart(
            session=self.session,
            round=runner.round_no,
            cut=cut,
            model=self._model_info(),
            train=train,
            deadline_s=deadline,
        )
        runner.devices[device_id].started = time.perf_counter()
        runner.devices[device_id].start = message
        try:
            await self._send_ctrl(device_id, message, state_to_arrays(device_state))
        except LinkError as exc:
            runner.drop(device_id, f"round start not delivered: {exc}")

    def _model_info(self) -> ModelInfo:
        return ModelInfo(
            name=self.spec.name,
            in_channels=self.spec.in_channels,
            image_size=self.spec.image_size,
            num_classes=self.spec.num_classes,
        )

    def _wire_dtype(self, device_id: str) -> WireDtype:
        return self.settings.wire_dtypes.get(device_id, self.settings.wire_dtype)

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

    def _evaluate(self) -> Evaluation:
        model = build_model(self.spec)
        model.load_state_dict(self.global_state)
        return evaluate(
            model,
            self.test_data,
            batch_size=self.settings.eval_batch_size,
            device=self.torch_device,
        )

    def _record_round(
        self,
        round_no: int,
        plan: RoundPlan,
        results: list[DeviceResult],
        evaluation: Evaluation,
        duration: float,
    ) -> None:
        devices = {
            r.device_id: DeviceRoundReport(
                cut=r.cut,
                predicted_time_s=round(plan.devices[r.device_id].predicted_time_s, 4),
                predicted_energy_j=round(plan.devices[r.device_id].predicted_energy_j, 4),
                status=r.status,
                batches=r.batches,
                samples=r.samples,
                busy_s=round(r.busy_s, 4),
                server_s=round(r.server_s, 4),
                train_loss=r.train_loss,
                rtt_median_s=r.rtt_median_s,
                round_s=None if r.round_s is None else round(r.round_s, 4),
                contributed=r.contributed,
                discarded_batches=r.discarded_batches,
                **self._device_readout(r),
            )
            for r in results
        }
        losses = [(r.train_loss, r.samples) for r in results if r.train_loss is not None]
        total = sum(n for _, n in losses)
        train_loss = sum(loss * n for loss, n in losses) / total if total else None
        self.report.rounds.append(
            RoundReport(
                round=round_no,
                accuracy=evaluation.accuracy,
                loss=evaluation.loss,
                train_loss=train_loss,
                duration_s=round(duration, 4),
                objective=plan.objective,
                devices=devices,
                discarded_batches=sum(r.discarded_batches for r in results),
            )
        )
        self.report.final_accuracy = evaluation.accuracy
        self.report.counters = self.counters.snapshot()
        self.report.wall_s = self._wall_s()  # so a checkpoint carries it
        self.report.loop_lag = self.loop_lag.stats().to_dict()  # written by _persist
        log.info(
            "round %d: accuracy %.4f loss %.4f in %.2f s", round_no, evaluation.accuracy,
            evaluation.loss, duration,
        )  # fmt: skip

    def _device_readout(self, result: DeviceResult) -> dict[str, Any]:
        """Energy and the latest readings of one device, for the round report."""
        record = self.devices.get(result.device_id)
        power = (record.hello.power if record else None) or self.planner.defaults.power
        weights_up_s, weights_down_s = self._weights_transfer_s(result, record)
        energy = device_energy_j(
            power, result.busy_s, result.uplink_s + weights_up_s, result.downlink_s + weights_down_s
        )
        live = record.telemetry if record else None

        def mbps(bps: float | None) -> float | None:
            return None if bps is None else round(bps / 1e6, 3)

        return {
            "energy_j": round(energy, 4),
            "uplink_mbps": mbps(live.uplink_bps) if live else None,
            "downlink_mbps": mbps(live.downlink_bps) if live else None,
            "battery_pct": live.battery_pct if live else None,
            "link_mode": record.hello.link_mode if record else "unknown",
            "emulation_behind_s": round(result.behind_s, 4),
            "weights_s": round(weights_up_s + weights_down_s, 4),
        }

    def _weights_transfer_s(
        self, result: DeviceResult, record: DeviceRecord | None
    ) -> tuple[float, float]:
        """Seconds the device part's weights took up and down this round (estimated).

        The weights ride on the round start and the round's last message, so no transfer of
        them is timed on its own: their bytes over the device's link estimates stand in.
        """
        bits = 8.0 * sum(
            t.numel() * t.element_size()
            for k, t in self.global_state.items()
            if block_index(k) < result.cut
        )
        up = down = self.settings.assumed_link_mbps * 1e6
        if record is not None:
            up = record.hello.uplink_bps or up
            down = record.hello.downlink_bps or up
            if record.measured_link is not None:
                up = record.measured_link[0]
                down = record.measured_link[1] or up
        # Down with every round start; up only from a device whose part came back.
        return (bits / up if result.state is not None else 0.0), bits / down

    def _wall_s(self) -> float:
        return self._wall_before_s + time.perf_counter() - self._run_started

    def _write_report(self) -> None:
        self.report.loop_lag = self.loop_lag.stats().to_dict()
        if self.settings.report is not None:
            self.report.write(self.settings.report)

    async def _wait_for_devices(self, minimum: int, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (online := self._online()) < minimum:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"only {online} of {minimum} devices registered within {timeout_s:.0f} s"
                )
            self._devices_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._devices_changed.wait()

    async def _wait_for_profiles(self, timeout_s: float) -> None:
        """Give registered devices time to measure their block timings before the first plan."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while missing := [
            d for d, r in self.devices.items() if r.state != "offline" and r.compute is None
        ]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("no compute profile from %s: planning with the edge's own speed",
                            ", ".join(missing))  # fmt: skip
                return
            self._devices_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._devices_changed.wait()

    def _online(self) -> int:
        return sum(1 for r in self.devices.values() if r.state != "offline")

    # --- supervision (systemd: ares.systemd) -----------------------------------------------------

    def health_problem(self) -> str | None:
        """None while healthy: the link's connection loop and the dispatcher live, and the main
        task's last phase change is more recent than the longest phase may take."""
        if self._link is None or not self._link.running:
            return "the MQTT connection loop has ended"
        if self._dispatcher is None or self._dispatcher.done():
            return "the message dispatcher has ended"
        stalled = time.monotonic() - self.progress_at
        if stalled > self.stall_after_s:
            return f"no progress for {stalled:.0f} s"
        return None

    @property
    def stall_after_s(self) -> float:
        """The longest a phase may go without a phase change: waiting for devices (twice
        before round 1: registration, then each round's check), profiles, or one round."""
        s = self.settings
        waiting = 2 * s.registration_timeout_s + s.profile_timeout_s
        return max(waiting, s.round_timeout_s + s.close_grace_s) + STALL_MARGIN_S

    def status_line(self) -> str:
        """What the edge is doing, in one line (systemd's STATUS=)."""
        if self._link is not None and not self._link.is_connected:
            return "reconnecting to the broker"
        rounds, online = self.settings.rounds, self._online()
        runner = self._round
        if runner is not None:
            return f"round {runner.round_no}/{rounds}: {len(runner.devices)} devices training"
        if not self.report.rounds:
            return f"waiting for devices: {online} of {self.settings.min_devices} online"
        return f"round {len(self.report.rounds)}/{rounds} done; {online} devices online"

    # --- inbound --------------------------------------------------------------------------------

    async def _dispatch(self, link: Link) -> None:
        async for message in link.messages():
            parsed = self.topics.parse_device_topic(message.topic)
            if parsed is None:
                self.counters.add("rejected.unknown_topic")
                continue
            device_id, channel = parsed
            self.counters.add(f"messages_in.{channel.value}")
            self.counters.add(f"bytes_in.{channel.value}", len(message.payload))
            try:
                self._handle(device_id, channel, message)
            except Rejected as exc:
                self._reject(device_id, channel, exc)
            except Exception:  # a bug must not stop the edge from reading its messages
                self.counters.add("internal_errors")
                log.exception("handling %s/%s failed", device_id, channel.value)

    def _handle(self, device_id: str, channel: DeviceChannel, message: Message) -> None:
        if not message.payload:
            return  # a cleared retained message
        if len(message.payload) > self.settings.mqtt.max_payload_bytes:
            raise Rejected("too_large", f"{len(message.payload)} bytes")
        try:
            if channel is DeviceChannel.HELLO:
                self._on_hello(device_id, parse_json(Hello, message.payload))
            elif channel is DeviceChannel.STATUS:
                self._on_status(device_id, parse_json(DeviceStatus, message.payload))
            elif channel is DeviceChannel.TELEMETRY:
                telemetry = parse_json(Telemetry, message.payload)
                self._check_sender(device_id, telemetry.device_id)
                self._registered(device_id).take_telemetry(telemetry)
                if telemetry.compute is not None:
                    self._devices_changed.set()
            elif channel is DeviceChannel.ACT:
                runner, act, frame = self._round_traffic(device_id, message, ActivationMeta)
                if runner is not None:
                    runner.deliver_activation(device_id, act, frame)
            elif channel is DeviceChannel.WEIGHTS:
                runner, weights, frame = self._round_traffic(device_id, message, WeightsMeta)
                if runner is not None:
                    runner.deliver_weights(device_id, weights, frame)
        except (SchemaError, CodecError) as exc:
            raise Rejected(exc.reason, exc.detail) from None

    def _round_traffic(
        self, device_id: str, message: Message, meta_model: type[T]
    ) -> tuple[RoundRunner | None, T, Frame]:
        """Decode a device's frame for a round; the runner is None if that round is closed."""
        self._registered(device_id)
        frame = decode_frame(message.payload, max_bytes=self.settings.mqtt.max_payload_bytes)
        meta = parse_meta(meta_model, frame.meta)
        self._check_sender(device_id, meta.device_id)
        return self._current_round(meta.round), meta, frame

    def _on_hello(self, device_id: str, hello: Hello) -> None:
        self._check_sender(device_id, hello.device_id)
        expected = (self.spec.in_channels, self.spec.image_size, self.spec.image_size)
        if hello.input_shape != expected or hello.num_classes != self.spec.num_classes:
            raise Rejected(
                "incompatible",
                f"device data {hello.input_shape}/{hello.num_classes} classes; the model needs "
                f"{expected}/{self.spec.num_classes}",
            )
        known = self.devices.get(device_id)
        restarted = known is not None and known.hello.instance != hello.instance
        if restarted and self._round is not None:
            # A new agent process has lost the round's state: it leaves the round now.
            self._round.drop(device_id, "device restarted mid-round")
        if known is not None and not restarted:
            # The same process registering again (after an abort): its readings still hold.
            record = replace(known, hello=hello, state="online", last_seen=time.time())
        else:
            record = DeviceRecord(hello=hello, state="online", last_seen=time.time())
        self.devices[device_id] = record
        self._devices_changed.set()
        log.info("device %s registered (%d samples)", device_id, hello.samples)
        welcome = Welcome(
            session=self.session,
            device_id=device_id,
            model=self._model_info(),
            batch_size=self.settings.batch_size,
        )
        self._background.spawn(self._send_ctrl(device_id, welcome))

    def _on_status(self, device_id: str, status: DeviceStatus) -> None:
        self._check_sender(device_id, status.device_id)
        record = self.devices.get(device_id)
        if record is None:
            return  # not registered (a retained status from an earlier run): hello comes first
        record.last_seen = time.time()
        ping = self._pings.get(device_id)
        if ping is not None and status.nonce == ping[0]:
            ping[1].set()
        if status.state == "offline":
            if record.state != "offline" and device_id not in self._pings:
                self._background.spawn(self._confirm_offline(device_id))
        elif status.state == "aborted":
            if self._round is not None and status.round == self._round.round_no:
                self._round.drop(device_id, "the device gave up the round", "aborted")
        else:
            record.state = status.state

    async def _confirm_offline(self, device_id: str) -> None:
        """Evict a device said to be offline only if it does not answer a ping in time: its
        will is trustworthy, but on a broker without per-device ACLs so is anyone's forgery."""
        nonce = uuid.uuid4().hex[:12]
        answered = asyncio.Event()
        self._pings[device_id] = (nonce, answered)
        self.counters.add("liveness.pings")
        try:
            with contextlib.suppress(LinkError):
                await self._send_ctrl(device_id, Ping(session=self.session, nonce=nonce))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.liveness_timeout_s):
                    await answered.wait()
        finally:
            del self._pings[device_id]
        record = self.devices.get(device_id)
        if answered.is_set():
            self.counters.add("liveness.refuted")
            log.warning("device %s was reported offline but answered a ping: it stays",
                        device_id)  # fmt: skip
            return
        if record is None or record.state == "offline":
            return
        record.state = "offline"
        self._devices_changed.set()
        runner = self._round
        if runner is not None and device_id in runner.devices:
            log.warning("device %s went offline mid-round", device_id)
            runner.drop(device_id, "device went offline")
        else:  # between rounds, e.g. a device that exits when training is over
            log.info("device %s went offline", device_id)

    def _registered(self, device_id: str) -> DeviceRecord:
        record = self.devices.get(device_id)
        if record is None:
            raise Rejected("unknown_device", "send hello first")
        record.last_seen = time.time()
        return record

    @staticmethod
    def _check_sender(device_id: str, claimed: str) -> None:
        if claimed != device_id:
            raise Rejected("id_mismatch", f"payload claims device {claimed!r}")

    def _current_round(self, round_no: int) -> RoundRunner | None:
        runner = self._round
        if runner is None or runner.round_no != round_no:
            # Late traffic of a closed round: discarded and counted, never applied.
            self.counters.add("stale_messages")
            return None
        return runner

    def _reject(
        self, device_id: str, channel: DeviceChannel, exc: Rejected, seq: int | None = None
    ) -> None:
        self.counters.add(f"rejected.{exc.reason}")
        log.warning("rejected %s/%s: %s", device_id, channel.value, exc)
        report = ErrorReport(
            device_id=device_id,
            channel=channel.value,
            reason=exc.reason,
            detail=exc.detail[:500],
            round=self._round_no or None,
            seq=seq,
        )
        self._background.spawn(
            self._publish(self.topics.device(device_id, DeviceChannel.ERROR), to_json(report))
        )

    def _reject_in_round(self, device_id: str, exc: Rejected, seq: int | None) -> None:
        self._reject(device_id, DeviceChannel.ACT, exc, seq)

    # --- outbound -------------------------------------------------------------------------------

    async def _announce(self) -> None:
        """On every (re)connect: tell everyone which edge session is live."""
        # Not _publish_status: a reconnect is no progress of the main task (health_problem).
        state: EdgeState = "waiting" if self._round_no == 0 else "training"
        await self._publish_informative(self.topics.edge_status, to_json(self._status(state)))
        if self._round is not None:
            await self._resend_in_flight(self._round)

    async def _resend_in_flight(self, runner: RoundRunner) -> None:
        """After a reconnect: what the broker may have acknowledged and then lost with a
        restart. Each device's last gradient (a device past it ignores it) and, to a device not
        heard from this round, its round start (a device that has it ignores the repeat)."""
        for device_id, device in runner.devices.items():
            if device.result.done() or device.start is None:
                continue
            session = device.session
            if session is not None and session.last_reply is not None:
                self._background.spawn(self._publish_grad(device_id, session.last_reply))
            elif session is None or session.next_seq == 0:
                arrays = state_to_arrays(device.device_state)
                self._background.spawn(self._send_ctrl(device_id, device.start, arrays))

    def _status(self, state: EdgeState, evaluation: Evaluation | None = None) -> EdgeStatus:
        last = self.report.rounds[-1] if self.report.rounds else None
        return EdgeStatus(
            session=self.session,
            state=state,
            round=self._round_no,
            rounds=self.settings.rounds,
            rounds_done=len(self.report.rounds),
            last_round={d: r.status for d, r in last.devices.items()} if last else {},
            devices={d: r.state for d, r in self.devices.items()},
            accuracy=evaluation.accuracy if evaluation else self.report.final_accuracy,
            loss=evaluation.loss if evaluation else None,
        )

    async def _publish_status(self, state: EdgeState, evaluation: Evaluation | None = None) -> None:
        self.progress_at = time.monotonic()  # the main task announces every phase change here
        await self._publish_informative(
            self.topics.edge_status, to_json(self._status(state, evaluation))
        )

    async def _publish_informative(self, topic: str, payload: bytes) -> None:
        """Retained status and plan: for people and tools, never worth failing a round for."""
        try:
            await self._publish(topic, payload, retain=True)
        except LinkError as exc:
            log.warning("%s not published: %s", topic, exc)

    async def _publish_grad(self, device_id: str, payload: bytes) -> None:
        # A lost gradient is not fatal: the device re-sends its batch and gets the cached reply.
        try:
            await self._publish(self.topics.device(device_id, DeviceChannel.GRAD), payload)
        except LinkError as exc:
            log.warning("gradient for %s not delivered (%s); the device will ask again",
                        device_id, exc)  # fmt: skip

    async def _send_ctrl(
        self, device_id: str, message: WireModel, tensors: dict[str, Any] | None = None
    ) -> None:
        payload = encode_frame(
            to_meta(message), tensors, max_bytes=self.settings.mqtt.max_payload_bytes
        )
        await self._publish(self.topics.device(device_id, DeviceChannel.CTRL), payload)

    async def _stopping(self) -> None:
        runner = self._round
        if runner is not None:
            abort = RoundAbort(session=self.session, round=runner.round_no, reason="edge stopped")
            await gather_bounded(
                (self._send_ctrl(d, abort) for d in runner.devices), return_exceptions=True
            )
        await self._publish_informative(self.topics.edge_status, to_json(self._status("stopped")))

    async def _close_device(self, device_id: str) -> None:
        message = RoundClose(session=self.session, round=self._round_no)
        await self._send_ctrl(device_id, message)

    async def _finish_devices(self, reason: str) -> None:
        message = Finish(session=self.session, reason=reason)
        await gather_bounded(
            (self._send_ctrl(d, message) for d, r in self.devices.items() if r.state != "offline"),
            return_exceptions=True,
        )

    async def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        assert self._link is not None
        channel = topic.rsplit("/", 1)[-1]
        self.counters.add(f"messages_out.{channel}")
        self.counters.add(f"bytes_out.{channel}", len(payload))
        await self._link.publish(topic, payload, qos=1, retain=retain)
