"""What each lossy wire format costs the current global model in accuracy, at each cut.

The planner may only give a device a wire format whose accuracy cost is within a bound; this
module measures that cost on the edge's own held-out data (never a device's data), for the
model as it stands. :func:`calibrate_wire_formats` takes a fixed random sample of the held-out
set and, for every cut ``c``:

- runs blocks ``[0, c)`` in float32 (eval mode, no gradients), as a device would;
- sends the cut activation through the wire and back in each format, exactly as the wire does
  (``schemas.to_wire`` then ``schemas.from_wire``, one training batch at a time, since a
  quantised tensor's per-channel ranges cover one batch), and runs blocks ``[c, L)`` on it;
- compares, sample by sample, with the float32 run: ``d_i = correct_float_i - correct_fmt_i``.

The paired differences give the accuracy cost ``cost_points = 100 * mean(d)`` and a one-sided
95% upper bound on it, ``upper_points``. The bound is the Agresti-Min interval for a difference
of matched proportions (Agresti and Min, Biometrics 61, 2005): the Wald interval after adding
one half to each cell of the 2 x 2 table of (right in float32, right in the format). It needs
only the counts of changed predictions (``worse``: right in float32 and wrong in the format;
``better``: the other way round), stays honest with none or few of them, where the plain Wald
interval would claim a bound of 0, and shrinks like 1/n then: with no prediction changed it is
``164.5 / (n + 2)`` points, 0.32 points for 512 samples. Predictions that change in both
directions cancel in the cost, as they do in the final accuracy.

The backward path's error is shown too: ``grad_rel_error`` is the relative L2 error of the loss
gradient with respect to the cut activation (the mean cross entropy of each training batch, as
the edge computes it) after the same wire round trip, over the whole sample. It is one batch's
error: with error feedback on (an edge option) the sum over a round's batches is closer still.

float32 is exact on the wire: its cost is 0 without measuring. A format whose round trip cannot
carry the values (float16 overflows to Inf, a quantisation scale beyond float32) is
``unusable`` at that cut and never allowed. Runs in the edge's compute pool, behind training:
one forward pass to the last cut, then per cut one forward and backward (float32) and one
forward per lossy format through the blocks after it, on chunks of a few hundred samples.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from schemas import from_wire, to_wire
from schemas.errors import AresError, CodecError
from schemas.messages import WIRE_DTYPES
from schemas.quantization import quant_format
from splitnn.data import ArrayDataset
from splitnn.errors import SplitError
from splitnn.models import ModelSpec, architecture_fingerprint, build_model, num_blocks
from splitnn.partition import load_part_state
from splitnn.tensors import from_numpy, to_numpy

__all__ = [
    "FormatAccuracy",
    "WireAccuracy",
    "WireCalibrationError",
    "calibrate_wire_formats",
    "model_fingerprint",
    "upper_bound_points",
]

EXACT_FORMAT = "float32"
Z_ONE_SIDED_95 = 1.6448536269514722
_CHUNK_SAMPLES = 256  # samples per forward pass (rounded to whole training batches)


class WireCalibrationError(AresError, ValueError):
    """Calibration cannot run on what it was given: an unknown format, a cut out of range, no
    data, data or a state that does not fit the model, or a model with non-finite outputs."""


@dataclass(frozen=True)
class FormatAccuracy:
    """One wire format at one cut, against float32, on the same held-out samples."""

    cut: int
    format: str
    samples: int
    accuracy_float: float  # the float32 wire's accuracy on the sample
    accuracy_format: float  # this format's (NaN if unusable)
    worse: int  # predictions right in float32 and wrong in this format
    better: int  # predictions wrong in float32 and right in this format
    cost_points: float  # 100 * mean(correct_float - correct_format); Inf if unusable
    upper_points: float  # its one-sided 95% upper bound (Agresti-Min); Inf if unusable
    grad_rel_error: float  # ||g - wire(g)|| / ||g|| of the cut gradient; Inf if unusable
    unusable: str | None = None  # why the format cannot carry this cut at all


@dataclass(frozen=True)
class WireAccuracy:
    """The accuracy cost of each (cut, format) measured on one model: what the planner's format
    choice reads (``allowed``) and explains (``why_not``)."""

    entries: Mapping[tuple[int, str], FormatAccuracy]
    fingerprint: str  # of the model measured: architecture and weights
    round_no: int | None  # the round whose model it was, if the caller said
    samples: int  # held-out samples measured
    elapsed_s: float = 0.0  # how long the calibration took
    _cuts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", MappingProxyType(dict(self.entries)))
        object.__setattr__(self, "_cuts", tuple(sorted({cut for cut, _ in self.entries})))

    def __reduce__(self) -> tuple[type[WireAccuracy], tuple[object, ...]]:
        # A mappingproxy does not pickle: rebuild from a plain dict (copies, processes).
        fields = (self.fingerprint, self.round_no, self.samples, self.elapsed_s)
        return type(self), (dict(self.entries), *fields)

    @property
    def cuts(self) -> tuple[int, ...]:
        """The cuts measured, ascending."""
        return self._cuts

    def allowed(self, cut: int, fmt: str, bound_points: float) -> bool:
        """Whether ``fmt`` may carry cut ``cut``: its upper bound on the accuracy cost is within
        ``bound_points``. float32 always may; an unmeasured cut or format never."""
        if fmt == EXACT_FORMAT:
            return True
        entry = self.entries.get((cut, fmt))
        return entry is not None and entry.unusable is None and entry.upper_points <= bound_points

    def allowed_formats(self, cut: int, bound_points: float) -> tuple[str, ...]:
        """The wire formats allowed at ``cut``, in ``WIRE_DTYPES`` order (float32 always)."""
        return tuple(fmt for fmt in WIRE_DTYPES if self.allowed(cut, fmt, bound_points))

    def why_not(self, cut: int, fmt: str, bound_points: float) -> str:
        """One line on the decision ``allowed`` makes, e.g. "int4 at cut 2: accuracy cost up to
        1.4 points > bound 1.0 (512 held-out samples)" (or "<=" when it is allowed)."""
        where = f"{fmt} at cut {cut}"
        if fmt == EXACT_FORMAT:
            return f"{where}: exact, no accuracy cost"
        entry = self.entries.get((cut, fmt))
        if entry is None:
            return f"{where}: accuracy cost not measured"
        if entry.unusable is not None:
            return f"{where}: unusable, {entry.unusable}"
        verdict = "<=" if entry.upper_points <= bound_points else ">"
        return (
            f"{where}: accuracy cost up to {_points(entry.upper_points)} points {verdict} bound "
            f"{_points(bound_points)} ({entry.samples} held-out samples)"
        )


def upper_bound_points(worse: int, better: int, samples: int) -> float:
    """One-sided 95% upper bound, in accuracy points, on the accuracy lost by a format whose
    predictions on ``samples`` paired samples were ``worse`` (right in float32 only) and
    ``better`` (right in the format only) than float32's: Agresti-Min (module docstring)."""
    if samples < 1 or worse < 0 or better < 0 or worse + better > samples:
        raise WireCalibrationError(
            f"bad counts: {worse} worse and {better} better of {samples} samples"
        )
    n = samples + 2
    p_worse, p_better = (worse + 0.5) / n, (better + 0.5) / n
    difference = p_worse - p_better
    variance = (p_worse + p_better - difference**2) / n
    return 100.0 * (difference + Z_ONE_SIDED_95 * math.sqrt(variance))


def calibrate_wire_formats(
    spec: ModelSpec,
    state: Mapping[str, Tensor],
    data: ArrayDataset,
    *,
    formats: Iterable[str] = WIRE_DTYPES,
    cuts: Iterable[int] | None = None,
    samples: int = 512,
    seed: int = 0,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    round_no: int | None = None,
) -> WireAccuracy:
    """The accuracy cost of each wire format in ``formats`` at each cut in ``cuts`` (default
    every cut with a wire: 1..L-1) for the model ``spec`` with weights ``state``, measured on
    ``samples`` samples of ``data`` (the edge's held-out set; all of it if smaller) drawn with
    ``seed``. ``batch_size``: the training batch, the unit the wire quantises. ``round_no`` is
    recorded with the result. Slow (seconds): run it in a worker thread. Raises
    WireCalibrationError for bad input.
    """
    started = time.perf_counter()
    wanted = _check_formats(formats)
    total = num_blocks(spec)
    chosen = _check_cuts(cuts, total)
    _check_count("samples", samples)
    _check_count("batch_size", batch_size)
    _check_data(spec, data)
    torch_device = torch.device(device)
    model = _load_model(spec, state).to(torch_device)

    rng = np.random.default_rng(seed)
    picked = rng.permutation(len(data))[: min(samples, len(data))]
    tally = _Tally(chosen, [fmt for fmt in wanted if fmt != EXACT_FORMAT])
    chunk = batch_size * max(1, _CHUNK_SAMPLES // batch_size)
    for start in range(0, len(picked), chunk):
        rows = picked[start : start + chunk]
        x = torch.from_numpy(data.x[rows]).to(torch_device)
        y = torch.from_numpy(data.y[rows]).to(torch_device)
        _measure_chunk(model, chosen, x, y, batch_size, tally)

    entries: dict[tuple[int, str], FormatAccuracy] = {}
    n = len(picked)
    for cut in chosen:
        for fmt in wanted:
            entries[cut, fmt] = tally.entry(cut, fmt, n)
    return WireAccuracy(
        entries=entries,
        fingerprint=model_fingerprint(spec, state),
        round_no=round_no,
        samples=n,
        elapsed_s=time.perf_counter() - started,
    )


def model_fingerprint(spec: ModelSpec, state: Mapping[str, Tensor]) -> str:
    """A hash of the architecture and of every weight's value: equal for the same model only."""
    digest = hashlib.sha256(architecture_fingerprint(spec).encode())
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key} {value.dtype} {tuple(value.shape)}\n".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class _Tally:
    """Counts per cut and format, summed over the chunks."""

    def __init__(self, cuts: tuple[int, ...], lossy: list[str]) -> None:
        self.lossy = lossy
        self.right_float = dict.fromkeys(cuts, 0)
        self.grad_norm_sq = dict.fromkeys(cuts, 0.0)
        keys = [(cut, fmt) for cut in cuts for fmt in lossy]
        self.right = dict.fromkeys(keys, 0)
        self.worse = dict.fromkeys(keys, 0)
        self.better = dict.fromkeys(keys, 0)
        self.grad_error_sq = dict.fromkeys(keys, 0.0)
        self.unusable: dict[tuple[int, str], str] = {}

    def entry(self, cut: int, fmt: str, n: int) -> FormatAccuracy:
        accuracy_float = self.right_float[cut] / n
        if fmt == EXACT_FORMAT:
            return FormatAccuracy(cut, fmt, n, accuracy_float, accuracy_float, 0, 0, 0.0, 0.0, 0.0)
        key = (cut, fmt)
        if key in self.unusable:
            inf = math.inf
            return FormatAccuracy(
                cut, fmt, n, accuracy_float, math.nan, 0, 0, inf, inf, inf, self.unusable[key]
            )
        worse, better = self.worse[key], self.better[key]
        norm_sq = self.grad_norm_sq[cut]
        # A zero gradient travels exactly in every format (0 is always a code).
        grad_error = math.sqrt(self.grad_error_sq[key] / norm_sq) if norm_sq > 0 else 0.0
        return FormatAccuracy(
            cut=cut,
            format=fmt,
            samples=n,
            accuracy_float=accuracy_float,
            accuracy_format=self.right[key] / n,
            worse=worse,
            better=better,
            cost_points=100.0 * (worse - better) / n,
            upper_points=upper_bound_points(worse, better, n),
            grad_rel_error=grad_error,
        )


def _measure_chunk(
    model: nn.Sequential,
    cuts: tuple[int, ...],
    x: Tensor,
    y: Tensor,
    batch_size: int,
    tally: _Tally,
) -> None:
    """One chunk of samples through every cut and format, into ``tally``."""
    activation = x
    for cut in range(1, max(cuts, default=0) + 1):
        with torch.no_grad():
            activation = model[cut - 1](activation)
        if cut not in tally.right_float:
            continue
        if not _all_finite(activation):
            raise WireCalibrationError(f"the model's activations at cut {cut} are not finite")
        tail = model[cut:]
        # float32 on the wire: the reference predictions and the cut gradient.
        reference = activation.detach().requires_grad_()
        with torch.enable_grad():
            logits = tail(reference)
            (grad,) = torch.autograd.grad(_batch_mean_loss(logits, y, batch_size), reference)
        if not _all_finite(grad):
            raise WireCalibrationError(f"the model's loss gradient at cut {cut} is not finite")
        right_float = logits.detach().argmax(dim=1) == y
        tally.right_float[cut] += int(right_float.sum())
        tally.grad_norm_sq[cut] += _norm_sq(grad)
        for fmt in tally.lossy:
            key = (cut, fmt)
            if key in tally.unusable:
                continue
            try:
                sent = _through_wire(activation, fmt, batch_size, "activations")
                sent_grad = _through_wire(grad, fmt, batch_size, "gradients")
            except _UnusableFormatError as exc:
                tally.unusable[key] = str(exc)
                continue
            with torch.no_grad():
                right = tail(sent).argmax(dim=1) == y
            tally.right[key] += int(right.sum())
            tally.worse[key] += int((right_float & ~right).sum())
            tally.better[key] += int((~right_float & right).sum())
            tally.grad_error_sq[key] += _norm_sq(sent_grad - grad)


def _batch_mean_loss(logits: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """The sum over training batches of each batch's mean cross entropy: its gradient with
    respect to a sample's activation is what that sample's batch sends down the wire."""
    losses = functional.cross_entropy(logits, y, reduction="none")
    sizes = torch.full_like(losses, float(batch_size))
    tail = len(losses) % batch_size
    if tail:
        sizes[len(losses) - tail :] = float(tail)
    return (losses / sizes).sum()


class _UnusableFormatError(AresError):
    """A format cannot carry a tensor; the message says why (recorded, never raised out)."""


def _through_wire(values: Tensor, fmt: str, batch_size: int, what: str) -> Tensor:
    """``values`` after the wire in format ``fmt``: each training batch cast or quantised by
    ``to_wire`` and read back by ``from_wire``, as sender and receiver do."""
    arrays = to_numpy(values.detach().to(torch.float32))
    pieces = []
    for start in range(0, len(arrays), batch_size):
        try:
            # A cast past float16's range gives Inf, found below: no warning for it.
            with np.errstate(over="ignore"):
                wire = to_wire(arrays[start : start + batch_size], fmt)
        except CodecError as exc:
            raise _UnusableFormatError(f"{what} do not fit {fmt}: {exc.detail}") from None
        pieces.append(from_numpy(from_wire(wire)).to(torch.float32))
    restored = torch.cat(pieces).to(values.device)
    # Quantised values are finite by construction (to_wire checks the scales); a cast may
    # overflow.
    if quant_format(fmt) is None and not _all_finite(restored):
        raise _UnusableFormatError(f"{what} overflow {fmt}")
    return restored


def _all_finite(values: Tensor) -> bool:
    """No NaN or Inf in ``values``: a sum (fast) is finite then; only if it is not (an Inf or
    NaN, or finite values summing past float32) is every element looked at."""
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())


def _norm_sq(values: Tensor) -> float:
    return float(torch.linalg.vector_norm(values)) ** 2


def _check_formats(formats: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(formats))
    unknown = [fmt for fmt in wanted if fmt not in WIRE_DTYPES]
    if unknown:
        raise WireCalibrationError(
            f"not wire formats: {', '.join(map(repr, unknown))}; known: {', '.join(WIRE_DTYPES)}"
        )
    return wanted


def _check_cuts(cuts: Iterable[int] | None, total: int) -> tuple[int, ...]:
    """Cuts with a wire: 1..L-1 (at L the whole model runs on the device)."""
    if cuts is None:
        return tuple(range(1, total))
    chosen = list(cuts)
    bad = [c for c in chosen if type(c) is not int or not 1 <= c < total]
    if bad:
        raise WireCalibrationError(
            f"cuts must be ints in 1..{total - 1} (cut {total} sends nothing), got "
            f"{', '.join(map(repr, bad))}"
        )
    return tuple(sorted(set(chosen)))


def _check_count(name: str, value: int) -> None:
    if type(value) is not int or value < 1:
        raise WireCalibrationError(f"{name} must be an int >= 1, got {value!r}")


def _check_data(spec: ModelSpec, data: ArrayDataset) -> None:
    if len(data) == 0:
        raise WireCalibrationError(f"no held-out data to calibrate on ({data.name!r} is empty)")
    if data.input_shape != spec.input_shape or data.num_classes != spec.num_classes:
        raise WireCalibrationError(
            f"data {data.name!r} (samples {data.input_shape}, {data.num_classes} classes) does "
            f"not fit {spec.name} (inputs {spec.input_shape}, {spec.num_classes} classes)"
        )
    if data.y.min() < 0 or data.y.max() >= spec.num_classes:
        raise WireCalibrationError(f"labels of {data.name!r} must lie in [0, {spec.num_classes})")


def _load_model(spec: ModelSpec, state: Mapping[str, Tensor]) -> nn.Sequential:
    """The whole model with ``state``, in eval mode, its weights frozen (only the cut
    activation's gradient is wanted)."""
    model = build_model(spec)
    try:
        load_part_state(model, state)
    except SplitError as exc:
        raise WireCalibrationError(f"the state does not fit {spec.name}: {exc}") from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _points(value: float) -> str:
    """1.4 -> "1.4", 1.0 -> "1.0", 0.3217 -> "0.32"."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
