"""The device agent's settings: defaults < config file < ARES_* environment < flags."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from device_agent.profile_cache import default_cache_dir
from schemas.config_file import ServiceSettings
from schemas.partitions import check_partition
from schemas.topics import validate_device_id
from transport import MqttSettings


def default_device_id() -> str:
    """The host name, made safe to be a topic level."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "device"
    return name[:64]


class DeviceSettings(ServiceSettings):
    mqtt: MqttSettings = MqttSettings()
    device_id: str = Field(default_factory=default_device_id)

    # The local data: a dataset, and which shard of it this device owns.
    dataset: str = "digits"
    data_dir: Path | None = None
    num_shards: int = Field(default=1, ge=1)
    shard_index: int = Field(default=0, ge=0)
    shard_count: int = Field(default=1, ge=1)  # consecutive shards owned (a larger data share)
    partition: Annotated[str, AfterValidator(check_partition)] = "iid"  # or dirichlet:ALPHA
    seed: int = 0
    # Or this device's own data, used whole instead of a shard of ``dataset``: a folder of
    # images with one sub-folder per class, a .npz of x and y, or a .csv with a label column.
    data: Path | None = None
    # What images in ``data`` become, (C, H, W): the edge's model input (default 3 x 32 x 32).
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    # The class names in label order (default: the sorted sub-folder names of ``data``); set
    # them when this device lacks a class the others have, so the label numbers agree.
    classes: list[str] | None = None

    # Emulation (testbed): a built-in device profile ("host": none), the emulated links and
    # battery. Time scale > 1 runs the emulation faster, keeping every ratio.
    profile: str = "host"
    time_scale: float = Field(default=1.0, gt=0)
    link_mode: Literal["direct", "tc", "token-bucket"] = "direct"
    uplink_schedule: str | None = None  # token-bucket mode: Mbit/s, or JSON steps/trace spec
    downlink_schedule: str | None = None
    battery_wh: float | None = Field(default=None, gt=0)
    battery_pct: float = Field(default=100.0, gt=0, le=100)
    # Declared resources for the planner (None: not declared; the edge assumes its defaults).
    power_compute_w: float | None = Field(default=None, ge=0)
    power_transmit_w: float | None = Field(default=None, ge=0)
    power_receive_w: float | None = Field(default=None, ge=0)
    memory_mb: float | None = Field(default=None, gt=0)
    # Where the device is (its site broker's name), for the edge replicas' locality.
    site: str | None = None
    uplink_mbps: float | None = Field(default=None, gt=0)
    downlink_mbps: float | None = Field(default=None, gt=0)
    allowed_cuts: list[int] | None = None  # cuts this device may take (None: any)
    torch_threads: int | None = Field(default=None, ge=1)
    grad_retries: int = Field(default=3, ge=0)  # re-sends of a batch whose gradient is late
    telemetry_interval_s: float = Field(default=15.0, gt=0)
    # Block timings measured here are kept for the same model, batch size and host, so a
    # restarted agent rejoins without profiling again (device_agent.profile_cache).
    profile_cache: bool = True
    profile_cache_dir: Path = Field(default_factory=default_cache_dir)
    sysfs_root: Path = Path("/")  # where /sys is (tests point it at a fake tree)
    exit_on_finish: bool = False

    @property
    def data_source(self) -> str:
        """Where the training data comes from: the own data's path, else the dataset's name."""
        return str(self.data) if self.data is not None else self.dataset

    @property
    def emulated(self) -> bool:
        """Whether these settings ask for emulation: a board profile, a battery or a link
        shaped by the agent (the testbed's; tc-shaped links are shaped outside the agent)."""
        shaped = self.link_mode == "token-bucket"
        return self.profile != "host" or self.battery_wh is not None or shaped

    @field_validator("device_id")
    @classmethod
    def _check_id(cls, device_id: str) -> str:
        return validate_device_id(device_id)

    @model_validator(mode="after")
    def _check_username(self) -> DeviceSettings:
        # The broker's ACL confines each device to topics named by its user name (%u).
        if self.mqtt.username is not None and self.mqtt.username != self.device_id:
            raise ValueError(
                f"mqtt.username {self.mqtt.username!r} must equal device_id {self.device_id!r}: "
                "the broker confines a device to the topics under its own user name"
            )
        return self

    @model_validator(mode="after")
    def _check_power(self) -> DeviceSettings:
        given = [self.power_compute_w, self.power_transmit_w, self.power_receive_w]
        if any(p is not None for p in given) and any(p is None for p in given):
            raise ValueError(
                "power_compute_w, power_transmit_w and power_receive_w go together: give all three"
            )
        return self

    @model_validator(mode="after")
    def _check_shard(self) -> DeviceSettings:
        if self.shard_index + self.shard_count > self.num_shards:
            raise ValueError(
                f"shards {self.shard_index}..{self.shard_index + self.shard_count - 1} "
                f"must lie below num_shards {self.num_shards}"
            )
        return self
