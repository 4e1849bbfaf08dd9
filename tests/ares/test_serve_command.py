"""``ares serve`` and ``ares device --serve``: flags into settings, and mistakes named."""

from __future__ import annotations

from pathlib import Path

import pytest

from ares.cli import build_parser, main, unknown_variables
from ares.serve_command import serve_settings, serving_device_settings, serving_mode


def test_serve_flags_reach_the_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["serve", "--artifact", str(tmp_path / "m.ares"), "--policy", "sl-best", "--alpha",
         "0.8", "--accuracy-floor", "0.02", "--broker", "mqtt://broker.lan:1884"]
    )  # fmt: skip
    settings = serve_settings(args)
    assert settings.artifact == tmp_path / "m.ares"
    assert (settings.policy, settings.alpha, settings.accuracy_floor) == ("sl-best", 0.8, 0.02)
    assert settings.mqtt.url == "mqtt://broker.lan:1884"


def test_an_unknown_serving_policy_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--policy", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "fastest" in err
    assert "exits-static" in err  # the choices are named


def test_device_serve_takes_every_device_flag(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["device", "--serve", "--artifact", str(tmp_path / "m.ares"), "--watch-dir",
         str(tmp_path), "--deadline-ms", "250", "--id", "cam-1", "--power", "7.3,2.3,2.3",
         "--uplink-mbps", "20", "--profile", "raspberry-pi-3b+"]
    )  # fmt: skip
    assert serving_mode(args)
    settings = serving_device_settings(args)
    assert settings.device_id == "cam-1"
    assert settings.watch_dir == tmp_path
    assert settings.deadline_ms == 250
    assert settings.power_compute_w == 7.3
    assert settings.uplink_mbps == 20
    assert settings.emulated


@pytest.mark.parametrize("flag", ["--artifact", "--watch-dir", "--deadline-ms"])
def test_serving_flags_need_serve(flag: str) -> None:
    with pytest.raises(SystemExit, match="needs --serve"):
        main(["device", flag, "1"])


def test_serving_variables_are_known() -> None:
    environ = {"ARES_WATCH_DIR": "/cam", "ARES_DEADLINE_MS": "200", "ARES_ACCURACY_FLOOR": "0.1"}
    assert unknown_variables(environ) == []
    assert unknown_variables({"ARES_WATCH_DRI": "/cam"}) != []


def test_config_show_tells_where_serving_settings_come_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "show", "serve", "--policy", "edge"]) == 0
    assert 'policy = "edge"  # from flag --policy' in capsys.readouterr().out
    assert main(["config", "show", "device", "--serve", "--deadline-ms", "250"]) == 0
    shown = capsys.readouterr().out
    assert "deadline_ms = 250.0  # from flag --deadline-ms" in shown
    assert 'artifact = "model.ares"' in shown  # serving's defaults, beside the device's
