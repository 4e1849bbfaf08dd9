"""Serving's settings: defaults < config file < ARES_* environment < flags, as every service's.

A serving device is a device: :class:`ServingDeviceSettings` is the agent's settings (its id,
broker, declared resources, emulation) plus what serving needs, so ``ares device --serve`` takes
every flag ``ares device`` takes and the testbed emulates a serving device as it does a training
one. :class:`ServeSettings` is the serving edge's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from device_agent.settings import DeviceSettings
from planner.inference import SERVING_POLICIES
from schemas.config_file import ServiceSettings
from transport import MqttSettings


class ServingDeviceSettings(DeviceSettings):
    artifact: Path = Path("model.ares")  # the trained model (ares export), with its exits
    # A folder a camera drops images into: each is one request, its id the file name; answered
    # files move to its .done/ (.failed/ when they do not decode).
    watch_dir: Path | None = None
    watch_interval_s: float = Field(default=0.25, gt=0, le=60)
    # A request without its own deadline gets this one; the device answers within it, from its
    # own exits if the edge has not answered in time.
    deadline_ms: float = Field(default=1000.0, gt=0)
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_in_flight: int = Field(default=64, ge=1)  # requests beyond it are refused (overloaded)
    answer_cache: int = Field(default=4096, ge=1)  # recent answers kept for repeated ids
    # Until a plan arrives, and whenever the edge is gone: answer here, from this exit (None:
    # the deepest one; no exits: the whole model).
    fallback_exit: int | None = Field(default=None, ge=1)


class ServeSettings(ServiceSettings):
    mqtt: MqttSettings = MqttSettings()
    client_id: str = "ares-serve"
    artifact: Path = Path("model.ares")
    # How cuts and thresholds are chosen: a serving policy (ares, edge, device, sl-best,
    # exits-static, or one registered by the user) or package.module:Class.
    policy: Annotated[str, AfterValidator(SERVING_POLICIES.check)] = "ares"
    alpha: float = Field(default=0.5, ge=0, le=1)  # weight of latency against device energy
    # How far below the whole model's accuracy on the artifact's held-out set a plan's
    # predicted accuracy may fall (0.01: one point).
    accuracy_floor: float = Field(default=0.01, ge=0, le=1)
    # What the plan assumes for readings a device does not give.
    assumed_power_compute_w: float = Field(default=5.0, ge=0)
    assumed_power_transmit_w: float = Field(default=1.5, ge=0)
    assumed_power_receive_w: float = Field(default=1.5, ge=0)
    assumed_link_mbps: float = Field(default=20.0, gt=0)
    telemetry_stale_s: float = Field(default=120.0, gt=0)
    # Re-plan on new readings only if a device's link rate moved by this fraction, or its exit
    # rate by this much, since the plan in force (arrivals and departures always re-plan).
    replan_link_change: float = Field(default=0.2, ge=0)
    replan_exit_rate_change: float = Field(default=0.1, ge=0, le=1)
    # Compute: activations waiting together are run as one batch (per cut), up to this many.
    max_batch: int = Field(default=32, ge=1)
    max_queued: int = Field(default=1024, ge=1)  # activations waiting; more are refused
    torch_threads: int | None = Field(default=None, ge=1)
    status_interval_s: float = Field(default=10.0, gt=0)
