"""One edge replica's part in a cluster: it tells the others it is alive, follows the
coordinator's lease (taking the role when it falls to it), and serves the devices each round
order gives it, handing its share of the round to the coordinator.

Every replica reads every cluster message (all are on the core broker), so any one holds what
the coordinator role needs to take over: the lease, the round order in flight, the global model
and the report, all retained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import torch

from edge_service.cluster.lease import LeaseBook
from edge_service.cluster.shares import decode_model, encode_partial, partial_meta, share_meta
from edge_service.driver import RoundDriver
from edge_service.outbox import Outbox
from edge_service.rejections import Counters
from edge_service.rounds import DeviceResult
from edge_service.run_state import RunState
from edge_service.settings import EdgeSettings
from schemas import Topics, parse_json, to_json
from schemas.cluster import (
    CoordinatorLease,
    PartialMeta,
    ReplicaState,
    ReplicaStatus,
    RoundOrder,
)
from schemas.codec import Frame, decode_frame
from schemas.errors import CodecError
from schemas.messages import SchemaError
from schemas.topics import ROUND_TRAFFIC, ClusterChannel
from transport import LastWill, LinkError, Message

log = logging.getLogger(__name__)

MODEL_WAIT_S = 30.0  # an order's base model is published right before it: this is a fault


@dataclass
class ClusterView:
    """What this replica has read of the cluster's retained state."""

    order: RoundOrder | None = None
    model_round: int | None = None
    model: dict[str, torch.Tensor] | None = None
    report: dict[str, object] | None = None
    order_changed: asyncio.Event = field(default_factory=asyncio.Event)
    model_changed: asyncio.Event = field(default_factory=asyncio.Event)
    replicas_changed: asyncio.Event = field(default_factory=asyncio.Event)
    # The coordinator's inbox: the replicas' shares as they arrive.
    shares: asyncio.Queue[tuple[PartialMeta, Frame]] = field(default_factory=asyncio.Queue)


class ClusterMember:
    def __init__(
        self,
        *,
        session: str,
        settings: EdgeSettings,
        topics: Topics,
        run: RunState,
        driver: RoundDriver,
        outbox: Outbox,
        counters: Counters,
        coordinate: Callable[[ClusterMember, int], Coroutine[Any, Any, None]],
    ) -> None:
        assert settings.replica is not None
        self.name = settings.replica
        self.session = session
        self.settings = settings
        self.topics = topics
        self.run_state = run
        self.driver = driver
        self.outbox = outbox
        self.counters = counters
        self._coordinate = coordinate  # the coordinator role's loop (edge_service.cluster)
        self.book = LeaseBook(
            self.name, lease_s=settings.lease_s, replica_timeout_s=settings.replica_timeout_s
        )
        self.view = ClusterView()
        self._lease_changed = asyncio.Event()
        self._coordinator: asyncio.Task[None] | None = None
        self.coordinated = False  # held the role when the run ended (it finishes the devices)
        self.finished = asyncio.Event()  # the last round's model is out
        self._following: set[str] = set()  # the devices whose round traffic it reads

    @property
    def coordinating(self) -> bool:
        return self._coordinator is not None and not self._coordinator.done()

    # --- wiring ---------------------------------------------------------------------------------

    def will(self) -> LastWill:
        """Published by the broker if this replica vanishes: the others stop counting on it."""
        status = self.status("stopped")
        return LastWill(self.topics.cluster_replica(self.name), to_json(status), retain=True)

    def status(self, state: ReplicaState = "up") -> ReplicaStatus:
        runner = self.driver.current
        return ReplicaStatus(
            replica=self.name,
            session=self.session,
            state=state,
            site=self.settings.site,
            capacity_bps=self.settings.replica_capacity_bps,
            serving=sorted(runner.devices) if runner is not None else [],
            round=runner.round_no if runner is not None else 0,
            attempt=runner.attempt if runner is not None else 0,
            sent_at=time.time(),
        )

    async def on_connect(self) -> None:
        """On every (re)connect: the retained lease read first may be stale, so the book
        watches a lease term before it takes over; then say this replica is up."""
        self.book.subscribed(time.monotonic())
        await self.announce()

    async def announce(self, state: ReplicaState = "up") -> None:
        """On every (re)connect and heartbeat; "stopped" when leaving."""
        await self.outbox.publish_informative(
            self.topics.cluster_replica(self.name), to_json(self.status(state))
        )

    async def clear_retained(self) -> None:
        """At the run's end (the coordinator): the order, model, report and lease are
        history; replicas started for the next run must not take them for its state."""
        topics = self.topics
        for topic in (topics.cluster_order, topics.cluster_model, topics.cluster_report,
                      topics.cluster_lease):  # fmt: skip
            await self.outbox.publish(topic, b"", retain=True)

    # --- reading the cluster --------------------------------------------------------------------

    def handle(self, message: Message) -> bool:
        """A message on a cluster topic (False: not one); bad ones are counted, never fatal."""
        parsed = self.topics.parse_cluster_topic(message.topic)
        if parsed is None:
            return False
        channel, name = parsed
        self.counters.add(f"cluster_in.{channel.value}")
        try:
            self._handle(channel, name, message)
        except (SchemaError, CodecError) as exc:
            self.counters.add(f"cluster_rejected.{exc.reason}")
            log.warning("ignored a bad cluster message on %s: %s", message.topic, exc)
        return True

    def _handle(self, channel: ClusterChannel, name: str | None, message: Message) -> None:
        now = time.monotonic()
        payload = message.payload
        if channel is ClusterChannel.LEASE:
            self.book.saw_lease(parse_json(CoordinatorLease, payload) if payload else None, now)
            self._lease_changed.set()
        elif not payload:
            return  # a cleared retained message
        elif channel is ClusterChannel.REPLICA:
            self.book.saw_replica(parse_json(ReplicaStatus, payload), now)
            self.view.replicas_changed.set()
            self._lease_changed.set()  # the holder may have gone
        elif channel is ClusterChannel.ORDER:
            order = parse_json(RoundOrder, payload)
            if order.epoch >= self.book.epoch:  # an older coordinator's order is history
                self.view.order = order
                self.view.order_changed.set()
        elif channel is ClusterChannel.MODEL:
            model, state = decode_model(decode_frame(payload, max_bytes=self._max_bytes))
            if self.view.model_round is None or model.round >= self.view.model_round:
                self.view.model_round, self.view.model = model.round, state
                self.view.model_changed.set()
                if model.round >= self.settings.rounds:
                    self.finished.set()
        elif channel is ClusterChannel.PARTIAL:
            if not self.coordinating:
                return  # shares are the coordinator's; a new one repeats the round in flight
            frame = decode_frame(payload, max_bytes=self._max_bytes)
            meta = share_meta(frame)
            if meta.replica != name:
                raise SchemaError("id_mismatch", f"{name}'s share claims replica {meta.replica}")
            self.view.shares.put_nowait((meta, frame))
        elif channel is ClusterChannel.REPORT:
            try:
                self.view.report = json.loads(payload)
            except ValueError as exc:
                raise SchemaError("bad_json", str(exc)[:200]) from None

    @property
    def _max_bytes(self) -> int:
        return self.settings.mqtt.max_payload_bytes

    # --- taking part ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until the last round's model is out (and, holding the role, the run is finished)."""
        await self.announce()
        async with asyncio.TaskGroup() as tasks:
            beat = tasks.create_task(self._heartbeat(), name="cluster-heartbeat")
            lease = tasks.create_task(self._follow_lease(), name="cluster-lease")
            serving = tasks.create_task(self._serve_orders(), name="cluster-serve")
            await self.finished.wait()
            serving.cancel()
            coordinator = self._coordinator
            if coordinator is not None:
                # The role's holder concludes the last round and ends the run; a replica is done.
                await asyncio.wait([coordinator])
                if not coordinator.cancelled():
                    failure = coordinator.exception()
                    if failure is not None:
                        raise failure
                    self.coordinated = True
            lease.cancel()
            beat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.cluster_heartbeat_s)
            await self.announce()

    async def _follow_lease(self) -> None:
        """Claim or renew the lease when it falls to this replica; hold the role while the
        lease names it, step down when it does not."""
        renew_every = self.settings.lease_s / 3
        while True:
            now = time.monotonic()
            if self.book.should_claim(now):
                lease = self.book.claim(self.session, now, time.time())
                with contextlib.suppress(LinkError):
                    await self.outbox.publish(
                        self.topics.cluster_lease, to_json(lease), retain=True
                    )
            failed = self._coordinator
            if failed is not None and failed.done() and not failed.cancelled():
                failure = failed.exception()
                if failure is not None:
                    raise failure  # as one edge would fail (no devices came): stop
            if self.book.am_holder(time.monotonic()):
                if not self.coordinating and not self.finished.is_set():
                    epoch = self.book.epoch
                    log.info("replica %s holds the coordinator role (epoch %d)", self.name,
                             epoch)  # fmt: skip
                    self.counters.add("cluster.coordinator_terms")
                    self._coordinator = asyncio.create_task(
                        self._coordinate(self, epoch), name="cluster-coordinator"
                    )
            elif self.coordinating:
                log.warning("replica %s lost the coordinator role to %s", self.name,
                            self.book.holder(time.monotonic()))  # fmt: skip
                assert self._coordinator is not None
                self._coordinator.cancel()
            self._lease_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(renew_every):
                    await self._lease_changed.wait()

    async def _serve_orders(self) -> None:
        """Serve this replica's devices of each new round order; a newer order (a make-up
        attempt, or a new coordinator's) replaces the one in flight."""
        served: tuple[int, int, int] | None = None
        serving: asyncio.Task[None] | None = None
        try:
            while True:
                await self.view.order_changed.wait()
                self.view.order_changed.clear()
                order = self.view.order
                if order is None or order.epoch < self.book.epoch:
                    continue
                key = (order.epoch, order.round, order.attempt)
                if served is not None and key <= served:
                    continue
                served = key
                mine = order.for_replica(self.name)
                if serving is not None and not serving.done():
                    serving.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await serving
                if mine:
                    serving = asyncio.create_task(
                        self._serve(order), name=f"serve-round-{order.round}.{order.attempt}"
                    )
        finally:
            if serving is not None and not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving

    async def _serve(self, order: RoundOrder) -> None:
        try:
            await self._serve_share(order)
        except LinkError as exc:  # the coordinator counts this replica lost for the round
            self.counters.add("cluster.shares_unsent")
            log.error("round %d: share not sent: %s", order.round, exc)
        except Exception:  # a bug must not stop this replica from taking the next order
            self.counters.add("internal_errors")
            log.exception("round %d attempt %d: serving failed", order.round, order.attempt)

    async def _serve_share(self, order: RoundOrder) -> None:
        mine = order.for_replica(self.name)
        state = await self._model_of(order.base_round)
        if state is None:
            log.error("round %d: no global model of round %d within %.0f s; not serving",
                      order.round, order.base_round, MODEL_WAIT_S)  # fmt: skip
            self.counters.add("cluster.model_missing")
            return
        for device_id, entry in mine.items():
            # Registration is not retained: a replica that started after a device said hello
            # learns it from the order (the coordinator sends it once per replica process).
            if entry.hello is not None and self.driver.devices.get(device_id) is None:
                self.driver.devices.register(device_id, entry.hello)
        unknown = [d for d in mine if self.driver.devices.get(d) is None]
        if unknown:
            log.warning("round %d: devices %s never registered here", order.round, unknown)
        plan = {d: (e.plan.cut, e.train) for d, e in mine.items() if d not in unknown}
        await self._follow(set(plan))  # subscribed before their round starts go out
        log.info("round %d attempt %d: serving %d devices", order.round, order.attempt,
                 len(plan))  # fmt: skip
        results, total = await self.driver.serve_round(
            order.round, plan, order.deadline_s, state, attempt=order.attempt
        )
        results += [
            DeviceResult(d, mine[d].plan.cut, "dropped", detail="not registered at its replica")
            for d in unknown
        ]
        partial = total.partial() if total.parts else None
        meta = partial_meta(self.name, order.epoch, order.round, order.attempt, results, partial)
        payload = await asyncio.to_thread(encode_partial, meta, partial, max_bytes=self._max_bytes)
        await self.outbox.publish(self.topics.cluster_partial(self.name), payload)
        self.counters.add("cluster.shares_sent")

    async def _follow(self, devices: set[str]) -> None:
        """Read the round traffic of exactly ``devices`` (this replica's in the order)."""

        def filters(some: set[str]) -> list[str]:
            return [self.topics.device(d, ch) for d in sorted(some) for ch in ROUND_TRAFFIC]

        link = self.outbox.link
        assert link is not None
        await link.unsubscribe(filters(self._following - devices))
        await link.subscribe([(f, 1) for f in filters(devices - self._following)])
        self._following = devices

    async def _model_of(self, round_no: int) -> dict[str, torch.Tensor] | None:
        """The global model after ``round_no`` (0: the initial one), when it is here."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MODEL_WAIT_S):
                while self.view.model_round is None or self.view.model_round < round_no:
                    self.view.model_changed.clear()
                    await self.view.model_changed.wait()
        if self.view.model_round != round_no:
            return None
        return self.view.model
