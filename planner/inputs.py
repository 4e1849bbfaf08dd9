"""Planner inputs from plain data: a parsed YAML or JSON document in, ``cost_table``'s inputs out.

Pure: the caller reads and parses the file; :func:`plan_inputs_from_dict` validates it against
:mod:`planner.plan_document`'s models, then builds the profiles. Every error is a
:class:`~planner.errors.PlanningError` whose field is the path of the bad value, e.g.
``devices[2].uplink_mbps: must be > 0, got 0``; unknown keys are rejected the same way, so a typo
is an error rather than a silently ignored setting.

Format (YAML shown; JSON with the same structure works alike)::

    description: free text          # optional, ignored
    model: vgg5                     # a built-in model (see BUILTIN_MODELS) or a map, see below
    batch_size: 100                 # optional: overrides the model's batch size
    wire_dtype: float32             # optional: float32 (default), float16, int8 or int4
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

A model by name: any registered model (``mobilenetv2``, ``resnet18``, ...) or your own as
``package.module:callable``, with the input it takes; building it (torch, outside the planner:
``ares plan`` passes ``resolve_model``) gives its sizes and what each block computes and moves::

    model:
      name: mobilenetv2                       # required
      input_shape: [3, 32, 32]                # required: one sample (C, H, W), or (C, T) for series
      num_classes: 10                         # required
      batch_size: 100                         # optional; the document's batch_size overrides it,
                                              # default 100

Built-in boards and the built-in server price such a model at the rates fitted to their VGG5
times (:mod:`planner.compute`: FLOPs and bytes per block); VGG5 itself (on 3 x 32 x 32, 10
classes) keeps the measured times.

Scaling rules, and why:

- ``wire_dtype`` scales what crosses the link, activations up and gradients down, by the format's
  bits per element over float32's (float16 halves them, int8 quarters them, int4 an eighth; the
  quantised formats' 5 bytes per channel of scale and zero point are under 1% and left out);
  labels keep their own dtype and the device's memory keeps float32, since only the wire copy is
  cast.
- ``batch_size`` on an explicit model map rescales its per-batch sizes (activations, gradients,
  saved activations, labels) in proportion; weights do not depend on the batch.
- Built-in boards and the built-in server carry the paper's times, measured per batch of 100.
  At another batch size they are scaled in proportion, an assumption (compute linear in the batch)
  that ignores fixed per-batch costs; explicit ``forward_s`` / ``backward_s`` are taken as given,
  for a batch of the plan's batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from planner.compute import BlockCosts
from planner.cost import CostTable, cost_table, memory_needed_bytes
from planner.errors import PlanningError
from planner.paper import BATCH_SIZE as PAPER_BATCH_SIZE
from planner.paper import (
    NANO_MODES,
    NanoMode,
    board_compute,
    edge_server,
    jetson_nano,
    raspberry_pi,
    vgg5_model,
)
from planner.plan_document import (
    BoardDevice,
    DeviceDefaults,
    ExplicitDevice,
    ModelSizes,
    NamedModel,
    ServerTimes,
    parse_plan_document,
)
from planner.profiles import DeviceProfile, ModelProfile, ServerProfile
from schemas import PowerFigures
from schemas.messages import WIRE_DTYPES, wire_itemsize

__all__ = [
    "BUILTIN_DEVICES",
    "BUILTIN_MODELS",
    "BUILTIN_SERVERS",
    "WIRE_DTYPE_BYTES",
    "BuiltModel",
    "ModelResolver",
    "PlanInputs",
    "plan_inputs_from_dict",
]

T = TypeVar("T")

# (device_id, samples, uplink_bps, downlink_bps, battery_fraction) -> profile
DeviceBuilder = Callable[[str, int, float, float, float | None], DeviceProfile]

MIB = 1024**2
FLOAT32_BYTES = 4
# Bytes per element on the wire of each format (int4: 0.5). Quantised formats also carry 5 bytes
# per channel and tensor (scale and zero point), under 1% of a batch's activations: left out,
# like every frame's header (schemas.wire_itemsize).
WIRE_DTYPE_BYTES: Mapping[str, float] = MappingProxyType({d: wire_itemsize(d) for d in WIRE_DTYPES})


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


@dataclass(frozen=True, slots=True)
class BuiltModel:
    """A model by name, as the caller built it: its sizes at the plan's batch and its costs."""

    profile: ModelProfile
    costs: BlockCosts


# (the document's model section, the plan's batch size) -> the model built; problems raise
# PlanningError with the field's path ("model.name: ...").
ModelResolver = Callable[[NamedModel, int], BuiltModel]


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
    """What device and server building need to know about the model."""

    num_blocks: int
    # Factor applied to the paper's per-batch-of-100 times (see the module docstring).
    builtin_time_scale: float
    memory_need: tuple[int, ...]
    batch_size: int
    costs: BlockCosts | None  # a model by name: built-in boards price it from these

    def builtin_times(
        self, board: DeviceProfile | ServerProfile
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """A built-in board's (or server's) per-block times for the plan's model and batch."""
        if self.costs is not None:
            return board_compute(board).block_times(self.costs, self.batch_size)
        return (
            _scaled(board.forward_s, self.builtin_time_scale),
            _scaled(board.backward_s, self.builtin_time_scale),
        )


def plan_inputs_from_dict(
    data: object, *, resolve_model: ModelResolver | None = None
) -> PlanInputs:
    """Validate a parsed plan document (see the module docstring) and build its profiles.

    ``resolve_model`` builds a model given by name (torch, so the caller's: ``ares plan`` passes
    one); without it such a document is a PlanningError.
    """
    document = parse_plan_document(data)
    model, costs = _model(document.model, document.batch_size, resolve_model)
    model = dataclasses.replace(
        _cast_wire(model, WIRE_DTYPE_BYTES[document.wire_dtype]),
        sync_weights=document.sync_weights,
    )
    context = _Context(
        num_blocks=model.num_blocks,
        builtin_time_scale=model.batch_size / PAPER_BATCH_SIZE,
        memory_need=memory_needed_bytes(model),
        batch_size=model.batch_size,
        costs=costs,
    )
    server = _server(document.server, context)
    defaults = document.defaults or DeviceDefaults()
    devices: list[DeviceProfile] = []
    seen: set[str] = set()
    for index, entry in enumerate(document.devices):
        path = f"devices[{index}]"
        device = _device(entry, _Settings(entry, defaults, path), context)
        if device.device_id in seen:
            raise PlanningError(f"{path}.id", f"duplicate id {device.device_id!r}")
        seen.add(device.device_id)
        devices.append(device)
    return PlanInputs(devices=tuple(devices), server=server, model=model)


# --- model and server -------------------------------------------------------------------------


def _model(
    spec: str | NamedModel | ModelSizes, batch: int | None, resolve: ModelResolver | None
) -> tuple[ModelProfile, BlockCosts | None]:
    if isinstance(spec, str):
        size = PAPER_BATCH_SIZE if batch is None else batch
        if spec not in BUILTIN_MODELS:
            raise PlanningError(
                "model",
                f"unknown name {spec!r}; built-in: {', '.join(sorted(BUILTIN_MODELS))} (any other "
                "model by name: {name: ..., input_shape: [...], num_classes: ...})",
            )
        return BUILTIN_MODELS[spec](size), None
    if isinstance(spec, NamedModel):
        return _named(spec, batch, resolve)
    model = ModelProfile(
        num_blocks=len(spec.activation_bytes),
        activation_bytes=spec.activation_bytes,
        param_bytes=spec.param_bytes,
        activation_memory_bytes=spec.activation_memory_bytes or spec.activation_bytes,
        batch_size=spec.batch_size,
        gradient_bytes=spec.gradient_bytes,
        label_bytes=spec.label_bytes,
        param_memory_factor=spec.param_memory_factor,
    )
    return (model if batch is None else _rebatch(model, batch)), None


def _named(
    spec: NamedModel, batch: int | None, resolve: ModelResolver | None
) -> tuple[ModelProfile, BlockCosts]:
    if resolve is None:
        raise PlanningError("model", f"{spec.name!r}: a model by name needs building (ares plan)")
    size = batch if batch is not None else spec.batch_size or PAPER_BATCH_SIZE
    built = resolve(spec, size)
    if built.profile.batch_size != size or built.profile.num_blocks != built.costs.num_blocks:
        raise PlanningError("model", f"{spec.name!r} was built inconsistently")  # a caller's bug
    return built.profile, built.costs


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


def _cast_wire(model: ModelProfile, dtype_bytes: float) -> ModelProfile:
    """Activations and gradients as sent in the wire format; memory stays float32."""
    if dtype_bytes == FLOAT32_BYTES:
        return model
    bits = round(8 * dtype_bytes)  # whole bits per element: 4 for int4
    return dataclasses.replace(
        model,
        activation_bytes=_ratio(model.activation_bytes, bits, 8 * FLOAT32_BYTES),
        gradient_bytes=None
        if model.gradient_bytes is None
        else _ratio(model.gradient_bytes, bits, 8 * FLOAT32_BYTES),
    )


def _ratio(sizes: Sequence[int], numerator: int, denominator: int) -> tuple[int, ...]:
    # Integer ceiling: exact for any size, and a partial byte still has to be sent.
    return tuple(-(-size * numerator // denominator) for size in sizes)


def _server(spec: str | ServerTimes, context: _Context) -> ServerProfile:
    if isinstance(spec, str):
        server = _builtin(BUILTIN_SERVERS, spec, "server")()
        if context.costs is None:
            _check_blocks(server.num_blocks, context, "server", f"{spec!r}")
        forward, backward = context.builtin_times(server)
        return ServerProfile(forward_s=forward, backward_s=backward)
    return ServerProfile(
        forward_s=_times(spec.forward_s, "server.forward_s", context),
        backward_s=_times(spec.backward_s, "server.backward_s", context),
    )


# --- devices ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Settings:
    """A device's per-device settings: its own, else the document's defaults."""

    entry: DeviceDefaults
    defaults: DeviceDefaults
    path: str  # the device's

    def get(self, key: str) -> Any:
        own = getattr(self.entry, key)
        return getattr(self.defaults, key) if own is None else own

    def source(self, key: str) -> str:
        """The path the setting came from, for errors found later."""
        return f"{self.path}.{key}" if getattr(self.entry, key) is not None else f"defaults.{key}"

    def required(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise PlanningError(f"{self.path}.{key}", "required (here or in defaults)")
        return value


def _device(
    entry: BoardDevice | ExplicitDevice, settings: _Settings, context: _Context
) -> DeviceProfile:
    uplink_bps = settings.required("uplink_mbps") * 1e6
    samples = settings.required("samples")
    downlink = settings.get("downlink_mbps")
    battery = settings.get("battery_pct")
    base = _base_profile(
        entry,
        settings.path,
        context,
        samples=samples,
        uplink_bps=uplink_bps,
        downlink_bps=uplink_bps if downlink is None else downlink * 1e6,
        battery_fraction=None if battery is None else battery / 100.0,
    )
    changes: dict[str, Any] = {}
    if (memory := settings.get("memory_mb")) is not None:
        changes["memory_bytes"] = round(memory * MIB)
    if (cuts := settings.get("allowed_cuts")) is not None:
        if max(cuts) > context.num_blocks:
            raise PlanningError(
                settings.source("allowed_cuts"),
                f"cuts must lie in 1..{context.num_blocks}, got {max(cuts)}",
            )
        changes["allowed_cuts"] = frozenset(cuts)
    if (overhead := settings.get("overhead_s")) is not None:
        changes["overhead_s"] = overhead
    device = dataclasses.replace(base, **changes) if changes else base
    _check_feasible(device, settings, context)
    return device


def _base_profile(
    entry: BoardDevice | ExplicitDevice,
    path: str,
    context: _Context,
    *,
    samples: int,
    uplink_bps: float,
    downlink_bps: float,
    battery_fraction: float | None,
) -> DeviceProfile:
    """The device before memory, cut and overhead overrides: a built-in board or explicit times."""
    if isinstance(entry, ExplicitDevice):
        return DeviceProfile(
            device_id=entry.id,
            forward_s=_times(entry.forward_s, f"{path}.forward_s", context),
            backward_s=_times(entry.backward_s, f"{path}.backward_s", context),
            power=PowerFigures(**entry.power.model_dump()),
            samples=samples,
            uplink_bps=uplink_bps,
            downlink_bps=downlink_bps,
            battery_fraction=battery_fraction,
        )
    builder = _builtin(BUILTIN_DEVICES, entry.profile, f"{path}.profile")
    board = builder(entry.id, samples, uplink_bps, downlink_bps, battery_fraction)
    if context.costs is None:
        _check_blocks(board.num_blocks, context, f"{path}.profile", f"{entry.profile!r}")
    overrides = {} if entry.power is None else entry.power.model_dump(exclude_none=True)
    forward, backward = context.builtin_times(board)
    return dataclasses.replace(
        board,
        forward_s=forward,
        backward_s=backward,
        power=board.power.model_copy(update=overrides),
    )


def _check_feasible(device: DeviceProfile, settings: _Settings, context: _Context) -> None:
    """Name the setting that leaves a device no usable cut, before cost_table reports the id."""
    if device.memory_bytes is None:
        return  # allowed_cuts alone is never empty and was checked against 1..L
    cuts = device.allowed_cuts or frozenset(range(1, context.num_blocks + 1))
    need = min(context.memory_need[cut - 1] for cut in cuts)
    if need > device.memory_bytes:
        memory_given = settings.get("memory_mb") is not None
        raise PlanningError(
            settings.source("memory_mb") if memory_given else f"{settings.path}.profile",
            f"{device.memory_bytes / MIB:.1f} MiB leaves no usable cut; the smallest "
            f"allowed needs {need / MIB:.1f} MiB",
        )


# --- shared helpers ---------------------------------------------------------------------------


def _times(times: tuple[float, ...], path: str, context: _Context) -> tuple[float, ...]:
    if len(times) != context.num_blocks:
        raise PlanningError(
            path, f"needs {context.num_blocks} entries (one per block), got {len(times)}"
        )
    return times


def _scaled(times: tuple[float, ...], factor: float) -> tuple[float, ...]:
    return times if factor == 1.0 else tuple(factor * t for t in times)


def _check_blocks(blocks: int, context: _Context, path: str, what: str) -> None:
    if blocks != context.num_blocks:
        raise PlanningError(
            path, f"{what} has {blocks} blocks but the model has {context.num_blocks}"
        )


def _builtin(table: Mapping[str, T], name: str, path: str) -> T:
    if name not in table:
        raise PlanningError(path, f"unknown name {name!r}; built-in: {', '.join(sorted(table))}")
    return table[name]
