"""Which edge replica serves which device, by load and locality (pure: the coordinator passes
everything in and publishes the result retained).

Rules, in order:

1. A device stays with its replica while that replica is alive and not overloaded: moving a
   device costs its session on the new replica (a round start in full, a fresh link estimate).
2. Devices without a live replica (new ones, and those of a replica that died) are placed one by
   one, heaviest first: on a replica at the device's own site while that keeps it within
   ``slack`` of an even share of all the load (so a site's traffic stays on its site's replica
   unless that replica would be clearly busier), else on the replica whose load relative to its
   capacity would stay lowest.
3. While a replica is over ``1 + slack`` times the mean relative load (the busiest first), it
   sheds its lightest device to the replica where that device would leave the lowest relative
   load, as long as that lowers the larger of the two loads (a move that only swaps which replica
   is busiest costs a session for nothing).

What this guarantees: a replica left over ``1 + slack`` times the mean cannot shed even its
lightest device, so (summing that over the other replicas, weighted by capacity) its relative load
is at most ``mean + (replicas - 1) * lightest / total capacity``. Every replica thus ends within
the larger of ``(1 + slack) * mean`` and ``mean + (replicas - 1) * heaviest / total capacity``.
The slack alone is not promised: 4 equal devices stay on a replica of capacity 4 (at 1.75 times
the mean) beside three idle replicas of capacity 1, as moving one would leave its new replica
just as busy.

Load is what a device asks of the edge per round (its batches, from its samples); capacity what
a replica can serve (its measured batches per second, or 1 for equal replicas).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schemas.errors import AresError

__all__ = ["AssignmentError", "DeviceLoad", "Placement", "ReplicaInfo", "assign_devices"]


class AssignmentError(AresError, ValueError):
    """The inputs cannot be assigned (no replica, a bad load or capacity)."""


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    site: str | None = None
    capacity: float = 1.0


@dataclass(frozen=True)
class DeviceLoad:
    device_id: str
    site: str | None = None
    load: float = 1.0


@dataclass(frozen=True)
class Placement:
    """The assignment and, per device, why it is where it is."""

    replica_of: Mapping[str, str]
    reasons: Mapping[str, str]

    def devices_of(self, replica_id: str) -> tuple[str, ...]:
        return tuple(sorted(d for d, r in self.replica_of.items() if r == replica_id))


def assign_devices(
    devices: Sequence[DeviceLoad],
    replicas: Sequence[ReplicaInfo],
    previous: Mapping[str, str] | None = None,
    *,
    slack: float = 0.25,
) -> Placement:
    """Every device to one live replica (see the module docstring)."""
    _check(devices, replicas, slack)
    live = {r.replica_id: r for r in replicas}
    load = dict.fromkeys(live, 0.0)
    replica_of: dict[str, str] = {}
    reasons: dict[str, str] = {}
    weight = {d.device_id: d.load for d in devices}
    for device in devices:  # rule 1
        kept = (previous or {}).get(device.device_id)
        if kept in live:
            replica_of[device.device_id] = kept
            load[kept] += device.load
            reasons[device.device_id] = "stays with its replica"
    waiting = sorted(
        (d for d in devices if d.device_id not in replica_of), key=lambda d: (-d.load, d.device_id)
    )
    # A site's replica may take its devices up to this (relative) load: the slack over an even
    # share of everything, so early placements do not push a site's later devices away.
    limit = (1 + slack) * sum(weight.values()) / sum(r.capacity for r in replicas)
    for device in waiting:  # rule 2
        chosen, why = _place(device, live, load, limit)
        replica_of[device.device_id] = chosen
        load[chosen] += device.load
        lost = (previous or {}).get(device.device_id)
        reasons[device.device_id] = (f"its replica {lost} is gone; " if lost else "new; ") + why
    _rebalance(live, load, replica_of, reasons, weight, slack)  # rule 3
    return Placement(replica_of, reasons)


def _place(
    device: DeviceLoad, live: Mapping[str, ReplicaInfo], load: Mapping[str, float], limit: float
) -> tuple[str, str]:
    def after(replica_id: str) -> float:
        return (load[replica_id] + device.load) / live[replica_id].capacity

    best = min(live, key=lambda r: (after(r), r))
    local = [r for r in live if device.site is not None and live[r].site == device.site]
    if local:
        nearest = min(local, key=lambda r: (after(r), r))
        if after(nearest) <= max(limit, after(best)):
            return nearest, f"the least loaded replica at its site {device.site}"
    return best, "the least loaded replica"


def _rebalance(
    live: Mapping[str, ReplicaInfo],
    load: dict[str, float],
    replica_of: dict[str, str],
    reasons: dict[str, str],
    weight: Mapping[str, float],
    slack: float,
) -> None:
    # Per replica, its devices that a move could help (load > 0), lightest first.
    movable: dict[str, list[tuple[float, str]]] = {r: [] for r in live}
    for device_id, replica_id in replica_of.items():
        if weight[device_id] > 0:
            movable[replica_id].append((weight[device_id], device_id))
    for devices in movable.values():
        devices.sort()
    ceiling = (1 + slack) * sum(load.values()) / sum(r.capacity for r in live.values())
    # Each move lowers one relative load and raises another to below it, so the loads sorted
    # from the top fall in lexicographic order: the loop ends.
    while move := _next_move(live, load, movable, ceiling):
        index, busy, idle = move
        entry = movable[busy].pop(index)
        bisect.insort(movable[idle], entry)
        _, device_id = entry
        load[busy] -= weight[device_id]
        load[idle] += weight[device_id]
        replica_of[device_id] = idle
        reasons[device_id] = f"moved from {busy}, over {1 + slack:g}x the mean load"


def _next_move(
    live: Mapping[str, ReplicaInfo],
    load: Mapping[str, float],
    movable: Mapping[str, Sequence[tuple[float, str]]],
    ceiling: float,
) -> tuple[int, str, str] | None:
    """The busiest replica over the ceiling that can shed its lightest device (its index in
    ``movable``), and where to."""

    def relative(replica_id: str) -> float:
        return load[replica_id] / live[replica_id].capacity

    for busy in sorted(live, key=lambda r: (-relative(r), r)):
        if relative(busy) <= ceiling:
            return None  # and so are all the rest
        # Skip the devices too light to change the busy load at all (in floating point): moving
        # them gains nothing. The move is judged as it will leave the load (not relative(busy)
        # - lightest / capacity, which may round differently) so that the loop ends.
        index = next(
            (
                i
                for i, (lightest, _) in enumerate(movable[busy])
                if (load[busy] - lightest) / live[busy].capacity < relative(busy)
            ),
            None,
        )
        if index is None:
            continue
        lightest, _ = movable[busy][index]
        after = {r: (load[r] + lightest) / live[r].capacity for r in live if r != busy}
        if not after:
            return None
        # If this one cannot move, no heavier one can: it would land higher anywhere.
        idle = min(after, key=lambda r: (after[r], r))
        if after[idle] < relative(busy):
            return index, busy, idle
    return None


def _check(devices: Sequence[DeviceLoad], replicas: Sequence[ReplicaInfo], slack: float) -> None:
    if not replicas:
        raise AssignmentError("no live replica to assign devices to")
    ids = [r.replica_id for r in replicas]
    if len(set(ids)) != len(ids):
        raise AssignmentError(f"replica ids repeat: {sorted(ids)}")
    names = [d.device_id for d in devices]
    if len(set(names)) != len(names):
        raise AssignmentError(f"device ids repeat: {sorted(names)}")
    for replica in replicas:
        if not replica.capacity > 0 or replica.capacity == float("inf"):
            raise AssignmentError(f"{replica.replica_id}: capacity must be > 0 and finite")
    for device in devices:
        if not 0 <= device.load < float("inf"):
            raise AssignmentError(f"{device.device_id}: load must be >= 0 and finite")
    if not slack >= 0:
        raise AssignmentError(f"slack must be >= 0, got {slack!r}")
