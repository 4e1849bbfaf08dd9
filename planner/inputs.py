"""Planner inputs from plain data: a parsed YAML or JSON document in, ``cost_table``'s inputs out.

Pure: the caller reads and parses the file; :func:`plan_inputs_from_dict` only validates and builds.
Every error is a :class:`~planner.errors.PlanningError` whose field is the path of the bad value,
e.g. ``devices[2].uplink_mbps: must be > 0, got 0``; unknown keys are rejected the same way, so a
typo is an error rather than a silently ignored setting.

Format (YAML shown; JSON with the same structure works alike)::

    description: free text          # optional, ignored
    model: vgg5                     # a built-in model (see BUILTIN_MODELS) or a map, see below
    batch_size: 100                 # optional: overrides the model's batch size
    wire_dtype: float32             # optional: float32 (default) or float16
    sync_weights: false             # optional: also price the device part's weights moving down
                                    # and up once per round, as this system does (default false:
                                    # the paper's cost model; see planner.cost)
    server: paper-edge              # a built-in server (see BUILTIN_SERVERS) or
                                    # {forward_s: [...], backward_s: [...]}
    defaults:                       # optional; any per-device setting marked (d) below
      uplink_mbps: 20
      samples: 5000
    devices:
      - id: pi-1                    # unique, a string
        profile: raspberry-pi-3b+   # a built-in board (see BUILTIN_DEVICES), or instead:
        # forward_s: [...]          #   seconds per batch of each block (not cumulative)
        # backward_s: [...]
        uplink_mbps: 20             # (d) required here or in defaults, Mbit/s (10^6 bit/s)
        downlink_mbps: 20           # (d) optional, defaults to uplink_mbps
        samples: 5000               # (d) required here or in defaults: training samples per round
        battery_pct: 80             # (d) optional, 0..100; absent means mains powered
        memory_mb: 512              # (d) optional, MiB (2^20 bytes) for training; absent: unlimited
                                    #     (built-in boards: half their RAM)
        allowed_cuts: [1, 2, 3]     # (d) optional, cuts in 1..L this device may use
        overhead_s: 0.002           # (d) optional, other seconds per batch (Theta)
        power:                      # required without a profile; with one, overrides any of them
          compute_w: 3.0
          transmit_w: 1.2
          receive_w: 1.0

An explicit model map takes :class:`~planner.profiles.ModelProfile`'s fields, sizes in bytes per
batch of its ``batch_size`` samples, computed as float32 (4 bytes per element)::

    model:
      batch_size: 32                          # required
      activation_bytes: [...]                 # required, one per block: the output sent at that cut
      param_bytes: [...]                      # required, one per block: its weights
      activation_memory_bytes: [...]          # optional, default activation_bytes (each block keeps
                                              # at least its output for backward)
      gradient_bytes: [...]                   # optional, default activation_bytes
      label_bytes: 256                        # optional, default 0
      param_memory_factor: 3                  # optional, default 3 (weights, gradients, momentum)
      num_blocks: 5                           # optional; must match the lists when given

Scaling rules, and why:

- ``wire_dtype`` scales what crosses the link, activations up and gradients down, by the dtype's
  size over float32's (float16 halves them); labels keep their own dtype and the device's memory
  keeps float32, since only the wire copy is cast.
- ``batch_size`` on an explicit model map rescales its per-batch sizes (activations, gradients,
  saved activations, labels) in proportion; weights do not depend on the batch.
- Built-in boards and the built-in server carry the paper's times, measured per batch of 100.
  At another batch size they are scaled in proportion, an assumption (compute linear in the batch)
  that ignores fixed per-batch costs; explicit ``forward_s`` / ``backward_s`` are taken as given,
  for a batch of the plan's batch size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from planner.cost import CostTable, cost_table, memory_needed_bytes
from planner.errors import PlanningError
from planner.paper import BATCH_SIZE as PAPER_BATCH_SIZE
from planner.paper import (
    NANO_MODES,
    NanoMode,
    edge_server,
    jetson_nano,
    raspberry_pi,
    vgg5_model,
)
from planner.profiles import DeviceProfile, ModelProfile, ServerProfile
from schemas import PowerFigures
from schemas.messages import WIRE_DTYPES, wire_itemsize

__all__ = [
    "BUILTIN_DEVICES",
    "BUILTIN_MODELS",
    "BUILTIN_SERVERS",
    "WIRE_DTYPE_BYTES",
    "PlanInputs",
    "plan_inputs_from_dict",
]

# (device_id, samples, uplink_bps, downlink_bps, battery_fraction) -> profile
T = TypeVar("T")

DeviceBuilder = Callable[[str, int, float, float, float | None], DeviceProfile]

MIB = 1024**2
FLOAT32_BYTES = 4
WIRE_DTYPE_BYTES: Mapping[str, int] = MappingProxyType({d: wire_itemsize(d) for d in WIRE_DTYPES})


def _pi_builder(
    device_id: str, samples: int, up: float, down: float, battery: float | None
) -> DeviceProfile:
    return raspberry_pi(
        device_id, samples=samples, uplink_bps=up, downlink_bps=down, battery_fraction=battery
    )


def _nano_builder(mode: NanoMode) -> DeviceBuilder:
    def build(
        device_id: str, samples: int, up: float, down: float, battery: float | None
    ) -> DeviceProfile:
        return jetson_nano(
            device_id,
            mode,
            samples=samples,
            uplink_bps=up,
            downlink_bps=down,
            battery_fraction=battery,
        )

    return build


BUILTIN_DEVICES: Mapping[str, DeviceBuilder] = MappingProxyType(
    {
        "raspberry-pi-3b+": _pi_builder,
        **{f"jetson-nano-{mode}": _nano_builder(mode) for mode in NANO_MODES},
    }
)
BUILTIN_MODELS: Mapping[str, Callable[[int], ModelProfile]] = MappingProxyType({"vgg5": vgg5_model})
BUILTIN_SERVERS: Mapping[str, Callable[[], ServerProfile]] = MappingProxyType(
    {"paper-edge": edge_server}
)

_TOP_KEYS = frozenset(
    {
        "description",
        "model",
        "batch_size",
        "wire_dtype",
        "sync_weights",
        "server",
        "defaults",
        "devices",
    }
)
_MODEL_KEYS = frozenset(
    {
        "num_blocks",
        "batch_size",
        "activation_bytes",
        "param_bytes",
        "activation_memory_bytes",
        "gradient_bytes",
        "label_bytes",
        "param_memory_factor",
    }
)
_SERVER_KEYS = frozenset({"forward_s", "backward_s"})
_POWER_KEYS = ("compute_w", "transmit_w", "receive_w")
_DEFAULTABLE = frozenset(
    {
        "uplink_mbps",
        "downlink_mbps",
        "samples",
        "battery_pct",
        "memory_mb",
        "allowed_cuts",
        "overhead_s",
    }
)
_DEVICE_KEYS = _DEFAULTABLE | {"id", "profile", "forward_s", "backward_s", "power"}


@dataclass(frozen=True, slots=True)
class PlanInputs:
    """Everything :func:`planner.cost_table` needs, validated."""

    devices: tuple[DeviceProfile, ...]
    server: ServerProfile
    model: ModelProfile

    def table(self) -> CostTable:
        return cost_table(self.devices, self.server, self.model)


@dataclass(frozen=True, slots=True)
class _Context:
    """What device and server parsing need to know about the model."""

    num_blocks: int
    # Factor applied to the paper's per-batch-of-100 times (see the module docstring).
    builtin_time_scale: float
    memory_need: tuple[int, ...]


def plan_inputs_from_dict(data: Mapping[str, Any]) -> PlanInputs:
    """Validate a parsed plan document (see the module docstring) and build its profiles."""
    root = _mapping(data, "", _TOP_KEYS)
    if "description" in root:
        _string(root["description"], "description")
    batch = _optional(root, "", "batch_size", _positive_int)
    wire = _optional(root, "", "wire_dtype", _wire_dtype) or "float32"
    model = _model(_required(root, "", "model"), "model", batch)
    model = _cast_wire(model, WIRE_DTYPE_BYTES[wire])
    if "sync_weights" in root:
        if not isinstance(root["sync_weights"], bool):
            raise PlanningError(
                "sync_weights", f"must be true or false, got {root['sync_weights']!r}"
            )
        model = dataclasses.replace(model, sync_weights=root["sync_weights"])
    context = _Context(
        num_blocks=model.num_blocks,
        builtin_time_scale=model.batch_size / PAPER_BATCH_SIZE,
        memory_need=memory_needed_bytes(model),
    )
    server = _server(_required(root, "", "server"), "server", context)
    defaults = _defaults(root.get("defaults"), "defaults", context)
    devices = _devices(_required(root, "", "devices"), "devices", context, defaults)
    return PlanInputs(devices=devices, server=server, model=model)


# --- model and server -------------------------------------------------------------------------


def _model(value: object, path: str, batch: int | None) -> ModelProfile:
    if isinstance(value, str):
        builder = _builtin(BUILTIN_MODELS, value, path)
        return builder(PAPER_BATCH_SIZE if batch is None else batch)
    entry = _mapping(value, path, _MODEL_KEYS)
    activations = _sizes(
        _required(entry, path, "activation_bytes"), _join(path, "activation_bytes")
    )
    blocks = len(activations)
    if "num_blocks" in entry:
        declared = _positive_int(entry["num_blocks"], _join(path, "num_blocks"))
        if declared != blocks:
            raise PlanningError(
                _join(path, "num_blocks"),
                f"is {declared} but activation_bytes has {blocks} entries",
            )

    def sizes(key: str) -> tuple[int, ...]:
        return _sizes(entry[key], _join(path, key), blocks)

    own_batch = _positive_int(_required(entry, path, "batch_size"), _join(path, "batch_size"))
    params = _sizes(_required(entry, path, "param_bytes"), _join(path, "param_bytes"), blocks)
    saved = sizes("activation_memory_bytes") if "activation_memory_bytes" in entry else activations
    gradients = sizes("gradient_bytes") if "gradient_bytes" in entry else None
    labels = _optional(entry, path, "label_bytes", _non_negative_int) or 0
    factor = _optional(entry, path, "param_memory_factor", _non_negative_number)
    model = _wrap(
        path,
        lambda: ModelProfile(
            num_blocks=blocks,
            activation_bytes=activations,
            param_bytes=params,
            activation_memory_bytes=saved,
            batch_size=own_batch,
            gradient_bytes=gradients,
            label_bytes=labels,
            param_memory_factor=3.0 if factor is None else factor,
        ),
    )
    return model if batch is None else _rebatch(model, batch)


def _rebatch(model: ModelProfile, batch: int) -> ModelProfile:
    """The model at another batch size: per-batch sizes in proportion, weights unchanged."""
    if batch == model.batch_size:
        return model
    old = model.batch_size
    return dataclasses.replace(
        model,
        batch_size=batch,
        activation_bytes=_ratio(model.activation_bytes, batch, old),
        activation_memory_bytes=_ratio(model.activation_memory_bytes, batch, old),
        gradient_bytes=None
        if model.gradient_bytes is None
        else _ratio(model.gradient_bytes, batch, old),
        label_bytes=_ratio((model.label_bytes,), batch, old)[0],
    )


def _cast_wire(model: ModelProfile, dtype_bytes: int) -> ModelProfile:
    """Activations and gradients as sent in the wire dtype; memory stays float32."""
    if dtype_bytes == FLOAT32_BYTES:
        return model
    return dataclasses.replace(
        model,
        activation_bytes=_ratio(model.activation_bytes, dtype_bytes, FLOAT32_BYTES),
        gradient_bytes=None
        if model.gradient_bytes is None
        else _ratio(model.gradient_bytes, dtype_bytes, FLOAT32_BYTES),
    )


def _ratio(sizes: Sequence[int], numerator: int, denominator: int) -> tuple[int, ...]:
    # Integer ceiling: exact for any size, and a partial byte still has to be sent.
    return tuple(-(-size * numerator // denominator) for size in sizes)


def _server(value: object, path: str, context: _Context) -> ServerProfile:
    if isinstance(value, str):
        server = _builtin(BUILTIN_SERVERS, value, path)()
        _check_blocks(server.num_blocks, context, path, f"{value!r}")
        factor = context.builtin_time_scale
        if factor == 1.0:
            return server
        return ServerProfile(
            forward_s=tuple(factor * t for t in server.forward_s),
            backward_s=tuple(factor * t for t in server.backward_s),
        )
    entry = _mapping(value, path, _SERVER_KEYS)
    forward, backward = _block_times(entry, path, context)
    return _wrap(path, lambda: ServerProfile(forward_s=forward, backward_s=backward))


# --- devices ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Setting:
    """A validated per-device value and the path it came from (for later errors)."""

    value: Any
    path: str


def _defaults(value: object, path: str, context: _Context) -> dict[str, _Setting]:
    if value is None:
        return {}
    entry = _mapping(value, path, _DEFAULTABLE)
    return {key: _setting(key, raw, _join(path, key), context) for key, raw in entry.items()}


def _devices(
    value: object, path: str, context: _Context, defaults: Mapping[str, _Setting]
) -> tuple[DeviceProfile, ...]:
    if not isinstance(value, list | tuple):
        raise PlanningError(path, f"must be a list of devices, got {_kind(value)}")
    if not value:
        raise PlanningError(path, "needs at least one device")
    devices: list[DeviceProfile] = []
    seen: set[str] = set()
    for index, raw in enumerate(value):
        device = _device(raw, f"{path}[{index}]", context, defaults)
        if device.device_id in seen:
            raise PlanningError(f"{path}[{index}].id", f"duplicate id {device.device_id!r}")
        seen.add(device.device_id)
        devices.append(device)
    return tuple(devices)


def _device(
    value: object, path: str, context: _Context, defaults: Mapping[str, _Setting]
) -> DeviceProfile:
    entry = _mapping(value, path, _DEVICE_KEYS)
    device_id = _string(_required(entry, path, "id"), _join(path, "id"))
    settings = dict(defaults)
    for key in _DEFAULTABLE & entry.keys():
        settings[key] = _setting(key, entry[key], _join(path, key), context)
    for key in ("uplink_mbps", "samples"):
        if key not in settings:
            raise PlanningError(_join(path, key), "required (here or in defaults)")
    uplink_bps = settings["uplink_mbps"].value * 1e6
    downlink = settings.get("downlink_mbps")
    downlink_bps = uplink_bps if downlink is None else downlink.value * 1e6
    battery = settings.get("battery_pct")
    base = _base_profile(
        entry,
        path,
        context,
        device_id=device_id,
        samples=settings["samples"].value,
        uplink_bps=uplink_bps,
        downlink_bps=downlink_bps,
        battery_fraction=None if battery is None else battery.value / 100.0,
    )
    changes: dict[str, Any] = {}
    if "memory_mb" in settings:
        changes["memory_bytes"] = round(settings["memory_mb"].value * MIB)
    if "allowed_cuts" in settings:
        changes["allowed_cuts"] = settings["allowed_cuts"].value
    if "overhead_s" in settings:
        changes["overhead_s"] = settings["overhead_s"].value
    device = _wrap(path, lambda: dataclasses.replace(base, **changes)) if changes else base
    _check_feasible(device, settings, path, context)
    return device


def _base_profile(
    entry: Mapping[str, Any],
    path: str,
    context: _Context,
    *,
    device_id: str,
    samples: int,
    uplink_bps: float,
    downlink_bps: float,
    battery_fraction: float | None,
) -> DeviceProfile:
    """The device before memory, cut and overhead overrides: a built-in board or explicit times."""
    power = _power(entry.get("power"), _join(path, "power"))
    if "profile" in entry:
        for key in ("forward_s", "backward_s"):
            if key in entry:
                raise PlanningError(_join(path, key), "give either a profile or explicit times")
        name = _string(entry["profile"], _join(path, "profile"))
        builder = _builtin(BUILTIN_DEVICES, name, _join(path, "profile"))
        board = builder(device_id, samples, uplink_bps, downlink_bps, battery_fraction)
        _check_blocks(board.num_blocks, context, _join(path, "profile"), f"{name!r}")
        scale = context.builtin_time_scale
        return _wrap(
            path,
            lambda: dataclasses.replace(
                board,
                forward_s=board.forward_s
                if scale == 1.0
                else tuple(scale * t for t in board.forward_s),
                backward_s=board.backward_s
                if scale == 1.0
                else tuple(scale * t for t in board.backward_s),
                power=board.power.model_copy(update=power),
            ),
        )
    forward, backward = _block_times(entry, path, context)
    if "power" not in entry:
        raise PlanningError(_join(path, "power"), "required for a device without a profile")
    for key in _POWER_KEYS:
        if key not in power:
            raise PlanningError(
                _join(path, f"power.{key}"), "required for a device without a profile"
            )
    return _wrap(
        path,
        lambda: DeviceProfile(
            device_id=device_id,
            forward_s=forward,
            backward_s=backward,
            power=PowerFigures(**power),
            samples=samples,
            uplink_bps=uplink_bps,
            downlink_bps=downlink_bps,
            battery_fraction=battery_fraction,
        ),
    )


def _power(value: object, path: str) -> dict[str, float]:
    if value is None:
        return {}
    entry = _mapping(value, path, _POWER_KEYS)
    return {key: _non_negative_number(raw, _join(path, key)) for key, raw in entry.items()}


def _setting(key: str, value: object, path: str, context: _Context) -> _Setting:
    """Validate one defaultable per-device value (see _DEFAULTABLE)."""
    parsed: Any
    if key in ("uplink_mbps", "downlink_mbps"):
        parsed = _positive_number(value, path)
    elif key == "samples":
        parsed = _positive_int(value, path)
    elif key == "battery_pct":
        parsed = _non_negative_number(value, path)
        if parsed > 100.0:
            raise PlanningError(path, f"must lie in [0, 100], got {value!r}")
    elif key in ("memory_mb", "overhead_s"):
        parsed = _non_negative_number(value, path)
    elif key == "allowed_cuts":
        parsed = _cuts(value, path, context.num_blocks)
    else:  # _mapping() admits only _DEFAULTABLE keys here
        raise AssertionError(key)
    return _Setting(parsed, path)


def _cuts(value: object, path: str, num_blocks: int) -> frozenset[int]:
    if not isinstance(value, list | tuple) or not value:
        raise PlanningError(path, f"must be a non-empty list of cuts, got {_kind(value)}")
    cuts = frozenset(_positive_int(cut, f"{path}[{i}]") for i, cut in enumerate(value))
    if max(cuts) > num_blocks:
        raise PlanningError(path, f"cuts must lie in 1..{num_blocks}, got {max(cuts)}")
    return cuts


def _check_feasible(
    device: DeviceProfile, settings: Mapping[str, _Setting], path: str, context: _Context
) -> None:
    """Name the setting that leaves a device no usable cut, before cost_table reports the id."""
    if device.memory_bytes is None:
        return  # allowed_cuts alone is never empty and was checked against 1..L
    cuts = device.allowed_cuts or frozenset(range(1, context.num_blocks + 1))
    need = min(context.memory_need[cut - 1] for cut in cuts)
    if need > device.memory_bytes:
        source = settings["memory_mb"].path if "memory_mb" in settings else _join(path, "profile")
        raise PlanningError(
            source,
            f"{device.memory_bytes / MIB:.1f} MiB leaves no usable cut; the smallest "
            f"allowed needs {need / MIB:.1f} MiB",
        )


# --- shared helpers ---------------------------------------------------------------------------


def _block_times(
    entry: Mapping[str, Any], path: str, context: _Context
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    forward = _times(_required(entry, path, "forward_s"), _join(path, "forward_s"), context)
    backward = _times(_required(entry, path, "backward_s"), _join(path, "backward_s"), context)
    return forward, backward


def _times(value: object, path: str, context: _Context) -> tuple[float, ...]:
    items = _list(value, path, context.num_blocks)
    return tuple(_non_negative_number(item, f"{path}[{i}]") for i, item in enumerate(items))


def _sizes(value: object, path: str, length: int | None = None) -> tuple[int, ...]:
    items = _list(value, path, length)
    if not items:
        raise PlanningError(path, "needs at least one entry")
    return tuple(_non_negative_int(item, f"{path}[{i}]") for i, item in enumerate(items))


def _list(value: object, path: str, length: int | None) -> Sequence[object]:
    if not isinstance(value, list | tuple):
        raise PlanningError(path, f"must be a list, got {_kind(value)}")
    if length is not None and len(value) != length:
        raise PlanningError(path, f"needs {length} entries (one per block), got {len(value)}")
    return value


def _check_blocks(blocks: int, context: _Context, path: str, what: str) -> None:
    if blocks != context.num_blocks:
        raise PlanningError(
            path, f"{what} has {blocks} blocks but the model has {context.num_blocks}"
        )


def _builtin(table: Mapping[str, T], name: object, path: str) -> T:
    if not isinstance(name, str) or name not in table:
        raise PlanningError(path, f"unknown name {name!r}; built-in: {', '.join(sorted(table))}")
    return table[name]


def _wrap(path: str, build: Callable[[], T]) -> T:
    """Run a profile constructor, prefixing its error's field with the document path."""
    try:
        return build()
    except PlanningError as exc:
        raise PlanningError(_join(path, exc.field), exc.message) from None


def _mapping(value: object, path: str, allowed: Collection[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanningError(path or "(top level)", f"must be a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise PlanningError(path or "(top level)", f"keys must be strings, got {key!r}")
        if key not in allowed:
            raise PlanningError(
                _join(path, key), f"unknown key; expected one of {', '.join(sorted(allowed))}"
            )
    return value


def _required(entry: Mapping[str, Any], path: str, key: str) -> object:
    if key not in entry:
        raise PlanningError(_join(path, key), "required")
    return entry[key]


def _optional(
    entry: Mapping[str, Any], path: str, key: str, parse: Callable[[object, str], T]
) -> T | None:
    return parse(entry[key], _join(path, key)) if key in entry else None


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise PlanningError(path, f"must be a non-empty string (quote it), got {value!r}")
    return value


def _wire_dtype(value: object, path: str) -> str:
    if not isinstance(value, str) or value not in WIRE_DTYPE_BYTES:
        raise PlanningError(path, f"must be one of {', '.join(WIRE_DTYPE_BYTES)}, got {value!r}")
    return value


def _number(value: object, path: str) -> float:
    # bool is an int subclass; `true` in YAML must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PlanningError(path, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise PlanningError(path, f"must be finite, got {value!r}")
    return float(value)


def _positive_number(value: object, path: str) -> float:
    number = _number(value, path)
    if number <= 0.0:
        raise PlanningError(path, f"must be > 0, got {value!r}")
    return number


def _non_negative_number(value: object, path: str) -> float:
    number = _number(value, path)
    if number < 0.0:
        raise PlanningError(path, f"must be >= 0, got {value!r}")
    return number


def _integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanningError(path, f"must be an integer, got {value!r}")
    return value


def _positive_int(value: object, path: str) -> int:
    number = _integer(value, path)
    if number < 1:
        raise PlanningError(path, f"must be >= 1, got {value!r}")
    return number


def _non_negative_int(value: object, path: str) -> int:
    number = _integer(value, path)
    if number < 0:
        raise PlanningError(path, f"must be >= 0, got {value!r}")
    return number


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    return "nothing (null or empty)" if value is None else type(value).__name__
