"""The bench's prices before the runs: the emulated boards as their agents will report them."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.settings import DeviceSettings
from experiments.pricing import scenario_plan_inputs
from schemas import ModelInfo
from testbed.emulation import Emulation
from testbed.scenario import load_scenario

TINY = Path(__file__).parents[1] / "ares" / "data" / "tiny.yaml"


@pytest.mark.parametrize("model", ["small_cnn", "tests.user_models:pixel_net"])
def test_pricing_sees_each_board_as_its_agent_reports_it(model: str) -> None:
    scenario = load_scenario(TINY).model_copy(update={"model": model})
    inputs = scenario_plan_inputs(scenario, alpha=0.5, seed=0, batches_per_round=2)
    info = ModelInfo(name=model, input_shape=(1, 8, 8), num_classes=10)
    for device in scenario.devices:
        # What a live agent does: prepare the board, then report its per-block times (the
        # host's measured ones, here nonsense, play no part on an emulated board).
        emulation = Emulation(
            DeviceSettings(
                device_id=device.id, profile=device.profile, time_scale=scenario.time_scale
            )
        )
        emulation.prepare(info)
        blocks = inputs.blocks
        reported = emulation.block_times(
            (9.0,) * blocks, (9.0,) * blocks, scenario.batch_size, model
        )
        compute = inputs.readings[device.id].compute
        assert compute is not None
        assert (compute.forward_s, compute.backward_s) == reported
    objectives = inputs.objectives()
    assert objectives["fl"] == pytest.approx(1.0)
    assert objectives["ares"] is not None
