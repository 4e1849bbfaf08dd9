"""`ares plan`, run in-process through a parser built with add_plan_parser."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from ares.plan_command import add_plan_parser, example_names, run_plan

# Rounding slack: the baselines are priced by plan_for_cuts, the plan by the solver's sweep.
TOLERANCE = 1e-9


class _Exact(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DeviceEntry(_Exact):
    split: int | None = Field(ge=1)
    time_s: float = Field(ge=0)
    energy_j: float = Field(ge=0)


class Priced(_Exact):
    objective: float = Field(ge=0)
    max_time_s: float = Field(ge=0)
    total_energy_j: float = Field(ge=0)


class SplitPriced(Priced):
    split: int = Field(ge=1)


class Baselines(_Exact):
    fl: Priced | None
    sl_best: SplitPriced | None


class PlanOutput(_Exact):
    alpha: float = Field(ge=0, le=1)
    devices: dict[str, DeviceEntry]
    objective: float = Field(ge=0)
    max_time_s: float = Field(ge=0)
    total_energy_j: float = Field(ge=0)
    baselines: Baselines


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ares")
    add_plan_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["plan", *argv])
    assert args.handler is run_plan
    status = args.handler(args)  # as ares.cli.main calls it
    assert isinstance(status, int)
    return status


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert _run(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_examples_are_found_by_name() -> None:
    assert {"paper-testbed", "mixed-links", "two-devices"} <= set(example_names())


def test_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    output = PlanOutput.model_validate(_json(capsys, "paper-testbed"))
    assert output.alpha == 0.5
    assert list(output.devices) == [
        "pi3b",
        "nano-maxn",
        "nano-5w",
        "nano-5w-1core",
        "nano-5w-3core",
    ]
    assert output.max_time_s == max(d.time_s for d in output.devices.values())
    assert output.total_energy_j == pytest.approx(sum(d.energy_j for d in output.devices.values()))
    assert output.baselines.fl is not None
    assert output.baselines.sl_best is not None
    assert 1 <= output.baselines.sl_best.split < 7  # classic split learning keeps a server part


@pytest.mark.parametrize("alpha", ["0", "0.5", "1"])
def test_plan_never_worse_than_the_baselines(
    capsys: pytest.CaptureFixture[str], alpha: str
) -> None:
    output = PlanOutput.model_validate(_json(capsys, "paper-testbed", "--alpha", alpha))
    assert output.alpha == float(alpha)
    fl, sl = output.baselines.fl, output.baselines.sl_best
    assert fl is not None
    assert sl is not None
    assert output.objective <= fl.objective + TOLERANCE
    assert output.objective <= sl.objective + TOLERANCE
    # Priced on the plan's own scale, federated learning is the reference: 1 on mains power.
    assert fl.objective == pytest.approx(1.0)


def test_what_if_links_and_wire_dtype_override_the_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_filed = PlanOutput.model_validate(_json(capsys, "paper-testbed", "--alpha", "1"))
    # The paper counted 1 byte per float32: its 20 Mbit/s carried what 80 Mbit/s carries here.
    fast = PlanOutput.model_validate(
        _json(capsys, "paper-testbed", "--alpha", "1", "--link-mbps", "80")
    )
    assert fast.baselines.fl is not None
    assert as_filed.baselines.fl is not None
    assert fast.baselines.fl.max_time_s == as_filed.baselines.fl.max_time_s  # nothing crosses
    assert fast.max_time_s < 0.6 * as_filed.max_time_s  # the Pi now offloads VGG5's heavy part
    assert fast.devices["pi3b"].split == 2  # was 6: it sends the pooled first block's output
    assert as_filed.devices["pi3b"].split == 6
    half = PlanOutput.model_validate(
        _json(capsys, "paper-testbed", "--alpha", "1", "--link-mbps", "40", "--wire-dtype",
              "float16")
    )  # fmt: skip
    # Half the bytes at half the rate: activations and gradients take as long as float32 at
    # 80 Mbit/s; only the device part's weights (always float32, once a round) take longer.
    assert half.max_time_s == pytest.approx(fast.max_time_s, rel=1e-3)
    assert half.max_time_s > fast.max_time_s
    assert _run("paper-testbed", "--link-mbps", "80", "--wire-dtype", "float16") == 0
    assert "(links at 80 Mbit/s, wire float16)" in capsys.readouterr().out


def test_energy_only_plan_saves_energy(capsys: pytest.CaptureFixture[str]) -> None:
    output = PlanOutput.model_validate(_json(capsys, "paper-testbed", "--alpha", "0"))
    assert output.baselines.fl is not None
    assert output.total_energy_j < output.baselines.fl.total_energy_j


def test_sweep_alpha_json_has_eleven_plans(capsys: pytest.CaptureFixture[str]) -> None:
    raw = _json(capsys, "paper-testbed", "--sweep-alpha")
    outputs = [PlanOutput.model_validate(o) for o in raw]
    assert [o.alpha for o in outputs] == [i / 10 for i in range(11)]
    for output in outputs:
        for baseline in (output.baselines.fl, output.baselines.sl_best):
            assert baseline is not None
            assert output.objective <= baseline.objective + TOLERANCE


def test_sweep_alpha_text_has_eleven_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("mixed-links", "--sweep-alpha") == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.strip()[:3] in {f"{i / 10:.1f}" for i in range(11)}]
    assert len(rows) == 11
    assert "nano-5w-1core" in lines[2]  # the header names every device


def test_text_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run("paper-testbed", "--alpha", "1") == 0
    out = capsys.readouterr().out
    for device in ("pi3b", "nano-maxn", "nano-5w", "nano-5w-1core", "nano-5w-3core"):
        assert f"\n{device} " in out
    assert "federated learning (all at cut 7)" in out
    assert "split learning (all at cut" in out
    assert "sets the round time" in out


def test_devices_that_sit_out_have_no_split(capsys: pytest.CaptureFixture[str]) -> None:
    output = PlanOutput.model_validate(
        _json(capsys, "mixed-links", "--battery-floor", "0.4", "--low-battery", "sit_out")
    )
    assert output.devices["nano-5w"].split is None
    assert all(d.split is not None for k, d in output.devices.items() if k != "nano-5w")


def test_reads_yaml_and_json_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = {
        "model": "vgg5",
        "server": "paper-edge",
        "devices": [{"id": "a", "profile": "jetson-nano-maxn", "uplink_mbps": 5, "samples": 100}],
    }
    (tmp_path / "plan.json").write_text(json.dumps(document))
    (tmp_path / "plan.yml").write_text(
        "model: vgg5\nserver: paper-edge\ndevices:\n"
        "  - {id: a, profile: jetson-nano-maxn, uplink_mbps: 5, samples: 100}\n"
    )
    from_json = _json(capsys, str(tmp_path / "plan.json"))
    from_yaml = _json(capsys, str(tmp_path / "plan.yml"))
    assert from_json == from_yaml
    assert list(from_json["devices"]) == ["a"]


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert _run(*argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("ares plan: ")
    return lines[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = _fails(capsys, str(tmp_path / "nope.yaml"))
    assert "no such file" in message
    assert "paper-testbed" in message  # lists the examples


def test_bad_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: vgg5\ndevices: [\n")
    assert "not valid YAML: line 3" in _fails(capsys, str(bad))


def test_bad_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "vgg5",}')
    assert "not valid JSON" in _fails(capsys, str(bad))


def test_planning_error_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "plan.yaml"
    bad.write_text(
        "model: vgg5\nserver: paper-edge\ndevices:\n"
        "  - {id: a, profile: jetson-nano-maxn, uplink_mbps: 0, samples: 100}\n"
    )
    message = _fails(capsys, str(bad))
    assert message == f"ares plan: {bad}: devices[0].uplink_mbps: must be > 0, got 0"


def test_directory_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not a file" in _fails(capsys, str(tmp_path))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--alpha", "1.5"), "--alpha must lie in [0, 1]"),
        (("--battery-floor", "0"), "--battery-floor must lie in (0, 1]"),
        (("--link-mbps", "0"), "--link-mbps must be > 0"),
    ],
)
def test_bad_flags(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, str], expected: str
) -> None:
    assert expected in _fails(capsys, "paper-testbed", *flags)


def _named_document(model: str, shape: list[int]) -> str:
    return (
        f"model: {{name: '{model}', input_shape: {shape}, num_classes: 10, batch_size: 50}}\n"
        "server: paper-edge\ndefaults: {uplink_mbps: 20, samples: 1000}\ndevices:\n"
        "  - {id: pi, profile: raspberry-pi-3b+}\n  - {id: nano, profile: jetson-nano-maxn}\n"
    )


@pytest.mark.parametrize(
    ("model", "shape", "blocks"),
    [
        ("mobilenetv2", [3, 32, 32], 20),
        ("resnet18", [3, 32, 32], 10),
        ("tests.user_models:pixel_net", [1, 8, 8], 4),
    ],
)
def test_plans_a_model_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, shape: list[int], blocks: int
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(_named_document(model, shape))
    output = PlanOutput.model_validate(_json(capsys, str(path)))
    assert set(output.devices) == {"pi", "nano"}
    assert all(1 <= d.split <= blocks for d in output.devices.values() if d.split is not None)
    # Federated learning may not fit: MobileNetV2 keeps ~8 MB a sample for backward, beyond the
    # Pi's 512 MiB at batch 50.
    for baseline in (output.baselines.fl, output.baselines.sl_best):
        assert baseline is None or output.objective <= baseline.objective + TOLERANCE
    assert _run(str(path)) == 0
    assert f"2 devices, {blocks} blocks" in capsys.readouterr().out


def test_a_model_by_name_that_does_not_build_is_one_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(_named_document("mobilenetv3", [3, 32, 32]))
    assert "model: unknown model 'mobilenetv3'" in _fails(capsys, str(path))
    path.write_text(_named_document("cnn1d", [3, 32, 32]))  # a series model given images
    assert "cnn1d takes inputs of rank 2" in _fails(capsys, str(path))


def test_plans_a_scenario_with_another_model(tmp_path: Path, capsys) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        "name: lab\nmodel: mobilenetv2\ndataset: synthetic\nbatch_size: 20\n"
        "devices:\n  - {id: pi, profile: raspberry-pi-3b+}\n"
        "  - {id: nano, profile: jetson-nano-maxn}\n"
    )
    output = PlanOutput.model_validate(_json(capsys, str(path)))
    assert set(output.devices) == {"pi", "nano"}
    assert _run(str(path)) == 0
    assert "2 devices, 20 blocks" in capsys.readouterr().out
