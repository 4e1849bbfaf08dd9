"""Scenarios: which emulated devices, links, batteries and data shares a testbed run has.

A scenario is a YAML (or JSON) file, or the name of one shipped in ``testbed/scenarios``::

    name: bandwidth-drop
    model: vgg5
    dataset: synthetic
    policy: ares
    rounds: 8
    devices:
      - id: nano-1
        profile: jetson-nano-maxn      # see testbed.profiles; "host" runs unemulated
        uplink: {steps: [[0, 40], [60, 2]]}   # Mbit/s: a number, steps, or {trace: file}
        battery_wh: 10                 # optional emulated battery
        data_share: 2                  # relative share of the training data
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.topics import validate_device_id

ScheduleSpec = float | list[tuple[float, float]] | dict[str, Any]


class ScenarioError(ValueError):
    """A scenario that cannot be found or does not validate."""


class DeviceSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: Annotated[str, AfterValidator(validate_device_id)]
    profile: str = "host"
    uplink: ScheduleSpec = 20.0
    downlink: ScheduleSpec | None = None  # None: the uplink's schedule
    delay_ms: float = Field(default=0.0, ge=0)
    loss_pct: float = Field(default=0.0, ge=0, le=100)
    battery_wh: float | None = Field(default=None, gt=0)
    battery_pct: float = Field(default=100.0, gt=0, le=100)
    data_share: int = Field(default=1, ge=1)


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    model: str = "small_cnn"
    dataset: str = "digits"
    data_dir: Path | None = None
    policy: Literal["ares", "static", "fl", "sl"] = "ares"
    alpha: float = Field(default=0.5, ge=0, le=1)
    split: int | None = Field(default=None, ge=1)
    rounds: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    batches_per_round: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    wire_dtype: Literal["float32", "float16"] = "float32"
    partition: Literal["iid", "label_skew"] = "iid"
    # Emulated time runs this many times faster: compute targets divided, link rates multiplied.
    time_scale: float = Field(default=1.0, gt=0)
    devices: list[DeviceSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Scenario:
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ValueError(f"device ids must be unique, got {ids}")
        return self

    def shards(self) -> dict[str, tuple[int, int, int]]:
        """Per device (first shard, shard count, total shards), from the data shares."""
        total = sum(d.data_share for d in self.devices)
        out, first = {}, 0
        for device in self.devices:
            out[device.id] = (first, device.data_share, total)
            first += device.data_share
        return out


SHIPPED = Path(__file__).with_name("scenarios")


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario file, or a shipped scenario by name."""
    path = Path(name_or_path)
    if path.is_file():
        text, label = path.read_text(), str(path)
    else:
        shipped = SHIPPED / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ScenarioError(
                f"no scenario file {name_or_path!r}; shipped scenarios: "
                + ", ".join(shipped_scenarios())
            )
        text, label = shipped.read_text(), f"{name_or_path} (shipped)"
    try:
        data = json.loads(text) if label.endswith(".json") else yaml.safe_load(text)
        return Scenario.model_validate(data)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ScenarioError(f"{label}: not valid YAML/JSON: {exc}") from None
    except ValidationError as exc:
        raise ScenarioError(f"{label}: {exc}") from None
