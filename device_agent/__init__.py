"""The device agent: trains the first blocks of the model on the device's own data.

Its names load on first use, so that ``device_agent.ports`` and ``device_agent.session`` (and
whatever imports only them) do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from device_agent.agent import DeviceAgent
    from device_agent.settings import DeviceSettings
    from device_agent.trainer import DeviceTrainer

__all__ = ["DeviceAgent", "DeviceSettings", "DeviceTrainer"]

_MODULES = {
    "DeviceAgent": "device_agent.agent",
    "DeviceSettings": "device_agent.settings",
    "DeviceTrainer": "device_agent.trainer",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
