"""The edge service: the composition root of the edge's parts, and its three phases.

- **start-up** (``start_up``, no network): load the held-out data, build the model, profile the
  edge, resume from the checkpoint (``RunState.prepare``, in a worker thread), and wire the
  parts: the device registry, the outbox, the inbox with its liveness check, the round driver.
- **run** (``run``): connect; one task dispatches inbound messages (``Inbox``) while the main
  task drives the rounds (``RoundDriver``); each device's server compute runs in its own worker
  (``rounds``), so no device waits behind another.
- **shutdown**: tell the devices (training over, or the round in flight abandoned on SIGTERM),
  drain the publishes within a bound, write the report.

``__init__`` does no heavy work; the parts below do the work and this module only wires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edge_service.driver import RoundDriver
from edge_service.evaluation import Evaluation
from edge_service.fanout import gather_bounded
from edge_service.heap import frozen_heap
from edge_service.inbox import Inbox
from edge_service.liveness import Liveness
from edge_service.loop_lag import LoopLagMonitor
from edge_service.metrics import DeviceView, EdgeCollector, EdgeView, MetricsServer
from edge_service.outbox import Outbox
from edge_service.registry import DeviceRegistry
from edge_service.rejections import Counters
from edge_service.report import RunReport
from edge_service.rounds import RoundRunner
from edge_service.run_state import RunState
from edge_service.settings import EdgeSettings
from schemas import EdgeStatus, Finish, Topics, to_json
from schemas.messages import EdgeState
from schemas.topics import DEVICE_TO_EDGE, ROUND_TRAFFIC
from splitnn.exits import check_positions
from splitnn.models import ModelSpec
from transport import Connect, LastWill, LinkError, mqtt_connector

if TYPE_CHECKING:
    from edge_service.cluster.member import ClusterMember

log = logging.getLogger(__name__)
SHUTDOWN_NOTICE_S = 3.0  # how long a stopping edge spends telling the devices
# Beyond the longest wait of one phase: evaluation, checkpoint and publishes (see health_problem).
STALL_MARGIN_S = 300.0


class EdgeService:
    def __init__(self, settings: EdgeSettings, connect: Connect | None = None) -> None:
        """``connect`` opens the edge's link (default: MQTT to ``settings.mqtt``)."""
        self._connect = connect or mqtt_connector(settings.mqtt)
        self.settings = settings
        self.session = uuid.uuid4().hex[:12]
        self.topics = Topics(settings.mqtt.prefix)
        self.counters = Counters()
        self.devices = DeviceRegistry(
            assumed_link_bps=settings.assumed_link_mbps * 1e6,
            stale_after_s=settings.telemetry_stale_s,
        )
        self.outbox = Outbox(
            self.topics, self.counters, self.devices, settings.mqtt.max_payload_bytes
        )
        self.loop_lag = LoopLagMonitor()  # sampling while run() runs; metrics read it
        self.ready = asyncio.Event()  # connected and waiting for devices (systemd's READY=1)
        self.progress_at = time.monotonic()  # the main task's last phase change
        self.metrics: MetricsServer | None = None  # serving while run() runs, if configured
        self._new_report = RunReport(
            policy=settings.policy,
            alpha=settings.alpha,
            model=settings.model,
            dataset=settings.dataset,
            session=self.session,
            started_at=time.time(),
        )
        # Wired by start_up():
        self.state: RunState | None = None
        self.executor: ThreadPoolExecutor | None = None  # the compute thread pool
        self.driver: RoundDriver | None = None
        self.inbox: Inbox | None = None
        self.cluster: ClusterMember | None = None  # a replica among several (settings.replica)
        self._dispatcher: asyncio.Task[None] | None = None

    # --- start-up -------------------------------------------------------------------------------

    async def start_up(self) -> RunState:
        """Everything but the network (idempotent): ``run`` calls it first."""
        if self.state is not None:
            return self.state
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(None, RunState.prepare, self.settings, self._new_report)
        if self.settings.exits is not None:
            check_positions(state.spec, self.settings.exits)  # now, not after training
        # Counters carry on from the checkpoint: the report covers the run, not this process.
        self.counters.restore(state.report.counters)
        self.executor = ThreadPoolExecutor(
            self.settings.compute_workers, thread_name_prefix="edge-compute"
        )
        self.driver = RoundDriver(
            session=self.session,
            run=state,
            devices=self.devices,
            outbox=self.outbox,
            counters=self.counters,
            executor=self.executor,
            announce=self._publish_status,
            reject=lambda device_id, exc, seq: self._inbox.reject_in_round(device_id, exc, seq),
            loop_lag=self.loop_lag,
        )
        liveness = Liveness(
            session=self.session,
            devices=self.devices,
            outbox=self.outbox,
            counters=self.counters,
            timeout_s=self.settings.liveness_timeout_s,
            on_evicted=self.driver.evicted,
        )
        if self.settings.replica is not None:
            from edge_service.cluster.coordinator import coordinate
            from edge_service.cluster.member import ClusterMember

            self.cluster = ClusterMember(
                session=self.session,
                settings=self.settings,
                topics=self.topics,
                run=state,
                driver=self.driver,
                outbox=self.outbox,
                counters=self.counters,
                coordinate=coordinate,
            )
        self.inbox = Inbox(
            cluster=self.cluster,
            session=self.session,
            topics=self.topics,
            counters=self.counters,
            devices=self.devices,
            outbox=self.outbox,
            liveness=liveness,
            rounds=self.driver,
            model=state.model_info,
            batch_size=self.settings.batch_size,
            max_payload_bytes=self.settings.mqtt.max_payload_bytes,
        )
        self.state = state
        return state

    # --- run ------------------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Start up, connect, train the rounds not yet done, tell the devices; the report."""
        state = await self.start_up()
        state.started = time.perf_counter()
        subscriptions = [(self.topics.all_devices(ch), 1) for ch in DEVICE_TO_EDGE]
        will = LastWill(self.topics.edge_status, to_json(self.edge_status("stopped")))
        cluster = self.cluster
        if cluster is not None:
            # Round traffic only of the devices each order gives this replica (ClusterMember):
            # every replica reading every device's activations would cost each all of them.
            subscriptions = [(self.topics.all_devices(ch), 1) for ch in DEVICE_TO_EDGE
                             if ch not in ROUND_TRAFFIC]  # fmt: skip
            subscriptions.append((self.topics.cluster_all, 1))
            will = cluster.will()  # the edge status is the coordinator's, whoever holds it
        link = self._connect(self.client_id, subscriptions, will=will, on_connect=self._on_connect)
        self.outbox.link = link  # before connecting: on_connect publishes through it
        with frozen_heap(), self._executor:
            async with self.loop_lag, link, self._metrics_endpoint(), asyncio.TaskGroup() as tasks:
                dispatcher = tasks.create_task(self._inbox.dispatch(link), name="edge-dispatch")
                self._dispatcher = dispatcher
                self.ready.set()
                try:
                    if cluster is None:
                        await self._driver.train()
                    else:
                        await cluster.run()
                    if cluster is None or cluster.coordinated:  # a replica leaves the rest
                        await self._publish_status("finished")
                        if self.settings.finish_devices:
                            await self._finish_devices("training finished")
                        if self.settings.artifact is not None:
                            await self._write_artifact(self.settings.artifact)
                        if cluster is not None:
                            await cluster.clear_retained()  # the next run starts afresh
                except asyncio.CancelledError:
                    # SIGTERM: the round in flight is abandoned (the checkpoint holds the last
                    # finished one); tell the devices, within a bound, then go.
                    with contextlib.suppress(TimeoutError, LinkError):
                        async with asyncio.timeout(SHUTDOWN_NOTICE_S):
                            await self._stopping()
                    raise
                finally:
                    if cluster is not None:
                        # A clean disconnect sends no will: say it, so no one waits for us.
                        with contextlib.suppress(TimeoutError, LinkError):
                            async with asyncio.timeout(SHUTDOWN_NOTICE_S):
                                await cluster.announce("stopped")
                    dispatcher.cancel()
                    # Bounded: a stopping edge must exit promptly (SIGTERM), not wait out publishes.
                    await self.outbox.background.drain(SHUTDOWN_NOTICE_S)
        state.stamp(self.counters, self.loop_lag)
        state.write_report()
        return state.report

    @property
    def client_id(self) -> str:
        """Each replica needs its own MQTT client id (the broker drops a duplicate's session)."""
        s = self.settings
        if s.replica is not None and s.client_id == EdgeSettings.model_fields["client_id"].default:
            return f"{s.client_id}-{s.replica}"
        return s.client_id

    async def _on_connect(self) -> None:
        """On every (re)connect: tell everyone which edge session is live (in a cluster, the
        coordinator does; every replica says it is up)."""
        if self.cluster is not None:
            await self.cluster.on_connect()
        if self.cluster is None or self.cluster.coordinating:
            # Not _publish_status: a reconnect is no progress of the main task (health_problem).
            state: EdgeState = "waiting" if self.round_no == 0 else "training"
            await self.outbox.publish_informative(
                self.topics.edge_status, to_json(self.edge_status(state))
            )
        await self._driver.resend_in_flight()

    async def _write_artifact(self, path: Path) -> None:
        """The trained model with calibrated exits, for serving (in a worker thread)."""
        from serving.artifact import export_artifact, write_artifact  # serving is a later layer

        state, settings = self._state, self.settings
        try:
            artifact = await asyncio.to_thread(
                export_artifact, state.spec, state.global_state, state.test_data,
                source=f"training run {self.session}", positions=settings.exits,
                seed=settings.seed, device=state.torch_device,
            )  # fmt: skip
            await asyncio.to_thread(write_artifact, path, artifact)
        except Exception as exc:  # the training is done and checkpointed: log, never lose it
            log.error("model file %s not written: %s (ares export makes one from the checkpoint)",
                      path, exc)  # fmt: skip
            return
        log.info("model file %s written: accuracy %.4f on the %d held-out samples kept from "
                 "calibrating the exits at %s", path, artifact.calibration.full_accuracy,
                 artifact.calibration.samples, list(artifact.positions))  # fmt: skip

    # --- shutdown -------------------------------------------------------------------------------

    async def _stopping(self) -> None:
        await self._driver.abort("edge stopped")
        await self.outbox.publish_informative(
            self.topics.edge_status, to_json(self.edge_status("stopped"))
        )

    async def _finish_devices(self, reason: str) -> None:
        message = Finish(session=self.session, reason=reason)
        sends = (self.outbox.send_ctrl(d, message) for d in self.devices.online())
        await gather_bounded(sends, return_exceptions=True)

    # --- what the edge is doing -----------------------------------------------------------------

    @property
    def report(self) -> RunReport:
        """The run's report: empty until start-up, then the run's (a resumed run's carries on)."""
        return self.state.report if self.state is not None else self._new_report

    @property
    def spec(self) -> ModelSpec:
        return self._state.spec

    @property
    def global_state(self) -> dict[str, torch.Tensor]:
        """The global model: the latest average (after a resume, the checkpoint's)."""
        return self._state.global_state

    @property
    def current_round(self) -> RoundRunner | None:
        return self.driver.current if self.driver is not None else None

    @property
    def round_no(self) -> int:
        return self.driver.round_no if self.driver is not None else 0

    def edge_status(self, state: EdgeState, evaluation: Evaluation | None = None) -> EdgeStatus:
        report = self.report
        last = report.rounds[-1] if report.rounds else None
        return EdgeStatus(
            session=self.session,
            state=state,
            round=self.round_no,
            rounds=self.settings.rounds,
            rounds_done=len(report.rounds),
            last_round={d: r.status for d, r in last.devices.items()} if last else {},
            devices={d: r.state for d, r in self.devices.items()},
            accuracy=evaluation.accuracy if evaluation else report.final_accuracy,
            loss=evaluation.loss if evaluation else None,
        )

    async def _publish_status(self, state: EdgeState, evaluation: Evaluation | None = None) -> None:
        self.progress_at = time.monotonic()  # the main task announces every phase change here
        if self.cluster is not None and not self.cluster.coordinating and state != "finished":
            return  # the edge status is the coordinator's
        status = to_json(self.edge_status(state, evaluation))
        await self.outbox.publish_informative(self.topics.edge_status, status)

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
            link = self.devices.link(device_id)
            live = record.telemetry
            devices[device_id] = DeviceView(
                state=record.state,
                cut=last[device_id].cut if device_id in last else None,
                uplink_bps=link.uplink_bps if link.known else None,
                downlink_bps=link.downlink_bps if link.known else None,
                battery_pct=live.battery_pct if live else None,
                speed_ratio=live.speed_ratio if live else None,
            )
        return EdgeView(
            report=self.report,
            counters=self.counters.snapshot(),
            devices=devices,
            round_no=self.round_no,
            rounds_planned=self.settings.rounds,
            loop_lag_s=self.loop_lag.quantiles(),
        )

    # --- supervision (systemd: runtime.systemd) ----------------------------------------------

    def health_problem(self) -> str | None:
        """None while healthy: the link's connection loop and the dispatcher live, and the main
        task's last phase change is more recent than the longest phase may take."""
        link = self.outbox.link
        if link is None or not link.running:
            return "the MQTT connection loop has ended"
        if self._dispatcher is None or self._dispatcher.done():
            return "the message dispatcher has ended"
        stalled = time.monotonic() - self.progress_at
        # A replica that does not coordinate follows orders; its heartbeat shows it is alive.
        coordinates = self.cluster is None or self.cluster.coordinating
        if coordinates and stalled > self.stall_after_s:
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
        link = self.outbox.link
        if link is not None and not link.is_connected:
            return "reconnecting to the broker"
        rounds, online = self.settings.rounds, len(self.devices.online())
        runner = self.current_round
        if runner is not None:
            return f"round {runner.round_no}/{rounds}: {len(runner.devices)} devices training"
        if self.state is None:
            return "starting up"
        if not self.report.rounds:
            return f"waiting for devices: {online} of {self.settings.min_devices} online"
        return f"round {len(self.report.rounds)}/{rounds} done; {online} devices online"

    # --- the parts start_up wired ---------------------------------------------------------------

    @property
    def _state(self) -> RunState:
        assert self.state is not None, "start_up() first"
        return self.state

    @property
    def _driver(self) -> RoundDriver:
        assert self.driver is not None, "start_up() first"
        return self.driver

    @property
    def _inbox(self) -> Inbox:
        assert self.inbox is not None, "start_up() first"
        return self.inbox

    @property
    def _executor(self) -> ThreadPoolExecutor:
        assert self.executor is not None, "start_up() first"
        return self.executor
