"""Site setup directories: init-site, add-device at a site, and the core's registry and ACL."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path, PurePosixPath

import pytest
from cryptography import x509

from broker.bridge import BridgeTiming, bridge_topics, bridge_user
from broker.passwd import parse_file
from broker.pki import load_issued
from broker.provision import EDGE_USER, INSPECTOR_USER, BrokerSetup
from broker.setup_dir import SetupError
from broker.site_dir import CoreDir, SiteDir
from tests.broker.test_bridge import topic_lines
from tests.broker.test_provision import acl_rules, directives


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


def users(path: Path) -> set[str]:
    return {e.username for e in parse_file(path.read_text())}


@pytest.fixture
def core(tmp_path: Path) -> CoreDir:
    target = CoreDir(tmp_path / "core")
    target.init(make_setup(target.root, hosts=("core.lan", "10.0.0.1"), tls_port=8883))
    return target


def new_site(tmp_path: Path, core: CoreDir, name: str = "hall-a", **options) -> SiteDir:
    site = SiteDir(tmp_path / name)
    site.init_site(make_setup(site.root, hosts=(f"{name}.lan",)), site=name, core=core, **options)
    return site


def test_init_site_writes_a_broker_setup_with_a_bridge(tmp_path: Path, core: CoreDir):
    site = new_site(tmp_path, core, timing=BridgeTiming(20, 3, 9))
    # A complete broker setup for the site's devices...
    for name in ("setup.toml", "acl", "passwd", "certs/ca.crt", "certs/server.crt"):
        assert (site.root / name).is_file(), name
    assert users(site.passwd) == {EDGE_USER, INSPECTOR_USER}
    # ... whose config holds the bridge's password, so only its owner reads it.
    assert mode(site.conf) == 0o600
    assert mode(site.client_file("bridge@hall-a")) == 0o600
    assert site.core_ca.read_bytes() == (core.certs / "ca.crt").read_bytes()
    assert not (site.certs / "bridge.crt").exists()  # the core does not require one

    settings = dict(directives(site.conf.read_text()))
    assert settings["address"] == "core.lan:8883"  # the core's first name and TLS port
    assert settings["bridge_cafile"] == str(site.core_ca.absolute())
    assert settings["keepalive_interval"] == "20"
    assert settings["restart_timeout"] == "3 9"
    assert settings["password_file"] == str(site.passwd.absolute())  # init's part is there
    # No devices yet: only the broadcasts cross.
    assert [t for t, _, _ in topic_lines(site.conf.read_text())] == [
        "ares/v1/edge/#",
        "ares/v1/serve/#",
    ]

    # The bridge's account at the core: in its passwd, with rules of its own.
    bridge = tomllib.loads(site.client_file("bridge@hall-a").read_text())["mqtt"]
    assert bridge["username"] == bridge_user("hall-a") == settings["remote_username"]
    assert bridge["password"] == settings["remote_password"]
    assert bridge["url"] == "mqtts://core.lan:8883"
    entries = {e.username: e for e in parse_file(core.passwd.read_text())}
    assert entries["bridge@hall-a"].verify(bridge["password"])
    assert core.registered_sites() == {"hall-a": ()}
    assert acl_rules(core.acl.read_text())["bridge@hall-a"] == [
        ("write", "ares/v1/bridge/hall-a/state"),
        ("read", "ares/v1/edge/#"),
        ("read", "ares/v1/serve/#"),
    ]
    assert site.load_record().core_dir == core.root.absolute()


def test_add_device_at_a_site_updates_its_bridge_and_the_core(tmp_path: Path, core: CoreDir):
    site = new_site(tmp_path, core)
    before = site.conf.read_text()
    made = site.add_device("pi-1")
    assert made.config.url == "mqtts://hall-a.lan:18883"  # the site's broker, not the core
    assert users(site.passwd) == {EDGE_USER, INSPECTOR_USER, "pi-1"}
    assert "pi-1" not in users(core.passwd)  # the device has no account at the core
    assert core.registered_sites() == {"hall-a": ("pi-1",)}

    expected = [(t.pattern, t.direction.value, "1") for t in bridge_topics("ares/v1", ["pi-1"])]
    assert topic_lines(site.conf.read_text()) == expected
    assert mode(site.conf) == 0o600
    # The rest of the config is what it was.
    assert site.conf.read_text().split("connection ")[0] == before.split("connection ")[0]

    rules = acl_rules(core.acl.read_text())["bridge@hall-a"]
    assert ("write", "ares/v1/dev/pi-1/act") in rules
    assert ("read", "ares/v1/dev/pi-1/grad") in rules
    assert ("write", "ares/v1/dev/pi-1/grad") not in rules

    site.add_device("pi-2")
    site.add_device("pi-1", force=True)  # a new password, the same topics
    assert core.registered_sites() == {"hall-a": ("pi-1", "pi-2")}
    # A device may be called "bridge": the bridge's own files are named by its user name.
    password = dict(directives(site.conf.read_text()))["remote_password"]
    site.add_device("bridge")
    assert dict(directives(site.conf.read_text()))["remote_password"] == password


def test_one_device_id_lives_in_one_place(tmp_path: Path, core: CoreDir):
    a, b = new_site(tmp_path, core, "hall-a"), new_site(tmp_path, core, "farm")
    a.add_device("pi-1")
    with pytest.raises(SetupError, match="already provisioned at site hall-a"):
        b.add_device("pi-1")
    core.add_device("edge-cam")  # a device at the core itself
    with pytest.raises(SetupError, match="already provisioned at the core"):
        b.add_device("edge-cam")
    assert core.site_of("pi-1") == "hall-a"
    assert core.site_of("pi-1", besides="hall-a") is None
    assert "pi-1" not in users(b.passwd)


def test_refusals(tmp_path: Path, core: CoreDir):
    new_site(tmp_path, core)
    elsewhere = SiteDir(tmp_path / "other")
    cases = [
        ("hall-a", None, "already registered"),
        ("b", "core.example.com", "certificate names only"),
        ("bad/name", None, "invalid site name"),
    ]
    setup = make_setup(elsewhere.root)
    for site, core_host, message in cases:
        with pytest.raises(ValueError, match=message):
            elsewhere.init_site(setup, site=site, core=core, core_host=core_host)
    with pytest.raises(SetupError, match="prefix"):
        elsewhere.init_site(make_setup(elsewhere.root, prefix="x/y"), site="b", core=core)
    with pytest.raises(SetupError, match="max_payload_bytes"):
        elsewhere.init_site(make_setup(elsewhere.root, max_payload_bytes=2048), site="b", core=core)
    with pytest.raises(SetupError, match="its own directory"):
        SiteDir(core.root).init_site(make_setup(core.root), site="b", core=core)
    with pytest.raises(SetupError, match="not a broker setup"):
        elsewhere.init_site(make_setup(elsewhere.root), site="b", core=CoreDir(tmp_path / "x"))
    assert not elsewhere.is_site()


def test_site_unregistered_at_the_core_is_named(tmp_path: Path, core: CoreDir):
    site = new_site(tmp_path, core)
    core.unregister_site("hall-a")
    assert "bridge@hall-a" not in users(core.passwd)
    assert "bridge@hall-a" not in core.acl.read_text()
    with pytest.raises(SetupError, match="not registered at the core"):
        site.add_device("pi-1")


def test_reinit_under_another_name_removes_the_old_bridge(tmp_path: Path, core: CoreDir):
    site = new_site(tmp_path, core)
    site.add_device("pi-1")
    site.init_site(make_setup(site.root), site="hall-b", core=core, force=True)
    assert core.registered_sites() == {"hall-b": ()}
    assert "bridge@hall-a" not in users(core.passwd)
    assert "bridge@hall-b" in users(core.passwd)
    assert not site.client_file("pi-1").exists()


def test_a_core_requiring_client_certificates_gets_one_from_the_bridge(tmp_path: Path):
    core = CoreDir(tmp_path / "core")
    core.init(make_setup(core.root, require_client_cert=True))
    site = new_site(tmp_path, core)
    cert, key = site.certs / "bridge.crt", site.certs / "bridge.key"
    issued = load_issued(cert.read_bytes(), key.read_bytes())
    issued.cert.verify_directly_issued_by(
        x509.load_pem_x509_certificate((core.certs / "ca.crt").read_bytes())
    )
    assert issued.cert.subject.rfc4514_string() == "CN=bridge@hall-a"
    assert mode(key) == 0o600
    settings = dict(directives(site.conf.read_text()))
    assert settings["bridge_certfile"] == str(cert.absolute())
    assert settings["bridge_keyfile"] == str(key.absolute())


def test_a_plain_setup_adds_devices_as_before(tmp_path: Path, core: CoreDir):
    made = SiteDir(core.root).add_device("pi-9")  # no site.toml: the ordinary path
    assert made.config.url == "mqtts://core.lan:8883"
    assert "pi-9" in users(core.passwd)
    assert not core.sites.exists()
