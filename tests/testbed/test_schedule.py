"""RateSchedule: constant, steps, trace files, scaling and the scenario forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.schedule import RateSchedule, ScheduleError, parse_schedule


def test_constant_holds_everywhere() -> None:
    schedule = RateSchedule.constant(20)
    assert schedule.rate_at(0) == 20
    assert schedule.rate_at(1e6) == 20
    assert schedule.changes() == [(0.0, 20.0)]
    assert schedule.initial_mbps == 20


def test_steps_rate_at_boundaries() -> None:
    schedule = RateSchedule.steps([(0, 40), (40, 2), (60, 10)])
    assert schedule.rate_at(0) == 40
    assert schedule.rate_at(39.999) == 40
    assert schedule.rate_at(40) == 2  # the new rate holds from its own time on
    assert schedule.rate_at(59) == 2
    assert schedule.rate_at(1000) == 10
    assert schedule.rate_at(-1) == 40


def test_first_point_after_zero_holds_from_zero() -> None:
    schedule = RateSchedule.steps([(5, 8), (10, 4)])
    assert schedule.rate_at(0) == 8
    assert schedule.changes() == [(0.0, 8.0), (10.0, 4.0)]


def test_changes_drop_repeats_and_merge_same_instant() -> None:
    schedule = RateSchedule.steps([(0, 10), (1, 10), (2, 20), (3, 20), (4, 5), (4, 7)])
    assert schedule.changes() == [(0.0, 10.0), (2.0, 20.0), (4.0, 7.0)]
    # A same-instant step back to the old rate is no change at all.
    assert RateSchedule.steps([(0, 10), (5, 20), (5, 10)]).changes() == [(0.0, 10.0)]
    assert RateSchedule.steps([(0, 10), (5, 20), (5, 10)]).rate_at(6) == 10


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([], "at least one"),
        ([(0, 10), (5, 0)], "rate must be"),
        ([(0, -1)], "rate must be"),
        ([(0, 10), (5, 20), (4, 30)], "must not decrease"),
        ([(-1, 10)], "time must be"),
        ([(0, float("nan"))], "rate must be"),
        ([(0, 10, 3)], "expected"),
        ([("x", 10)], "not a number"),
    ],
)
def test_steps_rejects_bad_points(points: list[tuple[object, ...]], message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        RateSchedule.steps(points)  # type: ignore[arg-type]


def test_scaled_divides_times_and_multiplies_rates() -> None:
    scaled = RateSchedule.steps([(0, 40), (60, 2)]).scaled(10)
    assert scaled.changes() == [(0.0, 400.0), (6.0, 20.0)]
    assert scaled.rate_at(5.9) == 400
    with pytest.raises(ScheduleError, match="time_scale"):
        RateSchedule.constant(1).scaled(0)


def test_trace_file(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("# time_s,rate_mbps\n\n0, 20\n10,5  # drop\n10.5,5\n30,12.5\n")
    schedule = RateSchedule.from_trace_file(trace)
    assert schedule.changes() == [(0.0, 20.0), (10.0, 5.0), (30.0, 12.5)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("0,20\n5,abc\n", 2, "not a number"),
        ("0,20\n\n# c\n5\n", 4, "expected 'time_s,rate_mbps'"),
        ("0,20\n5,0\n", 2, "rate must be"),
        ("0,20\n5,10\n3,10\n", 3, "must not decrease"),
    ],
)
def test_trace_file_errors_name_the_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text(text)
    with pytest.raises(ScheduleError, match=message) as info:
        RateSchedule.from_trace_file(trace)
    if "decrease" not in message:  # ordering errors name the point, the rest the line
        assert f"bad.csv:{line}" in str(info.value)


def test_trace_file_empty_or_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ScheduleError, match="no time_s,rate_mbps"):
        RateSchedule.from_trace_file(empty)
    with pytest.raises(ScheduleError, match="cannot read"):
        RateSchedule.from_trace_file(tmp_path / "missing.csv")


def test_parse_schedule_forms(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("0,3\n2,6\n")
    assert parse_schedule(20) == RateSchedule.constant(20)
    assert parse_schedule(2.5) == RateSchedule.constant(2.5)
    assert parse_schedule([[0, 40], [40, 2]]) == RateSchedule.steps([(0, 40), (40, 2)])
    assert parse_schedule({"steps": [(0, 40), (40, 2)]}).rate_at(41) == 2
    assert parse_schedule({"trace": str(tmp_path / "t.csv")}).rate_at(3) == 6
    assert parse_schedule({"trace": "t.csv"}, base_dir=tmp_path).rate_at(0) == 3
    existing = RateSchedule.constant(1)
    assert parse_schedule(existing) is existing


@pytest.mark.parametrize(
    "value",
    [True, "20", {"steps": [[0, 1]], "trace": "x"}, {"rate": 3}, {"steps": "0,1"}, [5], None],
)
def test_parse_schedule_rejects(value: object) -> None:
    with pytest.raises(ScheduleError):
        parse_schedule(value)
