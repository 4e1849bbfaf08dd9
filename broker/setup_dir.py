"""The broker setup directory on disk: ``init`` creates it, ``add_device`` adds to it.

Layout (DIR as ``ares broker init DIR`` writes it)::

    DIR/setup.toml                       what init was asked for (read by add-device)
    DIR/mosquitto.conf  DIR/acl          the broker's configuration and access rules
    DIR/passwd                           Mosquitto password file ($7$ hashes), 0600
    DIR/certs/ca.crt  ca.key             the private CA (key 0600; only add-device needs it)
    DIR/certs/server.crt  server.key     the broker's TLS certificate (key 0600)
    DIR/clients/edge.toml                the edge service's MQTT settings, 0600
    DIR/clients/inspector.toml           the read-only observer's, 0600
    DIR/clients/NAME.toml [.crt .key]    a device's, written by add-device

Every file is written atomically (temporary file, fsync, rename, directory fsync), so the broker
rereading its password file on SIGHUP never sees half of one. A file that already exists keeps
its owner, group and mode: a broker running as another user (uid 1883 in the eclipse-mosquitto
image) can still read the password file after ``add-device`` rewrote it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from broker.passwd import hash_password, new_password, parse_file, render_file
from broker.pki import Issued, issue_client, issue_server, load_issued, new_ca
from broker.provision import (
    EDGE_USER,
    INSPECTOR_USER,
    RESERVED_USERS,
    BrokerSetup,
    ClientConfig,
    device_client,
    edge_client,
    inspector_client,
    parse_setup,
    render_acl,
    render_mosquitto_conf,
    render_setup,
)
from schemas.errors import AresError
from schemas.topics import validate_device_id

PRIVATE = 0o600  # keys and anything holding a password
PUBLIC = 0o644
DEFAULT_DEVICE_CA_PATH = PurePosixPath("/etc/ares/ca.crt")


class SetupError(AresError, ValueError):
    """The directory cannot be (re)initialised or added to; the message says why."""


@dataclass(frozen=True)
class DeviceCredentials:
    """What add_device made: the device's config and where its files are."""

    device_id: str
    config: ClientConfig
    config_path: Path
    cert_path: Path | None
    key_path: Path | None


class SetupDir:
    """One broker setup directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def setup_file(self) -> Path:
        return self.root / "setup.toml"

    @property
    def conf(self) -> Path:
        return self.root / "mosquitto.conf"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def acl(self) -> Path:
        return self.root / "acl"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def clients(self) -> Path:
        return self.root / "clients"

    def client_file(self, name: str, suffix: str = ".toml") -> Path:
        return self.clients / f"{name}{suffix}"

    def existing(self) -> list[Path]:
        """The files of a setup already present here (init refuses them without force)."""
        candidates = [self.setup_file, self.conf, self.passwd, self.acl]
        candidates += [
            self.certs / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")
        ]
        candidates += [self.client_file("edge"), self.client_file(INSPECTOR_USER)]
        return [path for path in candidates if path.exists()]

    # --- init -------------------------------------------------------------------------------

    def init(self, setup: BrokerSetup, *, force: bool = False) -> None:
        """Write a complete setup: CA, server certificate, passwords, configs, ACL."""
        present = self.existing()
        if present and not force:
            raise SetupError(
                f"{self.root} already holds a broker setup ({present[0].name} and "
                f"{len(present) - 1} more); pass --force to replace it (new CA and passwords: "
                "every device needs its new files)"
            )
        # The new CA and password file make earlier client files useless: they go.
        stale = [
            self.client_file(name, suffix)
            for name in (self._device_names() if present else [])
            for suffix in (".toml", ".crt", ".key")
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        self.certs.mkdir(mode=0o755, exist_ok=True)
        # Holds passwords: only the owner may even list it.
        self.clients.mkdir(mode=0o700, exist_ok=True)
        ca = new_ca()
        server = issue_server(ca, setup.hosts)
        self._write_issued(ca, self.certs / "ca.crt", self.certs / "ca.key")
        self._write_issued(server, self.certs / "server.crt", self.certs / "server.key")

        edge_password, inspector_password = new_password(), new_password()
        entries = [
            hash_password(EDGE_USER, edge_password),
            hash_password(INSPECTOR_USER, inspector_password),
        ]
        write_atomic(self.passwd, render_file(entries).encode(), PRIVATE)
        write_atomic(self.acl, render_acl(setup.prefix).encode(), PUBLIC)
        write_atomic(self.conf, render_mosquitto_conf(setup).encode(), PUBLIC)

        edge = edge_client(setup, edge_password)
        self._write_config(
            edge,
            self.client_file("edge"),
            [
                "ARES edge service: `ares edge --config edge.toml` on the broker's host",
                "(the loopback listener; in compose, the broker's network namespace).",
                'What is trained: model = "resnet18" (or "mypkg.nets:make_net", installed',
                'on the edge and every device) and data = "/srv/ares-data/test", the held-out',
                "set (README: Bring your own model and data).",
            ],
        )
        cert_file = key_file = None
        if setup.require_client_cert:
            inspector_cert = issue_client(ca, INSPECTOR_USER)
            cert_path = self.client_file(INSPECTOR_USER, ".crt")
            key_path = self.client_file(INSPECTOR_USER, ".key")
            self._write_issued(inspector_cert, cert_path, key_path)
            cert_file, key_file = str(cert_path.absolute()), str(key_path.absolute())
        else:
            stale += [self.client_file(INSPECTOR_USER, suffix) for suffix in (".crt", ".key")]
        inspector = inspector_client(
            setup,
            inspector_password,
            ca_file=str((self.certs / "ca.crt").absolute()),
            cert_file=cert_file,
            key_file=key_file,
        )
        self._write_config(
            inspector,
            self.client_file(INSPECTOR_USER),
            [
                "Read-only observer, e.g. MQTT Explorer: host and port from url, TLS with",
                "ca_file as the CA, user name and password as below.",
            ],
        )
        for path in stale:
            path.unlink(missing_ok=True)
        # Last: a setup.toml means the setup is complete.
        write_atomic(self.setup_file, render_setup(setup).encode(), PUBLIC)

    # --- add-device -------------------------------------------------------------------------

    def load_setup(self) -> BrokerSetup:
        if not self.setup_file.is_file():
            raise SetupError(
                f"{self.root} is not a broker setup (no setup.toml); run `ares broker init "
                f"{self.root}` first"
            )
        return parse_setup(self.setup_file.read_text(encoding="utf-8"))

    def add_device(
        self,
        device_id: str,
        *,
        ca_path: PurePosixPath = DEFAULT_DEVICE_CA_PATH,
        client_cert: bool = False,
        force: bool = False,
    ) -> DeviceCredentials:
        """Give ``device_id`` a password (and a certificate) and write its config file.

        The broker learns of the new password when it rereads its files (SIGHUP).
        """
        validate_device_id(device_id)
        if device_id in RESERVED_USERS:
            raise SetupError(f"{device_id!r} is a service account, not a device id")
        if not ca_path.is_absolute():
            raise SetupError(
                f"--ca-path must be absolute (where the device keeps ca.crt): {ca_path}"
            )
        setup = self.load_setup()
        entries = parse_file(self.passwd.read_text(encoding="utf-8"))
        if any(e.username == device_id for e in entries) and not force:
            raise SetupError(
                f"device {device_id!r} already has credentials; pass --force to replace them"
            )
        with_cert = client_cert or setup.require_client_cert
        cert_path = key_path = None
        if with_cert:
            ca = load_issued(
                (self.certs / "ca.crt").read_bytes(), (self.certs / "ca.key").read_bytes()
            )
            cert_path = self.client_file(device_id, ".crt")
            key_path = self.client_file(device_id, ".key")
            self._write_issued(issue_client(ca, device_id), cert_path, key_path)
        password = new_password()
        config = device_client(setup, device_id, password, ca_file=ca_path, client_cert=with_cert)
        config_path = self.client_file(device_id)
        self._write_config(
            config,
            config_path,
            [
                f"ARES device {device_id}: `ares device --config {device_id}.toml`.",
                f"Copy this file and ca.crt (to {ca_path}) onto the device"
                + (f", with {device_id}.crt and {device_id}.key next to it." if with_cert else "."),
                'Its own data: data = "/srv/ares-data/train" (a folder of class folders, a',
                ".npz or a .csv; world-readable and outside /home for the systemd unit).",
            ],
        )
        # The password file last: the device's files exist before the broker accepts it.
        kept = [e for e in entries if e.username != device_id]
        kept.append(hash_password(device_id, password))
        write_atomic(self.passwd, render_file(kept).encode(), PRIVATE)
        return DeviceCredentials(device_id, config, config_path, cert_path, key_path)

    # --- internals --------------------------------------------------------------------------

    def _device_names(self) -> list[str]:
        try:
            entries = parse_file(self.passwd.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [e.username for e in entries if e.username not in RESERVED_USERS]

    @staticmethod
    def _write_issued(issued: Issued, cert_path: Path, key_path: Path) -> None:
        write_atomic(key_path, issued.key_pem(), PRIVATE)
        write_atomic(cert_path, issued.cert_pem(), PUBLIC)

    @staticmethod
    def _write_config(config: ClientConfig, path: Path, comments: list[str]) -> None:
        write_atomic(path, config.to_toml(comments).encode(), PRIVATE)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` all at once; a new file gets ``mode``.

    The temporary file is created 0600, so a secret is never readable by others, even briefly.
    An existing file's owner, group and mode carry over to the replacement.
    """
    keep = None
    with contextlib.suppress(FileNotFoundError):
        keep = path.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            if keep is not None:
                with contextlib.suppress(PermissionError):  # only root may give files away
                    os.fchown(out.fileno(), keep.st_uid, keep.st_gid)
            os.fchmod(out.fileno(), keep.st_mode & 0o7777 if keep is not None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
