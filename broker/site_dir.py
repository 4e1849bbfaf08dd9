"""Site broker setups bridged to a core broker setup, on the machine that provisions them.

The core is an ordinary broker setup (``ares broker init CORE``); a site is one too (its own CA,
server certificate, passwords and ACL for its devices) plus a bridge to the core. Both
directories live on the provisioning machine, which holds the CA keys; their files are then
copied to the brokers. Layout, beside what ``broker.setup_dir`` writes::

    CORE/sites/NAME.toml          site NAME's devices; the core's acl is rendered from these
    CORE/acl                      a single broker's rules plus one block per site's bridge
    CORE/passwd                   ... plus each bridge's account, bridge@NAME
    SITE/site.toml                the site's name, its core (directory, address) and timing
    SITE/certs/core-ca.crt        the core's CA: the bridge verifies the core with it
    SITE/certs/bridge.crt .key    the bridge's client certificate (if the core requires one)
    SITE/clients/bridge@NAME.toml the bridge's account at the core, 0600 (named by its user,
                                  which no device can take)
    SITE/mosquitto.conf           init's configuration plus the bridge, 0600 (its password)
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from broker.bridge import (
    BRIDGE_USER_PREFIX,
    BridgeTiming,
    SiteBridge,
    SiteRecord,
    bridge_user,
    parse_site_devices,
    parse_site_record,
    render_bridge_section,
    render_core_acl,
    render_site_devices,
    render_site_record,
    validate_site_name,
)
from broker.passwd import hash_password, new_password, parse_file, render_file
from broker.pki import issue_client, load_issued
from broker.provision import (
    RESERVED_USERS,
    BrokerSetup,
    ClientConfig,
    render_mosquitto_conf,
)
from broker.setup_dir import (
    DEFAULT_DEVICE_CA_PATH,
    PRIVATE,
    PUBLIC,
    DeviceCredentials,
    SetupDir,
    SetupError,
    write_atomic,
)
from schemas.topics import validate_device_id


class CoreDir(SetupDir):
    """A broker setup that site brokers bridge to."""

    @property
    def sites(self) -> Path:
        return self.root / "sites"

    def site_file(self, site: str) -> Path:
        return self.sites / f"{validate_site_name(site)}.toml"

    def registered_sites(self) -> dict[str, tuple[str, ...]]:
        """Every registered site's devices."""
        out: dict[str, tuple[str, ...]] = {}
        for path in sorted(self.sites.glob("*.toml")) if self.sites.is_dir() else []:
            site, devices = parse_site_devices(path.read_text(encoding="utf-8"))
            if path.stem != site:
                raise SetupError(f"{path} registers site {site!r}, not {path.stem!r}")
            out[site] = devices
        return out

    def provisioned_at(self, device_id: str, *, besides: str | None = None) -> str | None:
        """Where ``device_id`` has an account ("site NAME", "the core"), other than at site
        ``besides``; None where it has none. One device id, one place: the core's ACL gives its
        topics to one bridge only."""
        site = self.site_of(device_id, besides=besides)
        if site is not None:
            return f"site {site}"
        if device_id in self.direct_devices():
            return "the core"
        return None

    def site_of(self, device_id: str, *, besides: str | None = None) -> str | None:
        """The registered site (other than ``besides``) that ``device_id`` belongs to."""
        for site, devices in self.registered_sites().items():
            if site != besides and device_id in devices:
                return site
        return None

    def direct_devices(self) -> list[str]:
        """Devices with an account at the core itself (not behind a site)."""
        entries = parse_file(self.passwd.read_text(encoding="utf-8"))
        return [
            e.username
            for e in entries
            if e.username not in RESERVED_USERS and not e.username.startswith(BRIDGE_USER_PREFIX)
        ]

    def register_site(self, site: str, password: str, *, force: bool = False) -> None:
        """Give ``site``'s bridge an account (no devices yet) and rewrite the ACL."""
        setup = self.load_setup()
        if self.site_file(site).exists() and not force:
            raise SetupError(
                f"site {site!r} is already registered at the core {self.root}; pass --force to "
                "replace it (its bridge gets a new password, its devices new files)"
            )
        self.sites.mkdir(mode=0o755, exist_ok=True)
        entries = parse_file(self.passwd.read_text(encoding="utf-8"))
        user = bridge_user(site)
        kept = [e for e in entries if e.username != user]
        # The ACL first: the account must not exist with rules of an earlier site by its name.
        write_atomic(self.site_file(site), render_site_devices(site, ()).encode(), PUBLIC)
        self._write_acl(setup)
        write_atomic(
            self.passwd, render_file([*kept, hash_password(user, password)]).encode(), PRIVATE
        )

    def unregister_site(self, site: str) -> None:
        """Remove ``site``'s bridge: its rules first, then its account."""
        if not self.site_file(site).exists():
            return
        setup = self.load_setup()
        self.site_file(site).unlink()
        self._write_acl(setup)
        user = bridge_user(site)
        entries = parse_file(self.passwd.read_text(encoding="utf-8"))
        kept = [e for e in entries if e.username != user]
        write_atomic(self.passwd, render_file(kept).encode(), PRIVATE)

    def set_site_devices(self, site: str, devices: list[str]) -> None:
        """Record ``site``'s devices and give its bridge exactly their topics."""
        setup = self.load_setup()
        if not self.site_file(site).exists():
            raise SetupError(
                f"site {site!r} is not registered at the core {self.root} (was the core "
                "re-initialised?); run `ares broker init-site ... --force` again"
            )
        write_atomic(self.site_file(site), render_site_devices(site, devices).encode(), PUBLIC)
        self._write_acl(setup)

    def _write_acl(self, setup: BrokerSetup) -> None:
        acl = render_core_acl(setup.prefix, self.registered_sites())
        write_atomic(self.acl, acl.encode(), PUBLIC)


@dataclass(frozen=True)
class SiteCredentials:
    """What SiteDir.init made: the bridge's account and where its files are."""

    site: str
    bridge: ClientConfig
    bridge_path: Path


class SiteDir(SetupDir):
    """A site broker's setup directory: a broker setup plus a bridge to a core."""

    @property
    def site_record(self) -> Path:
        return self.root / "site.toml"

    @property
    def core_ca(self) -> Path:
        return self.certs / "core-ca.crt"

    def is_site(self) -> bool:
        return self.site_record.is_file()

    def load_record(self) -> SiteRecord:
        if not self.is_site():
            raise SetupError(f"{self.root} is not a site setup (no site.toml)")
        return parse_site_record(self.site_record.read_text(encoding="utf-8"))

    def core(self) -> CoreDir:
        return CoreDir(self.load_record().core_dir)

    # --- init-site --------------------------------------------------------------------------

    def init_site(
        self,
        setup: BrokerSetup,
        *,
        site: str,
        core: CoreDir,
        core_host: str | None = None,
        core_port: int | None = None,
        timing: BridgeTiming | None = None,
        force: bool = False,
    ) -> SiteCredentials:
        """Write the site's broker setup with its bridge, and register the site at the core."""
        validate_site_name(site)
        core_setup = core.load_setup()
        host = core_host or core_setup.hosts[0]
        if host not in core_setup.hosts:
            raise SetupError(
                f"the bridge cannot reach the core as {host!r}: its certificate names only "
                f"{', '.join(core_setup.hosts)} (add the name with `ares broker init "
                f"{core.root} --host ... --force`, or give one of these as --core-host)"
            )
        if setup.prefix != core_setup.prefix:
            raise SetupError(f"the site's prefix {setup.prefix!r} is not the core's "
                             f"{core_setup.prefix!r}")  # fmt: skip
        # A message larger than the other broker's limit would cost the bridge its connection,
        # again at every reconnect: both brokers take the same packets.
        if setup.max_payload_bytes != core_setup.max_payload_bytes:
            raise SetupError(
                f"the site's max_payload_bytes {setup.max_payload_bytes} is not the core's "
                f"{core_setup.max_payload_bytes}"
            )
        if self.root.absolute() == core.root.absolute():
            raise SetupError("a site needs its own directory, not the core's")
        if core.site_file(site).exists() and not force:
            raise SetupError(
                f"site {site!r} is already registered at the core {core.root}; pass --force "
                "to replace it"
            )
        record = SiteRecord(
            site=site,
            core_dir=core.root.absolute(),
            core_host=host,
            core_port=core_port or core_setup.tls_port,
            timing=timing or BridgeTiming(),
        )
        previous = self.load_record() if self.is_site() else None
        self.init(setup, force=force)  # refuses an existing setup without force
        self.site_record.unlink(missing_ok=True)  # not a complete site until the end
        write_atomic(self.core_ca, (core.certs / "ca.crt").read_bytes(), PUBLIC)
        cert_file = key_file = None
        bridge_cert, bridge_key = self.certs / "bridge.crt", self.certs / "bridge.key"
        if core_setup.require_client_cert:
            ca = load_issued(
                (core.certs / "ca.crt").read_bytes(), (core.certs / "ca.key").read_bytes()
            )
            self._write_issued(issue_client(ca, bridge_user(site)), bridge_cert, bridge_key)
            cert_file, key_file = str(bridge_cert.absolute()), str(bridge_key.absolute())
        else:
            bridge_cert.unlink(missing_ok=True)
            bridge_key.unlink(missing_ok=True)
        password = new_password()
        bridge = ClientConfig(
            url=f"mqtts://{_url_host(host)}:{record.core_port}",
            prefix=setup.prefix,
            username=bridge_user(site),
            password=password,
            max_payload_bytes=setup.max_payload_bytes,
            ca_file=str(self.core_ca.absolute()),
            cert_file=cert_file,
            key_file=key_file,
        )
        bridge_path = self.client_file(bridge_user(site))
        self._write_config(
            bridge,
            bridge_path,
            [
                f"Site {site}'s bridge account at the core (in this site's mosquitto.conf too);",
                "any MQTT client can check it from the site with these settings.",
            ],
        )
        if previous is not None and previous.site != site:
            CoreDir(previous.core_dir).unregister_site(previous.site)
        core.register_site(site, password, force=force)
        # Written anew (not over init's 0644 file): it holds the bridge's password.
        self.conf.unlink()
        self._write_conf(setup, record, devices=[])
        # Last: a site.toml means the site is complete.
        write_atomic(self.site_record, render_site_record(record).encode(), PUBLIC)
        return SiteCredentials(site, bridge, bridge_path)

    # --- add-device -------------------------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        *,
        ca_path: PurePosixPath = DEFAULT_DEVICE_CA_PATH,
        client_cert: bool = False,
        force: bool = False,
    ) -> DeviceCredentials:
        """The device's credentials at this site, and the bridge and the core's ACL for it.

        The core learns of its new ACL on SIGHUP; this site's broker needs a restart for its
        new bridge lines (Mosquitto reads bridges only at start).
        """
        if not self.is_site():
            return super().add_device(
                device_id, ca_path=ca_path, client_cert=client_cert, force=force
            )
        validate_device_id(device_id)
        record = self.load_record()
        core = CoreDir(record.core_dir)
        elsewhere = core.provisioned_at(device_id, besides=record.site)
        if elsewhere is not None:
            raise SetupError(f"device {device_id!r} is already provisioned at {elsewhere}")
        made = super().add_device(device_id, ca_path=ca_path, client_cert=client_cert, force=force)
        self.sync(record)
        return made

    def sync(self, record: SiteRecord | None = None) -> list[str]:
        """Render the bridge and the core's ACL from the devices in this site's password file.

        Returns the devices. Safe to repeat, e.g. after removing a device's line from passwd.
        """
        record = record or self.load_record()
        devices = sorted(self._device_names())
        CoreDir(record.core_dir).set_site_devices(record.site, devices)
        self._write_conf(self.load_setup(), record, devices)
        return devices

    # --- internals --------------------------------------------------------------------------

    def bridge_config(self, setup: BrokerSetup, record: SiteRecord) -> SiteBridge:
        client = _read_client(self.client_file(bridge_user(record.site)))
        with_cert = (self.certs / "bridge.crt").exists()
        return SiteBridge(
            site=record.site,
            prefix=setup.prefix,
            core_host=record.core_host,
            core_port=record.core_port,
            password=client.password,
            cafile=setup.broker_path("certs", self.core_ca.name),
            certfile=setup.broker_path("certs", "bridge.crt") if with_cert else None,
            keyfile=setup.broker_path("certs", "bridge.key") if with_cert else None,
            timing=record.timing,
        )

    def _write_conf(self, setup: BrokerSetup, record: SiteRecord, devices: list[str]) -> None:
        bridge = self.bridge_config(setup, record)
        text = render_mosquitto_conf(setup) + "\n" + render_bridge_section(bridge, devices)
        write_atomic(self.conf, text.encode(), PRIVATE)


def _read_client(path: Path) -> ClientConfig:
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))["mqtt"]
        return ClientConfig(
            url=table["url"],
            prefix=table["prefix"],
            username=table["username"],
            password=table["password"],
            max_payload_bytes=table["max_payload_bytes"],
            ca_file=table.get("ca_file"),
            cert_file=table.get("cert_file"),
            key_file=table.get("key_file"),
        )
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise SetupError(f"cannot read the bridge's account from {path}: {exc}") from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
