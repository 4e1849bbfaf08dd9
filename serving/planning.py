"""Choosing every serving device's cut and threshold: the edge's readings turned into the
planner's serving inputs (``planner.inference``), the policy's plan turned into the retained plan
message and each device's control message.

Readings fall back in a fixed order, and each plan entry says which were used: a device's own
block timings (its hello); its measured link rates, else declared ones, else the edge's
assumption (``serving.fleet``); declared power, else assumed. The exits' operating points come
from the artifact's calibration on held-out data; a device's observed early-exit rate corrects
them for that device (the planner's rule). No I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from planner.inference import (
    EXITS_OFF,
    ExitTable,
    InferencePlan,
    ObservedExits,
    ServingAssignment,
    ServingDevice,
    ServingEdge,
    ServingInputs,
    ServingModel,
    Setting,
    exits_on,
)
from schemas import PowerFigures
from schemas.serving import ServeCtrl, ServePlanEntry, ServePlanMessage
from serving.artifact import ModelArtifact
from serving.fleet import Fleet, ServingRecord
from serving.settings import ServeSettings
from splitnn.models import cut_shapes
from splitnn.partition import block_index

FLOAT32_BYTES = 4
Decide = Callable[[ServingInputs], InferencePlan]


def serving_model(artifact: ModelArtifact) -> ServingModel:
    """Bytes per sample of the input, every cut's activation and every block's weights."""
    spec = artifact.spec
    shapes = cut_shapes(spec)
    params = [0] * len(shapes)
    for key, tensor in artifact.state.items():
        params[block_index(key)] += int(tensor.nbytes)
    exit_params: dict[int, int] = {}
    for key, tensor in artifact.calibration.exit_state.items():
        position = block_index(key)
        exit_params[position] = exit_params.get(position, 0) + int(tensor.nbytes)
    return ServingModel(
        input_bytes=math.prod(spec.input_shape) * FLOAT32_BYTES,
        activation_bytes=tuple(math.prod(shape) * FLOAT32_BYTES for shape in shapes),
        param_bytes=tuple(params),
        exit_param_bytes=exit_params,
    )


def exit_table(artifact: ModelArtifact, num_blocks: int) -> ExitTable:
    """The model's operating points, from its calibration on held-out data."""
    calibration = artifact.calibration
    return ExitTable.from_points(
        num_blocks,
        calibration.points,
        full_accuracy=calibration.full_accuracy,
        exit_positions=calibration.positions,
        deepest_exit_accuracy=calibration.deepest_exit_accuracy,
    )


class ServePlanner:
    """Plans for the online devices; remembers what each plan was made from (hysteresis)."""

    def __init__(
        self,
        artifact: ModelArtifact,
        edge_forward_s: tuple[float, ...],
        settings: ServeSettings,
        decide: Decide,
    ) -> None:
        self.artifact = artifact
        self.settings = settings
        self.decide = decide
        self.model = serving_model(artifact)
        self.table = exit_table(artifact, self.model.num_blocks)
        self.edge = ServingEdge(edge_forward_s)
        self.assumed_power = PowerFigures(
            compute_w=settings.assumed_power_compute_w,
            transmit_w=settings.assumed_power_transmit_w,
            receive_w=settings.assumed_power_receive_w,
        )
        self.previous: dict[str, Setting] = {}
        # Per device, what its entry was planned with: (uplink bit/s, observed exit fraction).
        self.basis: dict[str, tuple[float, float | None]] = {}

    def fits(self, record: ServingRecord) -> str | None:
        """Why a device's hello cannot be planned for (another model), or None."""
        hello = record.hello
        if hello.fingerprint != self.artifact.fingerprint:
            return (
                f"it serves model {hello.model} ({hello.fingerprint}); this edge serves "
                f"{self.artifact.spec.name} ({self.artifact.fingerprint})"
            )
        if len(hello.forward_s) != self.model.num_blocks:
            return f"{len(hello.forward_s)} block timings for {self.model.num_blocks} blocks"
        return None

    def moved(self, fleet: Fleet, device_id: str) -> str | None:
        """Why a device's readings call for a new plan (its link or exit rate moved past the
        settings' bounds since its entry was planned), or None."""
        basis = self.basis.get(device_id)
        record = fleet.records.get(device_id)
        if basis is None or record is None:
            return None
        link = fleet.link(device_id).uplink_bps
        planned_link, planned_rate = basis
        if abs(link - planned_link) > self.settings.replan_link_change * planned_link:
            return (
                f"{device_id}'s uplink moved from {planned_link / 1e6:.3g} to "
                f"{link / 1e6:.3g} Mbit/s"
            )
        rate = record.observed.fraction if record.observed else None
        if rate is not None and (
            planned_rate is None or abs(rate - planned_rate) > self.settings.replan_exit_rate_change
        ):
            before = "none" if planned_rate is None else f"{planned_rate:.2f}"
            return f"{device_id}'s exit rate moved from {before} to {rate:.2f}"
        return None

    def plan(self, fleet: Fleet) -> InferencePlan | None:
        """The policy's plan for every online device that fits; None without any."""
        devices = [
            self._device(fleet, device_id, record)
            for device_id, record in sorted(fleet.online().items())
            if self.fits(record) is None
        ]
        if not devices:
            return None
        inputs = ServingInputs(
            devices=tuple(devices),
            edge=self.edge,
            model=self.model,
            exits=self.table,
            alpha=self.settings.alpha,
            accuracy_floor=self.settings.accuracy_floor,
            previous={d: s for d, s in self.previous.items() if d in fleet.online()},
        )
        plan = self.decide(inputs)
        self.previous = dict(plan.settings)
        for device in devices:
            observed = fleet.records[device.device_id].observed
            self.basis[device.device_id] = (
                device.uplink_bps,
                observed.fraction if observed else None,
            )
        return plan

    def _device(self, fleet: Fleet, device_id: str, record: ServingRecord) -> ServingDevice:
        hello, link = record.hello, fleet.link(device_id)
        battery = record.battery_pct
        observed = record.observed
        return ServingDevice(
            device_id=device_id,
            forward_s=hello.forward_s,
            power=hello.power or self.assumed_power,
            uplink_bps=link.uplink_bps,
            downlink_bps=link.downlink_bps,
            exit_head_s=dict(hello.exit_s),
            battery_fraction=battery / 100 if battery is not None else None,
            allowed_cuts=frozenset(hello.allowed_cuts) if hello.allowed_cuts else None,
            memory_bytes=hello.memory_bytes,
            observed=(
                ObservedExits(
                    observed.cut,
                    EXITS_OFF if observed.threshold is None else observed.threshold,
                    observed.fraction or 0.0,
                    observed.requests,
                )
                if observed is not None and observed.requests
                else None
            ),
        )

    def inputs_line(self, fleet: Fleet, device_id: str) -> str:
        """Where one device's readings came from, for its plan entry."""
        hello = fleet.records[device_id].hello
        power = "declared" if hello.power is not None else "assumed"
        return f"compute measured; link {fleet.link(device_id).source}; power {power}"


def ctrl_message(
    session: str, fingerprint: str, assignment: ServingAssignment, blocks: int
) -> ServeCtrl:
    """One device's entry of ``plan`` as its control message."""
    position = assignment.degraded.position
    return ServeCtrl(
        session=session,
        device_id=assignment.device_id,
        fingerprint=fingerprint,
        cut=assignment.cut,
        threshold=assignment.threshold if exits_on(assignment.threshold) else None,
        fallback=position if position is not None and position < blocks else None,
        reason=assignment.reason,
    )


def plan_message(
    session: str,
    planner: ServePlanner,
    plan: InferencePlan | None,
    inputs: Mapping[str, str],
    reason: str,
    version: int,
) -> ServePlanMessage:
    """The retained plan, the session's ``version``-th: every device's entry and why (none: no
    device to plan for)."""
    settings = planner.settings
    if plan is None:
        return ServePlanMessage(
            session=session, version=version, policy=settings.policy,
            alpha=settings.alpha, accuracy_floor=settings.accuracy_floor,
            full_accuracy=planner.table.full_accuracy, devices={}, reason=reason,
        )  # fmt: skip
    blocks = planner.model.num_blocks
    devices = {}
    for a in plan.assignments:
        position = a.degraded.position
        devices[a.device_id] = ServePlanEntry(
            cut=a.cut,
            threshold=a.threshold if exits_on(a.threshold) else None,
            fallback=position if position is not None and position < blocks else None,
            predicted_latency_ms=a.latency_s * 1000,
            predicted_energy_j=a.energy_j,
            predicted_accuracy=min(max(a.accuracy, 0.0), 1.0),
            local_fraction=min(max(a.local_fraction, 0.0), 1.0),
            reason=a.reason,
            inputs=inputs.get(a.device_id, ""),
        )
    return ServePlanMessage(
        session=session,
        version=version,
        policy=settings.policy,
        alpha=plan.alpha,
        accuracy_floor=plan.accuracy_floor,
        full_accuracy=plan.full_accuracy,
        devices=devices,
        reason=reason,
    )
