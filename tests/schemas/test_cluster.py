"""Messages and topics between edge replicas."""

from __future__ import annotations

import json
import math
from typing import get_args

import numpy as np
import pytest

from broker.bridge import bridge_topics, broadcast_filters
from schemas import (
    ClusterChannel,
    CoordinatorLease,
    DeviceOutcome,
    DevicePlanEntry,
    GlobalModelMeta,
    OrderEntry,
    PartialMeta,
    ReplicaStatus,
    RoundOrder,
    SchemaError,
    Topics,
    TrainConfig,
    decode_frame,
    encode_frame,
    parse_json,
    parse_meta,
    to_json,
    to_meta,
    validate_replica_name,
)


def _status(**changes: object) -> ReplicaStatus:
    fields: dict[str, object] = dict(
        replica="edge-a", session="s1", state="up", capacity_bps=2.5, sent_at=1.0e9
    )
    return ReplicaStatus.model_validate({**fields, **changes})


def _entry(replica: str, cut: int = 2) -> OrderEntry:
    plan = DevicePlanEntry(
        cut=cut,
        predicted_time_s=1.5,
        predicted_energy_j=0.3,
        reason="fastest",
        inputs="measured",
        wire_dtype="int8",
    )
    train = TrainConfig(lr=0.05, batch_size=32, batches=10, batch_timeout_s=5.0)
    return OrderEntry(replica=replica, plan=plan, train=train)


def _order() -> RoundOrder:
    return RoundOrder(
        coordinator="edge-a",
        epoch=3,
        round=4,
        attempt=1,
        base_round=3,
        deadline_s=60.0,
        devices={
            "dev-0": _entry("edge-a"),
            "dev-1": _entry("edge-b", 3),
            "dev-2": _entry("edge-a"),
        },
    )


def _outcome(**changes: object) -> DeviceOutcome:
    fields: dict[str, object] = dict(
        device_id="dev-0",
        cut=2,
        status="ok",
        batches=10,
        samples=320,
        busy_s=4.0,
        train_loss=0.7,
        rtt_median_s=0.02,
        round_s=5.5,
        weights_down_bytes=1000,
        contributed=True,
    )
    return DeviceOutcome.model_validate({**fields, **changes})


# --- topics -------------------------------------------------------------------------------------


def test_cluster_topics_live_under_the_cluster_level():
    topics = Topics("site/v1")
    assert topics.cluster_all == "site/v1/cluster/#"
    assert topics.cluster_replica("edge-a") == "site/v1/cluster/replica/edge-a"
    assert topics.cluster_lease == "site/v1/cluster/lease"
    assert topics.cluster_order == "site/v1/cluster/order"
    assert topics.cluster_partial("edge-b") == "site/v1/cluster/partial/edge-b"
    assert topics.cluster_model == "site/v1/cluster/model"
    assert topics.cluster_report == "site/v1/cluster/report"


def test_every_cluster_topic_parses_back():
    topics = Topics()
    assert topics.parse_cluster_topic(topics.cluster_replica("a.1")) == (
        ClusterChannel.REPLICA,
        "a.1",
    )
    assert topics.parse_cluster_topic(topics.cluster_partial("b")) == (ClusterChannel.PARTIAL, "b")
    assert topics.parse_cluster_topic(topics.cluster_lease) == (ClusterChannel.LEASE, None)
    assert topics.parse_cluster_topic(topics.cluster_order) == (ClusterChannel.ORDER, None)
    assert topics.parse_cluster_topic(topics.cluster_model) == (ClusterChannel.MODEL, None)
    assert topics.parse_cluster_topic(topics.cluster_report) == (ClusterChannel.REPORT, None)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/cluster/lease",  # another prefix
        "ares/v1/cluster",
        "ares/v1/cluster/",
        "ares/v1/cluster/lease/x",  # a level too many
        "ares/v1/cluster/replica",  # no name
        "ares/v1/cluster/replica/",
        "ares/v1/cluster/replica/a/b",
        "ares/v1/cluster/partial/-a",  # a bad name
        "ares/v1/cluster/partial/+",
        "ares/v1/cluster/replica/a b",
        "ares/v1/cluster/unknown",
        "ares/v1/cluster/unknown/a",
        "ares/v1/dev/a/status",
        "ares/v1/edge/status",
    ],
)
def test_malformed_cluster_topics_do_not_parse(topic):
    assert Topics().parse_cluster_topic(topic) is None


@pytest.mark.parametrize("name", ["", "-a", "a/b", "a+", "#", "a" * 65, "a b", "é"])
def test_bad_replica_names_are_refused(name):
    with pytest.raises(ValueError, match="invalid edge replica name"):
        validate_replica_name(name)
    with pytest.raises(ValueError, match="invalid edge replica name"):
        Topics().cluster_replica(name)
    with pytest.raises(ValueError, match="invalid edge replica name"):
        Topics().cluster_partial(name)


def test_no_site_bridge_carries_a_cluster_topic():
    topics = Topics()
    patterns = [line.pattern for line in bridge_topics(topics.prefix, ["dev-0", "cluster"])]
    patterns += broadcast_filters(topics.prefix)
    assert patterns
    assert not [p for p in patterns if p.startswith(f"{topics.prefix}/cluster")]
    assert all(topics.parse_cluster_topic(p) is None for p in patterns)


# --- JSON messages ------------------------------------------------------------------------------


def test_replica_status_round_trips():
    status = _status(site="hall-1", serving=["dev-0", "dev-1"], round=3, attempt=1)
    assert parse_json(ReplicaStatus, to_json(status)) == status
    assert json.loads(to_json(_status()))["kind"] == "replica_status"


def test_coordinator_lease_round_trips():
    lease = CoordinatorLease(holder="edge-a", session="s1", epoch=2, lease_s=3.0, renewed_at=5.0)
    assert parse_json(CoordinatorLease, to_json(lease)) == lease


def test_round_order_round_trips_and_splits_by_replica():
    order = _order()
    again = parse_json(RoundOrder, to_json(order))
    assert again == order
    assert set(again.for_replica("edge-a")) == {"dev-0", "dev-2"}
    assert again.for_replica("edge-b") == {"dev-1": _entry("edge-b", 3)}
    assert again.for_replica("edge-c") == {}


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (ReplicaStatus, {"replica": "-bad"}),  # a bad replica name
        (ReplicaStatus, {"capacity_bps": 0}),
        (ReplicaStatus, {"state": "gone"}),
        (ReplicaStatus, {"serving": ["a/b"]}),
        (ReplicaStatus, {"extra": 1}),  # an unknown field
        (CoordinatorLease, {"epoch": -1}),
        (CoordinatorLease, {"epoch": 0}),
        (CoordinatorLease, {"holder": "a b"}),
        (CoordinatorLease, {"lease_s": 0}),
        (CoordinatorLease, {"kind": "lease"}),
        (RoundOrder, {"epoch": -2}),
        (RoundOrder, {"deadline_s": 0}),
        (RoundOrder, {"coordinator": ""}),
        (RoundOrder, {"surprise": True}),
    ],
)
def test_malformed_json_messages_are_schema_errors(model, payload):
    valid = {
        ReplicaStatus: _status(),
        CoordinatorLease: CoordinatorLease(
            holder="edge-a", session="s1", epoch=1, lease_s=3.0, renewed_at=0.0
        ),
        RoundOrder: _order(),
    }[model]
    data = {**json.loads(to_json(valid)), **payload}
    with pytest.raises(SchemaError) as caught:
        parse_json(model, json.dumps(data).encode())
    assert caught.value.reason == "bad_schema"


def test_an_order_entry_with_a_bad_replica_is_a_schema_error():
    data = json.loads(to_json(_order()))
    data["devices"]["dev-1"]["replica"] = "edge/b"
    with pytest.raises(SchemaError):
        parse_json(RoundOrder, json.dumps(data).encode())


# --- frame metas --------------------------------------------------------------------------------


def test_partial_meta_round_trips_in_a_frame():
    meta = PartialMeta(
        replica="edge-b",
        epoch=2,
        round=5,
        attempt=0,
        weights=[320.0, 128.0],
        dtypes={"w": "float32", "steps": "int64"},
        results=[_outcome(), _outcome(device_id="dev-1", status="dropped", contributed=False)],
    )
    sums = {"w": np.arange(6, dtype=np.float64).reshape(2, 3), "steps": np.float64(7) * np.ones(())}
    frame = decode_frame(encode_frame(to_meta(meta), sums))
    assert parse_meta(PartialMeta, frame.meta) == meta
    assert frame.tensors["w"].dtype == np.float64
    np.testing.assert_array_equal(frame.tensors["w"], sums["w"])


def test_device_outcome_carries_a_nan_loss():
    meta = PartialMeta(
        replica="edge-b",
        epoch=1,
        round=1,
        attempt=0,
        weights=[],
        dtypes={},
        results=[_outcome(train_loss=math.nan, contributed=False)],
    )
    again = parse_meta(PartialMeta, decode_frame(encode_frame(to_meta(meta))).meta)
    assert math.isnan(again.results[0].train_loss or 0.0)


def test_global_model_meta_round_trips_in_a_frame():
    meta = GlobalModelMeta(coordinator="edge-a", epoch=4, round=0)
    state = {"fc.weight": np.ones((2, 2), dtype=np.float32)}
    frame = decode_frame(encode_frame(to_meta(meta), state))
    assert parse_meta(GlobalModelMeta, frame.meta) == meta
    with_accuracy = GlobalModelMeta(coordinator="edge-a", epoch=4, round=7, accuracy=0.9)
    assert parse_meta(GlobalModelMeta, to_meta(with_accuracy)) == with_accuracy


_OUTCOME = {"device_id": "d", "cut": 1, "status": "ok", "contributed": True}


@pytest.mark.parametrize(
    ("model", "change"),
    [
        (PartialMeta, {"replica": "edge b"}),
        (PartialMeta, {"epoch": -1}),
        (PartialMeta, {"weights": [-1.0]}),
        (PartialMeta, {"weights": [math.inf]}),
        (PartialMeta, {"results": [{"device_id": "dev-0", "cut": 1, "status": "ok"}]}),
        (
            PartialMeta,
            {"results": [{"device_id": "d", "cut": 1, "status": "won", "contributed": 1}]},
        ),
        (
            PartialMeta,
            {"results": [{"device_id": "d", "cut": 0, "status": "ok", "contributed": 1}]},
        ),
        (PartialMeta, {"unknown": 1}),
        (GlobalModelMeta, {"coordinator": "#"}),
        (GlobalModelMeta, {"epoch": 0}),
        (GlobalModelMeta, {"round": -1}),
        (GlobalModelMeta, {"tensors": []}),
    ],
)
def test_malformed_frame_metas_are_schema_errors(model, change):
    valid = {
        PartialMeta: PartialMeta(
            replica="edge-b", epoch=1, round=1, attempt=0, weights=[1.0], dtypes={}, results=[]
        ),
        GlobalModelMeta: GlobalModelMeta(coordinator="edge-a", epoch=1, round=1),
    }[model]
    with pytest.raises(SchemaError):
        parse_meta(model, {**to_meta(valid), **change})


def test_a_frame_meta_is_not_another_kind():
    meta = to_meta(GlobalModelMeta(coordinator="edge-a", epoch=1, round=1))
    with pytest.raises(SchemaError):
        parse_meta(PartialMeta, meta)


def test_device_outcome_mirrors_the_edge_s_device_result():
    from dataclasses import fields

    from edge_service.rounds import DeviceResult, Outcome

    result_fields = {f.name for f in fields(DeviceResult)} - {"state"}
    assert set(DeviceOutcome.model_fields) - {"v"} == result_fields | {"contributed"}
    status = DeviceOutcome.model_fields["status"].annotation
    assert set(get_args(status)) == set(get_args(Outcome))
