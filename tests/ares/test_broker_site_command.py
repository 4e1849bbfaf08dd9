"""`ares broker init-site` and `add-device` at a site, through the real CLI entry point."""

from __future__ import annotations

import tomllib
from pathlib import Path

from ares.cli import main
from tests.ares.test_broker_command import conf_value, init
from tests.broker.test_bridge import topic_lines


def init_site(site: Path, core: Path, name: str, *extra: str) -> int:
    return main(["broker", "init-site", str(site), "--core-dir", str(core), "--site", name,
                 "--host", f"{name}.lan", *extra])  # fmt: skip


def test_core_site_and_device(tmp_path: Path, capsys):
    core, site = tmp_path / "core", tmp_path / "hall-a"
    assert init(core, "--host", "core.lan", "--tls-port", "9883", "--prefix", "plant/v1") == 0
    code = init_site(
        site, core, "hall-a", "--keepalive", "30", "--restart-timeout", "4", "20",
        "--mount-path", "/mosquitto/config",
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "bridges to the core at core.lan:9883" in out
    assert "plant/v1/bridge/hall-a/state" in out
    assert conf_value(site, "address") == "core.lan:9883"
    assert conf_value(site, "bridge_cafile") == "/mosquitto/config/certs/core-ca.crt"
    assert conf_value(site, "keepalive_interval") == "30"
    assert conf_value(site, "restart_timeout") == "4 20"
    # The core's prefix and packet limit.
    assert conf_value(site, "max_packet_size") == conf_value(core, "max_packet_size")
    assert tomllib.loads((site / "setup.toml").read_text())["prefix"] == "plant/v1"

    assert main(["broker", "add-device", "pi-1", "--dir", str(site)]) == 0
    out = capsys.readouterr().out
    toml_part, _, steps = out.partition("\nNext steps:")
    assert tomllib.loads(toml_part)["mqtt"]["url"] == "mqtts://hall-a.lan:8883"
    assert "RESTART" in steps  # bridges are read at start only
    assert str(core / "acl") in steps
    lines = topic_lines((site / "mosquitto.conf").read_text())
    assert ("plant/v1/dev/pi-1/act", "out", "1") in lines
    assert "topic write plant/v1/dev/pi-1/act" in (core / "acl").read_text()


def test_refusals_exit_2_with_one_clear_line(tmp_path: Path, capsys):
    core = tmp_path / "core"
    assert init(core, "--host", "core.lan") == 0
    assert init_site(tmp_path / "a", core, "hall-a") == 0
    assert main(["broker", "add-device", "pi-1", "--dir", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    site = tmp_path / "b"
    cases = [
        (core, "hall-a", [], "already registered"),
        (core, "hall/b", [], "invalid site name"),
        (tmp_path / "nope", "hall-b", [], "not a broker setup"),
        (core, "hall-b", ["--core-host", "x.lan"], "certificate"),
        (core, "hall-b", ["--keepalive", "1"], "keepalive 1"),
    ]
    for core_dir, name, extra, message in cases:
        args = (core_dir, name, *extra)
        assert init_site(site, core_dir, name, *extra) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("ares broker: "), (args, err)
        assert message in err, (args, err)
        assert err.count("\n") == 1
    # A device of a site cannot also be added at the core, nor at another site.
    assert main(["broker", "add-device", "pi-1", "--dir", str(core)]) == 2
    assert "already provisioned at site hall-a" in capsys.readouterr().err
    assert init_site(tmp_path / "b", core, "hall-b") == 0
    assert main(["broker", "add-device", "pi-1", "--dir", str(tmp_path / "b")]) == 2
    assert "already provisioned at site hall-a" in capsys.readouterr().err
