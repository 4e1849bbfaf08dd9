"""How a service process runs: its event loop, signals, systemd notifications and logging.

``run`` drives a service's coroutine (``runtime.loop``: uvloop, SIGTERM and SIGINT, systemd
supervision from ``runtime.systemd``); ``runtime.logs`` sets up its logging (text or JSON lines).
The CLI's services and the benchmarks' processes run through it.
"""

from runtime.loop import run

__all__ = ["run"]
