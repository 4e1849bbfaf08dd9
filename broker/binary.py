"""Locating the Mosquitto executable."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

from broker.errors import BrokerNotFoundError

ENV_VAR = "ARES_MOSQUITTO"

# Package managers install the broker into sbin, which is often not on a user's PATH
# (Debian/Ubuntu: /usr/sbin; Homebrew: /opt/homebrew/sbin on arm64, /usr/local/sbin on x86).
FALLBACK_PATHS: tuple[str, ...] = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)

INSTALL_HINT = (
    "Install Mosquitto 2.x: Debian/Ubuntu `sudo apt-get install mosquitto`, "
    "macOS `brew install mosquitto`, or run `bash scripts/setup.sh` (which installs it). "
    f"If it is installed somewhere unusual, set {ENV_VAR}=/path/to/mosquitto."
)


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_mosquitto(
    binary: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    fallbacks: Sequence[str] = FALLBACK_PATHS,
) -> str:
    """Return the path of the mosquitto executable or raise BrokerNotFoundError.

    Order: ``binary``, ``$ARES_MOSQUITTO``, ``mosquitto`` on PATH, then ``fallbacks``.
    An explicit ``binary`` or env value that is unusable is an error, not a reason to
    fall back: silently running a different broker than asked for hides mistakes.
    """
    environ = os.environ if env is None else env
    for origin, wanted in (("binary argument", binary), (ENV_VAR, environ.get(ENV_VAR))):
        if not wanted:
            continue
        resolved = shutil.which(wanted, path=environ.get("PATH"))
        if resolved is None and _is_executable(wanted):
            resolved = wanted
        if resolved is None:
            raise BrokerNotFoundError(
                f"mosquitto not found: {origin} {wanted!r} is not an executable. {INSTALL_HINT}"
            )
        return resolved
    on_path = shutil.which("mosquitto", path=environ.get("PATH"))
    if on_path is not None:
        return on_path
    for candidate in fallbacks:
        if _is_executable(candidate):
            return candidate
    searched = ", ".join(("PATH", *fallbacks))
    raise BrokerNotFoundError(f"mosquitto not found (searched {searched}). {INSTALL_HINT}")
