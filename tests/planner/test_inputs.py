"""planner.inputs: plan documents (already parsed) into validated profiles."""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest
import yaml

from planner import PlanningError
from planner.compute import BlockCosts
from planner.inputs import (
    BUILTIN_DEVICES,
    BuiltModel,
    PlanInputs,
    plan_inputs_from_dict,
)
from planner.paper import (
    board_compute,
    edge_server,
    jetson_nano,
    paper_testbed,
    raspberry_pi,
    vgg5_model,
)
from planner.plan_document import NamedModel
from planner.profiles import ModelProfile
from schemas import PowerFigures

EXAMPLES = resources.files("planner").joinpath("examples")
EXAMPLE_NAMES = sorted(e.name for e in EXAMPLES.iterdir() if e.name.endswith((".yaml", ".json")))


def _load_example(name: str) -> Any:
    text = EXAMPLES.joinpath(name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


def _document(**changes: Any) -> dict[str, Any]:
    """A small valid document (one Pi, one explicit board) with top-level keys replaced."""
    doc: dict[str, Any] = {
        "model": "vgg5",
        "server": "paper-edge",
        "defaults": {"uplink_mbps": 20, "samples": 5000},
        "devices": [
            {"id": "pi", "profile": "raspberry-pi-3b+"},
            {
                "id": "board",
                "forward_s": [0.01] * 7,
                "backward_s": [0.02] * 7,
                "power": {"compute_w": 3, "transmit_w": 1.2, "receive_w": 1.0},
            },
        ],
    }
    doc.update(changes)
    return doc


def _with(path: str, value: Any) -> dict[str, Any]:
    """The small document with the value at a dotted path (``devices.1.power.compute_w``) set."""
    doc = copy.deepcopy(_document())
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def test_examples_are_shipped() -> None:
    assert {"paper-testbed.yaml", "mixed-links.yaml", "two-devices.json"} <= set(EXAMPLE_NAMES)


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_every_example_parses_and_prices(name: str) -> None:
    inputs = plan_inputs_from_dict(_load_example(name))
    assert isinstance(inputs, PlanInputs)
    table = inputs.table()
    assert table.num_devices == len(inputs.devices) >= 2
    assert table.feasible.any(axis=1).all()


def test_paper_testbed_example_is_the_paper_testbed() -> None:
    inputs = plan_inputs_from_dict(_load_example("paper-testbed.yaml"))
    devices, server, model = paper_testbed(uplink_mbps=20.0, samples_per_device=5000)
    assert inputs.devices == devices
    assert inputs.server == server
    assert inputs.model == model


def test_mixed_links_example_has_varied_links_and_a_battery() -> None:
    inputs = plan_inputs_from_dict(_load_example("mixed-links.yaml"))
    uplinks = {d.uplink_bps for d in inputs.devices}
    assert min(uplinks) == 5e6
    assert max(uplinks) == 100e6
    assert [d.battery_fraction for d in inputs.devices if d.battery_fraction is not None] == [0.35]


def test_builtin_boards_are_the_paper_builders() -> None:
    assert set(BUILTIN_DEVICES) == {
        "raspberry-pi-3b+",
        "jetson-nano-maxn",
        "jetson-nano-5w",
        "jetson-nano-5w-1core",
        "jetson-nano-5w-3core",
    }
    nano = BUILTIN_DEVICES["jetson-nano-5w-1core"]("n", 10, 1e6, 2e6, 0.5)
    assert nano == jetson_nano(
        "n", "5w-1core", samples=10, uplink_bps=1e6, downlink_bps=2e6, battery_fraction=0.5
    )


def test_explicit_profiles() -> None:
    inputs = plan_inputs_from_dict(_load_example("two-devices.json"))
    zero, orange = inputs.devices
    assert zero.device_id == "pi-zero-2w"
    assert zero.forward_s == (0.012, 0.085, 0.004, 0.006, 0.0005)
    assert zero.power == PowerFigures(compute_w=1.6, transmit_w=1.0, receive_w=0.9)
    assert zero.uplink_bps == zero.downlink_bps == 10e6  # downlink follows the uplink
    assert zero.battery_fraction == pytest.approx(0.6)
    assert zero.memory_bytes == 256 * 1024**2
    assert zero.samples == 700  # from defaults
    assert zero.overhead_s == 0.003
    assert (orange.uplink_bps, orange.downlink_bps) == (50e6, 100e6)
    assert orange.memory_bytes is None
    assert orange.battery_fraction is None
    assert inputs.server.forward_s == (0.0002, 0.0008, 0.0001, 0.0001, 0.00002)
    assert inputs.model.num_blocks == 5
    assert inputs.model.batch_size == 32
    assert inputs.model.param_bytes == (640, 18560, 0, 131328, 2600)
    assert inputs.model.label_bytes == 256


def test_device_settings_override_defaults_and_profiles() -> None:
    doc = _document()
    doc["devices"][0].update(
        samples=7,
        downlink_mbps=50,
        memory_mb=900,
        allowed_cuts=[1, 3],
        overhead_s=0.5,
        power={"transmit_w": 9.0},
    )
    pi = plan_inputs_from_dict(doc).devices[0]
    stock = raspberry_pi("pi")
    assert pi.samples == 7
    assert (pi.uplink_bps, pi.downlink_bps) == (20e6, 50e6)
    assert pi.memory_bytes == 900 * 1024**2
    assert pi.allowed_cuts == frozenset({1, 3})
    assert pi.overhead_s == 0.5
    assert pi.power == stock.power.model_copy(update={"transmit_w": 9.0})
    assert pi.forward_s == stock.forward_s


def test_float16_halves_activation_bytes() -> None:
    wide = plan_inputs_from_dict(_document(wire_dtype="float32")).model
    narrow = plan_inputs_from_dict(_document(wire_dtype="float16")).model
    assert wide == vgg5_model()
    assert narrow.activation_bytes == tuple(b // 2 for b in wide.activation_bytes)
    assert narrow.down_bytes == tuple(b // 2 for b in wide.down_bytes)
    # Only the wire copy is cast: labels and the device's training memory are unchanged.
    assert narrow.label_bytes == wide.label_bytes
    assert narrow.activation_memory_bytes == wide.activation_memory_bytes


@pytest.mark.parametrize(("wire_dtype", "element_bytes"), [("float32", 4), ("float16", 2)])
def test_wire_dtype_sets_the_link_time(wire_dtype: str, element_bytes: int) -> None:
    # Free compute everywhere, so at cut 1 only the link costs time.
    doc = _document(wire_dtype=wire_dtype, server={"forward_s": [0] * 7, "backward_s": [0] * 7})
    doc["devices"][1].update(forward_s=[0] * 7, backward_s=[0] * 7)
    table = plan_inputs_from_dict(doc).table()
    activation = 32768 * 100 * element_bytes  # VGG5's first output, batch 100
    labels = 100 * 8  # int64 labels are never cast
    bits_per_batch = 8 * (activation + labels + activation)  # up with labels, gradient down
    assert table.time_s[1, 0] == pytest.approx(50 * bits_per_batch / 20e6)


def test_batch_size_override_rescales_sizes_and_builtin_times() -> None:
    inputs = plan_inputs_from_dict(_document(batch_size=50))
    assert inputs.model == vgg5_model(50)
    pi = inputs.devices[0]
    assert pi.forward_s == pytest.approx([t / 2 for t in raspberry_pi("pi").forward_s])
    assert inputs.server.backward_s == pytest.approx([t / 2 for t in edge_server().backward_s])
    board = inputs.devices[1]
    assert board.forward_s == (0.01,) * 7  # explicit times are taken as given


def test_batch_size_override_on_an_explicit_model() -> None:
    doc = _load_example("two-devices.json")
    doc["batch_size"] = 64
    doc["wire_dtype"] = "float32"
    model = plan_inputs_from_dict(doc).model
    assert model.batch_size == 64
    assert model.activation_bytes == (262144, 524288, 131072, 16384, 2560)
    assert model.label_bytes == 512
    assert model.param_bytes == (640, 18560, 0, 131328, 2600)


def test_explicit_model_defaults() -> None:
    doc = _load_example("two-devices.json")
    for key in ("num_blocks", "activation_memory_bytes", "label_bytes"):
        del doc["model"][key]
    model = plan_inputs_from_dict({**doc, "wire_dtype": "float32"}).model
    assert model.activation_memory_bytes == model.activation_bytes
    assert model.label_bytes == 0
    assert model.gradient_bytes is None
    assert model.param_memory_factor == 3.0


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_with("devices.1.uplink_mbps", 0), "devices[1].uplink_mbps: must be > 0"),
        (_with("devices.0.uplink_mbps", "fast"), "devices[0].uplink_mbps: must be a number"),
        (_with("devices.0.uplink_mbps", True), "devices[0].uplink_mbps: must be a number"),
        (_with("defaults.samples", 0), "defaults.samples: must be >= 1"),
        (_with("defaults.samples", 2.5), "defaults.samples: must be an integer"),
        (_with("devices.0.battery_pct", 120), "devices[0].battery_pct: must be <= 100"),
        (_with("devices.0.allowed_cuts", [1, 8]), "devices[0].allowed_cuts: cuts must lie in 1..7"),
        (_with("devices.0.allowed_cuts", [0]), "devices[0].allowed_cuts[0]: must be >= 1"),
        (_with("devices.0.memory_mb", 1), "devices[0].memory_mb: 1.0 MiB leaves no usable cut"),
        (_with("devices.1.power.compute_w", -1), "devices[1].power.compute_w: must be >= 0"),
        (_with("devices.1.forward_s", [0.1] * 6), "devices[1].forward_s: needs 7 entries"),
        (_with("devices.1.backward_s.3", float("nan")), "devices[1].backward_s[3]: must be finite"),
        (_with("devices.0.profile", "pi-4"), "devices[0].profile: unknown name 'pi-4'"),
        (_with("devices.0.id", 7), "devices[0].id: must be a non-empty string"),
        (_with("devices.1.id", "pi"), "devices[1].id: duplicate id 'pi'"),
        (_with("devices.0", "pi"), "devices[0]: must be a mapping"),
        (_with("wire_dtype", "int2"), "wire_dtype: must be 'float32', 'float16', 'int8' or 'int4'"),
        (_with("batch_size", 0), "batch_size: must be >= 1"),
        (_with("model", "resnet"), "model: unknown name 'resnet'"),
        (_with("model", 3), "model: must be a mapping, got int"),
        (_with("sync_weights", "yes"), "sync_weights: must be true or false, got 'yes'"),
        (_with("devices.1.power", None), "devices[1].power: must be a mapping"),
        (_with("server", "cloud"), "server: unknown name 'cloud'"),
        (_with("server", {"forward_s": [0.1] * 7}), "server.backward_s: required"),
        (_with("devices", []), "devices: needs at least one entry"),
        (_with("devices", {"pi": {}}), "devices: must be a list"),
        (_with("defaults", {}), "devices[0].uplink_mbps: required (here or in defaults)"),
    ],
)
def test_errors_name_the_path(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanningError) as caught:
        plan_inputs_from_dict(doc)
    assert str(caught.value).startswith(message)


def test_profile_and_explicit_times_are_exclusive() -> None:
    doc = _with("devices.0.forward_s", [0.1] * 7)
    with pytest.raises(PlanningError, match=r"^devices\[0\]\.forward_s: give either a profile"):
        plan_inputs_from_dict(doc)


def test_explicit_board_needs_all_power_figures() -> None:
    doc = _with("devices.1.power", {"compute_w": 1, "transmit_w": 1})
    with pytest.raises(PlanningError, match=r"^devices\[1\]\.power\.receive_w: required"):
        plan_inputs_from_dict(doc)
    doc["devices"][1].pop("power")
    with pytest.raises(PlanningError, match=r"^devices\[1\]\.power: required"):
        plan_inputs_from_dict(doc)


def test_block_counts_must_match_the_model() -> None:
    doc = _load_example("two-devices.json")
    doc["devices"][0] = {"id": "pi", "profile": "raspberry-pi-3b+", "uplink_mbps": 1}
    with pytest.raises(PlanningError, match=r"^devices\[0\]\.profile: .* 7 blocks .* has 5"):
        plan_inputs_from_dict(doc)
    doc = _load_example("two-devices.json")
    doc["server"] = "paper-edge"
    with pytest.raises(PlanningError, match=r"^server: 'paper-edge' has 7 blocks"):
        plan_inputs_from_dict(doc)
    doc = _load_example("two-devices.json")
    doc["model"]["num_blocks"] = 4
    with pytest.raises(PlanningError, match=r"^model\.num_blocks: is 4"):
        plan_inputs_from_dict(doc)
    doc = _load_example("two-devices.json")
    doc["model"]["param_bytes"] = [1, 2]
    with pytest.raises(PlanningError, match=r"^model\.param_bytes: needs 5 entries .*, got 2"):
        plan_inputs_from_dict(doc)
    doc = _load_example("two-devices.json")
    doc["server"]["forward_s"] = [0.1] * 7
    with pytest.raises(PlanningError, match=r"^server\.forward_s: needs 5 entries .*, got 7"):
        plan_inputs_from_dict(doc)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("colour", "colour"),
        ("defaults.uplink", "defaults.uplink"),
        ("defaults.power", "defaults.power"),  # board-specific, not a default
        ("devices.0.uplnk_mbps", "devices[0].uplnk_mbps"),
        ("devices.1.power.idle_w", "devices[1].power.idle_w"),
    ],
)
def test_unknown_keys_are_rejected(path: str, field: str) -> None:
    with pytest.raises(PlanningError) as caught:
        plan_inputs_from_dict(_with(path, 1))
    assert caught.value.field == field
    assert "unknown key; expected one of " in caught.value.message


@pytest.mark.parametrize("key", ["dtype", "name"])
def test_unknown_model_and_server_keys_are_rejected(key: str) -> None:
    doc = _load_example("two-devices.json")
    doc["model"][key] = 1
    with pytest.raises(PlanningError, match=rf"^model\.{key}: unknown key"):
        plan_inputs_from_dict(doc)
    doc = _load_example("two-devices.json")
    doc["server"][key] = 1
    with pytest.raises(PlanningError, match=rf"^server\.{key}: unknown key"):
        plan_inputs_from_dict(doc)


@pytest.mark.parametrize("data", [None, [], "model: vgg5", 3])
def test_top_level_must_be_a_mapping(data: Any) -> None:
    with pytest.raises(PlanningError, match=r"^\(top level\): must be a mapping"):
        plan_inputs_from_dict(data)


def test_missing_required_top_level_keys() -> None:
    for key in ("model", "server", "devices"):
        doc = _document()
        del doc[key]
        with pytest.raises(PlanningError, match=rf"^{key}: required"):
            plan_inputs_from_dict(doc)


# --- a model by name --------------------------------------------------------------------------

NAMED_COSTS = BlockCosts(flops=(5000, 20000), moved_bytes=(800, 100), param_bytes=(400, 9000))


def _build(section: NamedModel, batch: int) -> BuiltModel:
    """What ares plan's builder gives, made up: two blocks."""
    if section.name != "two_blocks":
        raise PlanningError("model", f"unknown model {section.name!r}")
    profile = ModelProfile(
        num_blocks=2,
        activation_bytes=(64 * batch, 40 * batch),
        param_bytes=NAMED_COSTS.param_bytes,
        activation_memory_bytes=(128 * batch, 40 * batch),
        batch_size=batch,
        label_bytes=8 * batch,
    )
    return BuiltModel(profile, NAMED_COSTS)


def _named(**model: Any) -> dict[str, Any]:
    section = {"name": "two_blocks", "input_shape": [1, 4, 4], "num_classes": 10, **model}
    return {
        "model": section,
        "server": "paper-edge",
        "defaults": {"uplink_mbps": 20, "samples": 1000},
        "devices": [
            {"id": "pi", "profile": "raspberry-pi-3b+"},
            {"id": "nano", "profile": "jetson-nano-5w"},
            {
                "id": "own",
                "forward_s": [0.1, 0.2],
                "backward_s": [0.1, 0.2],
                "power": {"compute_w": 3, "transmit_w": 1, "receive_w": 1},
            },
        ],
    }


def test_a_model_by_name_is_built_by_the_caller_and_priced_by_the_boards_rates() -> None:
    inputs = plan_inputs_from_dict(_named(batch_size=32), resolve_model=_build)
    assert inputs.model.batch_size == 32
    assert inputs.model.num_blocks == 2
    pi, nano, own = inputs.devices
    # Built-in boards: the model's costs at the rates fitted to their VGG5 times.
    assert (pi.forward_s, pi.backward_s) == board_compute(raspberry_pi("pi")).block_times(
        NAMED_COSTS, 32
    )
    assert (nano.forward_s, nano.backward_s) == board_compute(
        jetson_nano("nano", "5w")
    ).block_times(NAMED_COSTS, 32)
    assert sum(pi.forward_s) > sum(nano.forward_s) > 0
    assert own.forward_s == (0.1, 0.2)  # explicit times as given
    server = board_compute(edge_server()).block_times(NAMED_COSTS, 32)
    assert (inputs.server.forward_s, inputs.server.backward_s) == server
    assert inputs.table().feasible.any(axis=1).all()
    # The document's batch size wins over the model's; 100 without either.
    assert (
        plan_inputs_from_dict(
            {**_named(batch_size=32), "batch_size": 8}, resolve_model=_build
        ).model.batch_size
        == 8
    )
    assert plan_inputs_from_dict(_named(), resolve_model=_build).model.batch_size == 100


def test_a_model_by_name_needs_a_builder_and_a_known_name() -> None:
    with pytest.raises(PlanningError, match=r"^model: 'two_blocks': a model by name needs"):
        plan_inputs_from_dict(_named())
    with pytest.raises(PlanningError, match=r"^model: unknown model 'nope'"):
        plan_inputs_from_dict(_named(name="nope"), resolve_model=_build)
    with pytest.raises(PlanningError, match=r"^model\.num_classes: must be >= 2"):
        plan_inputs_from_dict(_named(num_classes=1), resolve_model=_build)
    doc = _named()
    del doc["model"]["input_shape"]
    with pytest.raises(PlanningError, match=r"^model\.input_shape: required"):
        plan_inputs_from_dict(doc, resolve_model=_build)
    # Explicit times must still have one entry per block of the named model.
    doc = _named()
    doc["devices"][2]["forward_s"] = [0.1] * 7
    with pytest.raises(PlanningError, match=r"^devices\[2\]\.forward_s: needs 2 entries"):
        plan_inputs_from_dict(doc, resolve_model=_build)
