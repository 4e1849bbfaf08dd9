"""Choosing every device's split point for a round, by policy, from the latest readings.

The policies themselves live in ``planner.policies`` (one class each, one registry); this module
turns the edge's readings into the cost table they decide from, and their plan into plan
entries. All are priced with the same ARES cost model, so every report carries predictions.

Inputs fall back in a fixed order and the plan says which was used for each device: a device's
own measured block times, else the edge's own times (``assumed``); declared power and link rates,
else the configured defaults (``assumed``). No I/O here: the service passes readings in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from planner import DeviceProfile, ModelProfile, ServerProfile, WireOption, cost_table, wire_tables
from planner.policies import POLICIES, PolicyInputs
from schemas import ComputeProfile, DevicePlanEntry, PowerFigures
from splitnn.profiling import BlockProfile

if TYPE_CHECKING:
    from edge_service.settings import EdgeSettings
    from schemas.messages import WireDtype


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
    wire_itemsize: float = 4  # bytes per activation element on this device's wire (int4: 0.5)
    allowed_cuts: tuple[int, ...] | None = None
    # The formats the ares policy may choose from for this device, its configured one first
    # (edge_service.wire_options; empty: it keeps its configured format).
    wire_options: tuple[WireOption, ...] = ()
    # Bytes of its part's weights on its weight wire per float32 byte (int8 deltas: 0.25).
    weight_scale: float = 1.0
    # What the cost model misses, learned from the rounds (edge_service.overhead); None: not
    # measured, priced as zero. Per split batch: Theta, and device compute beyond its blocks.
    exchange_s: float | None = None
    split_compute_s: float | None = None
    round_overhead_s: float | None = None  # a round's fixed cost, at every cut
    overhead_source: str = "assumed"  # measured, from other devices, or assumed
    # The edge's service time over its profiled compute, serving this round's devices at once.
    queue_factor: float | None = None


@dataclass(frozen=True)
class PlanDefaults:
    """Assumptions for readings a device did not give."""

    power: PowerFigures
    link_bps: float

    @classmethod
    def from_settings(cls, settings: EdgeSettings) -> PlanDefaults:
        """The edge's configured assumptions (``assumed_*`` settings)."""
        return cls(
            power=PowerFigures(
                compute_w=settings.assumed_power_compute_w,
                transmit_w=settings.assumed_power_transmit_w,
                receive_w=settings.assumed_power_receive_w,
            ),
            link_bps=settings.assumed_link_mbps * 1e6,
        )


@dataclass(frozen=True)
class RoundPlan:
    policy: str  # its name in planner.policies.POLICIES
    alpha: float
    objective: float
    devices: dict[str, DevicePlanEntry]
    sitting_out: tuple[str, ...]

    @property
    def splits(self) -> dict[str, int]:
        return {device_id: entry.cut for device_id, entry in self.devices.items()}


class SplitPlanner:
    """Keeps the policy's state (the previous plan) between rounds.

    ``server`` is the edge's own profile, measured with float32 activations (wire_itemsize 4).
    """

    def __init__(
        self,
        *,
        policy: str,  # a name in planner.policies.POLICIES (or package.module:Class)
        alpha: float,
        model_name: str,
        server: BlockProfile,
        defaults: PlanDefaults,
        fixed_split: int,
        fixed_splits: Mapping[str, int],
    ) -> None:
        self.policy = policy
        self._policy = POLICIES.create(policy)  # one instance per run: it may keep state
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

    @property
    def chooses_formats(self) -> bool:
        """Whether the policy chooses wire formats with the cuts (readings' wire_options)."""
        return bool(getattr(self._policy, "chooses_formats", False))

    def resume(self, previous_splits: Mapping[str, int]) -> None:
        """Carry on from a checkpoint: the last plan, for hysteresis (and a static plan)."""
        self._previous = dict(previous_splits)
        self._policy.resume(self._previous)

    def plan(self, devices: Mapping[str, DeviceReadings]) -> RoundPlan:
        if not devices:
            raise ValueError("cannot plan a round without devices")
        profiles, sources = zip(*(self._profile(d, r) for d, r in devices.items()), strict=True)
        # The edge's blocks as it serves them with these devices at once: its own times measured
        # alone, times the queueing it measured (readings' queue_factor, the same for all).
        queue = max((r.queue_factor or 1.0 for r in devices.values()), default=1.0)
        server = ServerProfile(
            tuple(queue * t for t in self.server.forward_s),
            tuple(queue * t for t in self.server.backward_s),
        )
        table = cost_table(profiles, server, self.model)
        options = {d: r.wire_options for d, r in devices.items() if r.wire_options}
        plan = self._policy.decide(
            PolicyInputs(
                table=table,
                alpha=self.alpha,
                previous=self._previous,
                fixed_cut=self.fixed_split,
                fixed_cuts=self.fixed_splits,
                sync_weights=self.model.sync_weights,
                wire=wire_tables(profiles, server, self.model, options) if options else None,
            )
        )
        entries = {
            a.device_id: DevicePlanEntry(
                cut=a.cut,
                predicted_time_s=a.time_s,
                predicted_energy_j=a.energy_j,
                reason=a.reason,
                inputs=source,
                wire_dtype=cast("WireDtype | None", plan.formats.get(a.device_id)),
            )
            for a, source in zip(plan.assignments, sources, strict=True)
            if a.cut is not None
        }
        self._previous = {d: e.cut for d, e in entries.items()}
        return RoundPlan(
            policy=self.policy,
            alpha=self.alpha,
            objective=plan.objective,
            devices=entries,
            sitting_out=tuple(sorted(plan.sitting_out)),
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
            # device's timings follow how fast it ran its last whole-model round (drift; what a
            # split batch costs beyond them is split_compute_s, below).
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
        # What the cost model misses (edge_service.overhead), and whether it was measured.
        if readings.exchange_s is None:
            sources.append("Theta assumed 0")
        else:
            sources.append(
                f"Theta {readings.exchange_s * 1e3:.1f} ms + split compute "
                f"{(readings.split_compute_s or 0.0) * 1e3:.1f} ms per batch "
                f"{readings.overhead_source}"
            )
        if readings.round_overhead_s is not None:
            sources.append(f"round overhead {readings.round_overhead_s * 1e3:.0f} ms measured")
        queue = readings.queue_factor
        sources.append("edge queueing assumed none" if queue is None else
                       f"edge queueing x{queue:.2f} measured")  # fmt: skip
        batches = -(-readings.samples // self.model.batch_size)  # the cost model's, rounded up
        profile = DeviceProfile(
            device_id=device_id,
            forward_s=forward,
            backward_s=backward,
            power=power,
            samples=readings.samples,
            uplink_bps=uplink,
            downlink_bps=downlink,
            memory_bytes=readings.memory_bytes,
            allowed_cuts=frozenset(readings.allowed_cuts) if readings.allowed_cuts else None,
            battery_fraction=None if readings.battery_pct is None else readings.battery_pct / 100,
            # The model profile counts float32 activations and weights.
            wire_scale=readings.wire_itemsize / 4,
            weight_scale=readings.weight_scale,
            overhead_s=(readings.round_overhead_s or 0.0) / batches,
            exchange_s=readings.exchange_s or 0.0,
            split_compute_s=readings.split_compute_s or 0.0,
        )
        return profile, ", ".join(sources)
