"""ARES split planner: device, server and model profiles in, a split plan out.

Pure code: no I/O, no clock, no asyncio. Typical use::

    table = cost_table(devices, server, model)
    plan = stabilise(previous_cuts, solve(table, alpha), table, alpha)
"""

from planner.cost import CostTable, batches_per_round, cost_table, memory_needed_bytes
from planner.errors import PlanningError
from planner.objective import (
    DEFAULT_BATTERY_FLOOR,
    DeviceMode,
    LowBatteryPolicy,
    Normalisation,
    Objective,
    build_objective,
    energy_weight,
)
from planner.plan import Assignment, Plan, plan_for_cuts
from planner.profiles import DeviceProfile, ModelProfile, ServerProfile, per_block_from_cumulative
from planner.solver import brute_force, solve
from planner.stability import stabilise
from planner.wire_choice import WireOption, WireTables, solve_with_formats, wire_tables

__all__ = [
    "DEFAULT_BATTERY_FLOOR",
    "Assignment",
    "CostTable",
    "DeviceMode",
    "DeviceProfile",
    "LowBatteryPolicy",
    "ModelProfile",
    "Normalisation",
    "Objective",
    "Plan",
    "PlanningError",
    "ServerProfile",
    "WireOption",
    "WireTables",
    "batches_per_round",
    "brute_force",
    "build_objective",
    "cost_table",
    "energy_weight",
    "memory_needed_bytes",
    "per_block_from_cumulative",
    "plan_for_cuts",
    "solve",
    "solve_with_formats",
    "stabilise",
    "wire_tables",
]
