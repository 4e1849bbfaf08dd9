"""Pydantic models of every message on the wire (protocol version 2).

Human-facing messages (hello, status, telemetry, error, edge status, plan) travel as JSON so MQTT
Explorer shows them as they are. Control, activation, gradient and weight messages travel as
msgpack frames (see ``schemas.codec``) whose ``meta`` map is one of the models below.
Every model is frozen, rejects unknown fields and carries ``v``, the protocol version.

Version 2 calls the split point ``cut`` everywhere (version 1 said ``split`` in the plan, the
round start and the weights). Both versions are read; a version-1 message is upgraded before it
is validated, and ``to_json`` / ``to_meta`` write version 1 for a peer that speaks it, so a
fleet can be upgraded one side at a time (edge first: an edge of version 1 refuses version 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from schemas.errors import AresError
from schemas.quantization import bits_per_element
from schemas.topics import validate_device_id
from schemas.weight_delta import LEGACY_WEIGHT_WIRES, WeightWire

ProtocolVersion = Literal[1, 2]
PROTOCOL_VERSION: Literal[2] = 2
PROTOCOL_VERSIONS: tuple[ProtocolVersion, ...] = get_args(ProtocolVersion)

DeviceId = Annotated[str, AfterValidator(validate_device_id)]
RoundNo = Annotated[int, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# The wire format of activations and gradients: a float dtype, or a quantised format
# (schemas.quantization: int8 and int4, affine per channel).
WireDtype = Literal["float32", "float16", "int8", "int4"]
WIRE_DTYPES: tuple[WireDtype, ...] = get_args(WireDtype)
# What a hello that does not list its formats means: an agent from before the quantised ones.
LEGACY_WIRE_DTYPES: tuple[WireDtype, ...] = ("float32", "float16")
WIRE_DTYPES_NARROWEST_FIRST: tuple[WireDtype, ...] = ("int4", "int8", "float16", "float32")


def wire_itemsize(dtype: WireDtype) -> float:
    """Bytes per element on the wire (0.5 for int4), the one rule every size estimate uses.

    A quantised tensor also carries 5 bytes per channel (its float32 scale and uint8 zero
    point); a batch's activations hold hundreds to thousands of elements per channel, so that
    is under 1% and, like every frame's header, left out."""
    return bits_per_element(dtype) / 8


def usable_wire_dtype(wanted: WireDtype, supported: Iterable[str]) -> WireDtype:
    """``wanted`` if the device supports it, else the narrowest wider format it does (float32
    at worst: every device speaks it). Narrowest first: int4, int8, float16, float32."""
    known = set(supported)
    wider = WIRE_DTYPES_NARROWEST_FIRST[WIRE_DTYPES_NARROWEST_FIRST.index(wanted) :]
    return next((d for d in wider if d in known), "float32")


EdgeState = Literal["starting", "waiting", "training", "evaluating", "finished", "stopped"]
# "aborted": the device gave up the round named in the status (the edge need not wait for it).
DeviceState = Literal["online", "idle", "training", "aborted", "offline", "refused"]


class SchemaError(AresError, ValueError):
    """A message does not match its schema; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: ProtocolVersion = PROTOCOL_VERSION


class WithLaterFields(WireModel):
    """A message with fields added after its protocol version was out (``LATER_FIELDS``):
    each is left out while it holds its default, so a peer from before it, which refuses
    unknown fields, still reads every such message that does not need it."""

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_later_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.LATER_FIELDS:
                if getattr(self, name) == type(self).model_fields[name].default:
                    data.pop(name, None)
        return data


# --- device -> edge (JSON) -------------------------------------------------------------------

Watts = Annotated[float, Field(ge=0, allow_inf_nan=False)]
BitRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class PowerFigures(WireModel):
    """Board power while computing, transmitting and receiving (the cost model's P_c, P_t, P_r)."""

    compute_w: Watts
    transmit_w: Watts
    receive_w: Watts


class ComputeProfile(WireModel):
    """Seconds per batch of every block of ``model``, measured on the device itself (and
    following the speed it measures in its rounds: device_agent.drift)."""

    model: str
    batch_size: Annotated[int, Field(ge=1)]
    forward_s: tuple[Seconds, ...]
    backward_s: tuple[Seconds, ...]
    # Per wire format, the device's encode + decode seconds per MB of float32 tensor (what the
    # planner prices a format's codec at; None: the device did not measure it).
    codec_s_per_mb: dict[WireDtype, Seconds] | None = None


class Hello(WithLaterFields):
    """Registration, sent on connect and whenever the edge's session changes."""

    LATER_FIELDS = ("site",)

    kind: Literal["hello"] = "hello"
    device_id: DeviceId
    instance: str  # new for every agent process: a new instance has lost any round state
    agent_version: str
    samples: Annotated[int, Field(ge=1)]
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: Annotated[int, Field(ge=2)]
    labels: tuple[str, ...] | None = None  # the class names of its data, in label order
    profile: str = "host"
    link_mode: str = "direct"  # direct, tc (shaped namespace) or token-bucket (emulated links)
    # The wire formats this agent can send and read. Absent: an agent from before the
    # quantised formats, never asked for one.
    wire_dtypes: tuple[WireDtype, ...] = LEGACY_WIRE_DTYPES
    # The weight wires (schemas.weight_delta) it can read and send. Absent: an agent from
    # before the deltas, always sent full float32 weights.
    weight_wires: tuple[WeightWire, ...] = LEGACY_WEIGHT_WIRES
    # Declared resources; None where the owner did not say (the planner then assumes defaults).
    power: PowerFigures | None = None
    memory_bytes: Annotated[int, Field(ge=0)] | None = None
    uplink_bps: BitRate | None = None
    downlink_bps: BitRate | None = None
    allowed_cuts: tuple[Annotated[int, Field(ge=1)], ...] | None = None  # None: any cut
    # Where it is (a site broker's name): with several edge replicas, one at the same site
    # serves it while that keeps the load even (edge_service.assignment).
    site: str | None = None


class DeviceStatus(WireModel):
    """Retained; the device's MQTT will publishes ``offline`` when it vanishes."""

    kind: Literal["device_status"] = "device_status"
    device_id: DeviceId
    state: DeviceState
    round: RoundNo | None = None
    # The edge's liveness ping this status answers (Ping.nonce), if it answers one.
    nonce: str | None = None
    # Why, for ``refused``: the device cannot take part in the edge's session (another model).
    detail: str | None = None


class Telemetry(WireModel):
    """Readings the planner can use; fields a device cannot measure stay None."""

    kind: Literal["telemetry"] = "telemetry"
    device_id: DeviceId
    round: RoundNo | None = None
    batches: Count = 0
    busy_s: Seconds = 0.0
    mean_batch_s: Seconds | None = None
    # Last round's compute time over what ``compute`` predicted for it (1.0: as planned);
    # ``compute`` itself then follows the measured speed (device_agent.drift).
    speed_ratio: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    uplink_bps: BitRate | None = None  # smoothed estimates from the device's own transfers
    downlink_bps: BitRate | None = None
    uplink_samples: Count = 0
    downlink_samples: Count = 0
    battery_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    charging: bool | None = None
    board_power_w: Watts | None = None
    compute: ComputeProfile | None = None


# --- edge -> all / edge -> device (JSON) -------------------------------------------------------


class ErrorReport(WireModel):
    """Published on a device's error topic when the edge rejects one of its messages."""

    kind: Literal["error"] = "error"
    device_id: str
    channel: str
    reason: str
    detail: str
    round: RoundNo | None = None
    seq: Count | None = None


class EdgeStatus(WireModel):
    """Retained on the edge status topic: what the edge is doing now."""

    kind: Literal["edge_status"] = "edge_status"
    session: str
    state: EdgeState
    round: RoundNo  # the round in progress (or last run)
    rounds: Count  # rounds planned
    rounds_done: Count = 0
    devices: dict[str, str] = Field(default_factory=dict)
    last_round: dict[str, str] = Field(default_factory=dict)  # device: its round outcome
    accuracy: float | None = None
    loss: float | None = None


class DevicePlanEntry(WireModel):
    cut: Annotated[int, Field(ge=1)]
    predicted_time_s: float
    predicted_energy_j: float
    reason: str  # why this cut (and why it changed or stayed)
    inputs: str  # where the readings came from: measured, declared or assumed
    # The wire format the planner chose with the cut (None: the device's configured one).
    wire_dtype: WireDtype | None = None


class PlanMessage(WireModel):
    """Retained on the plan topic: every device's cut for a round, and why."""

    kind: Literal["plan"] = "plan"
    session: str
    round: RoundNo
    policy: str
    alpha: Annotated[float, Field(ge=0, le=1)]
    objective: float
    devices: dict[str, DevicePlanEntry]
    sitting_out: tuple[str, ...] = ()


# --- control (frame meta, edge -> device) ------------------------------------------------------


class ModelInfo(WireModel):
    """Enough to rebuild the model architecture on the device, and to check it is the same."""

    name: str  # a registered model or "package.module:callable" (splitnn.model_registry)
    input_shape: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)]
    num_classes: Annotated[int, Field(ge=2)]
    # The architecture's fingerprint (splitnn.models.fingerprint_module): a device whose own
    # build of ``name`` differs refuses the session. None from a version-1 edge.
    fingerprint: str | None = None
    labels: tuple[str, ...] | None = None  # the class names, in label order, where known


class TrainConfig(WithLaterFields):
    LATER_FIELDS = ("weight_wire",)

    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    batch_size: Annotated[int, Field(ge=1)]
    batches: Annotated[int, Field(ge=1)]
    batch_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    wire_dtype: WireDtype = "float32"
    # How the device uploads its part (schemas.weight_delta): deltas against the round's start.
    weight_wire: WeightWire = "float32"


class Welcome(WireModel):
    """Registration accepted; the device profiles ``model`` at ``batch_size`` on its hardware."""

    kind: Literal["welcome"] = "welcome"
    session: str
    device_id: DeviceId
    model: ModelInfo
    batch_size: Annotated[int, Field(ge=1)]


class RoundStart(WithLaterFields):
    """Starts a round; the frame's tensors are the device part's weights for ``cut``.

    With ``weights_base``, its quantised tensors are deltas against the start of that round
    that the device holds (it uploaded its part of it in this session): schemas.weight_delta.
    A device that does not hold it answers with a ``WeightsResync`` and gets them in full.

    ``attempt``: a round may be started more than once (another edge replica repeats it for
    the devices of one that died); a device takes a newer attempt's start as a new round and
    tags its traffic with it, and the edge never applies traffic of an older attempt."""

    LATER_FIELDS = ("weights_base", "attempt")

    kind: Literal["round_start"] = "round_start"
    session: str
    round: RoundNo
    cut: Annotated[int, Field(ge=1)]
    model: ModelInfo
    train: TrainConfig
    deadline_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    weights_base: RoundNo | None = None
    attempt: Count = 0


class RoundAbort(WithLaterFields):
    """Gives up the round; only its ``attempt`` of it (an older attempt's abort is stale)."""

    LATER_FIELDS = ("attempt",)

    kind: Literal["round_abort"] = "round_abort"
    session: str
    round: RoundNo
    reason: str
    attempt: Count = 0


class RoundClose(WithLaterFields):
    """The round's deadline passed: stop after the current batch and upload what you have.
    Only its ``attempt`` of the round is closed."""

    LATER_FIELDS = ("attempt",)

    kind: Literal["round_close"] = "round_close"
    session: str
    round: RoundNo
    attempt: Count = 0


class Ping(WireModel):
    """Are you there? The device answers with its status carrying ``nonce``.

    The edge asks before it believes an ``offline`` status: on a broker without per-device ACLs
    anyone may publish one, and a live device must not be evicted on a stranger's word.
    """

    kind: Literal["ping"] = "ping"
    session: str
    nonce: str


class Finish(WireModel):
    """Training is over; agents may exit (the demo's agents do)."""

    kind: Literal["finish"] = "finish"
    session: str
    reason: str


CtrlMessage = Annotated[
    Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish, Field(discriminator="kind")
]

# --- training traffic (frame meta) -------------------------------------------------------------


class RoundTraffic(WithLaterFields):
    """What every device-to-edge frame of a round carries: who sent it, for which round and
    which attempt of it (its round start's: the edge drops an older attempt's traffic)."""

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("attempt",)  # subclasses add theirs

    device_id: DeviceId
    round: RoundNo
    attempt: Count = 0


class ActivationMeta(RoundTraffic):
    """Tensors: ``act`` (batch x cut shape) and ``labels`` (int64, batch)."""

    kind: Literal["act"] = "act"
    seq: Count


class GradientMeta(WithLaterFields):
    """Tensor: ``grad``, the loss gradient with respect to the cut activations."""

    LATER_FIELDS = ("attempt",)

    kind: Literal["grad"] = "grad"
    round: RoundNo
    seq: Count
    loss: float
    correct: Count
    server_s: Seconds  # the edge's time for this batch, from receipt to reply (queue included)
    attempt: Count = 0  # the round start's (a repeated round's gradients are its own)


class WeightsMeta(RoundTraffic):
    """Tensors: the device part's state dict after the round. With ``weights_base`` (this
    round), its quantised tensors are deltas against the round's start (schemas.weight_delta)."""

    LATER_FIELDS = (*RoundTraffic.LATER_FIELDS, "weights_base")

    kind: Literal["weights"] = "weights"
    cut: Annotated[int, Field(ge=1)]
    samples: Count
    batches: Count
    busy_s: Seconds
    loss: Annotated[float, Field(allow_inf_nan=False)] | None = None
    # Median time from publishing a batch's activations to holding its gradient.
    rtt_median_s: Seconds | None = None
    uplink_s: Seconds = 0.0  # time spent sending activations this round
    downlink_s: Seconds = 0.0  # time spent receiving gradients this round
    # Emulated devices: how far the host fell behind the emulated compute times (0: kept up).
    behind_s: Seconds = 0.0
    weights_base: RoundNo | None = None


class WeightsResync(RoundTraffic):
    """On the weights channel, no tensors: the device cannot apply its round start's weight
    deltas (it does not hold their base: it restarted, or missed a round; or they do not fit
    it). The edge counts it and sends the round start again with full weights."""

    kind: Literal["weights_resync"] = "weights_resync"
    weights_base: RoundNo | None = None  # the base the round start named
    held: RoundNo | None = None  # the round whose start the device holds (None: none)
    reason: str


# --- parsing and serialising -------------------------------------------------------------------

M = TypeVar("M", bound=WireModel)
_CTRL: TypeAdapter[Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish] = TypeAdapter(
    CtrlMessage
)


def to_json(message: WireModel, version: ProtocolVersion = PROTOCOL_VERSION) -> bytes:
    """``message`` as JSON, in ``version`` of the protocol (a peer's, if it is older)."""
    if version == PROTOCOL_VERSION:
        return message.model_dump_json().encode()
    return json.dumps(to_meta(message, version), separators=(",", ":")).encode()


def to_meta(message: WireModel, version: ProtocolVersion = PROTOCOL_VERSION) -> dict[str, Any]:
    """The plain map that goes into a frame's ``meta``, in ``version`` of the protocol."""
    data: dict[str, Any] = message.model_dump(mode="json")
    return _as_v1(data) if version == 1 else data


def parse_json(model: type[M], payload: bytes | bytearray) -> M:
    """Parse one JSON message, raising SchemaError for anything that does not fit."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; so are integers too long to
        # convert; absurdly deep nesting exhausts the recursion limit.
        raise SchemaError("bad_json", str(exc)[:200]) from None
    try:
        # JSON may escape half a surrogate pair ("\ud800"): such text cannot be encoded again,
        # so every later log line, error report or run report holding it would fail.
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise SchemaError("bad_json", "text with an unpaired surrogate escape") from None
    return parse_meta(model, data)


def parse_meta(model: type[M], data: object) -> M:
    try:
        return model.model_validate(_upgraded(data))
    except ValidationError as exc:
        raise SchemaError("bad_schema", _summarise(exc)) from None


def parse_ctrl(data: object) -> Welcome | RoundStart | RoundClose | RoundAbort | Ping | Finish:
    try:
        return _CTRL.validate_python(_upgraded(data))
    except ValidationError as exc:
        raise SchemaError("bad_schema", _summarise(exc)) from None


def parse_weights_traffic(data: object) -> WeightsMeta | WeightsResync:
    """What a device sends on its weights channel: its part, or a request for full weights."""
    if isinstance(data, dict) and data.get("kind") == "weights_resync":
        return parse_meta(WeightsResync, data)
    return parse_meta(WeightsMeta, data)


# Version 1 named the cut "split" in these messages (in the plan: in each device's entry).
_V1_SPLIT_KINDS = ("round_start", "weights")
# ... and described the model by in_channels and image_size (square images) in these.
_MODEL_KINDS = ("welcome", "round_start")


def _upgraded(data: object) -> object:
    """A version-1 message in version 2's words; anything else as it is (or refused)."""
    if not isinstance(data, dict):
        return data
    version = data.get("v", PROTOCOL_VERSION)
    if version not in PROTOCOL_VERSIONS:
        raise SchemaError("bad_version", f"protocol version {version!r} is not supported")
    if version != 1:
        return data
    data = _renamed(data, "split", "cut") if data.get("kind") in _V1_SPLIT_KINDS else data
    model = data.get("model")
    if data.get("kind") in _MODEL_KINDS and isinstance(model, dict) and "image_size" in model:
        # Version 1 knew square images only: C channels of image_size x image_size.
        side, channels = model["image_size"], model.get("in_channels")
        rest = {k: v for k, v in model.items() if k not in ("in_channels", "image_size")}
        data = {**data, "model": {**rest, "input_shape": [channels, side, side]}}
    devices = data.get("devices")
    if data.get("kind") == "plan" and isinstance(devices, dict):
        data = {**data, "devices": {d: _renamed(e, "split", "cut") for d, e in devices.items()}}
    return data


def _as_v1(data: dict[str, Any]) -> dict[str, Any]:
    data = {**data, "v": 1}
    if data.get("kind") == "hello":  # a version-1 edge knows no quantised format
        data["wire_dtypes"] = [d for d in data["wire_dtypes"] if d in LEGACY_WIRE_DTYPES]
        data.pop("weight_wires", None)  # nor weight deltas
    model = data.get("model")
    if data.get("kind") in _MODEL_KINDS and isinstance(model, dict):
        shape = model["input_shape"]
        if len(shape) == 3 and shape[1] == shape[2]:  # else no v1 peer can build it anyway
            rest = {k: v for k, v in model.items() if k not in ("input_shape", "fingerprint")}
            image = {"in_channels": shape[0], "image_size": shape[1]}
            data = {**data, "model": {**rest, **image}}
    if data.get("kind") in _V1_SPLIT_KINDS:
        renamed: dict[str, Any] = _renamed(data, "cut", "split")
        return renamed
    if data.get("kind") == "plan":
        devices = {
            d: {k: v for k, v in e.items() if k != "wire_dtype"} for d, e in data["devices"].items()
        }
        return {**data, "devices": {d: _renamed(e, "cut", "split") for d, e in devices.items()}}
    return data


def _renamed(entry: Any, old: str, new: str) -> Any:
    if not isinstance(entry, dict) or old not in entry:
        return entry
    return {(new if key == old else key): value for key, value in entry.items()}


def _summarise(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:3])
    return shown + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
