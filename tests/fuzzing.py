"""Scaffolding shared by the fuzz tests of the edge's and the device agent's inbound handlers.

A recording fake link, a catcher of failed background work, the tally of inputs fed (printed
after the module's tests), the known-bug check, generic hypothesis strategies for JSON, msgpack
and frames, and the cheap derived variants (nasty field values, byte edits) of each example.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from schemas import encode_frame
from schemas.codec import SUPPORTED_DTYPES
from transport.tasks import BackgroundTasks

# (exception type, pattern of its message): exceptions known to escape ``_handle``, not fixed yet.
KnownBugs = tuple[tuple[type[BaseException], re.Pattern[str]], ...]


def is_known_bug(exc: BaseException, known_bugs: KnownBugs) -> bool:
    """Whether ``exc`` is one of ``known_bugs`` (tallied instead of failing the test)."""
    return any(isinstance(exc, t) and p.search(str(exc)) for t, p in known_bugs)


# --- the fakes -------------------------------------------------------------------------------


class FakeLink:
    """Stands in for MqttLink: records what the service or agent publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.is_connected = True
        self.connects = 1  # one connection, never broken

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False):
        assert isinstance(topic, str), topic
        assert isinstance(payload, bytes), type(payload)
        self.published.append((topic, payload, qos, retain))
        if len(self.published) > 10_000:
            del self.published[:5_000]

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _, _ in self.published if t == topic]


class FailureLog(logging.Handler):
    """Catches 'background task failed' warnings: work the code under test spawned blew up."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failures: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.failures.append(record.getMessage())


async def settle(
    background: BackgroundTasks,
    failures: FailureLog,
    started: Callable[[], asyncio.Task[Any] | None] = lambda: None,
) -> None:
    """Let the background work run (and the task ``started`` returns, if any, end by itself:
    within 10 s); none of it may fail."""
    for _ in range(2):
        await asyncio.sleep(0)
    task = started()
    if task is not None and not task.done():
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "a round started by a fuzzed message did not end by itself"
    await background.drain(5.0)
    assert not failures.failures, failures.failures


# --- the tally of inputs ---------------------------------------------------------------------


@dataclass
class Tally:
    """Inputs fed per handler, examples per test, outcomes per handler; printed at the end."""

    title: str
    inputs: Counter[str] = field(default_factory=Counter)  # handler -> inputs fed
    examples: Counter[str] = field(default_factory=Counter)  # test -> hypothesis examples
    # handler -> outcome -> count
    outcomes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def record(self, handler: str, outcome: str) -> None:
        self.inputs[handler] += 1
        self.outcomes[handler][outcome] += 1

    def lines(self) -> list[str]:
        lines = [
            f"{self.title}: {sum(self.inputs.values())} inputs in total, from "
            f"{sum(self.examples.values())} hypothesis examples and their derived variants"
        ]
        for handler in sorted({*self.inputs, *self.outcomes}):
            outcomes = ", ".join(f"{k} {v}" for k, v in self.outcomes[handler].most_common(6))
            lines.append(f"  {handler:<36} {self.inputs[handler]:>6}  ({outcomes})")
        return lines

    def report(self, config: pytest.Config) -> None:
        """Print the summary past pytest's output capture."""
        lines = self.lines()
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is None or capture is None:  # pragma: no cover
            print("\n".join(lines))
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


# --- generic strategies ----------------------------------------------------------------------

BIG_NUMBERS = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**100, 1e308, -1e308, 5e-324]
)
# The same within what msgpack can carry (64-bit ints).
MSGPACK_BIG = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 1e308, -1e308, 5e-324]
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
# Device ids and words the edge and the agent know among them.
STRINGS = st.text(max_size=20) | st.sampled_from(
    ["", " ", "\x00", "dev-0", "intruder", "edge", "é" * 80, "\u202e", "\ud800", "../../etc",
     "NaN", "stopped"]
)  # fmt: skip
JSON_SCALARS = st.none() | st.booleans() | st.integers() | FLOATS | STRINGS | BIG_NUMBERS
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4),
    max_leaves=12,
)
# Cheaper than JSON_VALUES, for the many fields of the valid-looking messages.
WEIRD = (
    JSON_SCALARS
    | st.lists(JSON_SCALARS, max_size=3)
    | st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=2)
)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32", "utf-8-sig"])

# What msgpack can carry (no lone surrogates; ints within 64 bits), plus its odd types.
MSGPACK_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | FLOATS
    | st.text(max_size=16)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999))
)
MSGPACK_VALUES = st.recursive(
    MSGPACK_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=10,
)
MSGPACK_WEIRD = (
    MSGPACK_SCALARS
    | st.lists(MSGPACK_SCALARS, max_size=3)
    | st.dictionaries(st.text(max_size=4) | st.integers(-5, 5), MSGPACK_SCALARS, max_size=2)
)
ROUNDS = st.integers(0, 5) | st.sampled_from([2**63, 2**64 - 1])
# Tensor dimensions for hand-made headers: empty, small, and past every integer limit.
DIMS = st.sampled_from(
    [0, 0, 1, 2, 3, 8, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
) | st.integers(0, 2**64 - 1)


def shaped(
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]] | None = None,
    weird: st.SearchStrategy[Any] = WEIRD,
) -> st.SearchStrategy[dict[str, Any]]:
    """A message of plausible field values; half of them then get one to three fields set to
    anything (wrong types, huge numbers, NaN, unicode, extra keys), some lose a field."""
    names = sorted({*required, *(optional or {})})

    def assemble(fields: dict[str, Any], corrupt: list[tuple[int, Any]], drop: int | None):
        out = dict(fields)
        for index, value in corrupt:
            name = names[index] if index < len(names) else f"extra{index}"
            out[name] = value
        if drop is not None and out:
            del out[sorted(out)[drop % len(out)]]
        return out

    corruptions: st.SearchStrategy[list[tuple[int, Any]]] = st.just([]) | st.lists(
        st.tuples(st.integers(0, len(names) + 1), weird), min_size=1, max_size=3
    )
    return st.builds(
        assemble,
        st.fixed_dictionaries(required, optional=optional or {}),
        corruptions,
        st.none() | st.none() | st.none() | st.integers(0, 63),
    )


def json_payload(value: Any, encoding: str) -> bytes:
    return json.dumps(value).encode(encoding)


# --- tensors and frames ----------------------------------------------------------------------

DTYPES = sorted(SUPPORTED_DTYPES)
STATE_KEYS = ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias", "3.1.weight", "4.bias"]
TENSOR_NAMES = st.sampled_from(["act", "labels", "grad", *STATE_KEYS]) | st.text(
    min_size=1, max_size=8
)


def make_array(
    dtype: str,
    shape: tuple[int, ...],
    seed: int,
    special: int,
    int_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """A random array of any wire dtype; ``special`` plants NaN, Inf or extremes in it.

    Integers span their dtype, or ``int_range`` (within it) where given and ``special`` is 0.
    """
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype).kind
    if kind == "f":
        array = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
        if special and array.size:
            planted = [np.nan, np.inf, -np.inf, np.finfo(dtype).max, -0.0][special % 5]
            array.reshape(-1)[rng.integers(0, array.size)] = planted
    elif kind == "b":
        array = rng.integers(0, 2, shape).astype(bool)
    else:
        info = np.iinfo(dtype)
        low, high = (info.min, info.max) if special or int_range is None else int_range
        array = rng.integers(max(low, info.min), min(high, info.max), shape, endpoint=True)
        array = array.astype(dtype)
    return array


def tensors(
    shapes: Sequence[tuple[int, ...]], int_range: tuple[int, int] | None = None
) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """Up to four named arrays of any dtype, of random shapes or one of ``shapes``."""
    all_shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6) | st.sampled_from(
        list(shapes)
    )
    arrays = st.builds(
        partial(make_array, int_range=int_range),
        st.sampled_from(DTYPES),
        all_shapes,
        st.integers(0, 2**32 - 1),
        st.integers(0, 5),
    )
    return st.dictionaries(TENSOR_NAMES, arrays, max_size=4)


def any_payload(
    tensors: st.SearchStrategy[dict[str, np.ndarray]],
) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, payload): random bytes, JSON, msgpack, or a frame of random meta and tensors."""
    return (
        st.binary(min_size=1, max_size=1024).map(lambda b: ("bytes", b))
        | st.builds(lambda v, e: ("json", json_payload(v, e)), JSON_VALUES, ENCODINGS)
        | st.builds(lambda v: ("msgpack", msgpack.packb(v, use_bin_type=True)), MSGPACK_VALUES)
        | st.builds(
            lambda m, t: ("frame", encode_frame(m, t)),
            st.dictionaries(st.text(max_size=8), MSGPACK_VALUES, max_size=4),
            tensors,
        )
    )


# --- derived variants ------------------------------------------------------------------------
# Each generated message is also fed with a few fields (seeded by the example) swapped for nasty
# values, and each generated payload with a few bytes edited. Hypothesis' generation costs far
# more than the handlers do, so this multiplies the inputs cheaply.

NASTY_JSON: list[Any] = [
    None, True, False, 0, -1, 1.5, 2**31, 2**63, 2**64, -(2**63) - 1, 10**100, 1e308, -1e308,
    5e-324, -0.0, float("nan"), float("inf"), float("-inf"), "", " ", "x" * 2000, "\x00",
    "\ud800", "é", "\u202e", "NaN", "1", "dev-0", "intruder", "stopped", [], [1, 2, 3], [[[]]],
    {}, {"v": 1}, {"": None},
]  # fmt: skip
# What msgpack can carry of those (no lone surrogates; ints within 64 bits), plus its odd types.
NASTY_MSGPACK: list[Any] = [
    *(v for v in NASTY_JSON if v != "\ud800" and (not isinstance(v, int) or -(2**63) <= v < 2**64)),
    b"",
    b"\x00\xff",
    msgpack.ExtType(1, b"x"),
    msgpack.Timestamp(1, 2),
    2**64 - 1,
    -(2**63),
]


def variants(
    fields: dict[str, Any], seed: int, count: int, nasty: list[Any], keys: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """``count`` copies of ``fields`` with one or two fields set to nasty values or dropped;
    the fields picked from those present, "v", "kind", "round", "extra" and ``keys``."""
    rng = random.Random(seed)
    names = sorted({*fields, "v", "kind", "round", "extra", *keys})
    for _ in range(count):
        out = dict(fields)
        for _ in range(rng.randint(1, 2)):
            name = rng.choice(names)
            if name in out and rng.random() < 0.15:
                del out[name]
            else:
                out[name] = rng.choice(nasty)
        yield out


EDIT_OPS = ("flip", "set", "insert", "delete", "truncate", "append")


def edit_bytes(payload: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """Bytes flipped, set, inserted, deleted, cut off or appended."""
    data = bytearray(payload)
    for op, at, value in edits:
        pos = at % (len(data) + 1)
        if op == "flip" and pos < len(data):
            data[pos] ^= 1 << (value % 8)
        elif op == "set" and pos < len(data):
            data[pos] = value
        elif op == "insert":
            data.insert(pos, value)
        elif op == "delete" and pos < len(data):
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "append":
            data.extend(bytes([value]) * (1 + at % 8))
    return bytes(data)


def random_edits(seed: int, count: int) -> Iterator[list[tuple[str, int, int]]]:
    """``count`` lists of one to three byte edits, seeded."""
    rng = random.Random(seed)
    for _ in range(count):
        yield [
            (rng.choice(EDIT_OPS), rng.randrange(2**16), rng.randrange(256))
            for _ in range(rng.randint(1, 3))
        ]
