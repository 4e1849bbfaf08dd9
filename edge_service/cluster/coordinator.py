"""The coordinator role: held by one replica under the lease (edge_service.cluster.member).

Per round it plans every device at once (the ARES objective's max couples them all, so it stays
one plan), assigns the devices to the live replicas by load and locality
(edge_service.assignment), publishes the round order retained, and merges the replicas' shares
into the global model (hierarchical FedAvg: equal to one edge's FedAvg over the same parts).

A replica that dies (its will) or goes silent before its share arrives loses its share: its
devices are assigned to the others and repeat the round from its start in a make-up attempt,
so no batch step is lost or applied twice (the dead replica's steps never reach a sum). A new
coordinator resumes from the retained model and report, and repeats the round in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import torch

from edge_service.assignment import DeviceLoad, ReplicaInfo, assign_devices
from edge_service.cluster.member import ClusterMember
from edge_service.cluster.shares import decode_partial, encode_model, result_of
from edge_service.driver import PlannedRound
from edge_service.report import RunReport
from edge_service.rounds import DeviceResult
from schemas import Hello, to_json
from schemas.cluster import GlobalModelMeta, OrderEntry, PartialMeta, RoundOrder
from schemas.codec import Frame
from schemas.messages import SchemaError
from splitnn.errors import SplitError
from splitnn.fedavg import FedAvgSum

log = logging.getLogger(__name__)

# Beyond a round's deadline and close grace: how long a replica's share may take to arrive
# before the replica counts as lost for the round (its devices repeat it elsewhere).
SHARE_MARGIN_S = 15.0


async def coordinate(member: ClusterMember, epoch: int) -> None:
    """The role's loop, from taking the lease to the run's end."""
    await Coordinator(member, epoch).run()


class Coordinator:
    def __init__(self, member: ClusterMember, epoch: int) -> None:
        self.member = member
        self.epoch = epoch
        self.driver = member.driver
        self.run_state = member.run_state
        self.settings = member.settings
        self.counters = member.counters
        self.previous: dict[str, str] = {}  # device -> replica, for sticky assignment
        # device -> the replica session last ordered to serve it (it holds its registration)
        self.introduced: dict[str, str] = {}

    async def run(self) -> None:
        driver, run, s = self.driver, self.run_state, self.settings
        loop = asyncio.get_running_loop()
        await driver.announce("waiting", None)  # our session: the devices register with us
        base, attempt = await self._resume()
        await driver.devices.wait_for_devices(s.min_devices, s.registration_timeout_s)
        await driver.devices.wait_for_profiles(s.profile_timeout_s)
        if run.report.initial_accuracy is None:
            initial = await loop.run_in_executor(driver.executor, run.evaluate)
            run.report.initial_accuracy = initial.accuracy
        for round_no in range(base + 1, s.rounds + 1):
            await driver.devices.wait_for_devices(1, s.registration_timeout_s)
            driver.round_no = round_no
            started = time.perf_counter()
            planned = await driver.plan_round(round_no)
            await driver.publish_plan(round_no, planned.plan)
            await driver.announce("training", None)
            results, total = await self._gather(round_no, planned, attempt)
            attempt = 0
            driver.learn_from(planned, results)
            if total.parts:
                run.global_state = await loop.run_in_executor(driver.executor, total.average)
            else:
                log.warning("round %d: no device finished; the model is unchanged", round_no)
            # The next order starts from this model: out before it (one publisher, in order).
            await self._publish_model(round_no, run.global_state)
            duration = time.perf_counter() - started
            stamp = run.take_stamp(self.counters, driver.loop_lag)
            evaluation = await driver.conclude(
                round_no, planned.plan, results, run.global_state, duration, stamp
            )
            await self.member.outbox.publish(
                self.member.topics.cluster_report, to_json_report(run.report), retain=True
            )
            await driver.announce("training", evaluation)

    async def _resume(self) -> tuple[int, int]:
        """Where the run stands: the newer of the retained model and this replica's own
        checkpoint; and the first attempt of the next round (above any order of it already
        out, so that devices take the repeat)."""
        view, run = self.member.view, self.run_state
        base = run.first_round - 1
        if view.model_round is not None and view.model is not None and view.model_round >= base:
            base, run.global_state = view.model_round, view.model
            if view.report is not None:
                report = RunReport.from_dict(dict(view.report))
                if len(report.rounds) == base:
                    report.session = self.member.session
                    now = time.time()  # taken over: from the retained model, not a checkpoint
                    report.resumed.append({"after_round": base, "session": self.member.session,
                                           "checkpoint_at": now, "resumed_at": now})  # fmt: skip
                    run.report = report
            log.info("coordinator %s resumes after round %d (retained model)",
                     self.member.name, base)  # fmt: skip
        else:
            await self._publish_model(base, run.global_state)
        order = view.order
        attempt = order.attempt + 1 if order is not None and order.round == base + 1 else 0
        return base, attempt

    async def _publish_model(self, round_no: int, state: dict[str, torch.Tensor]) -> None:
        meta = GlobalModelMeta(coordinator=self.member.name, epoch=self.epoch, round=round_no)
        payload = await asyncio.to_thread(
            encode_model, meta, state, max_bytes=self.settings.mqtt.max_payload_bytes
        )
        await self.member.outbox.publish(self.member.topics.cluster_model, payload, retain=True)

    async def _gather(
        self, round_no: int, planned: PlannedRound, attempt: int
    ) -> tuple[list[DeviceResult], FedAvgSum]:
        """Order the round and merge the replicas' shares; a lost replica's devices repeat the
        round at the others, attempt after attempt, until every device has an outcome."""
        member = self.member
        loads = {
            d: DeviceLoad(d, site=member.driver.devices[d].hello.site, load=float(train.batches))
            for d, (_cut, train) in planned.assignments.items()
        }
        pending = set(loads)
        lost: set[str] = set()
        results: list[DeviceResult] = []
        total = FedAvgSum()
        while pending:
            alive = member.book.alive(time.monotonic())
            replicas = [
                ReplicaInfo(name, status.site, status.capacity_bps)
                for name, status in sorted(alive.items())
                if name not in lost
            ]
            if not replicas:
                results += [self._unserved(d, planned, "no live replica") for d in sorted(pending)]
                break
            placement = assign_devices([loads[d] for d in sorted(pending)], replicas,
                                       self.previous)  # fmt: skip
            self.previous.update(placement.replica_of)
            order = RoundOrder(
                coordinator=member.name,
                epoch=self.epoch,
                round=round_no,
                attempt=attempt,
                base_round=round_no - 1,
                deadline_s=planned.deadline_s,
                devices={
                    d: OrderEntry(
                        replica=placement.replica_of[d],
                        plan=planned.plan.devices[d],
                        train=planned.assignments[d][1],
                        hello=self._introduction(d, alive[placement.replica_of[d]].session),
                    )
                    for d in sorted(pending)
                },
            )
            waiting = {r: set(placement.devices_of(r)) for r in set(placement.replica_of.values())}
            log.info("round %d attempt %d: %s", round_no, attempt, ", ".join(
                f"{r} serves {len(ds)}" for r, ds in sorted(waiting.items())))  # fmt: skip
            await member.outbox.publish(member.topics.cluster_order, to_json(order), retain=True)
            limit_s = planned.deadline_s + self.settings.close_grace_s + SHARE_MARGIN_S
            got = await self._collect(order, waiting, limit_s, total)
            results += got
            for replica in waiting:  # no share from it: lost for this round
                lost.add(replica)
                self.counters.add("cluster.replicas_lost")
                log.warning("round %d: replica %s lost; its %d devices repeat the round",
                            round_no, replica, len(waiting[replica]))  # fmt: skip
            pending = {d for devices in waiting.values() for d in devices}
            attempt += 1
        return results, total

    async def _collect(
        self,
        order: RoundOrder,
        waiting: dict[str, set[str]],
        limit_s: float,
        total: FedAvgSum,
    ) -> list[DeviceResult]:
        """The shares of ``order`` until each live replica in ``waiting`` gave one (it leaves
        ``waiting``) or ``limit_s`` passed; their results. A replica that died stays in
        ``waiting`` unless its share made it out before it did: the others finish first (a
        make-up order now would replace the order they are serving)."""
        member, view = self.member, self.member.view
        results: list[DeviceResult] = []
        deadline = time.monotonic() + limit_s
        while waiting:
            alive = member.book.alive(time.monotonic())
            if not any(r in alive for r in waiting):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            view.replicas_changed.clear()
            share = await _next_share(
                view.shares,
                view.replicas_changed,
                min(remaining, self.settings.cluster_heartbeat_s * 2),
            )
            if share is None:
                continue
            accepted = await self._accept(order, waiting, *share, total)
            if accepted is not None:
                results += accepted
        return results

    async def _accept(
        self,
        order: RoundOrder,
        waiting: dict[str, set[str]],
        meta: PartialMeta,
        frame: Frame,
        total: FedAvgSum,
    ) -> list[DeviceResult] | None:
        """One replica's share, if it answers ``order`` and covers exactly its devices."""
        key = (meta.epoch, meta.round, meta.attempt)
        if key != (order.epoch, order.round, order.attempt) or meta.replica not in waiting:
            self.counters.add("cluster.shares_stale")  # an earlier attempt's, or a lost one's
            return None
        covered = {o.device_id for o in meta.results}
        if covered != waiting[meta.replica]:
            self.counters.add("cluster.shares_rejected")
            log.error("share of %s covers %s, not its devices %s", meta.replica,
                      sorted(covered), sorted(waiting[meta.replica]))  # fmt: skip
            return None
        try:
            _meta, partial = decode_partial(frame)
            if partial is not None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self.driver.executor, total.merge, partial)
        except (SchemaError, SplitError) as exc:
            self.counters.add("cluster.shares_rejected")
            log.error("share of %s refused: %s", meta.replica, exc)
            return None
        del waiting[meta.replica]
        self.counters.add("cluster.shares_merged")
        return [result_of(o) for o in meta.results]

    def _introduction(self, device_id: str, replica_session: str) -> Hello | None:
        """The device's hello for a replica process not yet ordered to serve it (it may have
        started after the device registered); None for one that was."""
        if self.introduced.get(device_id) == replica_session:
            return None
        self.introduced[device_id] = replica_session
        return self.driver.devices[device_id].hello

    @staticmethod
    def _unserved(device_id: str, planned: PlannedRound, why: str) -> DeviceResult:
        return DeviceResult(device_id, planned.assignments[device_id][0], "dropped", detail=why)


async def _next_share(
    shares: asyncio.Queue[tuple[PartialMeta, Frame]], woken: asyncio.Event, timeout_s: float
) -> tuple[PartialMeta, Frame] | None:
    """The next share, or None when a replica's status changed or ``timeout_s`` passed."""
    if not shares.empty():
        return shares.get_nowait()
    get = asyncio.ensure_future(shares.get())
    wake = asyncio.ensure_future(woken.wait())
    done, _ = await asyncio.wait({get, wake}, timeout=timeout_s,
                                 return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    wake.cancel()
    if get in done:
        return get.result()
    get.cancel()
    return None


def to_json_report(report: RunReport) -> bytes:
    return json.dumps(report.to_dict()).encode()
