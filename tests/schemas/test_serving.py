"""Serving's wire contract: topics under each device's subtree, requests in JSON or frames,
every bad request a RequestError with a reason and, where readable, its id."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import SchemaError, Topics, encode_frame
from schemas.serving import (
    RequestError,
    ServeAnswer,
    ServeCtrl,
    ServeHello,
    parse_request,
)
from schemas.topics import DeviceChannel, ServeChannel

LIMIT = 64 * 1024


def test_serving_topics_live_under_the_device_subtree():
    topics = Topics("site/ares")
    topic = topics.device("cam-1", ServeChannel.REQUEST)
    assert topic == "site/ares/dev/cam-1/serve/request"
    assert topics.parse_serve_topic(topic) == ("cam-1", ServeChannel.REQUEST)
    assert topics.all_devices(ServeChannel.ACT) == "site/ares/dev/+/serve/act"
    assert (topics.serve_status, topics.serve_plan) == ("site/ares/serve/status",
                                                       "site/ares/serve/plan")  # fmt: skip
    # The training protocol's parser never mistakes a serving topic for one of its own.
    assert topics.parse_device_topic(topic) is None
    assert topics.parse_serve_topic(topics.device("cam-1", DeviceChannel.ACT)) is None
    for bad in ("site/ares/dev/+/serve/act", "site/ares/dev/cam-1/serve/nope", "other/x"):
        assert topics.parse_serve_topic(bad) is None


def test_a_json_request_and_a_frame_request_read_alike():
    sample = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    from_json = parse_request(
        json.dumps({"id": "a", "input": sample.tolist(), "deadline_ms": 200}).encode(),
        max_bytes=LIMIT,
    )
    frame = encode_frame({"kind": "request", "id": "a", "deadline_ms": 200}, {"input": sample})
    from_frame = parse_request(frame, max_bytes=LIMIT)
    for request in (from_json, from_frame):
        assert request.id == "a"
        assert request.deadline_ms == 200
        assert request.input.dtype == np.float32
        assert request.input.flags.writeable
        np.testing.assert_array_equal(request.input, sample)
    half = encode_frame({"kind": "request", "id": "h"}, {"input": sample.astype(np.float16)})
    assert parse_request(half, max_bytes=LIMIT).input.dtype == np.float32


@pytest.mark.parametrize(
    ("payload", "reason", "request_id"),
    [
        (b"", "truncated", None),
        (b"{", "bad_json", None),
        (b'{"input": [1]}', "bad_schema", None),
        (b'{"id": "", "input": [1]}', "bad_schema", None),
        (b'{"id": "x", "input": [1], "v": 9}', "bad_version", "x"),
        (b'{"id": "x", "input": 3}', "bad_schema", "x"),
        (b'{"id": "x", "input": [[1, 2], [3]]}', "bad_input", "x"),
        (b'{"id": "x", "input": [true, false]}', "bad_dtype", "x"),
        (b'{"id": "x", "input": [NaN]}', "not_finite", "x"),
        (b'{"id": "x", "input": [1e999]}', "not_finite", "x"),
        (b'{"id": "x\\u0001", "input": [1]}', "bad_schema", None),
        (encode_frame({"kind": "request", "id": "f"}, {}), "bad_input", "f"),
        (encode_frame({"kind": "request", "id": "f"}, {"x": np.zeros(1)}), "bad_input", "f"),
        (encode_frame({"kind": "request", "id": "f"}, {"input": np.zeros(1, np.uint8)}),
         "bad_dtype", "f"),
        (encode_frame({"kind": "answer", "id": "f"}, {"input": np.zeros(1)}), "bad_schema", "f"),
        (encode_frame({"id": "f"}, {"input": np.zeros(LIMIT)}), "too_large", "f"),
        (json.dumps({"id": "big", "input": [0.5] * LIMIT}).encode(), "too_large", "big"),
    ],
)  # fmt: skip
def test_bad_requests_say_why(payload: bytes, reason: str, request_id: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(payload, max_bytes=LIMIT)
    assert caught.value.reason == reason
    assert caught.value.request_id == request_id
    assert isinstance(caught.value, SchemaError)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_parse_or_raise_a_request_error(payload: bytes) -> None:
    with contextlib.suppress(RequestError):  # anything else fails the test
        parse_request(payload, max_bytes=256)


def test_serving_messages_are_strict():
    with pytest.raises(ValueError, match="threshold"):
        ServeCtrl(session="s", device_id="d", fingerprint="f", cut=1, threshold=1.5)
    with pytest.raises(ValueError, match="device_id"):
        ServeAnswer(id="a", device_id="no/slash")
    hello = ServeHello(device_id="d", instance="i", fingerprint="f", model="m",
                       forward_s=(0.1,), exit_s={1: 0.01})  # fmt: skip
    assert ServeHello.model_validate_json(hello.model_dump_json()) == hello
