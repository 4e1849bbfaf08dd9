"""The cost model's prices for a scenario before any run: what the edge's planner would know
of its devices after registration, and from it sl-best's cut (the one shared cut it scores best)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from schemas import wire_itemsize
from schemas.weight_delta import weight_scale
from testbed.scenario import Scenario, ScheduleSpec, samples_per_round
from testbed.schedule import parse_schedule

if TYPE_CHECKING:  # torch loads only when a bench runs, not with every command
    from edge_service.planning import DeviceReadings, PlanDefaults
    from experiments.options import BenchOptions
    from splitnn.profiling import BlockProfile
    from testbed.emulation import Emulation

__all__ = ["ScenarioPlanInputs", "SlChoice", "choose_sl_cut", "scenario_plan_inputs"]


@dataclass(frozen=True)
class SlChoice:
    """sl-best's cut, how it was chosen, and the cost model's objective for each candidate."""

    cut: int
    how: str
    # The cost model's objective: "ares", "fl", "cut 1", ...; None where infeasible.
    predicted: dict[str, float | None] = field(default_factory=dict)


def choose_sl_cut(options: BenchOptions) -> SlChoice:
    """The single cut for every device that minimises the planner's objective for the scenario.

    Priced the way the edge prices a plan (:class:`edge_service.planning.SplitPlanner`, the same
    objective and normalisation by federated learning), from what the edge would know after
    registration: each emulated board's compute profile (its per-block times, as the agent
    reports them: the paper's for VGG5, else the model's block costs at the board's fitted
    rates), its power figures, this host's per-block times for the edge's
    part, the scenario's initial link rates and each device's samples per round. Only cuts
    below L are candidates: at L nothing is split.
    """
    inputs = scenario_plan_inputs(
        options.scenario,
        alpha=options.effective_alpha,
        seed=options.seed,
        batches_per_round=options.batches_per_round,
    )
    blocks = inputs.blocks
    if options.sl_cut is not None:
        if not 1 <= options.sl_cut < blocks:
            raise ValueError(f"--sl-cut must lie in 1..{blocks - 1} for {options.scenario.model}")
        return SlChoice(options.sl_cut, "given with --sl-cut", inputs.objectives())
    predicted = inputs.objectives()
    candidates = {
        cut: value for cut in range(1, blocks) if (value := predicted[f"cut {cut}"]) is not None
    }
    if not candidates:
        raise ValueError(f"no cut below {blocks} is feasible for every device of the scenario")
    cut = min(candidates, key=lambda c: candidates[c])
    how = (
        f"chosen before the runs by the cost model: of cuts 1..{blocks - 1} for every device, "
        f"cut {cut} has the lowest predicted objective ({candidates[cut]:.3f} at alpha "
        f"{options.effective_alpha:g}, fl = 1.0), with the emulated boards' compute and power, "
        "this host's times for the edge's part and the scenario's initial link rates"
    )
    return SlChoice(cut, how, predicted)


@dataclass(frozen=True)
class ScenarioPlanInputs:
    """What the edge's planner would know about a scenario's devices after registration."""

    model: str
    blocks: int
    alpha: float
    server: BlockProfile
    readings: dict[str, DeviceReadings]
    defaults: PlanDefaults

    def objective(self, policy: str, cut: int = 1) -> float | None:
        """The plan's objective for ``policy`` (``sl`` at ``cut``); None if infeasible."""
        from edge_service.planning import SplitPlanner
        from planner import PlanningError

        planner = SplitPlanner(
            policy=policy,
            alpha=self.alpha,
            model_name=self.model,
            server=self.server,
            defaults=self.defaults,
            fixed_split=cut,
            fixed_splits={},
        )
        try:
            value = planner.plan(self.readings).objective
        except PlanningError:
            return None
        return value if math.isfinite(value) else None

    def objectives(self) -> dict[str, float | None]:
        """ARES's plan, federated learning and every shared cut below L, on one scale."""
        return {
            "ares": self.objective("ares"),
            "fl": self.objective("fl"),
            **{f"cut {cut}": self.objective("sl", cut) for cut in range(1, self.blocks)},
        }


def scenario_plan_inputs(
    scenario: Scenario, *, alpha: float, seed: int, batches_per_round: int | None
) -> ScenarioPlanInputs:
    """Profile this host for the edge's part and price each device as its agent would report.

    Torch runs on one thread, as the demo runs the edge and the agents.
    """
    import torch

    from device_agent.settings import DeviceSettings
    from edge_service.planning import DeviceReadings, PlanDefaults
    from edge_service.settings import EdgeSettings
    from schemas import ComputeProfile, ModelInfo
    from splitnn.datasets import load_dataset
    from splitnn.models import ModelSpec, num_blocks
    from splitnn.profiling import profile_blocks
    from testbed.emulation import Emulation

    train = load_dataset(scenario.dataset, "train", data_dir=scenario.data_dir, seed=seed)
    spec = ModelSpec(scenario.model, train.input_shape, train.num_classes)
    torch.set_num_threads(1)
    host = profile_blocks(spec, scenario.batch_size)
    samples = samples_per_round(scenario, seed=seed, batches_per_round=batches_per_round)
    info = ModelInfo(name=spec.name, input_shape=spec.input_shape, num_classes=spec.num_classes)
    emulations: dict[str, Emulation] = {}  # per board
    readings = {}
    # The runs' edge sends the weights on its default weight wire (scenarios do not set it).
    weights = weight_scale(EdgeSettings(checkpoint=None).weight_wire)
    for device in scenario.devices:
        emulation = emulations.get(device.profile)
        if emulation is None:
            emulation = Emulation(
                DeviceSettings(
                    device_id=device.id, profile=device.profile, time_scale=scenario.time_scale
                )
            )
            emulation.prepare(info)  # as the agent does before it reports its profile
            emulations[device.profile] = emulation
        forward, backward = emulation.block_times(
            host.forward_s, host.backward_s, scenario.batch_size, spec.name
        )
        downlink = device.downlink if device.downlink is not None else device.uplink
        readings[device.id] = DeviceReadings(
            samples=samples[device.id],
            compute=ComputeProfile(
                model=spec.name,
                batch_size=scenario.batch_size,
                forward_s=forward,
                backward_s=backward,
            ),
            power=emulation.power(),
            memory_bytes=emulation.profile.memory_bytes,
            uplink_bps=_initial_bps(device.uplink, scenario.time_scale),
            downlink_bps=_initial_bps(downlink, scenario.time_scale),
            link_source="scenario",
            wire_itemsize=wire_itemsize(scenario.wire_dtype),
            weight_scale=weights,
        )
    return ScenarioPlanInputs(
        model=spec.name,
        blocks=num_blocks(spec),
        alpha=alpha,
        server=host,
        readings=readings,
        # The edge's default assumptions for what a device does not declare.
        defaults=PlanDefaults.from_settings(EdgeSettings(checkpoint=None)),
    )


def _initial_bps(schedule: ScheduleSpec, time_scale: float) -> float:
    return parse_schedule(schedule).scaled(time_scale).initial_mbps * 1e6
