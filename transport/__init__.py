"""Message transport for the services: the seam (``Link``, ``Connect``), its MQTT
implementation (``MqttLink`` over aiomqtt, ``mqtt_connector``) and an in-process one for unit
tests (``MemoryBroker``). Running Mosquitto itself is ``broker``'s business."""

from transport.base import Connect, LastWill, Link, LinkError, ManagedLink, Message, OnConnect
from transport.memory import MemoryBroker, MemoryLink, topic_matches
from transport.mqtt import MqttLink, MqttSettings, mqtt_connector

__all__ = [
    "Connect",
    "LastWill",
    "Link",
    "LinkError",
    "ManagedLink",
    "MemoryBroker",
    "MemoryLink",
    "Message",
    "MqttLink",
    "MqttSettings",
    "OnConnect",
    "mqtt_connector",
    "topic_matches",
]
