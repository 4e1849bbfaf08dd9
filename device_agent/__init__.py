"""The device agent: trains the first blocks of the model on the device's own data."""

from device_agent.agent import DeviceAgent
from device_agent.settings import DeviceSettings
from device_agent.trainer import DeviceTrainer

__all__ = ["DeviceAgent", "DeviceSettings", "DeviceTrainer"]
