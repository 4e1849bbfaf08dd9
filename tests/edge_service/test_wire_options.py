"""Which formats the planner may choose for a device (edge_service.wire_options)."""

from __future__ import annotations

import pytest

from edge_service.wire_options import codec_s_per_byte, wire_options

ALL = ("float32", "float16", "int8", "int4")


class Costs:
    """int4 over the bound at cuts 1 and 2, everything else within it."""

    def allowed(self, cut: int, fmt: str, bound_points: float) -> bool:
        return not (fmt == "int4" and cut <= 2)

    def why_not(self, cut: int, fmt: str, bound_points: float) -> str:
        return f"{fmt} at cut {cut}: too lossy"


def _options(**overrides: object):
    args: dict[str, object] = {
        "configured": "float32",
        "candidates": ALL,
        "supported": ALL,
        "blocks": 5,
        "accuracy": Costs(),
        "bound_points": 1.0,
        "edge_codec_s_per_mb": {"float32": 0.0, "float16": 0.001, "int8": 0.002, "int4": 0.004},
        "device_codec_s_per_mb": None,
    }
    args.update(overrides)
    return wire_options(**args)  # type: ignore[arg-type]


def test_every_supported_candidate_with_the_configured_first() -> None:
    options = _options(configured="int8")
    assert [o.name for o in options] == ["int8", "float32", "float16", "int4"]
    assert [o.wire_scale for o in options] == [0.25, 1.0, 0.5, 0.125]


def test_no_choice_gives_no_options() -> None:
    assert _options(candidates=()) == ()
    assert _options(candidates=("float32",)) == ()
    assert _options(supported=("float32",)) == ()


def test_a_legacy_agent_is_offered_only_what_it_speaks() -> None:
    options = _options(supported=("float32", "float16"))
    assert [o.name for o in options] == ["float32", "float16"]


def test_formats_over_the_bound_are_held_back_at_those_cuts() -> None:
    int4 = next(o for o in _options() if o.name == "int4")
    assert int4.cuts == frozenset({3, 4})
    assert int4.held_back == "int4 at cut 1: too lossy (and at cuts 2)"
    int8 = next(o for o in _options() if o.name == "int8")
    assert int8.cuts is None
    assert int8.held_back == ""


def test_before_any_calibration_only_the_configured_format_and_float32() -> None:
    options = {o.name: o for o in _options(configured="float16", accuracy=None)}
    assert options["float16"].cuts is None  # the operator's own choice is never held back
    assert options["float32"].cuts is None
    assert options["int8"].cuts == frozenset()
    assert "not measured yet" in options["int8"].held_back


def test_codec_costs_per_byte_device_own_else_the_edge() -> None:
    edge = _options()
    int8 = next(o for o in edge if o.name == "int8")
    assert int8.codec_s_per_byte == pytest.approx(0.002 / 2e6)
    assert int8.edge_codec_s_per_byte == pytest.approx(0.002 / 2e6)
    own = _options(device_codec_s_per_mb={"int8": 0.02})
    int8 = next(o for o in own if o.name == "int8")
    assert int8.codec_s_per_byte == pytest.approx(codec_s_per_byte(0.02))
    assert int8.edge_codec_s_per_byte == pytest.approx(codec_s_per_byte(0.002))
