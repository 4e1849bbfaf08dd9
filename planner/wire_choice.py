"""Each device's wire format chosen with its cut, as one decision.

A format changes a device's row of the cost table: fewer bytes cross the link (``wire_scale``)
for some encode and decode time (``codec_s_per_byte``), and a lossy format is only allowed at the
cuts where its measured accuracy cost is within the bound (``WireOption.cuts``; the edge
measures it). So a device's options are (cut, format) pairs rather than cuts.

Why the exact solver still applies. :func:`planner.solve`'s threshold sweep only assumes that
devices are coupled through the max of their times; it never asks what a column means. Laying a
device's formats side by side (column ``(cut - 1) * F + k`` is cut ``cut`` in format ``k``) gives
a table the solver optimises exactly over every combination of cuts and formats. Cut L carries
nothing, so every format prices it alike and the reference (federated learning) is unchanged.

Hysteresis works on cuts (it prices moving blocks), so the optimum is then folded back into a
cuts-only table: each cell takes the candidate's format at the candidate's cut and, elsewhere, the
format that adds least to J on its own (``alpha * t / T_ref + (1 - alpha) * w * e / E_ref``). The
candidate stays optimal in that table, and a device hysteresis keeps on its previous cut travels
in that cut's best format.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from planner.cost import CostTable, cost_table
from planner.errors import PlanningError
from planner.objective import (
    DEFAULT_BATTERY_FLOOR,
    LowBatteryPolicy,
    Normalisation,
    build_objective,
)
from planner.plan import Assignment, Plan, build_plan
from planner.profiles import DeviceProfile, ModelProfile, ServerProfile
from planner.solver import brute_force, solve
from planner.stability import stabilise

__all__ = ["WireOption", "WireTables", "solve_with_formats", "wire_tables"]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class WireOption:
    """One format a device may use, what it costs, and where its accuracy cost is allowed.

    ``wire_scale``: wire bytes per float32 byte of activations and gradients (int8: 0.25).
    ``codec_s_per_byte`` / ``edge_codec_s_per_byte``: the device's and the edge's measured
    encode + decode seconds per float32 byte crossing. ``cuts``: the cuts where the format's
    measured accuracy cost is within the bound (None: every cut; cut L is always allowed, since
    nothing crosses there). ``held_back``: why it is not allowed elsewhere, for the plan's reasons.
    """

    name: str
    wire_scale: float
    codec_s_per_byte: float = 0.0
    edge_codec_s_per_byte: float = 0.0
    cuts: frozenset[int] | None = None
    held_back: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise PlanningError("wire option", "needs a name")
        if not self.wire_scale > 0:
            raise PlanningError(self.name, f"wire_scale must be > 0, got {self.wire_scale!r}")


@dataclass(frozen=True, slots=True, eq=False)
class WireTables:
    """Every device's time and energy at every (cut, format): ``time_s[device, cut - 1, k]`` is
    +inf where device cannot use ``formats[k]`` at that cut."""

    formats: tuple[str, ...]
    time_s: FloatArray  # devices x cuts x formats
    energy_j: FloatArray
    base: CostTable  # each device in its first option: links, powers, battery, weights per block
    options: Mapping[str, tuple[WireOption, ...]]

    @property
    def expanded(self) -> CostTable:
        """The (cut, format) pairs as the columns of one table, cut-major."""
        n, cuts, formats = self.time_s.shape
        return dataclasses.replace(
            self.base,
            time_s=self.time_s.reshape(n, cuts * formats),
            energy_j=self.energy_j.reshape(n, cuts * formats),
            param_bytes=(0,) * (cuts * formats),  # only the solver reads this table
        )

    def cell(self, device_id: str, cut: int, fmt: str) -> tuple[float, float]:
        """Time and energy of one device at one cut in one format."""
        row, k = self.base.row(device_id), self.formats.index(fmt)
        return float(self.time_s[row, cut - 1, k]), float(self.energy_j[row, cut - 1, k])


def wire_tables(
    devices: Sequence[DeviceProfile],
    server: ServerProfile,
    model: ModelProfile,
    options: Mapping[str, Sequence[WireOption]],
) -> WireTables:
    """Price every device at every cut in each of its options (its first option is its default).

    A device missing from ``options`` has one: the format its profile already describes.
    """
    if not devices:
        raise PlanningError("devices", "needs at least one device")
    chosen: dict[str, tuple[WireOption, ...]] = {}
    for device in devices:
        own = tuple(options.get(device.device_id, ()))
        if not own:
            own = (WireOption("as profiled", device.wire_scale, device.codec_s_per_byte,
                              device.edge_codec_s_per_byte),)  # fmt: skip
        names = [o.name for o in own]
        if len(set(names)) != len(names):
            raise PlanningError(device.device_id, f"lists a wire format twice: {names}")
        chosen[device.device_id] = own
    unknown = sorted(set(options) - {d.device_id for d in devices})
    if unknown:
        raise PlanningError("options", f"unknown devices {unknown}")
    formats = tuple(dict.fromkeys(o.name for own in chosen.values() for o in own))
    cuts = model.num_blocks
    time = np.empty((len(devices), cuts, len(formats)))
    energy = np.empty_like(time)
    firsts_share_one = all(chosen[d.device_id][0].name == formats[0] for d in devices)
    base: CostTable | None = None
    # One table per format over every device (a device without the format is priced in its
    # first option and masked out): a few vectorised tables, not one per device and format.
    for k, name in enumerate(formats):
        allowed = np.zeros((len(devices), cuts), dtype=bool)
        priced = []
        for row, device in enumerate(devices):
            own = chosen[device.device_id]
            option = next((o for o in own if o.name == name), None)
            priced.append(_priced_as(device, option or own[0]))
            if option is None:
                continue
            if option.cuts is None:
                allowed[row] = True
            else:
                allowed[row, [c - 1 for c in option.cuts if c <= cuts]] = True
                allowed[row, cuts - 1] = True  # nothing crosses at cut L: every format alike
        table = cost_table(priced, server, model)
        if k == 0 and firsts_share_one:
            base = table  # every device's first option: its default
        time[:, :, k] = np.where(allowed, table.time_s, np.inf)
        energy[:, :, k] = np.where(allowed, table.energy_j, np.inf)
    if base is None:
        base = cost_table([_priced_as(d, chosen[d.device_id][0]) for d in devices], server, model)
    for array in (time, energy):
        array.setflags(write=False)
    return WireTables(formats, time, energy, base, chosen)


def solve_with_formats(
    wire: WireTables,
    alpha: float,
    *,
    previous: Mapping[str, int] | None = None,
    move_s_per_byte: float | None = None,
    battery_floor: float = DEFAULT_BATTERY_FLOOR,
    low_battery: LowBatteryPolicy = "least_energy",
    exhaustive: bool = False,
) -> Plan:
    """The optimal cut and format per device, then hysteresis on the cuts against ``previous``.

    ``Plan.formats`` names each participating device's format; its reason says why.
    ``exhaustive`` solves by brute force instead (tests).
    """
    # The reference (federated learning) is the same in every format: nothing crosses at cut L.
    reference = build_objective(
        wire.base, alpha, battery_floor=battery_floor, low_battery=low_battery
    )
    normalisation = reference.normalisation
    solver = brute_force if exhaustive else solve
    best = solver(
        wire.expanded, alpha, battery_floor=battery_floor, low_battery=low_battery,
        normalisation=normalisation,
    )  # fmt: skip
    n_formats = len(wire.formats)
    candidate = {
        a.device_id: divmod(a.cut - 1, n_formats) for a in best.assignments if a.cut is not None
    }
    table, picks = _folded(wire, alpha, normalisation, reference.weights, candidate)
    objective = build_objective(
        table, alpha, battery_floor=battery_floor, low_battery=low_battery,
        normalisation=normalisation,
    )  # fmt: skip
    index = np.array(
        [candidate[d][0] if d in candidate else -1 for d in table.device_ids], dtype=np.int64
    )
    plan = build_plan(objective, index, [best.reasons[d] for d in table.device_ids])
    if previous is not None:
        plan = stabilise(previous, plan, table, alpha, move_s_per_byte=move_s_per_byte)
    return _with_formats(plan, wire, picks)


def _priced_as(device: DeviceProfile, option: WireOption) -> DeviceProfile:
    return dataclasses.replace(
        device,
        wire_scale=option.wire_scale,
        codec_s_per_byte=option.codec_s_per_byte,
        edge_codec_s_per_byte=option.edge_codec_s_per_byte,
    )


def _folded(
    wire: WireTables,
    alpha: float,
    normalisation: Normalisation,
    weights: FloatArray,
    candidate: Mapping[str, tuple[int, int]],
) -> tuple[CostTable, IntArray]:
    """A cuts-only table: the candidate's format at its cut, elsewhere each cell's best format."""
    with np.errstate(invalid="ignore"):  # inf * 0 where alpha is 0 or 1
        alone = np.nan_to_num(
            alpha * wire.time_s / normalisation.time_s
            + (1.0 - alpha) * weights[:, None, None] * wire.energy_j / normalisation.energy_j,
            nan=np.inf,
        )
    # Ties go to the earlier format: a device's first option is its default.
    picks: IntArray = np.argmin(alone, axis=2).astype(np.int64)
    for device_id, (column, k) in candidate.items():
        picks[wire.base.row(device_id), column] = k
    rows = np.arange(picks.shape[0])[:, None]
    columns = np.arange(picks.shape[1])[None, :]
    table = dataclasses.replace(
        wire.base,
        time_s=wire.time_s[rows, columns, picks],
        energy_j=wire.energy_j[rows, columns, picks],
    )
    return table, picks


def _with_formats(plan: Plan, wire: WireTables, picks: IntArray) -> Plan:
    """``plan`` with each participant's format and the reason for it."""
    formats: dict[str, str] = {}
    assignments: list[Assignment] = []
    for item in plan.assignments:
        if item.cut is None:
            assignments.append(item)
            continue
        row = wire.base.row(item.device_id)
        fmt = wire.formats[int(picks[row, item.cut - 1])]
        formats[item.device_id] = fmt
        why = _format_reason(wire, item.device_id, item.cut, fmt)
        assignments.append(dataclasses.replace(item, reason=f"{item.reason}; {why}"))
    return dataclasses.replace(plan, assignments=tuple(assignments), formats=formats)


def _format_reason(wire: WireTables, device_id: str, cut: int, fmt: str) -> str:
    options = wire.options[device_id]
    if cut == wire.base.num_cuts:
        return "nothing crosses the link at this cut"
    held = [
        o.held_back for o in options if o.held_back and o.cuts is not None and cut not in o.cuts
    ]
    default = options[0].name
    if fmt == default:
        why = f"wire {fmt}: no other allowed format is cheaper here"
    else:
        time, energy = wire.cell(device_id, cut, fmt)
        time_0, energy_0 = wire.cell(device_id, cut, default)
        saves = f"{time_0 - time:.3g} s and {energy_0 - energy:.3g} J a round less than {default}"
        why = f"wire {fmt}: " + (saves if np.isfinite(time_0) else f"{default} is held back here")
    return why + (f" ({'; '.join(held)})" if held else "")
