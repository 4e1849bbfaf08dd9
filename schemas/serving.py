"""The serving protocol's messages: requests, answers, the edge's part of a forward pass, the
serving plan and the readings it is made from.

Topics are :class:`~schemas.topics.ServeChannel`'s, under each device's subtree, plus the serving
edge's retained ``{prefix}/serve/status`` and ``{prefix}/serve/plan``. Everything is JSON (people
and tools read it as it is) except the cut activations, and requests that carry a tensor: msgpack
frames (``schemas.codec``). Models are frozen, reject unknown fields and carry ``v``, as the
training messages do (``schemas.messages``).

A request from an application is JSON, ``{"id": "...", "input": [[...]], "deadline_ms": 250}``
(``deadline_ms`` optional), or a frame whose meta is ``{"kind": "request", "id": ...,
"deadline_ms": ...}`` and whose one tensor is ``input``. :func:`parse_request` reads either.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, StringConstraints

from schemas.codec import CodecError, decode_frame
from schemas.messages import (
    DeviceId,
    PowerFigures,
    SchemaError,
    Seconds,
    WireModel,
    parse_json,
    parse_meta,
)

# A request id: what the application chose (a folder's file name, for files a camera drops).
ID_PATTERN = r"^[^\x00-\x1f\x7f]{1,200}$"  # printable, at most 200 characters
RequestId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Cut = Annotated[int, Field(ge=0)]  # 0: the raw input goes to the edge; L: all on the device
Position = Annotated[int, Field(ge=1)]  # an exit reads the activation at this cut
Probability = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Millis = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Deadline = Annotated[float, Field(gt=0, le=3_600_000, allow_inf_nan=False)]
BitRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Where = Literal["device", "edge"]
REQUEST_DTYPES = frozenset({"float16", "float32", "float64"})


# --- application <-> device ------------------------------------------------------------------


class ServeRequest(WireModel):
    """A JSON request: one sample, as nested lists of numbers in the model's input shape."""

    id: RequestId
    input: list[Any]
    deadline_ms: Deadline | None = None


class ServeRequestMeta(WireModel):
    """A frame request's meta; the frame's one tensor is ``input``."""

    kind: Literal["request"] = "request"
    id: RequestId
    deadline_ms: Deadline | None = None


class ServeAnswer(WireModel):
    """The device's answer to one request (or, with ``error``, why it has none)."""

    kind: Literal["answer"] = "answer"
    id: str | None  # None only for a request whose id could not be read
    device_id: DeviceId
    label: Annotated[int, Field(ge=0)] | None = None
    label_name: str | None = None  # where the model's artifact names its classes
    confidence: Probability | None = None  # the answering head's top softmax probability
    where: Where | None = None
    exit: Position | None = None  # the device's exit that answered; None: the whole model
    cut: Cut | None = None  # the cut the device ran the request with
    degraded: bool = False  # the edge was gone: the device answered alone, off its plan
    latency_ms: Millis | None = None  # from arrival on the device to this answer
    error: str | None = None  # a reason code (bad_shape, bad_json, too_large, ...)
    reason: str | None = None  # the error in words; for a degraded answer, why the edge was not


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request as the device runs it: a float32 sample of the shape it was sent in."""

    id: str
    input: np.ndarray
    deadline_ms: float | None


class RequestError(SchemaError):
    """A request that cannot be run; ``request_id`` is its id where it could be read."""

    def __init__(self, reason: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(reason, detail)
        self.request_id = request_id


def parse_request(payload: bytes | bytearray, *, max_bytes: int) -> ParsedRequest:
    """A JSON or frame request, checked: a numeric, finite tensor, at most ``max_bytes``.

    Raises :class:`RequestError` (a SchemaError) with a reason code and, where it was readable,
    the request's id. The shape is the model's business (the device checks it).
    """
    is_json = payload[:1] in (b"{", b" ", b"\n", b"\t", b"\r")
    if len(payload) > max_bytes:
        found = _JSON_ID.search(payload[:_PEEK_BYTES]) if is_json else None
        request_id = found.group(1).decode(errors="replace") if found else frame_request_id(payload)
        raise RequestError(
            "too_large", f"{len(payload)} bytes; the limit is {max_bytes}", request_id
        )
    if is_json:
        return _json_request(payload)
    return _frame_request(payload, max_bytes)


# An oversized request is not parsed, but its id is looked for, so its error answer names it.
_PEEK_BYTES = 1024
_JSON_ID = re.compile(rb'"id"\s*:\s*"([^"\\\x00-\x1f]{1,200})"')


def frame_request_id(payload: bytes | bytearray) -> str | None:
    """The request id in a frame's meta, if it has a usable one, whatever else is wrong with
    it (decoding a frame copies no tensor data)."""
    try:
        return _usable_id(decode_frame(payload, max_bytes=len(payload)).meta.get("id"))
    except CodecError:
        return None


def _usable_id(found: object) -> str | None:
    """``found`` if it could be a request id (for an error answer to name it)."""
    return found if isinstance(found, str) and _ID.fullmatch(found) else None


_ID = re.compile(ID_PATTERN)


def _json_request(payload: bytes | bytearray) -> ParsedRequest:
    try:
        request = parse_json(ServeRequest, payload)
    except SchemaError as exc:
        raise RequestError(exc.reason, exc.detail, _json_id(payload)) from None
    try:
        array = np.asarray(request.input)
    except (ValueError, TypeError, RecursionError):
        raise RequestError(
            "bad_input", "input is not a rectangular array of numbers", request.id
        ) from None
    if array.dtype.kind not in "iuf":
        raise RequestError(
            "bad_dtype", f"input holds {array.dtype.kind!r} values, not numbers", request.id
        )
    return _checked(request.id, array, request.deadline_ms)


def _json_id(payload: bytes | bytearray) -> str | None:
    """The id of a JSON request that fails its schema, if it has a usable one."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return _usable_id(data.get("id")) if isinstance(data, dict) else None


def _frame_request(payload: bytes | bytearray, max_bytes: int) -> ParsedRequest:
    try:
        frame = decode_frame(payload, max_bytes=max_bytes)
    except CodecError as exc:
        raise RequestError(exc.reason, exc.detail) from None
    request_id = _usable_id(frame.meta.get("id"))
    try:
        meta = parse_meta(ServeRequestMeta, frame.meta)
    except SchemaError as exc:
        raise RequestError(exc.reason, exc.detail, request_id) from None
    if set(frame.tensors) != {"input"}:
        names = ", ".join(sorted(frame.tensors)) or "none"
        raise RequestError(
            "bad_input", f"a request frame holds one tensor, input (got {names})", meta.id
        )
    array = frame.tensors["input"]
    if array.dtype.name not in REQUEST_DTYPES:
        raise RequestError("bad_dtype", f"input is {array.dtype.name}; send float32", meta.id)
    return _checked(meta.id, array, meta.deadline_ms)


def _checked(request_id: str, array: np.ndarray, deadline_ms: float | None) -> ParsedRequest:
    sample = np.array(array, dtype=np.float32)  # a copy of its own: frames are read-only views
    if not np.isfinite(sample).all():
        raise RequestError("not_finite", "input holds NaN or infinite values", request_id)
    return ParsedRequest(request_id, sample, deadline_ms)


# --- device <-> serving edge ------------------------------------------------------------------


class ServeHello(WireModel):
    """A serving device announces itself (on every connect and when the edge's session is new):
    the model it serves and what the plan needs of it."""

    kind: Literal["serve_hello"] = "serve_hello"
    device_id: DeviceId
    instance: str
    fingerprint: str  # the artifact's architecture fingerprint: the edge must serve the same
    model: str
    profile: str = "host"  # the emulated board, or host
    # Seconds per sample of each block's forward pass here (an emulated board's, if emulated),
    # and of each exit head, by its position.
    forward_s: tuple[Seconds, ...]
    exit_s: dict[Annotated[int, Field(ge=1)], Seconds] = Field(default_factory=dict)
    # Declared resources; None where the owner did not say (the edge assumes its defaults).
    power: PowerFigures | None = None
    uplink_bps: BitRate | None = None
    downlink_bps: BitRate | None = None
    memory_bytes: Count | None = None
    allowed_cuts: tuple[Cut, ...] | None = None  # None: any cut
    battery_pct: Annotated[float, Field(ge=0, le=100)] | None = None


class ServeDeviceStatus(WireModel):
    """Retained; the device's MQTT will publishes ``offline`` when it vanishes."""

    kind: Literal["serve_device_status"] = "serve_device_status"
    device_id: DeviceId
    state: Literal["online", "offline"]
    instance: str | None = None


class ServeTelemetry(WireModel):
    """What the device saw over one window: the edge re-plans from it (exit rate, links).

    On ``serve/telemetry``, not the training ``telemetry`` channel: a training edge on the same
    broker would refuse readings from a device that never said its training hello, and these
    readings (exits, answers, latency) are serving's own; the link, battery and power fields
    are measured and named as the training telemetry's are."""

    kind: Literal["serve_telemetry"] = "serve_telemetry"
    device_id: DeviceId
    window_s: Seconds
    cut: Cut | None = None  # the plan it served the window with
    threshold: Probability | None = None
    requests: Count = 0  # answered this window (duplicates and errors apart)
    exited: Count = 0  # answered at one of the device's exits
    local: Count = 0  # answered by the device's whole model (cut L)
    edge: Count = 0  # answered by the edge
    degraded: Count = 0  # answered alone, the edge gone
    errors: Count = 0
    duplicates: Count = 0
    # Of the requests that reached an exit with exits on, the fraction that left there.
    exit_rate: Probability | None = None
    latency_ms_mean: Millis | None = None
    latency_ms_p50: Millis | None = None
    latency_ms_p99: Millis | None = None
    uplink_bps: BitRate | None = None  # smoothed estimates from its own transfers
    downlink_bps: BitRate | None = None
    uplink_samples: Count = 0
    downlink_samples: Count = 0
    battery_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    charging: bool | None = None
    board_power_w: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    # The window's device-side cost, as the cost model prices a request: seconds computing
    # (an emulated board's paced time) and sending activations, and the joules they take at the
    # device's power figures (None: it has none, declared or from its board).
    busy_s: Seconds = 0.0
    uplink_s: Seconds = 0.0
    energy_j: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class ServeActMeta(WireModel):
    """Tensor ``act``: one request's activation at ``cut`` (the raw input at cut 0)."""

    kind: Literal["serve_act"] = "serve_act"
    device_id: DeviceId
    id: RequestId
    cut: Cut
    session: str  # the serving edge's session the device's plan came from


class ServeResult(WireModel):
    """The edge's answer to one activation, or (``error``) why it has none."""

    kind: Literal["serve_result"] = "serve_result"
    session: str
    id: RequestId
    label: Annotated[int, Field(ge=0)] | None = None
    confidence: Probability | None = None
    edge_ms: Millis = 0.0  # the edge's time, from receipt to reply (queueing included)
    error: str | None = None
    reason: str | None = None


class ServeCtrl(WireModel):
    """Retained on a device's ``serve/ctrl``: the plan's entry for it (a restarted device gets
    it at once). ``threshold`` None: exits off (only the cut and the edge answer)."""

    kind: Literal["serve_ctrl"] = "serve_ctrl"
    session: str
    device_id: DeviceId
    fingerprint: str  # the model the plan is for; a device serving another ignores it
    cut: Cut
    threshold: Probability | None
    # The exit to answer from when the edge is gone (None: the deepest at or below the cut,
    # else the whole model).
    fallback: Position | None = None
    reason: str = ""


# --- serving edge -> all ----------------------------------------------------------------------

ServeEdgeState = Literal["starting", "serving", "stopped", "offline"]


class ServeEdgeStatus(WireModel):
    """Retained on ``{prefix}/serve/status``; the edge's will sets it ``offline``."""

    kind: Literal["serve_status"] = "serve_status"
    session: str
    state: ServeEdgeState
    model: str | None = None
    fingerprint: str | None = None
    policy: str | None = None
    devices: dict[str, str] = Field(default_factory=dict)  # device: its cut/threshold, or state
    counters: dict[str, int] = Field(default_factory=dict)


class ServePlanEntry(WireModel):
    cut: Cut
    threshold: Probability | None
    fallback: Position | None = None
    predicted_latency_ms: Millis
    predicted_energy_j: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    predicted_accuracy: Probability | None = None
    local_fraction: Probability | None = None  # requests the device answers without the edge
    reason: str  # why this cut and threshold (and why they changed or stayed)
    inputs: str  # where the readings came from: measured, declared or assumed


class ServePlanMessage(WireModel):
    """Retained on ``{prefix}/serve/plan``: every serving device's cut and threshold, and why."""

    kind: Literal["serve_plan"] = "serve_plan"
    session: str
    version: Count  # counts the plans of this session
    policy: str
    alpha: Annotated[float, Field(ge=0, le=1)]
    accuracy_floor: Probability | None = None
    full_accuracy: Probability | None = None  # the whole model's, on the artifact's held-out set
    devices: dict[str, ServePlanEntry]
    reason: str = ""  # why this plan was made now (a device came, went, its readings moved)
