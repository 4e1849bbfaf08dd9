"""``ares plan FILE``: the ARES split plan for a described set of devices, with no broker or model.

FILE is a YAML (``.yaml``/``.yml``) or JSON plan document (format: :mod:`planner.inputs`), or the
name of an example shipped in ``planner/examples`` (``ares plan paper-testbed``). A testbed scenario
(:mod:`testbed.scenario`, a file or a shipped name as ``ares demo --scenario`` takes it) is planned
for its devices as its run starts (:func:`scenario_document`). The plan is
printed next to two baselines priced with the same objective and normalisation: federated learning
(every participating device keeps all blocks, cut L) and classic split learning (the one cut below L
shared by all participating devices that scores best). Devices the battery rule sits out are left
out of the baselines too, so all three plans train the same devices.

Exit status: 0, or 2 with one line on stderr for a missing or unparsable file or a bad setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from planner import (
    DEFAULT_BATTERY_FLOOR,
    CostTable,
    LowBatteryPolicy,
    Plan,
    PlanningError,
    plan_for_cuts,
    solve,
)
from planner.inputs import BuiltModel, plan_inputs_from_dict
from planner.plan_document import NamedModel
from schemas.documents import DocumentError, read_document
from schemas.errors import AresError
from schemas.messages import WIRE_DTYPES
from testbed.scenario import (
    Scenario,
    load_scenario,
    samples_per_round,
    scenario_from_data,
    shipped_scenarios,
)
from testbed.schedule import parse_schedule

__all__ = ["add_plan_parser", "example_names", "run_plan"]

_EXAMPLE_SUFFIXES = (".yaml", ".yml", ".json")
# Tenths, rounded so that the printed and JSON alphas read 0.3, not 0.30000000000000004.
_SWEEP = tuple(round(step / 10, 1) for step in range(11))


_DESCRIPTION = (
    "Print the ARES split plan for the devices described in FILE (YAML or JSON, format in "
    "planner/inputs.py) next to federated learning and the best classic split learning cut, "
    "all priced with the same objective. FILE may also be a testbed scenario (as ares demo "
    "--scenario takes it), or name a shipped example or scenario."
)


class PlanCommandError(AresError):
    """A problem with the command's input, reported as one line (exit status 2)."""


def add_plan_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``plan`` on an ``add_subparsers()`` result, with ``handler=run_plan``."""
    parser = subparsers.add_parser(
        "plan",
        help="print the ARES split plan for a device description (no broker needed)",
        description=_DESCRIPTION,
    )
    parser.add_argument(
        "file",
        metavar="FILE",
        help="YAML or JSON plan document or scenario, or a shipped example ("
        + ", ".join(example_names())
        + ") or scenario ("
        + ", ".join(shipped_scenarios())
        + ")",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="energy sensitivity in [0, 1]: 0 = device energy only, 1 = round time only",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--sweep-alpha", action="store_true", help="plan at alpha 0, 0.1, ..., 1 (ignores --alpha)"
    )
    parser.add_argument(
        "--battery-floor",
        type=float,
        default=DEFAULT_BATTERY_FLOOR,
        help="battery fraction below which --low-battery applies (default %(default)s)",
    )
    parser.add_argument(
        "--low-battery",
        choices=["least_energy", "sit_out"],
        default="least_energy",
        help="what a device below the floor does (default %(default)s)",
    )
    parser.add_argument(
        "--link-mbps",
        type=float,
        metavar="RATE",
        help="what-if: every device's uplink and downlink at RATE Mbit/s instead of FILE's",
    )
    parser.add_argument(
        "--wire-dtype",
        choices=WIRE_DTYPES,
        help="what-if: activations and gradients on the wire in this dtype instead of FILE's",
    )
    parser.set_defaults(handler=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    """Plan, print, and return the exit status."""
    try:
        _check_flags(args)
        name, data = load_document(args.file)
        table = _table(name, _what_if(data, args))
        what_if = [f"links at {args.link_mbps:g} Mbit/s"] if args.link_mbps else []
        what_if += [f"wire {args.wire_dtype}"] if args.wire_dtype else []
        if what_if:  # say what was overridden wherever the name is shown
            name += f" ({', '.join(what_if)})"
        alphas = _SWEEP if args.sweep_alpha else (args.alpha,)
        outcomes = [_outcome(table, alpha, args) for alpha in alphas]
    except (PlanCommandError, PlanningError, DocumentError, OSError) as exc:
        # One line even where a message spans several (YAML errors do).
        print(f"ares plan: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json:
        reports = [o.to_json() for o in outcomes]
        print(json.dumps(reports if args.sweep_alpha else reports[0], indent=2))
    elif args.sweep_alpha:
        print(_sweep_text(name, table, outcomes))
    else:
        print(_plan_text(name, table, outcomes[0]))
    return 0


# --- input ------------------------------------------------------------------------------------


def _check_flags(args: argparse.Namespace) -> None:
    # Checked here so the message names the flag rather than the planner's argument.
    if not args.sweep_alpha and not 0.0 <= args.alpha <= 1.0:
        raise PlanCommandError(f"--alpha must lie in [0, 1], got {args.alpha:g}")
    if not 0.0 < args.battery_floor <= 1.0:
        raise PlanCommandError(f"--battery-floor must lie in (0, 1], got {args.battery_floor:g}")
    if args.link_mbps is not None and not args.link_mbps > 0:
        raise PlanCommandError(f"--link-mbps must be > 0, got {args.link_mbps:g}")


def _what_if(data: Any, args: argparse.Namespace) -> Any:
    """FILE's document with the --link-mbps and --wire-dtype overrides applied."""
    if not isinstance(data, dict):
        return data  # the planner's parser names the problem
    data = dict(data)
    if args.wire_dtype is not None:
        data["wire_dtype"] = args.wire_dtype
    if args.link_mbps is not None:
        data["defaults"] = {**(data.get("defaults") or {}), "uplink_mbps": args.link_mbps}
        data["defaults"].pop("downlink_mbps", None)  # the downlink follows the uplink
        data["devices"] = [
            {k: v for k, v in d.items() if k not in ("uplink_mbps", "downlink_mbps")}
            if isinstance(d, dict)
            else d
            for d in data.get("devices") or []
        ]
    return data


def _table(name: str, data: Any) -> CostTable:
    try:
        return plan_inputs_from_dict(data, resolve_model=build_model).table()
    except PlanningError as exc:
        raise PlanCommandError(f"{name}: {exc}") from exc


def build_model(section: NamedModel, batch_size: int) -> BuiltModel:
    """A plan document's model by name, built here: its sizes and what its blocks compute and
    move (torch loads only for such a document)."""
    from splitnn.errors import SplitError
    from splitnn.models import ModelSpec
    from testbed.block_costs import block_costs, model_profile

    try:
        spec = ModelSpec(section.name, section.input_shape, section.num_classes)
        return BuiltModel(model_profile(spec, batch_size), block_costs(spec))
    except SplitError as exc:
        raise PlanningError("model", str(exc)) from None


def example_names() -> list[str]:
    """Names of the shipped examples, without suffix."""
    return sorted(
        entry.name.rsplit(".", 1)[0]
        for entry in _examples().iterdir()
        if entry.name.endswith(_EXAMPLE_SUFFIXES)
    )


def load_document(spec: str) -> tuple[str, Any]:
    """Read and parse FILE (a path, or a shipped example's or scenario's name); returns (display
    name, plan document). A scenario, named or in a file, becomes the plan document of its
    devices (:func:`scenario_document`)."""
    path = Path(spec)
    if path.is_file():
        data = read_document(path, spec)
        if isinstance(data, dict) and "name" in data:  # a scenario: plan documents have no name
            scenario = scenario_from_data(data, spec)
            return f"{spec} (scenario {scenario.name})", scenario_document(scenario)
        return spec, data
    if (example := _find_example(spec)) is not None:
        return example.name, read_document(example, spec)
    if path.exists():
        raise PlanCommandError(f"{spec}: not a file")
    if spec in shipped_scenarios():
        return f"{spec} (scenario)", scenario_document(load_scenario(spec))
    raise PlanCommandError(
        f"{spec}: no such file, nor a shipped example ({', '.join(example_names())}) "
        f"or scenario ({', '.join(shipped_scenarios())})"
    )


def scenario_document(scenario: Scenario) -> dict[str, Any]:
    """The plan document for a scenario's devices as its run starts, on the boards' own clock.

    Each emulated board is the planner's built-in one (both come from the paper's figures, and
    price a model other than the paper's VGG5 alike: planner.compute), on the link rate its
    schedule starts with, training the samples a round of the scenario processes; the edge is
    the paper's. The model is the planner's VGG5 profile where the scenario trains VGG5 on
    CIFAR-shaped data, else named with the input the scenario's dataset gives it. The
    scenario's time scale only speeds the emulation up, so it plays no part.
    """
    from splitnn.datasets import load_dataset

    samples = samples_per_round(scenario, seed=0, batches_per_round=scenario.batches_per_round)
    train = load_dataset(scenario.dataset, "train", data_dir=scenario.data_dir, seed=0)
    model: str | dict[str, Any] = scenario.model
    if (scenario.model, train.input_shape, train.num_classes) != ("vgg5", (3, 32, 32), 10):
        model = {
            "name": scenario.model,
            "input_shape": list(train.input_shape),
            "num_classes": train.num_classes,
        }
    devices = []
    for device in scenario.devices:
        downlink = device.uplink if device.downlink is None else device.downlink
        entry: dict[str, Any] = {
            "id": device.id,
            "profile": device.profile,
            "samples": samples[device.id],
            "uplink_mbps": parse_schedule(device.uplink).initial_mbps,
            "downlink_mbps": parse_schedule(downlink).initial_mbps,
        }
        if device.battery_wh is not None:
            entry["battery_pct"] = device.battery_pct
        devices.append(entry)
    return {
        "model": model,
        "batch_size": scenario.batch_size,
        "wire_dtype": scenario.wire_dtype,
        "server": "paper-edge",
        "devices": devices,
    }


def _examples() -> Traversable:
    return resources.files("planner").joinpath("examples")


def _find_example(name: str) -> Traversable | None:
    # Only bare names: "configs/x" that does not exist is a missing file, not an example.
    if "/" in name or "\\" in name:
        return None
    names = [name] if name.endswith(_EXAMPLE_SUFFIXES) else [name + s for s in _EXAMPLE_SUFFIXES]
    for candidate in names:
        entry = _examples().joinpath(candidate)
        if entry.is_file():
            return entry
    return None


# --- planning ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """The plan at one alpha and the baselines priced on its scale (None where infeasible)."""

    plan: Plan
    federated: Plan | None
    split: Plan | None
    split_cut: int | None

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "alpha": plan.alpha,
            "devices": {
                a.device_id: {"split": a.cut, "time_s": a.time_s, "energy_j": a.energy_j}
                for a in plan.assignments
            },
            "objective": plan.objective,
            "max_time_s": plan.max_time_s,
            "total_energy_j": plan.total_energy_j,
            "baselines": {
                "fl": None if self.federated is None else _summary(self.federated),
                "sl_best": None
                if self.split is None
                else {"split": self.split_cut, **_summary(self.split)},
            },
        }


def _summary(plan: Plan) -> dict[str, float]:
    return {
        "objective": plan.objective,
        "max_time_s": plan.max_time_s,
        "total_energy_j": plan.total_energy_j,
    }


def _outcome(table: CostTable, alpha: float, args: argparse.Namespace) -> _Outcome:
    low_battery: LowBatteryPolicy = args.low_battery
    plan = solve(table, alpha, battery_floor=args.battery_floor, low_battery=low_battery)
    participants = [d for d in table.device_ids if d not in plan.sitting_out]
    rows = [table.row(d) for d in participants]
    usable = table.feasible[rows]  # participants x cuts

    def shared(cut: int) -> Plan:
        # The plan's own normalisation, so the three objectives are on one scale.
        return plan_for_cuts(
            table,
            alpha,
            dict.fromkeys(participants, cut),
            battery_floor=plan.battery_floor,
            low_battery=plan.low_battery,
            normalisation=plan.normalisation,
            reason=f"baseline: every device at cut {cut}",
        )

    last = table.num_cuts
    federated = shared(last) if usable[:, last - 1].all() else None
    # Classic split learning keeps something on the server, so its cut lies below L.
    candidates = [(shared(cut), cut) for cut in range(1, last) if usable[:, cut - 1].all()]
    best = min(candidates, key=lambda item: item[0].objective, default=None)
    return _Outcome(
        plan=plan,
        federated=federated,
        split=None if best is None else best[0],
        split_cut=None if best is None else best[1],
    )


# --- output -----------------------------------------------------------------------------------


def _plan_text(name: str, table: CostTable, outcome: _Outcome) -> str:
    plan = outcome.plan
    width = max(6, *(len(d) for d in table.device_ids))
    lines = [
        f"{name}: {table.num_devices} devices, {table.num_cuts} blocks, alpha {plan.alpha:g} "
        "(0 = energy only, 1 = time only)",
        "",
        f"{'device':<{width}}  {'split':>5}  {'time s':>10}  {'energy J':>10}  reason",
    ]
    for a in plan.assignments:
        split = "-" if a.cut is None else str(a.cut)
        lines.append(
            f"{a.device_id:<{width}}  {split:>5}  {a.time_s:>10.1f}  {a.energy_j:>10.1f}  "
            f"{a.reason}"
        )
    rows: list[tuple[str, Plan | None]] = [
        ("ARES plan", plan),
        (f"federated learning (all at cut {table.num_cuts})", outcome.federated),
        (
            "split learning (no shared cut)"
            if outcome.split_cut is None
            else f"split learning (all at cut {outcome.split_cut})",
            outcome.split,
        ),
    ]
    label = max(len(r[0]) for r in rows)
    lines += ["", f"{'':<{label}}  {'objective':>9}  {'max time s':>10}  {'energy J':>10}"]
    for title, priced in rows:
        if priced is None:
            lines.append(f"{title:<{label}}  {'n/a':>9}")
        else:
            lines.append(
                f"{title:<{label}}  {priced.objective:>9.4f}  {priced.max_time_s:>10.1f}  "
                f"{priced.total_energy_j:>10.1f}"
            )
    lines.append("(objective: lower is better; both baselines priced on the plan's scale)")
    return "\n".join(lines)


def _sweep_text(name: str, table: CostTable, outcomes: Sequence[_Outcome]) -> str:
    widths = [max(5, len(d)) for d in table.device_ids]
    header = "  ".join(f"{d:>{w}}" for d, w in zip(table.device_ids, widths, strict=True))
    lines = [
        f"{name}: split per device as alpha goes from energy only (0) to time only (1)",
        "",
        f"alpha  {header}  {'objective':>9}  {'fl':>7}  {'sl_best':>13}",
    ]
    for outcome in outcomes:
        plan = outcome.plan
        cuts = [plan.assignment(d).cut for d in table.device_ids]
        splits = "  ".join(
            f"{'-' if c is None else c:>{w}}" for c, w in zip(cuts, widths, strict=True)
        )
        fl = "n/a" if outcome.federated is None else f"{outcome.federated.objective:.4f}"
        sl = (
            "n/a"
            if outcome.split is None
            else f"{outcome.split.objective:.4f} (cut {outcome.split_cut})"
        )
        lines.append(f"{plan.alpha:>5.1f}  {splits}  {plan.objective:>9.4f}  {fl:>7}  {sl:>13}")
    return "\n".join(lines)
