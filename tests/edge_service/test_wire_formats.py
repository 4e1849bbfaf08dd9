"""A device session's wire format at the edge: the activation frame must be in the round's
format (else rejected as ``bad_dtype``), and the gradient goes back in it, quantised with or
without error feedback."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from edge_service.rejections import Rejected
from edge_service.server_session import ServerSession
from schemas import (
    TrainConfig,
    decode_frame,
    encode_frame,
    to_wire,
    usable_wire_dtype,
    wire_format,
)
from splitnn.models import ModelSpec, build_model, cut_shapes
from splitnn.partition import split_state

SPEC = ModelSpec("small_cnn", (1, 8, 8), 10)
CUT = 1


def session(wire: str, *, error_feedback: bool = False) -> ServerSession:
    torch.manual_seed(0)
    _, server_state = split_state(build_model(SPEC).state_dict(), SPEC, CUT)
    train = TrainConfig(lr=0.05, batch_size=8, batches=4, batch_timeout_s=10, wire_dtype=wire)
    return ServerSession(
        device_id="dev-0", round_no=1, spec=SPEC, cut=CUT, server_state=server_state,
        train=train, act_shape=tuple(cut_shapes(SPEC)[CUT - 1]),
        torch_device=torch.device("cpu"), max_frame_bytes=1 << 24,
        error_feedback=error_feedback,
    )  # fmt: skip


def activation_frame(wire: str, batch: int = 8):
    act = np.random.default_rng(0).random((batch, *cut_shapes(SPEC)[CUT - 1]), dtype=np.float32)
    labels = np.arange(batch, dtype=np.int64) % 10
    return decode_frame(encode_frame({}, {"act": to_wire(act, wire), "labels": labels}))


@pytest.mark.parametrize("wire", ["float32", "float16", "int8", "int4"])
@pytest.mark.parametrize("sent", ["float32", "float16", "int8", "int4"])
def test_an_activation_in_another_format_is_rejected(wire, sent):
    server = session(wire)
    frame = activation_frame(sent)
    if sent != wire:
        with pytest.raises(Rejected) as info:
            server.check_activation(frame)
        assert info.value.reason == "bad_dtype"
        return
    act, labels = server.check_activation(frame)
    grad = decode_frame(server.step(0, act, labels, time.perf_counter())).tensor("grad")
    assert grad is not None
    assert grad.shape == act.shape
    assert wire_format(grad) == wire


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_error_feedback_keeps_a_residual_per_session(fmt):
    plain, fed = session(fmt), session(fmt, error_feedback=True)
    assert plain.feedback is None
    assert fed.feedback is not None
    act, labels = fed.check_activation(activation_frame(fmt))
    fed.step(0, act, labels, time.perf_counter())
    assert fed.feedback.residual is not None
    assert session("float32", error_feedback=True).feedback is None  # nothing to feed back


def test_a_device_is_never_sent_a_format_it_did_not_list():
    legacy = ("float32", "float16")
    assert usable_wire_dtype("int8", legacy) == "float16"
    assert usable_wire_dtype("int4", legacy) == "float16"
    assert usable_wire_dtype("int4", ("float32", "int8")) == "int8"
    assert usable_wire_dtype("float16", ("float32",)) == "float32"
    assert usable_wire_dtype("int8", ("float32", "float16", "int8", "int4")) == "int8"
    assert usable_wire_dtype("float32", ()) == "float32"
