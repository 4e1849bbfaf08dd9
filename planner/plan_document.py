"""The plan document's shape (``ares plan``, format in :mod:`planner.inputs`): pydantic models.

Pure: :func:`parse_plan_document` validates already parsed data. Every section is frozen and
rejects unknown keys; numbers are strict (``true`` or ``"20"`` is not a number) and finite. A bad
document raises ONE :class:`~planner.errors.PlanningError` whose field is the path of the bad
value, e.g. ``devices[2].uplink_mbps: must be > 0, got 0``.

What needs more than one section (block counts against the model, a device's settings against
``defaults``, built-in names, feasibility) is checked by :mod:`planner.inputs` as it builds the
profiles, with the same kind of paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from planner.errors import PlanningError
from schemas.messages import WireDtype

__all__ = [
    "BoardDevice",
    "DeviceDefaults",
    "ExplicitDevice",
    "ModelSizes",
    "NamedModel",
    "PlanDocument",
    "Power",
    "PowerOverride",
    "ServerTimes",
    "parse_plan_document",
]

NonNegative = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0)]
Positive = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]
Count = Annotated[int, Field(strict=True, ge=1)]
Size = Annotated[int, Field(strict=True, ge=0)]
Name = Annotated[str, Field(strict=True, min_length=1)]
Sizes = Annotated[tuple[Size, ...], Field(min_length=1)]
Times = tuple[NonNegative, ...]  # one per block: planner.inputs checks the count

# Tags of the sections that take one of two forms; pydantic puts them in error locations, which
# no key of a document can reach (unknown keys are reported by name, see _Section).
_BUILTIN = "builtin"
_EXPLICIT = "explicit"
_BOARD = "board"
_NAMED = "named"
_TAGS = frozenset({_BUILTIN, _EXPLICIT, _BOARD, _NAMED})


class _Section(BaseModel):
    """A mapping of the document: frozen, and an unknown key is an error that names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Keys this section does not take but a writer may try, with what to do instead.
    instead: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    expected = "expected one of " + ", ".join(sorted(cls.model_fields))
                    raise _error_at(str(key), cls.instead.get(key, f"unknown key; {expected}"))
        return data


class PowerOverride(_Section):
    """Watts replacing a built-in board's figures; absent ones keep the board's."""

    compute_w: NonNegative | None = None
    transmit_w: NonNegative | None = None
    receive_w: NonNegative | None = None


class Power(_Section):
    """A board's power while computing, transmitting and receiving, in watts."""

    compute_w: NonNegative
    transmit_w: NonNegative
    receive_w: NonNegative


class DeviceDefaults(_Section):
    """Per-device settings that ``defaults`` may give for every device."""

    uplink_mbps: Positive | None = None
    downlink_mbps: Positive | None = None
    samples: Count | None = None
    battery_pct: Annotated[NonNegative, Field(le=100)] | None = None
    memory_mb: NonNegative | None = None
    allowed_cuts: Annotated[tuple[Count, ...], Field(min_length=1)] | None = None
    overhead_s: NonNegative | None = None


class BoardDevice(DeviceDefaults):
    """A built-in board (``profile``), its power figures optionally overridden."""

    instead: ClassVar[Mapping[str, str]] = {
        "forward_s": "give either a profile or explicit times",
        "backward_s": "give either a profile or explicit times",
    }

    id: Name
    profile: Name
    power: PowerOverride | None = None


class ExplicitDevice(DeviceDefaults):
    """A board given by its own block times and power."""

    id: Name
    forward_s: Times
    backward_s: Times
    power: Power


class ModelSizes(_Section):
    """A model given by its sizes in bytes per batch of ``batch_size``, one entry per block."""

    batch_size: Count
    activation_bytes: Sizes
    param_bytes: Sizes
    activation_memory_bytes: Sizes | None = None
    gradient_bytes: Sizes | None = None
    label_bytes: Size = 0
    param_memory_factor: NonNegative = 3.0
    num_blocks: Count | None = None

    @model_validator(mode="after")
    def _one_entry_per_block(self) -> ModelSizes:
        blocks = len(self.activation_bytes)
        if self.num_blocks is not None and self.num_blocks != blocks:
            raise _error_at(
                "num_blocks", f"is {self.num_blocks} but activation_bytes has {blocks} entries"
            )
        for key in ("param_bytes", "activation_memory_bytes", "gradient_bytes"):
            sizes = getattr(self, key)
            if sizes is not None and len(sizes) != blocks:
                raise _error_at(key, f"needs {blocks} entries (one per block), got {len(sizes)}")
        return self


class NamedModel(_Section):
    """A model by name (registered, or ``package.module:callable``) with the input it takes:
    its sizes and costs come from building it (outside the planner, which imports no torch)."""

    name: Name
    input_shape: Annotated[tuple[Count, ...], Field(min_length=1)]
    num_classes: Annotated[int, Field(strict=True, ge=2)]
    batch_size: Count | None = None


class ServerTimes(_Section):
    """The edge server's seconds per batch of each block."""

    forward_s: Times
    backward_s: Times


def _name_or(value: Any) -> str:
    return _BUILTIN if isinstance(value, str) else _EXPLICIT


def _model_kind(value: Any) -> str:
    # A map of sizes with a stray ``name`` stays one (and the key is reported as unknown).
    if isinstance(value, Mapping) and "name" in value and "activation_bytes" not in value:
        return _NAMED
    return _name_or(value)


def _board_or(value: Any) -> str:
    return _BOARD if isinstance(value, Mapping) and "profile" in value else _EXPLICIT


# A built-in name or a mapping; a device with a profile or with its own times and power.
ModelSpec = Annotated[
    Annotated[Name, Tag(_BUILTIN)]
    | Annotated[NamedModel, Tag(_NAMED)]
    | Annotated[ModelSizes, Tag(_EXPLICIT)],
    Discriminator(_model_kind),
]
ServerSpec = Annotated[
    Annotated[Name, Tag(_BUILTIN)] | Annotated[ServerTimes, Tag(_EXPLICIT)],
    Discriminator(_name_or),
]
Device = Annotated[
    Annotated[BoardDevice, Tag(_BOARD)] | Annotated[ExplicitDevice, Tag(_EXPLICIT)],
    Discriminator(_board_or),
]


class PlanDocument(_Section):
    """A whole plan document (fields in the order their errors are reported)."""

    description: Name | None = None
    batch_size: Count | None = None
    wire_dtype: WireDtype = "float32"
    model: ModelSpec
    sync_weights: Annotated[bool, Field(strict=True)] = False
    server: ServerSpec
    defaults: DeviceDefaults | None = None
    devices: Annotated[tuple[Device, ...], Field(min_length=1)]


def parse_plan_document(data: object) -> PlanDocument:
    """The validated document; its first problem as a PlanningError naming the path."""
    try:
        return PlanDocument.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        raise PlanningError(_path(error), _message(error)) from None


def _error_at(key: str, message: str) -> PydanticCustomError:
    """An error about ``key`` of the section being validated (its path gets the key)."""
    return PydanticCustomError("plan_document", message, {"key": key})


def _path(error: ErrorDetails) -> str:
    """``devices[2].power.compute_w`` from pydantic's location; ``(top level)`` for the root."""
    key = error.get("ctx", {}).get("key")  # set by _error_at
    path = ""
    for part in (*error["loc"], *(() if key is None else (key,))):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _TAGS:
            path = f"{path}.{part}" if path else part
    return path or "(top level)"


def _message(error: ErrorDetails) -> str:
    """What is wrong, in the document's words rather than pydantic's."""
    kind, ctx, given = error["type"], error.get("ctx", {}), error.get("input")
    got = f", got {given!r}"
    match kind:
        case "missing":
            return "required"
        case "model_type" | "model_attributes_type" | "dict_type":
            return f"must be a mapping, got {_kind(given)}"
        case "tuple_type" | "list_type":
            return f"must be a list, got {_kind(given)}"
        case "too_short":
            return "needs at least one entry"
        case "string_type" | "string_too_short":
            return "must be a non-empty string (quote it)" + got
        case "bool_type":
            return "must be true or false" + got
        case "int_type":
            return "must be an integer" + got
        case "float_type":
            return "must be a number" + got
        case "finite_number":
            return "must be finite" + got
        case "greater_than":
            return f"must be > {ctx['gt']:g}" + got
        case "greater_than_equal":
            return f"must be >= {ctx['ge']:g}" + got
        case "less_than_equal":
            return f"must be <= {ctx['le']:g}" + got
        case "literal_error":
            return f"must be {ctx['expected']}" + got
        case _:  # our own errors (_error_at), already in the document's words
            return error["msg"]


def _kind(value: object) -> str:
    return "nothing (null or empty)" if value is None else type(value).__name__
