"""The serving planner's output: per device a cut and exit threshold, what they are predicted to
cost per request, why they were chosen, and what the device answers with when the edge is gone."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from planner.errors import PlanningError

__all__ = ["Degraded", "InferencePlan", "ServingAssignment", "Setting"]

Setting = tuple[int, float]  # (cut, threshold)


@dataclass(frozen=True, slots=True)
class Degraded:
    """What a device answers with when the edge is gone: its deepest exit at or below its cut
    (``position``; L at cut L: the full model) and that exit's accuracy. None: no local answer
    (no exit at or below the cut), or no accuracy measured for it."""

    position: int | None
    accuracy: float | None


@dataclass(frozen=True, slots=True)
class ServingAssignment:
    """One device's serving plan and its predicted cost per request.

    ``local_fraction``: share of requests answered on the device (early exits; at cut L all).
    ``exit_fraction``: the early exits' shares by position, after the online correction.
    ``objective``: alpha * latency / latency_ref + (1 - alpha) * w * energy / energy_ref, with the
    device's references (its everything-on-edge price) and battery weight w.
    ``accuracy_met``: False when no setting reached the accuracy floor and the most accurate one
    was taken. ``forced``: the battery is below the floor and the least-energy setting was taken.
    """

    device_id: str
    cut: int
    threshold: float
    latency_s: float
    energy_j: float
    accuracy: float
    local_fraction: float
    objective: float
    reason: str
    degraded: Degraded
    exit_fraction: Mapping[int, float] = field(default_factory=dict)
    accuracy_met: bool = True
    forced: bool = False
    latency_ref_s: float = 1.0
    energy_ref_j: float = 1.0

    @property
    def setting(self) -> Setting:
        return (self.cut, self.threshold)


@dataclass(frozen=True, slots=True)
class InferencePlan:
    """A serving plan: one :class:`ServingAssignment` per device, and the objective it was made
    for. Means are over devices, each weighed equally (as if every device served the same
    request rate)."""

    assignments: tuple[ServingAssignment, ...]
    alpha: float
    accuracy_floor: float
    full_accuracy: float
    battery_floor: float

    @property
    def settings(self) -> Mapping[str, Setting]:
        return {a.device_id: a.setting for a in self.assignments}

    @property
    def cuts(self) -> Mapping[str, int]:
        return {a.device_id: a.cut for a in self.assignments}

    @property
    def reasons(self) -> Mapping[str, str]:
        return {a.device_id: a.reason for a in self.assignments}

    @property
    def objective(self) -> float:
        """The devices' objectives summed (each device's requests are its own problem)."""
        return sum(a.objective for a in self.assignments)

    @property
    def mean_latency_s(self) -> float:
        return _mean([a.latency_s for a in self.assignments])

    @property
    def mean_energy_j(self) -> float:
        return _mean([a.energy_j for a in self.assignments])

    @property
    def mean_accuracy(self) -> float:
        return _mean([a.accuracy for a in self.assignments])

    def assignment(self, device_id: str) -> ServingAssignment:
        for item in self.assignments:
            if item.device_id == device_id:
                return item
        raise PlanningError(device_id, "is not in the plan")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
