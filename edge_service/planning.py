"""Choosing every device's split point for a round, by policy, from the latest readings.

Policies (all priced with the same ARES cost model, so every report carries predictions):

- ``ares``: re-planned every round (exact optimum, then hysteresis against the last plan);
- ``static``: planned once, re-planned only when the set of devices changes;
- ``fl``: every block on the device (federated learning);
- ``sl``: one fixed cut for all (classic split learning), with optional per-device overrides.

Inputs fall back in a fixed order and the plan says which was used for each device: a device's
own measured block times, else the edge's own times (``assumed``); declared power and link rates,
else the configured defaults (``assumed``). No I/O here: the service passes readings in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from planner import (
    CostTable,
    DeviceProfile,
    ModelProfile,
    Plan,
    ServerProfile,
    cost_table,
    plan_for_cuts,
    solve,
    stabilise,
)
from schemas import ComputeProfile, DevicePlanEntry, PowerFigures
from splitnn.profiling import BlockProfile

Policy = Literal["ares", "static", "fl", "sl"]
POLICIES: tuple[Policy, ...] = ("ares", "static", "fl", "sl")


@dataclass(frozen=True)
class DeviceReadings:
    """What the edge knows about one device when it plans a round."""

    samples: int
    compute: ComputeProfile | None = None
    power: PowerFigures | None = None
    memory_bytes: int | None = None
    battery_pct: float | None = None
    uplink_bps: float | None = None
    downlink_bps: float | None = None
    link_source: str = "declared"  # measured, measured (stale) or declared
    wire_itemsize: int = 4  # bytes per activation element on this device's wire
    allowed_cuts: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PlanDefaults:
    """Assumptions for readings a device did not give."""

    power: PowerFigures
    link_bps: float


@dataclass(frozen=True)
class RoundPlan:
    policy: Policy
    alpha: float
    objective: float
    devices: dict[str, DevicePlanEntry]
    sitting_out: tuple[str, ...]

    @property
    def splits(self) -> dict[str, int]:
        return {device_id: entry.split for device_id, entry in self.devices.items()}


class SplitPlanner:
    """Keeps the policy's state (the previous plan) between rounds.

    ``server`` is the edge's own profile, measured with float32 activations (wire_itemsize 4).
    """

    def __init__(
        self,
        *,
        policy: Policy,
        alpha: float,
        model_name: str,
        server: BlockProfile,
        defaults: PlanDefaults,
        fixed_split: int,
        fixed_splits: Mapping[str, int],
    ) -> None:
        self.policy = policy
        self.alpha = alpha
        self.model_name = model_name
        self.server = server
        self.defaults = defaults
        self.fixed_split = fixed_split
        self.fixed_splits = dict(fixed_splits)
        self.blocks = len(server.forward_s)
        self.model = ModelProfile(
            num_blocks=self.blocks,
            activation_bytes=server.activation_bytes,
            param_bytes=server.param_bytes,
            activation_memory_bytes=server.activation_memory_bytes,
            batch_size=server.batch_size,
            label_bytes=8 * server.batch_size,  # int64 labels travel with every split batch
            sync_weights=True,  # the device part's weights travel every round: count them
        )
        self._previous: dict[str, int] = {}
        self._static: dict[str, int] | None = None

    def resume(self, previous_splits: Mapping[str, int]) -> None:
        """Carry on from a checkpoint: the last plan, for hysteresis (and a static plan)."""
        self._previous = dict(previous_splits)
        if self.policy == "static" and previous_splits:
            self._static = dict(previous_splits)

    def plan(self, devices: Mapping[str, DeviceReadings]) -> RoundPlan:
        if not devices:
            raise ValueError("cannot plan a round without devices")
        profiles, sources = zip(*(self._profile(d, r) for d, r in devices.items()), strict=True)
        table = cost_table(
            profiles,
            ServerProfile(self.server.forward_s, self.server.backward_s),
            self.model,
        )
        plan = self._decide(table, list(devices))
        entries = {
            a.device_id: DevicePlanEntry(
                split=a.cut,
                predicted_time_s=a.time_s,
                predicted_energy_j=a.energy_j,
                reason=a.reason,
                inputs=source,
            )
            for a, source in zip(plan.assignments, sources, strict=True)
            if a.cut is not None
        }
        self._previous = {d: e.split for d, e in entries.items()}
        return RoundPlan(
            policy=self.policy,
            alpha=self.alpha,
            objective=plan.objective,
            devices=entries,
            sitting_out=tuple(sorted(plan.sitting_out)),
        )

    def _decide(self, table: CostTable, device_ids: list[str]) -> Plan:
        if self.policy == "fl":
            return plan_for_cuts(table, self.alpha, self.blocks, reason="federated learning")
        if self.policy == "sl":
            cuts = {d: self.fixed_splits.get(d, self.fixed_split) for d in device_ids}
            return plan_for_cuts(table, self.alpha, cuts, reason="fixed split (configuration)")
        if self.policy == "static":
            if self._static is None or set(self._static) != set(device_ids):
                self._static = dict(solve(table, self.alpha).cuts)
            return plan_for_cuts(table, self.alpha, self._static, reason="planned once (static)")
        candidate = solve(table, self.alpha)
        # With sync_weights every round start carries the device part's weights and every round
        # end brings them back, and each cut's row prices that. A new cut then moves no byte its
        # own row leaves out: charging the blocks' transfer again would hold a device on a cut
        # the plan knows is worse. Only the noise margin remains.
        move_s_per_byte = 0.0 if self.model.sync_weights else None
        return stabilise(
            self._previous or None, candidate, table, self.alpha, move_s_per_byte=move_s_per_byte
        )

    def _profile(self, device_id: str, readings: DeviceReadings) -> tuple[DeviceProfile, str]:
        compute = readings.compute
        sources = []
        if (
            compute is not None
            and compute.model == self.model_name
            and len(compute.forward_s) == self.blocks
            and len(compute.backward_s) == self.blocks
        ):
            # Block times grow about linearly with the batch: rescale to the planned batch. A
            # device's timings already follow how fast it ran its last round (device_agent.drift).
            scale = self.server.batch_size / compute.batch_size
            forward = tuple(t * scale for t in compute.forward_s)
            backward = tuple(t * scale for t in compute.backward_s)
            sources.append("compute measured")
        else:
            forward, backward = self.server.forward_s, self.server.backward_s
            sources.append("compute assumed (edge speed)")
        power = readings.power or self.defaults.power
        sources.append("power declared" if readings.power else "power assumed")
        uplink = readings.uplink_bps or self.defaults.link_bps
        downlink = readings.downlink_bps or uplink
        sources.append(f"link {readings.link_source}" if readings.uplink_bps else "link assumed")
        profile = DeviceProfile(
            device_id=device_id,
            forward_s=forward,
            backward_s=backward,
            power_compute_w=power.compute_w,
            power_tx_w=power.transmit_w,
            power_rx_w=power.receive_w,
            samples=readings.samples,
            uplink_bps=uplink,
            downlink_bps=downlink,
            memory_bytes=readings.memory_bytes,
            allowed_cuts=frozenset(readings.allowed_cuts) if readings.allowed_cuts else None,
            battery_fraction=None if readings.battery_pct is None else readings.battery_pct / 100,
            # The model profile counts float32 activations; the weights stay float32 on any wire.
            wire_scale=readings.wire_itemsize / 4,
        )
        return profile, ", ".join(sources)
