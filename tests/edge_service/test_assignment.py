"""Devices to edge replicas by load and locality (edge_service.assignment)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge_service.assignment import (
    AssignmentError,
    DeviceLoad,
    ReplicaInfo,
    assign_devices,
)


def _devices(count: int, site: str | None = None, load: float = 1.0) -> list[DeviceLoad]:
    return [DeviceLoad(f"{site or 'dev'}-{i}", site, load) for i in range(count)]


def test_equal_replicas_share_equal_devices() -> None:
    placement = assign_devices(_devices(10), [ReplicaInfo("r1"), ReplicaInfo("r2")])
    assert len(placement.devices_of("r1")) == len(placement.devices_of("r2")) == 5


def test_a_site_s_devices_go_to_its_replica() -> None:
    devices = [*_devices(4, "hall"), *_devices(4, "farm")]
    replicas = [ReplicaInfo("r-hall", "hall"), ReplicaInfo("r-farm", "farm")]
    placement = assign_devices(devices, replicas)
    assert placement.devices_of("r-hall") == tuple(f"hall-{i}" for i in range(4))
    assert "at its site hall" in placement.reasons["hall-0"]


def test_locality_yields_to_a_clearly_busier_replica() -> None:
    devices = _devices(8, "hall")  # every device at one site, two replicas
    replicas = [ReplicaInfo("r-hall", "hall"), ReplicaInfo("r-core")]
    placement = assign_devices(devices, replicas)
    assert len(placement.devices_of("r-hall")) <= 5  # within the slack of an even split
    assert placement.devices_of("r-core")


def test_devices_stay_and_a_dead_replica_s_devices_move() -> None:
    devices = _devices(6)
    replicas = [ReplicaInfo("r1"), ReplicaInfo("r2"), ReplicaInfo("r3")]
    first = assign_devices(devices, replicas)
    survivors = [r for r in replicas if r.replica_id != "r2"]
    second = assign_devices(devices, survivors, first.replica_of)
    for device_id, replica_id in first.replica_of.items():
        if replica_id != "r2":
            assert second.replica_of[device_id] == replica_id
            assert second.reasons[device_id] == "stays with its replica"
        else:
            assert second.replica_of[device_id] in ("r1", "r3")
            assert second.reasons[device_id].startswith("its replica r2 is gone")


def test_an_overloaded_replica_sheds_devices_to_a_new_one() -> None:
    devices = _devices(8)
    previous = {d.device_id: "r1" for d in devices}
    placement = assign_devices(devices, [ReplicaInfo("r1"), ReplicaInfo("r2")], previous)
    # r1 sheds until it is within the slack (1.25) of the even share of 4: moving more would
    # cost sessions for no real balance.
    assert len(placement.devices_of("r1")) == 5
    assert len(placement.devices_of("r2")) == 3
    moved = [d for d, r in placement.replica_of.items() if r == "r2"]
    assert all("moved from r1" in placement.reasons[d] for d in moved)


def test_capacity_weighs_the_share() -> None:
    placement = assign_devices(_devices(9), [ReplicaInfo("big", capacity=2), ReplicaInfo("small")])
    assert len(placement.devices_of("big")) == 6


def test_an_overloaded_replica_sheds_to_where_the_device_lands_lowest() -> None:
    # Every other replica is idle, but only the one of capacity 2 takes a device for less than
    # the busy replica's load: shedding must weigh capacity, not pick the first idle replica.
    devices = _devices(2)
    replicas = [ReplicaInfo("r0"), ReplicaInfo("r1"), ReplicaInfo("r2", capacity=2)]
    replicas.append(ReplicaInfo("r3", capacity=2))
    placement = assign_devices(devices, replicas, {d.device_id: "r2" for d in devices})
    assert placement.devices_of("r2") == ("dev-1",)
    assert placement.devices_of("r3") == ("dev-0",)
    assert placement.reasons["dev-0"] == "moved from r2, over 1.25x the mean load"


def test_a_move_that_would_not_lower_the_busiest_load_is_not_made() -> None:
    # At 1.75x the mean, but any one device moved leaves a capacity-1 replica just as busy.
    devices = _devices(4)
    replicas = [ReplicaInfo("big", capacity=4), *(ReplicaInfo(f"small{i}") for i in range(3))]
    placement = assign_devices(devices, replicas, {d.device_id: "big" for d in devices})
    assert len(placement.devices_of("big")) == 4
    assert set(placement.reasons.values()) == {"stays with its replica"}


def test_a_device_too_light_to_matter_does_not_stop_the_shedding() -> None:
    # Moving the speck would not change r1's load in floating point; the next lightest still goes.
    devices = [DeviceLoad("speck", load=1e-20), *_devices(4)]
    previous = {d.device_id: "r1" for d in devices}
    placement = assign_devices(devices, [ReplicaInfo("r1"), ReplicaInfo("r2")], previous)
    assert placement.devices_of("r1") == ("dev-2", "dev-3", "speck")
    assert placement.devices_of("r2") == ("dev-0", "dev-1")


@settings(max_examples=100, deadline=None)
@given(
    loads=st.lists(st.floats(0.0, 10.0), min_size=0, max_size=30),
    sites=st.lists(st.sampled_from(["a", "b", None]), min_size=30, max_size=30),
    capacities=st.lists(st.floats(0.5, 4.0), min_size=1, max_size=4),
    previous_of=st.lists(st.integers(0, 5), min_size=30, max_size=30),
)
# Found by Hypothesis: r2 (capacity 2) kept both devices, as shedding tried only r0 (capacity 1).
@example(
    loads=[0.0, 1.0, 0.0, 1.0],
    sites=["a"] * 30,
    capacities=[1.0, 1.0, 2.0, 2.0],
    previous_of=[0, 2, 0, 2] + [0] * 26,
)
# The bound's second term at equality: no move lowers the busiest load of 1.0 = 4/7 + 3 * 1/7.
@example(loads=[1.0] * 4, sites=["a"] * 30, capacities=[4.0, 1.0, 1.0, 1.0], previous_of=[0] * 30)
def test_every_device_gets_one_live_replica_and_no_replica_is_far_over_its_share(
    loads: list[float], sites: list[str | None], capacities: list[float], previous_of: list[int]
) -> None:
    devices = [DeviceLoad(f"d{i}", sites[i], load) for i, load in enumerate(loads)]
    replicas = [ReplicaInfo(f"r{i}", ["a", "b", None][i % 3], c) for i, c in enumerate(capacities)]
    previous = {f"d{i}": f"r{previous_of[i]}" for i in range(len(loads))}  # some are dead
    placement = assign_devices(devices, replicas, previous)
    live = {r.replica_id for r in replicas}
    assert set(placement.replica_of) == {d.device_id for d in devices}
    assert set(placement.replica_of.values()) <= live
    total = sum(loads)
    if total > 0:
        mean = total / sum(capacities)
        heaviest = max(loads)
        # Within the slack of the mean, or else only as far over the mean as a replica that
        # cannot shed even one device can be (the module docstring derives this bound).
        bound = max(1.25 * mean, mean + (len(replicas) - 1) * heaviest / sum(capacities))
        for replica in replicas:
            share = sum(
                d.load for d in devices if placement.replica_of[d.device_id] == replica.replica_id
            )
            assert share / replica.capacity <= bound * (1 + 1e-9) + 1e-12


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(AssignmentError, match="no live replica"):
        assign_devices(_devices(1), [])
    with pytest.raises(AssignmentError, match="repeat"):
        assign_devices(_devices(1), [ReplicaInfo("r"), ReplicaInfo("r")])
    with pytest.raises(AssignmentError, match="capacity"):
        assign_devices(_devices(1), [ReplicaInfo("r", capacity=0)])
    with pytest.raises(AssignmentError, match="load"):
        assign_devices([DeviceLoad("d", load=-1)], [ReplicaInfo("r")])
