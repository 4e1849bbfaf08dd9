"""Install a service's config file for its systemd unit, with the secrets moved out of it.

Used by deploy/install.sh (standard library only: it runs before the project is installed).
``ares broker init`` writes client configs with the MQTT password inline; a unit with
``DynamicUser=yes`` cannot read a root-only file, and a world-readable config must not hold a
password. So this script splits a config in two:

- ``/etc/ares/<role>.toml`` (0644): the config without ``mqtt.password``/``mqtt.password_file``;
- ``/etc/ares/credentials/<role>-mqtt-password`` (0600, root): the password, which the unit
  hands to the service with ``LoadCredential=`` (``ARES_MQTT__PASSWORD_FILE=%d/mqtt-password``).

TLS files go where the config says they are: the CA certificate (``--ca``) and a client
certificate (``--cert``) at ``mqtt.ca_file``/``mqtt.cert_file`` (0644); a client key (``--key``)
becomes a second credential, with a unit drop-in pointing ``mqtt.key_file`` at it.

Idempotent: a file is written (atomically) only when its content or mode differs. Prints one line
per file, ``changed PATH`` or ``unchanged PATH`` (``would change`` with ``--dry-run``, which
writes nothing); exits 2 with a message on bad input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

ROLES = ("edge", "device")
SECRET_KEYS = ("password", "password_file")
TABLE_HEADER = re.compile(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
SECRET_LINE = re.compile(r"\s*(password|password_file)\s*=")


class ConfigError(ValueError):
    """The config cannot be installed as it is; the message says why."""


@dataclass(frozen=True)
class Target:
    """One file to install: where (under the root), what, and with which mode."""

    path: PurePosixPath
    content: bytes
    mode: int


def strip_secrets(text: str) -> tuple[str, dict[str, Any]]:
    """The config without the [mqtt] password lines, and the parsed original.

    Line-based so comments and layout survive; checked by parsing the result, so a form the
    line filter does not handle (a dotted key, a multi-line string) is an error, not a leak.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    if not isinstance(data.get("mqtt"), dict):
        return text, data  # nothing to strip; plan() says what is missing
    kept, table = [], None
    for line in text.splitlines(keepends=True):
        header = TABLE_HEADER.match(line)
        if header:
            table = header.group(1)
        elif table == "mqtt" and SECRET_LINE.match(line):
            continue
        kept.append(line)
    stripped = "".join(kept)
    public = {key: value for key, value in data["mqtt"].items() if key not in SECRET_KEYS}
    expected = {**data, "mqtt": public}
    try:
        same = tomllib.loads(stripped) == expected
    except tomllib.TOMLDecodeError:  # e.g. the rest of a multi-line string left behind
        same = False
    if not same:
        raise ConfigError(
            "cannot take the password out of the [mqtt] table line by line; write it as "
            'password = "..." on a line of its own in [mqtt]'
        )
    return stripped, data


def password_of(mqtt: dict[str, Any], existing: Path) -> str | None:
    """The password the config gives (inline or in a file); None to keep ``existing``."""
    if "password" in mqtt and "password_file" in mqtt:
        raise ConfigError("give mqtt.password or mqtt.password_file, not both")
    if "password" in mqtt:
        password = mqtt["password"]
    elif "password_file" in mqtt:
        source = Path(mqtt["password_file"])
        try:
            lines = source.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read mqtt.password_file {source}: {exc}") from None
        password = lines[0] if lines else ""
    elif existing.exists():
        return None  # installed before: keep that credential
    else:
        raise ConfigError(
            "the config has no mqtt.password: the unit loads one as a systemd credential "
            "(use the client config `ares broker init` wrote)"
        )
    if not isinstance(password, str) or not password or "\n" in password:
        raise ConfigError("mqtt.password must be a non-empty string on one line")
    return password


def plan(
    role: str,
    config: Path,
    *,
    root: Path,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> list[Target]:
    """Every file the role's unit needs from ``config`` (and the TLS files given)."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    try:
        text = config.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {config}: {exc}") from None
    stripped, data = strip_secrets(text)
    mqtt = data.get("mqtt")
    if not isinstance(mqtt, dict) or not mqtt.get("username"):
        raise ConfigError("the config needs an [mqtt] table with a username")
    if role == "device" and not data.get("device_id"):
        raise ConfigError("a device config needs device_id (the broker user name)")
    credentials = PurePosixPath("/etc/ares/credentials")
    password_path = credentials / f"{role}-mqtt-password"
    targets = [Target(PurePosixPath(f"/etc/ares/{role}.toml"), stripped.encode(), 0o644)]
    password = password_of(mqtt, under(root, password_path))
    if password is not None:
        targets.append(Target(password_path, password.encode() + b"\n", 0o600))
    for flag, name, given in (("--ca", "ca_file", ca), ("--cert", "cert_file", cert)):
        if given is not None:
            targets.append(Target(config_path(mqtt, name, flag), read(given), 0o644))
    if key is not None:
        if "key_file" not in mqtt:
            raise ConfigError("--key given, but the config names no mqtt.key_file")
        key_path = credentials / f"{role}-mqtt-key"
        dropin = PurePosixPath(f"/etc/systemd/system/ares-{role}.service.d/client-key.conf")
        targets += [
            Target(key_path, read(key), 0o600),
            Target(dropin, client_key_dropin(key_path).encode(), 0o644),
        ]
    return targets


def client_key_dropin(key_path: PurePosixPath) -> str:
    return (
        "# Written by deploy/install.sh: the client key reaches the service as a credential.\n"
        "[Service]\n"
        f"LoadCredential=mqtt-key:{key_path}\n"
        "Environment=ARES_MQTT__KEY_FILE=%d/mqtt-key\n"
    )


def config_path(mqtt: dict[str, Any], name: str, flag: str) -> PurePosixPath:
    value = mqtt.get(name)
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"{flag} given, but mqtt.{name} in the config is not an absolute path")
    return PurePosixPath(value)


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def under(root: Path, path: PurePosixPath) -> Path:
    return root / path.relative_to("/")


def install(target: Target, root: Path, dry_run: bool) -> bool:
    """Write ``target`` unless it is already there as it should be; True if it changed."""
    path = under(root, target.path)
    try:
        same = path.read_bytes() == target.content and path.stat().st_mode & 0o777 == target.mode
    except OSError:
        same = False
    if same or dry_run:
        return not same
    # Directories: credentials private to root, the rest world-readable.
    path.parent.mkdir(mode=0o700 if target.mode == 0o600 else 0o755, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, target.mode)  # before any byte is written: a secret is never exposed
        with os.fdopen(fd, "wb") as out:
            out.write(target.content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--config", required=True, type=Path, help="the service's TOML config")
    parser.add_argument("--ca", type=Path, help="CA certificate, installed at mqtt.ca_file")
    parser.add_argument("--cert", type=Path, help="client certificate, at mqtt.cert_file")
    parser.add_argument("--key", type=Path, help="client key, installed as a credential")
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this root")
    parser.add_argument("--dry-run", action="store_true", help="say what would change")
    args = parser.parse_args(argv)
    try:
        targets = plan(
            args.role, args.config, root=args.root, ca=args.ca, cert=args.cert, key=args.key
        )
    except ConfigError as exc:
        print(f"install_config: {args.config}: {exc}", file=sys.stderr)
        return 2
    for target in targets:
        changed = install(target, args.root, args.dry_run)
        verb = ("would change" if args.dry_run else "changed") if changed else "unchanged"
        print(f"{verb} {target.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
