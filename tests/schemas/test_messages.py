"""Message schemas and topic names."""

from __future__ import annotations

import json

import pytest

from schemas import (
    DeviceChannel,
    DevicePlanEntry,
    Hello,
    PlanMessage,
    RoundStart,
    SchemaError,
    Topics,
    WeightsMeta,
    parse_ctrl,
    parse_json,
    parse_meta,
    to_json,
    to_meta,
)
from schemas.messages import ModelInfo, TrainConfig


def _hello(**changes):
    fields = dict(
        device_id="dev-0",
        instance="abc",
        agent_version="0.1.0",
        samples=10,
        dataset="digits",
        input_shape=(1, 8, 8),
        num_classes=10,
    )
    return Hello(**{**fields, **changes})


def test_json_round_trip():
    hello = _hello()
    assert parse_json(Hello, to_json(hello)) == hello


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[]", "bad_schema"),
        (to_json(_hello())[:-1] + b', "extra": 1}', "bad_schema"),
        (to_json(_hello()).replace(b'"v":2', b'"v":3'), "bad_version"),
        (to_json(_hello()).replace(b'"dev-0"', b'"dev/0"'), "bad_schema"),
        (to_json(_hello()).replace(b'"samples":10', b'"samples":-1'), "bad_schema"),
    ],
)
def test_bad_json_messages_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(SchemaError) as err:
        parse_json(Hello, payload)
    assert err.value.reason == reason


def test_ctrl_messages_are_discriminated_by_kind():
    start = RoundStart(
        session="s",
        round=1,
        cut=2,
        model=ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10),
        train=TrainConfig(lr=0.1, batch_size=4, batches=3, batch_timeout_s=5),
        deadline_s=60,
    )
    assert parse_ctrl(to_meta(start)) == start
    with pytest.raises(SchemaError):
        parse_ctrl({**to_meta(start), "kind": "nope"})


def test_messages_are_frozen():
    with pytest.raises(Exception, match="frozen"):
        _hello().samples = 3


def test_topics_are_built_and_parsed_in_one_place():
    topics = Topics("lab/ares")
    topic = topics.device("jetson-1", DeviceChannel.ACT)
    assert topic == "lab/ares/dev/jetson-1/act"
    assert topics.parse_device_topic(topic) == ("jetson-1", DeviceChannel.ACT)
    assert topics.all_devices(DeviceChannel.HELLO) == "lab/ares/dev/+/hello"
    assert topics.edge_status == "lab/ares/edge/status"
    for bad in (
        "lab/ares/dev/x/unknown",
        "lab/ares/dev/a/b/act",
        "other/dev/x/act",
        "lab/ares/dev//act",
    ):
        assert topics.parse_device_topic(bad) is None


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "#", "x" * 65, "-lead"])
def test_device_ids_that_break_topics_are_refused(device_id):
    with pytest.raises(ValueError, match="invalid device id"):
        Topics().device(device_id, DeviceChannel.ACT)


@pytest.mark.parametrize("prefix", ["", "a/+/b", "a/#", "a//b", "/a"])
def test_bad_prefixes_are_refused(prefix):
    with pytest.raises(ValueError, match="prefix"):
        Topics(prefix)


def _round_start(**changes: object) -> RoundStart:
    fields: dict[str, object] = dict(
        session="s",
        round=1,
        cut=2,
        model=ModelInfo(name="small_cnn", input_shape=(1, 8, 8), num_classes=10),
        train=TrainConfig(lr=0.1, batch_size=4, batches=3, batch_timeout_s=5),
        deadline_s=60,
    )
    return RoundStart(**{**fields, **changes})


def test_version_1_said_split_and_is_still_read():
    v2 = to_meta(_round_start())
    v1 = to_meta(_round_start(), 1)
    assert v2["v"] == 2
    assert v2["cut"] == 2
    assert "split" not in v2
    assert v1["v"] == 1
    assert v1["split"] == 2
    assert "cut" not in v1
    parsed = parse_ctrl(v1)
    assert isinstance(parsed, RoundStart)
    assert parsed.cut == 2
    assert parsed.v == 1
    weights = WeightsMeta(device_id="dev-0", round=1, cut=3, samples=8, batches=2, busy_s=0.5)
    assert parse_meta(WeightsMeta, to_meta(weights, 1)).cut == 3


def test_version_1_plan_entries_are_upgraded_per_device():
    entry = DevicePlanEntry(
        cut=4, predicted_time_s=1.0, predicted_energy_j=2.0, reason="r", inputs="measured"
    )
    # A device may be called "split": only the entries' keys are renamed, never device ids.
    plan = PlanMessage(
        session="s", round=1, policy="ares", alpha=0.5, objective=0.9, devices={"split": entry}
    )
    old = json.loads(to_json(plan, 1))
    assert old["v"] == 1
    assert old["devices"]["split"]["split"] == 4
    assert parse_json(PlanMessage, to_json(plan, 1)).devices["split"].cut == 4


def test_version_2_refuses_the_old_word():
    data = {**to_meta(_round_start()), "split": 2}
    data.pop("cut")
    with pytest.raises(SchemaError) as err:
        parse_ctrl(data)
    assert err.value.reason == "bad_schema"


def test_a_hello_lists_the_quantised_formats_only_to_an_edge_that_knows_them():
    hello = _hello(wire_dtypes=("float32", "float16", "int8", "int4"))
    assert parse_json(Hello, to_json(hello)).wire_dtypes == ("float32", "float16", "int8", "int4")
    assert json.loads(to_json(hello, 1))["wire_dtypes"] == ["float32", "float16"]
    # A hello that does not list its formats is an agent from before the quantised ones.
    assert _hello().wire_dtypes == ("float32", "float16")
