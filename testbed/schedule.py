"""Link bandwidth over time: a piecewise-constant rate in Mbit/s.

A schedule is a list of ``(time_s, rate_mbps)`` points: the rate set at a point holds until
the next one. It always starts at time 0; a first point later than 0 is taken to hold from 0
as well, so a trace that starts at t=5 does not leave the link without a rate.

Scenario files give a schedule as a number (constant), a list of ``[t, rate]`` pairs, or a dict
``{"steps": [...]}`` / ``{"trace": "path"}``; :func:`parse_schedule` accepts all of them. A trace
file holds one ``time_s,rate_mbps`` line per point, with ``#`` comments and blank lines.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import AresError

__all__ = ["RateSchedule", "ScheduleError", "parse_schedule"]


class ScheduleError(AresError, ValueError):
    """A schedule that does not make sense (bad number, time going backwards, rate <= 0)."""


def _check_point(time_s: float, rate_mbps: float, where: str) -> None:
    if not (math.isfinite(time_s) and time_s >= 0):
        raise ScheduleError(f"{where}: time must be a finite number >= 0, got {time_s!r}")
    if not (math.isfinite(rate_mbps) and rate_mbps > 0):
        raise ScheduleError(f"{where}: rate must be a finite number > 0 Mbit/s, got {rate_mbps!r}")


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """Piecewise-constant bandwidth: ``points[i]`` holds from its time until the next point's.

    Build one with :meth:`constant`, :meth:`steps` or :meth:`from_trace_file`; the
    constructor expects points that are already checked and normalised (first time 0).
    """

    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ScheduleError("a schedule needs at least one (time_s, rate_mbps) point")
        if self.points[0][0] != 0.0:
            raise ScheduleError("a schedule's first point must be at time 0")

    @classmethod
    def constant(cls, mbps: float) -> RateSchedule:
        return cls.steps([(0.0, mbps)])

    @classmethod
    def steps(cls, points: Iterable[Sequence[float]]) -> RateSchedule:
        """A schedule from ``(time_s, rate_mbps)`` pairs with non-decreasing times."""
        checked: list[tuple[float, float]] = []
        for index, pair in enumerate(points):
            where = f"step {index}"
            if len(pair) != 2:
                raise ScheduleError(f"{where}: expected [time_s, rate_mbps], got {list(pair)!r}")
            try:
                time_s, rate = float(pair[0]), float(pair[1])
            except (TypeError, ValueError) as exc:
                raise ScheduleError(f"{where}: not a number: {list(pair)!r}") from exc
            checked.append((time_s, rate))
        return cls._from_checked(checked, "step")

    @classmethod
    def from_trace_file(cls, path: str | Path) -> RateSchedule:
        """Read ``time_s,rate_mbps`` lines; errors name the file and line."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScheduleError(f"cannot read trace file {path}: {exc}") from exc
        points: list[tuple[float, float]] = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            points.append(_parse_trace_line(line, f"{path}:{lineno}"))
        if not points:
            raise ScheduleError(f"{path}: trace file has no time_s,rate_mbps lines")
        return cls._from_checked(points, f"{path}: point")

    @classmethod
    def _from_checked(cls, points: list[tuple[float, float]], what: str) -> RateSchedule:
        # Shared by steps() and traces: ranges, ordering, and the "starts at 0" normalisation.
        for index, (time_s, rate) in enumerate(points):
            _check_point(time_s, rate, f"{what} {index}")
            if index and time_s < points[index - 1][0]:
                raise ScheduleError(
                    f"{what} {index}: times must not decrease ({time_s} after "
                    f"{points[index - 1][0]})"
                )
        if not points:
            raise ScheduleError("a schedule needs at least one (time_s, rate_mbps) point")
        normalised = [(0.0, points[0][1]), *points[1:]] if points[0][0] > 0 else points
        return cls(tuple(normalised))

    def rate_at(self, t_s: float) -> float:
        """The rate in Mbit/s at ``t_s`` seconds (the first rate before 0)."""
        times = [time_s for time_s, _ in self.points]
        # bisect_right: at a point's exact time the new rate already holds; for equal times
        # (an instantaneous step) the last one wins.
        index = bisect.bisect_right(times, t_s) - 1
        return self.points[max(index, 0)][1]

    def changes(self) -> list[tuple[float, float]]:
        """The initial ``(0, rate)`` and every later point where the rate actually changes."""
        result: list[tuple[float, float]] = []
        for time_s, rate in self.points:
            if result and result[-1][0] == time_s:
                result[-1] = (time_s, rate)  # same instant: the last value is what holds
            elif not result or result[-1][1] != rate:
                result.append((time_s, rate))
        # Collapsing same-instant points can leave equal neighbours; drop the repeats.
        deduped = result[:1]
        for point in result[1:]:
            if point[1] != deduped[-1][1]:
                deduped.append(point)
        return deduped

    def scaled(self, time_scale: float) -> RateSchedule:
        """The schedule on a clock ``time_scale`` times faster: times divided, rates multiplied.

        Emulated time speeds the whole run up uniformly, so a link must move the same data per
        emulated second: a step at t=60 s becomes t=6 s at scale 10, at ten times the rate.
        """
        if not (math.isfinite(time_scale) and time_scale > 0):
            raise ScheduleError(f"time_scale must be a finite number > 0, got {time_scale!r}")
        return RateSchedule(
            tuple((time_s / time_scale, rate * time_scale) for time_s, rate in self.points)
        )

    @property
    def initial_mbps(self) -> float:
        return self.points[0][1]


def _parse_trace_line(line: str, where: str) -> tuple[float, float]:
    fields = [field.strip() for field in line.split(",")]
    if len(fields) != 2:
        raise ScheduleError(f"{where}: expected 'time_s,rate_mbps', got {line!r}")
    try:
        time_s, rate = float(fields[0]), float(fields[1])
    except ValueError as exc:
        raise ScheduleError(f"{where}: not a number in {line!r}") from exc
    _check_point(time_s, rate, where)
    return time_s, rate


def parse_schedule(value: object, base_dir: str | Path | None = None) -> RateSchedule:
    """A schedule from a scenario value: a number, ``[[t, rate], ...]``, ``{"steps": ...}``
    or ``{"trace": "path"}`` (a relative path is taken from ``base_dir`` when given).
    """
    if isinstance(value, RateSchedule):
        return value
    if isinstance(value, bool):  # bool is an int; "uplink: true" is a mistake, not 1 Mbit/s
        raise ScheduleError(f"not a schedule: {value!r}")
    if isinstance(value, int | float):
        return RateSchedule.constant(float(value))
    if isinstance(value, Mapping):
        return _parse_mapping(value, base_dir)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return RateSchedule.steps(_as_pairs(value))
    raise ScheduleError(
        f"not a schedule: {value!r} (use a number, [[t, rate], ...], {{steps: ...}} "
        "or {trace: file})"
    )


def _parse_mapping(value: Mapping[object, object], base_dir: str | Path | None) -> RateSchedule:
    keys = set(value)
    if keys == {"steps"}:
        steps = value["steps"]
        if not isinstance(steps, Sequence) or isinstance(steps, str | bytes):
            raise ScheduleError(f"steps must be a list of [t, rate] pairs, got {steps!r}")
        return RateSchedule.steps(_as_pairs(steps))
    if keys == {"trace"}:
        trace = value["trace"]
        if not isinstance(trace, str | Path):
            raise ScheduleError(f"trace must be a file path, got {trace!r}")
        path = Path(trace)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return RateSchedule.from_trace_file(path)
    found = sorted(map(str, keys))
    raise ScheduleError(f"a schedule mapping needs exactly 'steps' or 'trace', got {found!r}")


def _as_pairs(items: Sequence[object]) -> list[Sequence[float]]:
    pairs: list[Sequence[float]] = []
    for index, item in enumerate(items):
        if not isinstance(item, Sequence) or isinstance(item, str | bytes):
            raise ScheduleError(f"step {index}: expected [time_s, rate_mbps], got {item!r}")
        pairs.append(item)  # element types are checked in RateSchedule.steps()
    return pairs
