"""Broker URLs: ``mqtt://host:port`` (plain TCP) and ``mqtts://host:port`` (TLS)."""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """Return ``(host, port, tls)`` or raise ValueError naming the URL."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Credentials belong in the settings (masked when shown), never in a URL that gets logged.
        raise ValueError(
            f"invalid broker URL {parts.scheme}://***@{parts.netloc.rpartition('@')[2]}: "
            "give the user name and password as settings, not in the URL"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid broker URL {url!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ValueError(
            f"invalid broker URL {url!r}: expected mqtt://host:port or mqtts://host:port"
        )
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ValueError(f"invalid broker URL {url!r}: no path, query or fragment allowed")
    if port == 0:
        raise ValueError(f"invalid broker URL {url!r}: port 0")
    return parts.hostname, port or DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts"
