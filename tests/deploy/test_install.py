"""deploy/install.sh with --dry-run, and install_config.py into a temporary root.

Nothing here touches the machine: the shell script only prints what it would do, and the config
installer writes under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.deploy import DEPLOY, load_install_config

install_config = load_install_config()

EDGE_TOML = """\
# Written by `ares broker init`.

[mqtt]
url = "mqtt://127.0.0.1:1883"
prefix = "ares/v1"
username = "ares-edge"
password = "Zm9vYmFyYmF6-secret"
max_payload_bytes = 67108864
"""

DEVICE_TOML = """\
device_id = "pi-1"

[mqtt]
url = "mqtts://edge.lan:8883"
username = "pi-1"
password = "device-secret"  # a comment
ca_file = "/etc/ares/ca.crt"
cert_file = "/etc/ares/pi-1.crt"
key_file = "/etc/ares/pi-1.key"
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def install(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    code = install_config.main([*args, "--root", str(root)])
    return code, sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_password_moves_into_a_credential(tmp_path, capsys):
    config = write(tmp_path / "edge.toml", EDGE_TOML)
    code, files = install(tmp_path, "--role", "edge", "--config", str(config))
    assert code == 0
    assert files == ["etc/ares/credentials/edge-mqtt-password", "etc/ares/edge.toml"]
    root = tmp_path / "root"
    installed = (root / "etc/ares/edge.toml").read_text()
    assert "secret" not in installed
    assert "# Written by `ares broker init`." in installed  # comments survive
    expected = tomllib.loads(EDGE_TOML)
    del expected["mqtt"]["password"]
    assert tomllib.loads(installed) == expected
    credential = root / "etc/ares/credentials/edge-mqtt-password"
    assert credential.read_text() == "Zm9vYmFyYmF6-secret\n"
    assert (mode(credential), mode(credential.parent)) == (0o600, 0o700)
    assert mode(root / "etc/ares/edge.toml") == 0o644
    assert capsys.readouterr().out.splitlines() == [
        "changed /etc/ares/edge.toml",
        "changed /etc/ares/credentials/edge-mqtt-password",
    ]


def test_a_second_run_changes_nothing(tmp_path, capsys):
    config = write(tmp_path / "edge.toml", EDGE_TOML)
    install(tmp_path, "--role", "edge", "--config", str(config))
    capsys.readouterr()
    assert install(tmp_path, "--role", "edge", "--config", str(config))[0] == 0
    assert all(line.startswith("unchanged ") for line in capsys.readouterr().out.splitlines())


def test_dry_run_writes_nothing(tmp_path, capsys):
    config = write(tmp_path / "edge.toml", EDGE_TOML)
    code, files = install(tmp_path, "--role", "edge", "--config", str(config), "--dry-run")
    assert (code, files) == (0, [])
    assert capsys.readouterr().out.startswith("would change /etc/ares/edge.toml")


def test_device_tls_files_go_where_the_config_says(tmp_path):
    config = write(tmp_path / "pi-1.toml", DEVICE_TOML)
    ca = write(tmp_path / "ca.crt", "CA")
    cert = write(tmp_path / "pi-1.crt", "CERT")
    key = write(tmp_path / "pi-1.key", "KEY")
    args = ["--role", "device", "--config", str(config)]
    code, files = install(tmp_path, *args, "--ca", str(ca), "--cert", str(cert), "--key", str(key))
    assert code == 0
    assert files == [
        "etc/ares/ca.crt",
        "etc/ares/credentials/device-mqtt-key",
        "etc/ares/credentials/device-mqtt-password",
        "etc/ares/device.toml",
        "etc/ares/pi-1.crt",
        "etc/systemd/system/ares-device.service.d/client-key.conf",
    ]
    root = tmp_path / "root"
    assert mode(root / "etc/ares/credentials/device-mqtt-key") == 0o600
    assert mode(root / "etc/ares/ca.crt") == 0o644
    dropin = (root / "etc/systemd/system/ares-device.service.d/client-key.conf").read_text()
    assert "ARES_MQTT__KEY_FILE=%d/mqtt-key" in dropin


@pytest.mark.parametrize(
    ("role", "text", "message"),
    [
        ("edge", "[mqtt]\nusername = 'e'\n", "no mqtt.password"),
        ("edge", '[mqtt]\npassword = "x"\n', "username"),
        ("edge", 'mqtt.password = "x"\n[other]\n', "line by line"),
        ("edge", '[mqtt]\nusername = "e"\npassword = """two\nlines"""\n', "line by line"),
        ("edge", "[mqtt\n", "not valid TOML"),
        ("device", '[mqtt]\nusername = "d"\npassword = "p"\n', "device_id"),
        ("edge", '[mqtt]\nusername = "e"\npassword = ""\n', "non-empty"),
    ],
)
def test_bad_configs_are_refused_clearly(tmp_path, capsys, role, text, message):
    config = write(tmp_path / "bad.toml", text)
    code, files = install(tmp_path, "--role", role, "--config", str(config))
    assert (code, files) == (2, [])
    assert message in capsys.readouterr().err


def test_a_config_without_password_keeps_the_installed_credential(tmp_path):
    config = write(tmp_path / "edge.toml", EDGE_TOML)
    install(tmp_path, "--role", "edge", "--config", str(config))
    bare = write(tmp_path / "bare.toml", EDGE_TOML.replace('password = "', '# was "'))
    code, _ = install(tmp_path, "--role", "edge", "--config", str(bare))
    assert code == 0
    credential = tmp_path / "root/etc/ares/credentials/edge-mqtt-password"
    assert credential.read_text() == "Zm9vYmFyYmF6-secret\n"


# --- install.sh --dry-run ---------------------------------------------------------------------


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / "install.sh"), "--dry-run", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )


def test_install_script_plans_every_step(tmp_path):
    config = write(tmp_path / "pi-1.toml", DEVICE_TOML)
    ca = write(tmp_path / "ca.crt", "CA")
    result = dry_run("--role", "device", "--board", "generic", "--config", str(config),
                     "--ca", str(ca))  # fmt: skip
    assert result.returncode == 0, result.stderr
    commands = result.stdout
    assert not Path("/opt/ares/venv/.ares-source").exists() or "up to date" in result.stderr
    if "torch" not in result.stderr:  # a machine without /opt/ares/venv: every step shows
        assert "-m venv /opt/ares/venv" in commands
        assert "install torch --index-url https://download.pytorch.org/whl/cpu" in commands
    assert "install -m 0644 " in commands
    assert "/etc/systemd/system/ares-device.service" in commands
    assert "+ systemctl enable --now ares-device.service" in commands
    assert "would change /etc/ares/device.toml" in result.stderr
    assert "would change /etc/ares/ca.crt" in result.stderr


def test_install_script_takes_nvidia_torch_on_a_jetson(tmp_path):
    config = write(tmp_path / "pi-1.toml", DEVICE_TOML)
    refused = dry_run("--role", "device", "--board", "jetson", "--config", str(config))
    assert refused.returncode == 2
    assert "NVIDIA's torch wheel" in refused.stderr
    wheel = "https://example.invalid/torch-2.5.0-cp311-cp311-linux_aarch64.whl"
    result = dry_run("--role", "device", "--board", "jetson", "--config", str(config),
                     "--torch-wheel", wheel)  # fmt: skip
    assert result.returncode == 0, result.stderr
    if "-m venv" in result.stdout:  # torch is installed only into a new environment
        assert f"install {wheel}" in result.stdout


@pytest.mark.skipif(os.uname().machine == "aarch64", reason="the check is for other machines")
def test_install_script_refuses_a_pi_without_a_64_bit_arm_os(tmp_path):
    config = write(tmp_path / "pi-1.toml", DEVICE_TOML)
    result = dry_run("--role", "device", "--board", "pi", "--config", str(config))
    assert result.returncode == 2
    assert "64-bit" in result.stderr


def test_install_script_refuses_bad_arguments():
    assert dry_run("--role", "broker").returncode == 2
    assert dry_run("--role", "edge", "--frobnicate").returncode == 2
