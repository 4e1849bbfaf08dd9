"""Local Mosquitto broker management for the ARES demo and tests.

``LocalBroker`` starts a private Mosquitto on a free loopback port from a generated
config (``BrokerConfig`` / ``render_config``) and makes sure it never outlives us.
``broker/mosquitto.conf`` and ``broker/acl.sample`` are commented samples for a real
deployment. The MQTT client side lives in ``transport``.
"""

from broker.binary import INSTALL_HINT, find_mosquitto
from broker.config import BrokerConfig, render_config
from broker.errors import BrokerError, BrokerNotFoundError
from broker.local import LocalBroker
from broker.ports import free_port
from broker.probe import async_probe_mqtt, probe_mqtt
from transport.urls import parse_broker_url

__all__ = [
    "INSTALL_HINT",
    "BrokerConfig",
    "BrokerError",
    "BrokerNotFoundError",
    "LocalBroker",
    "async_probe_mqtt",
    "find_mosquitto",
    "free_port",
    "parse_broker_url",
    "probe_mqtt",
    "render_config",
]
