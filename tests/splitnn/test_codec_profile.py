import math
import time

import pytest

from schemas.errors import CodecError
from schemas.messages import WIRE_DTYPES
from splitnn.codec_profile import VALUES_PER_MB, CodecCost, measure_codec_costs


def test_every_wire_format_gets_a_positive_finite_cost():
    costs = measure_codec_costs(megabytes=0.25, repeats=3)
    assert list(costs) == list(WIRE_DTYPES)
    for cost in costs.values():
        assert isinstance(cost, CodecCost)
        assert 0 < cost.encode_s_per_mb < 1.0  # a MB takes microseconds to milliseconds
        assert 0 < cost.decode_s_per_mb < 1.0
        assert math.isclose(cost.total_s_per_mb, cost.encode_s_per_mb + cost.decode_s_per_mb)


def test_float32_is_the_cheapest_format():
    # float32 is one copy into the frame and none out; the others cast or quantise both ways.
    # About three times apart on any CPU; many passes make the minimum robust to a busy host.
    costs = measure_codec_costs(repeats=15, budget_s=5.0)
    cheapest = min(costs, key=lambda fmt: costs[fmt].total_s_per_mb)
    assert cheapest == "float32", costs


def test_formats_are_measured_in_the_order_asked_without_duplicates():
    costs = measure_codec_costs(["int8", "float32", "int8"], megabytes=0.1, repeats=2)
    assert list(costs) == ["int8", "float32"]


def test_the_default_measurement_is_quick_enough_for_start_up():
    measure_codec_costs(megabytes=0.1, repeats=2)  # warm the imports and allocator
    began = time.perf_counter()
    measure_codec_costs()
    # ~50 ms on a laptop core; a generous ceiling for a loaded CI machine. The budget itself
    # (0.1 s) stops new passes after the first two.
    assert time.perf_counter() - began < 2.0


def test_a_tiny_budget_still_measures_two_passes():
    costs = measure_codec_costs(["float32"], megabytes=0.1, repeats=50, budget_s=1e-9)
    assert math.isfinite(costs["float32"].encode_s_per_mb)


def test_a_mb_is_two_to_the_twenty_bytes_of_float32():
    assert VALUES_PER_MB == 262144


@pytest.mark.parametrize("formats", [["float64"], ["int2"], ["float32", "bfloat16"]])
def test_a_name_that_is_no_wire_format_is_a_codec_error(formats):
    with pytest.raises(CodecError, match="not wire formats") as raised:
        measure_codec_costs(formats)
    assert raised.value.reason == "bad_format"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"megabytes": 0.0}, "megabytes must be a positive number"),
        ({"megabytes": -1.0}, "megabytes must be a positive number"),
        ({"megabytes": math.inf}, "megabytes must be a positive number"),
        ({"megabytes": math.nan}, "megabytes must be a positive number"),
        ({"repeats": 0}, "repeats must be an int >= 1"),
        ({"repeats": 1.5}, "repeats must be an int >= 1"),
        ({"budget_s": 0.0}, "budget_s must be positive"),
    ],
)
def test_bad_sizes_and_counts_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure_codec_costs(**kwargs)
