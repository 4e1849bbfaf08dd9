"""The edge service's settings: defaults < config file < ARES_* environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from planner.policies import POLICIES
from schemas.config_file import ServiceSettings
from schemas.messages import WIRE_DTYPES, WireDtype
from schemas.topics import validate_device_id, validate_replica_name
from schemas.weight_delta import WeightWire
from transport import MqttSettings


class EdgeSettings(ServiceSettings):
    mqtt: MqttSettings = MqttSettings()
    client_id: str = "ares-edge"

    # What is trained.
    model: str = "small_cnn"  # a registered model, or package.module:callable
    dataset: str = "digits"  # its "test" split is the held-out set, unless ``data`` is given
    data_dir: Path | None = None
    seed: int = 0
    # Or the edge's own held-out set, used whole: a folder of images with one sub-folder per
    # class, a .npz of x and y, or a .csv with a label column (splitnn.datasets.local).
    data: Path | None = None
    # What images in ``data`` become, (C, H, W), and so the model's input (default 3 x 32 x 32).
    input_shape: tuple[Annotated[int, Field(ge=1)], ...] | None = None
    classes: list[str] | None = None  # class names in label order (default: sorted folders)

    # Rounds and who takes part.
    rounds: int = Field(default=5, ge=1)
    min_devices: int = Field(default=1, ge=1)
    registration_timeout_s: float = Field(default=120.0, gt=0)

    # How split points are chosen: a name in planner.policies.POLICIES (ares, static, fl, sl,
    # or one registered by the user) or package.module:Class.
    policy: Annotated[str, AfterValidator(POLICIES.check)] = "ares"
    alpha: float = Field(default=0.5, ge=0, le=1)  # weight of time against device energy
    # The sl policy's cuts: one for every device, overridden per device id. None = the middle cut.
    split: int | None = Field(default=None, ge=1)
    splits: dict[str, int] = Field(default_factory=dict)
    # What the planner assumes for readings a device does not give.
    assumed_power_compute_w: float = Field(default=5.0, ge=0)
    assumed_power_transmit_w: float = Field(default=1.5, ge=0)
    assumed_power_receive_w: float = Field(default=1.5, ge=0)
    assumed_link_mbps: float = Field(default=20.0, gt=0)
    profile_timeout_s: float = Field(default=60.0, ge=0)  # wait for device profiles (round 1)
    telemetry_stale_s: float = Field(default=120.0, gt=0)  # older readings are marked stale

    # Training hyper-parameters sent to the devices each round.
    batch_size: int = Field(default=32, ge=1)
    batches_per_round: int | None = Field(default=None, ge=1)  # None: one local epoch
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    # Activations and gradients on the wire: float32, float16, int8 or int4 (per device in
    # wire_dtypes). A device whose hello does not list the format gets the narrowest wider one
    # it does (schemas.usable_wire_dtype).
    wire_dtype: WireDtype = "float32"
    wire_dtypes: dict[str, WireDtype] = Field(default_factory=dict)
    # The formats the ares policy may choose per device with its cut (planner.wire_choice),
    # wire_dtype first; a lossy one only at the cuts where its accuracy cost, measured on the
    # held-out data (edge_service.wire_calibration), is within
    # wire_accuracy_bound points. Empty (or wire_dtype alone): no choice. Devices named in
    # wire_dtypes, and every other policy, keep their configured format.
    wire_formats: list[WireDtype] = Field(default_factory=lambda: list(WIRE_DTYPES))
    wire_accuracy_bound: float = Field(default=1.0, ge=0, le=100)
    wire_calibration_samples: int = Field(default=512, ge=1)
    # Measured before round 1, then again behind a round once the rounds since took long enough
    # that measuring costs at most this share of the edge's time (it runs on the compute
    # threads, beside the batches: about 3 s for VGG5, 0.15 s for the demo's model).
    wire_calibration_share: float = Field(default=0.1, gt=0, le=1)
    # Error feedback on quantised gradients: each device's quantisation error of one batch's
    # gradient is added to the next before it is quantised (edge_service.error_feedback). Off:
    # on digits neither int8 nor int4 lost accuracy without it (docs/benchmarks.md).
    grad_error_feedback: bool = False
    # The device part's weights, down with each round start and up with each part: float32,
    # or quantised deltas against the round start both sides hold (schemas.weight_delta),
    # int8-delta (about a quarter of the bytes) or int4-delta (an eighth). A device whose hello
    # does not list it gets the narrowest wider one it does (float32 at worst).
    weight_wire: WeightWire = "int8-delta"

    # Every network wait is bounded.
    # Straggler handling: a round's deadline is deadline_slack x the plan's predicted round time,
    # at least deadline_floor_s and at most round_timeout_s; a device's wait for a gradient is
    # deadline_slack x its predicted batch time, at least batch_timeout_s.
    deadline_slack: float = Field(default=3.0, ge=1)
    deadline_floor_s: float = Field(default=30.0, gt=0)
    batch_timeout_s: float = Field(default=30.0, gt=0)
    round_timeout_s: float = Field(default=900.0, gt=0)
    # At the deadline late devices are asked for their part as it is; it counts by the samples
    # it processed (False: only devices that finished count).
    count_partial: bool = True
    close_grace_s: float = Field(default=10.0, ge=0)
    # An "offline" status is believed only if the device then fails to answer a ping this fast
    # (anyone may publish one on a broker without per-device ACLs).
    liveness_timeout_s: float = Field(default=3.0, gt=0)

    # Compute.
    torch_device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    torch_threads: int | None = Field(default=None, ge=1)
    compute_workers: int = Field(default=2, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)

    # Prometheus metrics on http://metrics_host:metrics_port/metrics (None: off; 0: any port).
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    report: Path | None = None
    # The trained model with calibrated early exits, written when training ends, for serving
    # (serving.artifact; None: not written, ``ares export`` makes one from the checkpoint).
    artifact: Path | None = None
    exits: list[Annotated[int, Field(ge=1)]] | None = None  # exit positions; None: the default
    # Written atomically at every round end. When it exists the edge resumes from it (new
    # devices and rejoining ones resynchronise at the next round start) unless fresh is set.
    checkpoint: Path | None = Path("ares-edge.ckpt")
    fresh: bool = False
    finish_devices: bool = True  # tell the devices to stop when training is over

    # Scale-out (edge_service.cluster): this process is the replica of that name, one of
    # several ``ares edge`` processes on one core broker (None: the only edge). Its site is
    # where it runs, for locality; its capacity, in batches per second, weighs its share of
    # devices (equal replicas: leave 1). The coordinator's lease lapses after lease_s without
    # renewal; a replica silent for replica_timeout_s is taken for dead.
    replica: str | None = None
    site: str | None = None
    replica_capacity_bps: float = Field(default=1.0, gt=0)
    lease_s: float = Field(default=3.0, gt=0)
    replica_timeout_s: float = Field(default=3.0, gt=0)
    cluster_heartbeat_s: float = Field(default=0.5, gt=0)

    @field_validator("replica")
    @classmethod
    def _check_replica(cls, replica: str | None) -> str | None:
        return None if replica is None else validate_replica_name(replica)

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, splits: dict[str, int]) -> dict[str, int]:
        for device_id, cut in splits.items():
            validate_device_id(device_id)
            if cut < 1:
                raise ValueError(f"split for {device_id} must be >= 1, got {cut}")
        return splits
