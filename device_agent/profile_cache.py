"""Block timings measured on this host, kept on disk so a restarted agent rejoins at once.

Profiling a model takes from a fraction of a second (small_cnn here) to tens of seconds (VGG5
on a Raspberry Pi), and a device restarted near the end of a run may miss its last rounds
waiting for it. A profile is valid for the same architecture (its fingerprint), batch size and
host (machine, CPU, core count, torch version and threads); it is re-measured after
``max_age_s`` anyway, and the agent follows its measured speed from the first round on
(``device_agent.drift``), so an entry gone stale costs one round's accuracy of the plan at most.

A cache that cannot be read or written is skipped with a log line: never a reason to stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

from device_agent.ports import HostTimings

log = logging.getLogger(__name__)

FORMAT = "ares-profile-cache/1"
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0


def host_facts(torch_version: str, torch_threads: int) -> dict[str, str | int]:
    """What a profile measured here depends on, besides the model and the batch size."""
    return {
        "node": platform.node(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count() or 0,
        "torch": torch_version,
        "threads": torch_threads,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class ProfileCache:
    """One JSON file per (architecture, batch size, host) in ``directory``."""

    def __init__(self, directory: Path, max_age_s: float = DEFAULT_MAX_AGE_S) -> None:
        self.directory = directory
        self.max_age_s = max_age_s

    @staticmethod
    def key(fingerprint: str, batch_size: int, host: dict[str, str | int]) -> str:
        facts = json.dumps({"model": fingerprint, "batch": batch_size, "host": host},
                           sort_keys=True)  # fmt: skip
        return hashlib.sha256(facts.encode()).hexdigest()[:24]

    def load(self, key: str, blocks: int) -> HostTimings | None:
        """The timings stored under ``key``, if present, fresh and of ``blocks`` blocks."""
        path = self.directory / f"{key}.json"
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("profile cache %s unreadable (%s): profiling again", path, exc)
            return None
        try:
            if entry["format"] != FORMAT or time.time() - entry["created_at"] > self.max_age_s:
                return None
            timings = HostTimings(
                tuple(float(t) for t in entry["forward_s"]),
                tuple(float(t) for t in entry["backward_s"]),
            )
        except (KeyError, TypeError, ValueError):
            log.warning("profile cache %s malformed: profiling again", path)
            return None
        if len(timings.forward_s) != blocks or len(timings.backward_s) != blocks:
            return None
        if not all(t >= 0 for t in (*timings.forward_s, *timings.backward_s)):
            return None
        return timings

    def store(self, key: str, timings: HostTimings) -> None:
        """Write atomically (a reader sees the old entry or the new one); failures are logged."""
        entry = {
            "format": FORMAT,
            "created_at": time.time(),
            "forward_s": list(timings.forward_s),
            "backward_s": list(timings.backward_s),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=self.directory)
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(entry, out)
                os.replace(tmp, self.directory / f"{key}.json")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("profile cache %s not written: %s", self.directory, exc)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ares/profiles``, else ``~/.cache/ares/profiles``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ares" / "profiles"
