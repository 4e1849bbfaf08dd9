"""Feeding the overhead learner (``edge_service.overhead``): what a round measured beside what
its plan priced, and what the learner knows into the next plan's readings.

The priced parts mirror ``planner.cost`` cell by cell, with the inputs the plan used (the
device's timings, link rates and wire format); ``tests/edge_service/test_overhead.py`` checks
that they add up to the cost table's time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from edge_service.overhead import OverheadLearner, RoundObservation
from edge_service.planning import DeviceReadings, RoundPlan, SplitPlanner
from edge_service.rounds import DeviceResult
from schemas import wire_itemsize

__all__ = ["round_observations", "with_overheads"]


def with_overheads(
    readings: Mapping[str, DeviceReadings], learner: OverheadLearner
) -> dict[str, DeviceReadings]:
    """The readings with what the learner knows. The edge's queueing is priced for all of
    them served at once: any of them may be planned at a split cut."""
    queue = learner.queue_factor(len(readings))
    learned = {}
    overheads = learner.devices(readings)
    for device_id, reading in readings.items():
        known = overheads[device_id]
        learned[device_id] = replace(
            reading,
            exchange_s=known.exchange_s,
            split_compute_s=known.split_compute_s,
            round_overhead_s=known.round_s,
            overhead_source=known.source,
            queue_factor=queue,
        )
    return learned


def round_observations(
    results: Iterable[DeviceResult],
    plan: RoundPlan,
    readings: Mapping[str, DeviceReadings],
    planner: SplitPlanner,
) -> list[RoundObservation]:
    """Each device that finished the round in full (``ok``), measured and priced. Stragglers,
    late and dropped devices ran a part of it: their times say nothing about a whole round."""
    model, server, blocks = planner.model, planner.server, planner.blocks
    observations = []
    for result in results:
        reading, entry = readings.get(result.device_id), plan.devices.get(result.device_id)
        if result.status != "ok" or result.round_s is None or reading is None or entry is None:
            continue
        cut = result.cut
        split = cut < blocks
        forward, backward = _block_times(reading, planner)
        uplink = reading.uplink_bps or planner.defaults.link_bps
        downlink = reading.downlink_bps or uplink
        itemsize = wire_itemsize(entry.wire_dtype) if entry.wire_dtype else reading.wire_itemsize
        scale = itemsize / 4  # the model profile counts float32 activations
        transfer = 0.0
        if split:
            up_bits = 8.0 * (model.activation_bytes[cut - 1] * scale + model.label_bytes)
            down_bits = 8.0 * model.down_bytes[cut - 1] * scale
            transfer = up_bits / uplink + down_bits / downlink
        # The weights' bytes as sent where known (a first round sends them whole, not as the
        # deltas priced), else as priced: what they took is not a fixed cost of the round.
        priced_bits = 8.0 * sum(model.param_bytes[:cut]) * reading.weight_scale
        sent, came = result.weights_down_bytes, result.weights_up_bytes
        weights_down_bits = priced_bits if sent is None else 8.0 * sent
        weights_up_bits = priced_bits if came is None else 8.0 * came
        observations.append(
            RoundObservation(
                device_id=result.device_id,
                split=split,
                batches=result.batches,
                round_s=result.round_s,
                busy_s=result.busy_s,
                weights_s=weights_up_bits / uplink + weights_down_bits / downlink,
                compute_s=sum(forward[:cut]) + sum(backward[:cut]),
                transfer_s=transfer,
                edge_compute_s=sum(server.forward_s[cut:]) + sum(server.backward_s[cut:]),
                service_s=result.service_s / result.batches if result.batches else 0.0,
                round_trip_s=result.rtt_median_s if split else None,
                link_known=reading.uplink_bps is not None,
            )
        )
    return observations


def _block_times(
    reading: DeviceReadings, planner: SplitPlanner
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The device's block times per planned batch, as ``SplitPlanner`` prices them."""
    compute, server = reading.compute, planner.server
    if (
        compute is None
        or compute.model != planner.model_name
        or len(compute.forward_s) != planner.blocks
        or len(compute.backward_s) != planner.blocks
    ):
        return server.forward_s, server.backward_s
    scale = server.batch_size / compute.batch_size
    return (
        tuple(t * scale for t in compute.forward_s),
        tuple(t * scale for t in compute.backward_s),
    )
