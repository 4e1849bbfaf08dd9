"""``ares demo``'s options: every setting checked before anything starts, one precedence
(defaults < config file < ARES_* variables < scenario < flags), and a help that says the defaults.

No process is started here: :func:`ares.demo.run_once` is replaced by one that records what it
was asked to run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ares.demo
from ares.cli import main
from ares.demo import DemoOptions, RunResult
from schemas.report import RunReport

TINY = Path(__file__).with_name("data") / "tiny.yaml"


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[DemoOptions]:
    """The options each demo run was started with (a run that 'finished' with an empty report)."""
    started: list[DemoOptions] = []

    def run_once(options: DemoOptions) -> RunResult:
        started.append(options)
        report = RunReport(
            policy="ares", alpha=0.5, model="m", dataset="d", session="s", started_at=0.0,
            final_accuracy=0.5,
        )  # fmt: skip
        return RunResult(0, 0.1, options.run_dir, report.model_dump())

    monkeypatch.setattr(ares.demo, "run_once", run_once)
    monkeypatch.delenv("ARES_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return started


def refused(argv: list[str], runs: list[DemoOptions], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``ares demo ARGV`` is refused with, before anything started."""
    assert main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert runs == []
    assert captured.out == ""  # no banner, no process ids
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("ares demo: ")
    return lines[0]


def flag_value(argv: list[str] | tuple[str, ...], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


# --- checked before anything starts -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--alpha", "2"], "--alpha"),
        (["--rounds", "-1"], "--rounds"),
        (["--rounds", "0"], "--rounds"),
        (["--batch-size", "0"], "--batch-size"),
        (["--splits", "dev-0=0", "--policy", "sl"], "--splits"),
        (["--broker", "notaurl"], "--broker"),
        (["--timeout", "0"], "--timeout"),
        (["--devices", "0"], "--devices"),
        (["--scenario", "no-such-scenario"], "no-such-scenario"),
    ],
)
def test_a_bad_flag_is_refused_before_anything_starts(
    argv: list[str], named: str, runs: list[DemoOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    line = refused(argv, runs, capsys)
    assert named in line
    assert "ARES_URL" not in line


def test_devices_do_not_combine_with_a_scenario(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    for count in ("0", "3"):
        line = refused(["--scenario", str(TINY), "--devices", count], runs, capsys)
        assert "--devices" in line
        assert "--scenario" in line


def test_a_bad_variable_is_refused_and_named(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARES_ALPHA", "2")
    assert "env ARES_ALPHA" in refused([], runs, capsys)


def test_a_device_setting_the_devices_would_refuse_is_refused_first(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the device agents read it: they would have failed after the start.
    monkeypatch.setenv("ARES_BATTERY_PCT", "500")
    line = refused([], runs, capsys)
    assert "dev-0" in line
    assert "env ARES_BATTERY_PCT" in line


def test_a_missing_mosquitto_is_found_missing_before_anything_starts(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setenv("ARES_MOSQUITTO", str(tmp_path / "no-mosquitto"))
    assert main(["demo"]) == 1
    captured = capsys.readouterr()
    assert (runs, captured.out) == ([], "")
    assert "no-mosquitto" in captured.err
    assert main(["demo", "--broker", "mqtt://broker.lan:1883"]) == 0  # not needed: not checked


# --- one precedence: defaults < file < env < scenario < flags -------------------------------


def test_the_defaults(runs: list[DemoOptions], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    (options,) = runs
    assert options.rounds == 10
    assert [d.device_id for d in options.devices] == ["dev-0", "dev-1", "dev-2"]
    assert options.broker is None  # a local Mosquitto
    assert options.config is None


def test_config_file_then_environment_then_flags(
    runs: list[DemoOptions],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    config = tmp_path / "demo.toml"
    config.write_text(
        'rounds = 4\nalpha = 0.3\nseed = 5\ndataset = "synthetic"\n'
        '[mqtt]\nurl = "mqtt://file.lan:1883"\n'
    )
    assert main(["demo", "--config", str(config), "--devices", "2"]) == 0
    monkeypatch.setenv("ARES_ROUNDS", "6")
    monkeypatch.setenv("ARES_MQTT__URL", "mqtt://env.lan:1883")
    assert main(["demo", "--config", str(config), "--devices", "2"]) == 0
    assert main(["demo", "--config", str(config), "--rounds", "7", "--broker", "mqtt://x:1"]) == 0
    from_file, from_env, from_flags = runs
    assert (from_file.rounds, from_env.rounds, from_flags.rounds) == (4, 6, 7)
    assert from_file.broker == "mqtt://file.lan:1883"
    assert from_env.broker == "mqtt://env.lan:1883"
    assert from_flags.broker == "mqtt://x:1"
    # The edge reads the same file; the devices, which cannot, get what they share with it.
    edge = from_file.edge_argv()
    assert flag_value(edge, "--config") == str(config)
    assert flag_value(edge, "--rounds") == "4"
    for device in from_file.devices:
        argv = from_file.device_argv(device)
        assert flag_value(argv, "--seed") == "5"
        assert flag_value(argv, "--dataset") == "synthetic"
        assert "--config" not in argv


def test_ares_config_names_the_demo_file_too(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:  # fmt: skip
    config = tmp_path / "demo.yaml"
    config.write_text("rounds: 3\n")
    monkeypatch.setenv("ARES_CONFIG", str(config))
    assert main(["demo"]) == 0
    (options,) = runs
    assert options.rounds == 3
    assert options.config == config


def test_a_scenario_sits_between_the_environment_and_the_flags(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARES_ROUNDS", "9")
    monkeypatch.setenv("ARES_SEED", "4")
    assert main(["demo", "--scenario", str(TINY)]) == 0
    assert (
        main(["demo", "--scenario", str(TINY), "--rounds", "1", "--partition", "label_skew"]) == 0
    )
    scenario, flagged = runs
    assert scenario.rounds == 2  # the scenario's, over ARES_ROUNDS
    assert flagged.rounds == 1
    for device in scenario.devices:
        assert flag_value(device.flags, "--seed") == "4"  # no scenario value: the variable's
    assert all(flag_value(d.flags, "--partition") == "label_skew" for d in flagged.devices)


def test_splits_go_to_the_edge(runs: list[DemoOptions], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--devices", "2", "--policy", "sl", "--splits", "dev-0=1,dev-1=3"]) == 0
    (options,) = runs
    assert flag_value(options.edge_argv(), "--splits") == "dev-0=1,dev-1=3"


def test_the_demo_writes_a_model_to_serve_unless_the_settings_say_where(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["demo", "--run-dir", str(tmp_path / "run")]) == 0
    config = tmp_path / "demo.toml"
    config.write_text(f'artifact = "{tmp_path / "mine.ares"}"\n')
    assert main(["demo", "--config", str(config)]) == 0
    default, configured = runs
    assert flag_value(default.edge_argv(), "--artifact") == str(tmp_path / "run" / "model.ares")
    assert "--artifact" not in configured.edge_argv()  # the edge reads it from the same file


# --- help ----------------------------------------------------------------------------------


def test_help_shows_the_defaults_and_the_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--rounds ROUNDS rounds of training (default: 10)" in text
    assert "(default: 0.5)" in text  # --alpha, the edge's default
    assert "(default: 3" in text  # --devices
    assert "(default: 1800.0)" in text  # --timeout
    assert "bandwidth-drop" in text
    assert "paper-testbed" in text
    assert "--splits" in text
    assert "--config" in text


# --- own data: DIR/test for the edge, DIR/<device id> for each device --------------------------


def test_own_data_goes_to_the_edge_and_each_device(runs: list[DemoOptions], tmp_path: Path) -> None:
    for name in ("test", "dev-0"):
        (tmp_path / "data" / name / "cat").mkdir(parents=True)
    (tmp_path / "data" / "dev-1.npz").write_bytes(b"")
    argv = ["--devices", "2", "--data", "data", "--input-shape", "1x16x16", "--model", "tiny"]
    assert main(["demo", *argv]) == 0
    (options,) = runs
    assert flag_value(options.edge_argv(), "--data") == str(Path("data") / "test")
    assert flag_value(options.edge_argv(), "--input-shape") == "1,16,16"
    first, second = options.devices
    assert flag_value(first.flags, "--data") == str(Path("data") / "dev-0")
    assert flag_value(second.flags, "--data") == str(Path("data") / "dev-1.npz")
    assert flag_value(second.flags, "--input-shape") == "1,16,16"


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (["dev-0", "dev-1"], "none of test, test.npz, test.csv"),
        (["test", "dev-0"], "none of dev-1, dev-1.npz, dev-1.csv"),
        (["test", "dev-0", "dev-0.npz", "dev-1"], "more than one of dev-0, dev-0.npz"),
    ],
)
def test_own_data_missing_or_doubled_is_one_line(
    entries: list[str], problem: str, runs: list[DemoOptions], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    for entry in entries:
        path = tmp_path / "data" / entry
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"") if entry.endswith(".npz") else path.mkdir()
    assert problem in refused(["--devices", "2", "--data", "data"], runs, capsys)


def test_the_weight_wire_flag_reaches_the_demos_edge(
    runs: list[DemoOptions], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--devices", "1", "--weight-wire", "float32"]) == 0
    assert main(["demo", "--devices", "1"]) == 0
    from_flag, default = runs
    assert flag_value(from_flag.edge_argv(), "--weight-wire") == "float32"
    assert "--weight-wire" not in default.edge_argv()  # the edge's own setting
