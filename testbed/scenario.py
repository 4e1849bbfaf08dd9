"""Scenarios: which emulated devices, links, batteries and data shares a testbed run has.

A scenario is a YAML (or JSON) file, or the name of one shipped in ``testbed/scenarios``::

    name: bandwidth-drop
    model: vgg5                        # a registered model, or package.module:callable
    dataset: synthetic
    policy: ares
    rounds: 8
    devices:
      - id: nano-1
        profile: jetson-nano-maxn      # see testbed.profiles; "host" runs unemulated
        uplink: {steps: [[0, 40], [60, 2]]}   # Mbit/s: a number, steps, or {trace: file}
        battery_wh: 10                 # optional emulated battery
        data_share: 2                  # relative share of the training data
        # data: /srv/frames/nano-1     # or the device's own data (then the edge's: data)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.policies import POLICIES
from schemas.documents import DocumentError, read_document, validation_problems
from schemas.messages import WireDtype
from schemas.partitions import check_partition
from schemas.topics import validate_device_id

ScheduleSpec = float | list[tuple[float, float]] | dict[str, Any]


class ScenarioError(DocumentError):
    """A scenario that cannot be found or does not validate."""


def check_model_name(name: str) -> str:
    """A registered model or ``package.module:callable`` (its form only: the module is imported
    where the model is built, so a scenario for your own model validates anywhere)."""
    from splitnn.model_registry import is_model_name, model_names  # torch, only when validating

    if not is_model_name(name):
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(model_names())}, or "
            "'package.module:callable' for your own"
        )
    return name


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
    data: Path | None = None  # this device's own data, instead of its share of the dataset


class Scenario(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    model: Annotated[str, AfterValidator(check_model_name)] = "small_cnn"
    dataset: str = "digits"
    data_dir: Path | None = None
    # The edge's own held-out set, instead of the dataset's test split; what images become;
    # the class names in label order (see the devices' own ``data``).
    data: Path | None = None
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    classes: list[str] | None = None
    policy: Annotated[str, AfterValidator(POLICIES.check)] = "ares"
    alpha: float = Field(default=0.5, ge=0, le=1)
    split: int | None = Field(default=None, ge=1)
    rounds: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    batches_per_round: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    wire_dtype: WireDtype = "float32"
    partition: Annotated[str, AfterValidator(check_partition)] = "iid"  # or dirichlet:ALPHA
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
    """Load a scenario file, or a shipped scenario by name; every problem is one line."""
    path = Path(name_or_path)
    if path.is_file():
        source, label = path, str(path)
    else:
        source, label = SHIPPED / f"{name_or_path}.yaml", f"{name_or_path} (shipped)"
        if not source.is_file():
            raise ScenarioError(
                f"no scenario file {name_or_path!r}; shipped scenarios: "
                + ", ".join(shipped_scenarios())
            )
    try:
        data = read_document(source, label)
    except DocumentError as exc:
        raise ScenarioError(str(exc)) from None
    return scenario_from_data(data, label)


def scenario_from_data(data: Any, label: str) -> Scenario:
    """A parsed scenario document, validated; ``label`` names it in the error."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{label}: {validation_problems(exc)}") from None


def samples_per_round(
    scenario: Scenario, *, seed: int, batches_per_round: int | None
) -> dict[str, int]:
    """Per device, the training samples a round processes: its data share of the dataset's
    training split, at most ``batches_per_round`` batches of the scenario's (None: all)."""
    from splitnn.datasets import load_dataset, partition_indices  # numpy, sklearn for digits

    train = load_dataset(scenario.dataset, "train", data_dir=scenario.data_dir, seed=seed)
    total = sum(d.data_share for d in scenario.devices)
    shards = partition_indices(train.y, total, scheme=scenario.partition, seed=seed)
    samples = {}
    for device_id, (first, count, _) in scenario.shards().items():
        samples[device_id] = sum(len(shards[i]) for i in range(first, first + count))
        if batches_per_round is not None:  # the edge plans for the samples a round processes
            samples[device_id] = min(samples[device_id], batches_per_round * scenario.batch_size)
    return samples
