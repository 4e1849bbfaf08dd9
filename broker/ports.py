"""Choosing a free TCP port for a local broker, and checking who listens on it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

_TCP_LISTEN = "0A"  # socket state in /proc/net/tcp


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    The kernel may hand it to someone else before the broker binds it; LocalBroker
    retries on a fresh port when that happens.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def owns_listening_port(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a listening TCP socket on ``port`` (Linux /proc).

    None where /proc cannot tell (other systems, or another user's process). Lets a
    caller tell its own broker from whoever else answers on the same port.
    """
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    inodes = set()
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            fields = row.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                return True
    return False
