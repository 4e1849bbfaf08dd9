"""What a round cost each device, for the run report: time, bytes and energy.

Energy is the planner's own formula (``planner.energy``) over what the round measured: the
device's busy time, its send and receive times, and the estimated transfer of its part's
weights over the link rates the registry believes (``DeviceRegistry.link``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from edge_service.planning import RoundPlan
from edge_service.registry import DeviceRegistry, LinkEstimate
from edge_service.report import DeviceRoundReport, RoundReport
from edge_service.rounds import DeviceResult
from planner.energy import device_energy_j
from schemas import PowerFigures
from splitnn.partition import block_index


def round_report(
    *,
    round_no: int,
    plan: RoundPlan,
    results: list[DeviceResult],
    accuracy: float,
    loss: float,
    duration_s: float,
    devices: DeviceRegistry,
    assumed_power: PowerFigures,
    global_state: Mapping[str, torch.Tensor],
) -> RoundReport:
    """The round as the report records it; ``global_state`` sizes the weights each part moved."""
    reports = {
        r.device_id: _device_report(r, plan, devices, assumed_power, global_state) for r in results
    }
    losses = [(r.train_loss, r.samples) for r in results if r.train_loss is not None]
    total = sum(n for _, n in losses)
    return RoundReport(
        round=round_no,
        accuracy=accuracy,
        loss=loss,
        train_loss=sum(loss * n for loss, n in losses) / total if total else None,
        duration_s=round(duration_s, 4),
        objective=plan.objective,
        devices=reports,
        discarded_batches=sum(r.discarded_batches for r in results),
    )


def _device_report(
    result: DeviceResult,
    plan: RoundPlan,
    devices: DeviceRegistry,
    assumed_power: PowerFigures,
    global_state: Mapping[str, torch.Tensor],
) -> DeviceRoundReport:
    record = devices.get(result.device_id)
    power = (record.hello.power if record else None) or assumed_power
    link = devices.link(result.device_id)
    weights_up_s, weights_down_s = _weights_transfer_s(result, link, global_state)
    energy = device_energy_j(
        power, result.busy_s, result.uplink_s + weights_up_s, result.downlink_s + weights_down_s
    )
    live = record.telemetry if record else None
    entry = plan.devices[result.device_id]
    return DeviceRoundReport(
        cut=result.cut,
        predicted_time_s=round(entry.predicted_time_s, 4),
        predicted_energy_j=round(entry.predicted_energy_j, 4),
        status=result.status,
        batches=result.batches,
        samples=result.samples,
        busy_s=round(result.busy_s, 4),
        server_s=round(result.server_s, 4),
        train_loss=result.train_loss,
        rtt_median_s=result.rtt_median_s,
        round_s=None if result.round_s is None else round(result.round_s, 4),
        contributed=result.contributed,
        wire_dtype=entry.wire_dtype,
        discarded_batches=result.discarded_batches,
        energy_j=round(energy, 4),
        uplink_mbps=_mbps(link.uplink_bps) if link.known else None,
        downlink_mbps=_mbps(link.downlink_bps) if link.known else None,
        link_source=link.source,
        battery_pct=live.battery_pct if live else None,
        link_mode=record.hello.link_mode if record else "unknown",
        emulation_behind_s=round(result.behind_s, 4),
        weights_s=round(weights_up_s + weights_down_s, 4),
        weights_bytes=_weights_bytes(result),
    )


def _weights_transfer_s(
    result: DeviceResult, link: LinkEstimate, global_state: Mapping[str, torch.Tensor]
) -> tuple[float, float]:
    """Seconds the device part's weights took up and down this round (estimated).

    The weights ride on the round start and the round's last message, so no transfer of them is
    timed on its own: their bytes over the device's link estimates stand in. The bytes as sent
    (deltas or whole, re-sends included: ``edge_service.weight_sync``) where the round counted
    them, else float32 weights at the cut.
    """
    if result.weights_down_bytes is not None:
        down_bits = 8.0 * result.weights_down_bytes
        up_bits = 8.0 * (result.weights_up_bytes or 0)
    else:
        down_bits = 8.0 * sum(
            t.numel() * t.element_size()
            for k, t in global_state.items()
            if block_index(k) < result.cut
        )
        # Down with every round start; up only from a device whose part came back.
        up_bits = down_bits if result.state is not None else 0.0
    return up_bits / link.uplink_bps, down_bits / link.downlink_bps


def _weights_bytes(result: DeviceResult) -> int | None:
    """Data bytes of the device part's weights sent down and up (None: not counted)."""
    if result.weights_down_bytes is None:
        return None
    return result.weights_down_bytes + (result.weights_up_bytes or 0)


def _mbps(bps: float) -> float:
    return round(bps / 1e6, 3)
