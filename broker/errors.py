"""Exceptions raised while managing a local Mosquitto broker."""

from __future__ import annotations

from schemas.errors import AresError


class BrokerError(AresError, RuntimeError):
    """The local broker could not be started, reached, or stopped."""


class BrokerNotFoundError(BrokerError):
    """No Mosquitto executable was found; the message says how to install one."""
