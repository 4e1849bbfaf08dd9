"""The setup directory: layout, permissions, refusals, add-device, atomic rewrites."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from cryptography import x509

from broker.passwd import parse_file
from broker.pki import load_issued
from broker.provision import EDGE_USER, INSPECTOR_USER, BrokerSetup
from broker.setup_dir import SetupDir, SetupError, write_atomic
from device_agent import DeviceSettings
from edge_service import EdgeSettings
from schemas.config_file import load_settings
from transport import MqttSettings


def make_setup(root: Path, **changes) -> BrokerSetup:
    values = dict(
        hosts=("localhost", "127.0.0.1"),
        mount_path=PurePosixPath(root.absolute()),
        max_payload_bytes=4 * 1024 * 1024,
        tls_port=18883,
        local_port=11883,
    )
    return BrokerSetup(**{**values, **changes})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def passwords(target: SetupDir) -> dict[str, str]:
    """Each client config's password, by user name."""
    out = {}
    for path in target.clients.glob("*.toml"):
        table = tomllib.loads(path.read_text())["mqtt"]
        out[table["username"]] = table["password"]
    return out


@pytest.fixture
def target(tmp_path: Path) -> SetupDir:
    setup_dir = SetupDir(tmp_path / "broker")
    setup_dir.init(make_setup(setup_dir.root))
    return setup_dir


def test_init_writes_the_layout_with_safe_permissions(target: SetupDir):
    root = target.root
    expected = {
        "setup.toml": 0o644, "mosquitto.conf": 0o644, "acl": 0o644, "passwd": 0o600,
        "certs/ca.crt": 0o644, "certs/ca.key": 0o600, "certs/server.crt": 0o644,
        "certs/server.key": 0o600, "clients/edge.toml": 0o600, "clients/inspector.toml": 0o600,
    }  # fmt: skip
    for name, wanted in expected.items():
        assert mode(root / name) == wanted, name
    assert mode(target.clients) == 0o700
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == set(expected)  # no temporary files left behind


def test_init_passwords_match_the_password_file(target: SetupDir):
    entries = {e.username: e for e in parse_file(target.passwd.read_text())}
    given = passwords(target)
    assert set(entries) == set(given) == {EDGE_USER, INSPECTOR_USER}
    for user, password in given.items():
        assert entries[user].verify(password)
    assert given[EDGE_USER] != given[INSPECTOR_USER]


def test_init_certificates_chain_to_the_new_ca(target: SetupDir):
    ca = load_issued((target.certs / "ca.crt").read_bytes(), (target.certs / "ca.key").read_bytes())
    server = load_issued(
        (target.certs / "server.crt").read_bytes(), (target.certs / "server.key").read_bytes()
    )
    server.cert.verify_directly_issued_by(ca.cert)
    sans = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def test_edge_config_loads_as_the_edge_settings(target: SetupDir):
    settings = load_settings(EdgeSettings, target.client_file("edge"))
    assert settings.mqtt.url == "mqtt://127.0.0.1:11883"
    assert settings.mqtt.username == EDGE_USER
    assert settings.mqtt.max_payload_bytes == 4 * 1024 * 1024


def test_init_refuses_an_existing_setup_without_force(target: SetupDir):
    before = target.passwd.read_bytes()
    with pytest.raises(SetupError, match=r"already holds a broker setup.*--force"):
        target.init(make_setup(target.root))
    assert target.passwd.read_bytes() == before


def test_force_replaces_everything_and_drops_old_device_files(target: SetupDir):
    old_ca = (target.certs / "ca.crt").read_bytes()
    target.add_device("pi-1", client_cert=True)
    target.init(make_setup(target.root, prefix="site/v2"), force=True)
    assert (target.certs / "ca.crt").read_bytes() != old_ca
    assert not target.client_file("pi-1").exists()
    assert not target.client_file("pi-1", ".key").exists()
    assert [e.username for e in parse_file(target.passwd.read_text())] == [
        EDGE_USER,
        INSPECTOR_USER,
    ]
    assert target.load_setup().prefix == "site/v2"


def test_force_without_client_certs_drops_the_old_inspector_certificate(tmp_path: Path):
    target = SetupDir(tmp_path / "b")
    target.init(make_setup(target.root, require_client_cert=True))
    assert target.client_file(INSPECTOR_USER, ".key").exists()
    target.init(make_setup(target.root), force=True)
    assert not target.client_file(INSPECTOR_USER, ".crt").exists()
    assert not target.client_file(INSPECTOR_USER, ".key").exists()
    assert "cert_file" not in tomllib.loads(target.client_file(INSPECTOR_USER).read_text())["mqtt"]


def test_add_device_writes_a_config_the_device_settings_load(target: SetupDir):
    made = target.add_device("pi-1", ca_path=PurePosixPath("/opt/ares/ca.crt"))
    assert made.config_path == target.client_file("pi-1")
    assert mode(made.config_path) == 0o600
    assert made.cert_path is None
    assert made.key_path is None

    doc = tomllib.loads(made.config_path.read_text())
    assert doc["device_id"] == "pi-1"
    mqtt = MqttSettings(**doc["mqtt"])  # the [mqtt] table is valid MQTT settings as it is
    assert mqtt.url == "mqtts://localhost:18883"
    assert mqtt.username == "pi-1"
    assert str(mqtt.ca_file) == "/opt/ares/ca.crt"
    assert mqtt.cert_file is None

    settings = load_settings(DeviceSettings, made.config_path)
    assert settings.device_id == "pi-1"
    assert settings.mqtt == mqtt

    entries = {e.username: e for e in parse_file(target.passwd.read_text())}
    assert set(entries) == {EDGE_USER, INSPECTOR_USER, "pi-1"}
    assert mqtt.password is not None
    assert entries["pi-1"].verify(mqtt.password.get_secret_value())


def test_add_device_refusals(target: SetupDir, tmp_path: Path):
    target.add_device("pi-1")
    before = target.passwd.read_bytes()
    with pytest.raises(SetupError, match=r"already has credentials.*--force"):
        target.add_device("pi-1")
    for reserved in (EDGE_USER, INSPECTOR_USER):
        with pytest.raises(SetupError, match="service account"):
            target.add_device(reserved)
    for bad in ("a/b", "+", "", "x" * 65, "-lead"):
        with pytest.raises(ValueError, match="invalid device id"):
            target.add_device(bad)
    with pytest.raises(SetupError, match="must be absolute"):
        target.add_device("pi-2", ca_path=PurePosixPath("ca.crt"))
    assert target.passwd.read_bytes() == before
    with pytest.raises(SetupError, match="not a broker setup"):
        SetupDir(tmp_path / "elsewhere").add_device("pi-1")


def test_add_device_force_rotates_the_password(target: SetupDir):
    first = target.add_device("pi-1").config.password
    second = target.add_device("pi-1", force=True).config.password
    assert first != second
    entries = [e for e in parse_file(target.passwd.read_text()) if e.username == "pi-1"]
    assert len(entries) == 1
    assert entries[0].verify(second)
    assert not entries[0].verify(first)


def test_client_certificates_on_request_and_when_required(tmp_path: Path):
    target = SetupDir(tmp_path / "mtls")
    target.init(make_setup(target.root, require_client_cert=True))
    ca = x509.load_pem_x509_certificate((target.certs / "ca.crt").read_bytes())
    inspector = tomllib.loads(target.client_file(INSPECTOR_USER).read_text())["mqtt"]
    assert Path(inspector["cert_file"]).is_file()
    assert Path(inspector["key_file"]).is_file()

    made = target.add_device("pi-1")  # required by the setup: issued without asking
    assert made.cert_path is not None
    assert made.key_path is not None
    assert mode(made.key_path) == 0o600
    assert mode(made.cert_path) == 0o644
    issued = load_issued(made.cert_path.read_bytes(), made.key_path.read_bytes())
    issued.cert.verify_directly_issued_by(ca)
    assert issued.cert.subject.rfc4514_string() == "CN=pi-1"
    assert made.config.cert_file == "/etc/ares/pi-1.crt"
    assert made.config.key_file == "/etc/ares/pi-1.key"


def test_rewrites_keep_the_owner_group_and_mode_a_broker_needs(target: SetupDir):
    if os.geteuid() != 0:
        pytest.skip("giving files to another user needs root")
    os.chown(target.passwd, 1883, 1883)  # the eclipse-mosquitto image's user
    os.chmod(target.passwd, 0o640)
    target.add_device("pi-1")
    info = target.passwd.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1883, 1883, 0o640)


def test_write_atomic_leaves_the_old_file_on_failure(tmp_path: Path, monkeypatch):
    path = tmp_path / "f"
    write_atomic(path, b"old", 0o600)
    assert mode(path) == 0o600

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        write_atomic(path, b"new", 0o600)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # the temporary file is gone
