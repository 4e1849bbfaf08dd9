"""The ``ares`` command's settings errors and warnings: they name where a value came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from ares.cli import main


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line an invalid command prints (it must exit with status 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_an_invalid_flag_is_named_as_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["edge", "--alpha", "2"], capsys)
    assert "alpha" in err
    assert "--alpha" in err
    assert "ARES_ALPHA" not in err


def test_an_invalid_variable_is_named_as_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARES_ALPHA", "2")
    err = error_of(["edge"], capsys)
    assert "env ARES_ALPHA" in err
    assert "--alpha" not in err


def test_an_invalid_file_value_is_named_with_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("alpha = 2\n")
    err = error_of(["edge", "--config", str(path)], capsys)
    assert f"file {path}" in err
    assert "--alpha" not in err
    assert "ARES_ALPHA" not in err


def test_a_nested_setting_names_its_flag_and_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    err = error_of(["device", "--id", "pi-1", "--broker", "notaurl"], capsys)
    assert "mqtt.url" in err
    assert "--broker" in err
    monkeypatch.setenv("ARES_MQTT__URL", "notaurl")
    err = error_of(["device", "--id", "pi-1"], capsys)
    assert "env ARES_MQTT__URL" in err


def test_unknown_ares_variables_are_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARES_ROUNDZ", "3")
    monkeypatch.setenv("ARES_NOTHING_LIKE_IT", "1")
    # Variables of the scripts, the broker and the deployment are not settings, but known.
    for name in ("ARES_MOSQUITTO", "ARES_VENV", "ARES_TORCH_VERSION", "ARES_BROKER_DIR"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("ARES_ROUNDS", "3")
    assert main(["config", "show", "edge"]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 2, warnings
    assert any("ARES_ROUNDZ" in w and "ARES_ROUNDS?" in w for w in warnings)
    assert any("ARES_NOTHING_LIKE_IT" in w for w in warnings)


def test_an_unknown_nested_variable_is_refused_by_name(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The [mqtt] table refuses unknown keys itself, so this one is an error, not a warning.
    monkeypatch.setenv("ARES_MQTT__URLL", "mqtt://127.0.0.1:1883")
    err = error_of(["config", "show", "edge"], capsys)
    assert "mqtt.urll" in err
    assert "env ARES_MQTT__URLL" in err


def test_the_help_names_every_built_in_model_and_dataset() -> None:
    from ares.cli import BUILTIN_DATASETS, BUILTIN_MODELS
    from splitnn import dataset_names, model_names

    assert set(BUILTIN_MODELS) <= set(model_names())
    assert set(model_names()) - set(BUILTIN_MODELS) <= {"two_layers_test"}  # a test registers it
    assert set(BUILTIN_DATASETS) == set(dataset_names())


def test_own_data_flags_reach_the_settings(tmp_path: Path) -> None:
    from ares.cli import build_parser, device_settings, edge_settings

    parser = build_parser()
    device, _ = device_settings(
        parser.parse_args(
            ["device", "--id", "cam-1", "--data", str(tmp_path), "--input-shape", "1x28x28",
             "--classes", "cat,dog"]
        )
    )  # fmt: skip
    assert (device.data, device.input_shape) == (tmp_path, (1, 28, 28))
    assert device.classes == ["cat", "dog"]
    assert device.data_source == str(tmp_path)
    edge_argv = ["edge", "--data", str(tmp_path), "--model", "a.b:c"]
    edge, _ = edge_settings(parser.parse_args(edge_argv))
    assert edge.data == tmp_path
    assert edge.model == "a.b:c"


def test_the_edge_writes_the_model_to_serve_where_its_flags_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ares.cli import build_parser, edge_settings

    flags = ["edge", "--artifact", str(tmp_path / "m.ares"), "--exits", "1,3"]
    edge, _ = edge_settings(build_parser().parse_args(flags))
    assert (edge.artifact, edge.exits) == (tmp_path / "m.ares", [1, 3])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edge", "--exits", "1,x"])
    assert "--exits" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "problem"),
    [(["--input-shape", "3x0x32"], "positive"), (["--input-shape", "big"], "3x32x32"),
     (["--classes", "cat,,dog"], "distinct"), (["--classes", "cat,cat"], "distinct")],
)  # fmt: skip
def test_bad_own_data_flags_are_named(
    flags: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from ares.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["device", *flags])
    assert problem in capsys.readouterr().err


def test_the_weight_wire_flag_reaches_the_edge_and_a_bad_one_is_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ares.cli import build_parser, edge_settings

    edge, _ = edge_settings(build_parser().parse_args(["edge", "--weight-wire", "int4-delta"]))
    assert edge.weight_wire == "int4-delta"
    default, _ = edge_settings(build_parser().parse_args(["edge"]))
    assert default.weight_wire == "int8-delta"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["edge", "--weight-wire", "int2-delta"])
    assert "--weight-wire" in capsys.readouterr().err
