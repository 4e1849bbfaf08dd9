"""Everything a serving plan is decided from: the devices' live readings, the edge, the model's
sizes and exit table, the objective's settings and the plan in force."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from planner.errors import PlanningError
from planner.inference.plan import Setting
from planner.inference.points import Correction, ExitTable
from planner.inference.profiles import ServingDevice, ServingEdge, ServingModel
from planner.objective import DEFAULT_BATTERY_FLOOR

__all__ = ["DEFAULT_ACCURACY_FLOOR", "ServingInputs"]

DEFAULT_ACCURACY_FLOOR = 0.01  # one point below the full model on held-out data


@dataclass(frozen=True)
class ServingInputs:
    """One planning problem. ``alpha``: 1 minimises latency, 0 device energy.
    ``accuracy_floor``: how far below ``exits.full_accuracy`` a setting's accuracy may fall.
    ``battery_floor``: below it a battery device takes its least-energy setting; above, its
    energy weighs ``1 / battery`` (as in training, :mod:`planner.objective`). ``previous``: each
    device's setting in force (for hysteresis; empty at the start)."""

    devices: tuple[ServingDevice, ...]
    edge: ServingEdge
    model: ServingModel
    exits: ExitTable
    alpha: float = 0.5
    accuracy_floor: float = DEFAULT_ACCURACY_FLOOR
    battery_floor: float = DEFAULT_BATTERY_FLOOR
    correction: Correction = field(default_factory=Correction)
    previous: Mapping[str, Setting] = field(default_factory=dict)

    def __post_init__(self) -> None:
        devices = tuple(self.devices)
        if not devices:
            raise PlanningError("devices", "needs at least one device")
        ids = [d.device_id for d in devices]
        if len(set(ids)) != len(ids):
            raise PlanningError("devices", "device ids must be unique")
        object.__setattr__(self, "devices", devices)
        L = self.model.num_blocks
        if self.edge.num_blocks != L:
            raise PlanningError("edge", f"has {self.edge.num_blocks} blocks, the model has {L}")
        if self.exits.num_blocks != L:
            raise PlanningError("exits", f"has {self.exits.num_blocks} blocks, the model has {L}")
        for device in devices:
            if device.num_blocks != L:
                raise PlanningError(
                    device.device_id, f"has {device.num_blocks} blocks, the model has {L}"
                )
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise PlanningError("alpha", f"must lie in [0, 1], got {alpha!r}")
        floor = self.accuracy_floor
        if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor <= 1:
            raise PlanningError("accuracy_floor", f"must lie in [0, 1], got {floor!r}")
        if not 0.0 < self.battery_floor <= 1.0:
            raise PlanningError("battery_floor", f"must lie in (0, 1], got {self.battery_floor!r}")
        object.__setattr__(self, "previous", dict(self.previous))

    @property
    def blocks(self) -> int:
        """L: cut L keeps every block on the device."""
        return self.model.num_blocks

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(d.device_id for d in self.devices)

    @property
    def accuracy_bound(self) -> float:
        """The least accuracy a setting may have."""
        return self.exits.full_accuracy - self.accuracy_floor
