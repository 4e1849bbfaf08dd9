"""What each wire format costs this host's CPU: encode and decode time per MB of activations.

The planner prices a wire format by its bytes and by the time its codec takes on both ends;
:func:`measure_codec_costs` measures the second on the host it runs on, through the real wire
path, so the figure is what a batch pays:

- **encode**: a float32 numpy array (the cut activation as ``to_numpy`` gives it, or the cut
  gradient) to a frame as published: ``schemas.to_wire`` (cast or quantise) and
  ``schemas.encode_frame``;
- **decode**: a payload as received to the float32 tensor training uses:
  ``schemas.decode_frame``, ``schemas.from_wire`` (dequantise) and the cast to a float32 torch
  tensor (float16 is widened by torch there, which is several times faster than numpy's cast).

Activations and gradients take the same path in opposite directions, so one figure per format
serves both (error feedback on quantised gradients, an edge option, adds a dequantise and a
subtraction that are not counted). A MB is 2**20 bytes of float32 values: 262144 values. The
tensor is shaped like a convolution's activations (batch x 32 x 16 x 32, ReLU-like: half zeros,
a long positive tail); the figure is the minimum over ``repeats`` passes, all formats
interleaved in each pass, stopped early after ``budget_s`` (at least two passes: the first pays
one-time allocation costs) so that it can run when an agent or the edge starts: about 50 ms for
the four formats on a laptop core.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from schemas import decode_frame, encode_frame, from_wire, to_wire
from schemas.errors import CodecError
from schemas.messages import WIRE_DTYPES
from splitnn.tensors import from_numpy

__all__ = ["VALUES_PER_MB", "CodecCost", "measure_codec_costs"]

VALUES_PER_MB = 2**20 // 4  # float32 values in one MB (2**20 bytes)
# Per sample: 32 channels of 16 x 32, VGG5's second block's output on a 32 x 32 image's scale.
_SAMPLE_SHAPE = (32, 16, 32)
_MIN_PASSES = 2
# Metadata like an activation frame's (round, seq, ...): a few dozen bytes, as the real one.
_META = {"v": 2, "round": 1, "seq": 0}


@dataclass(frozen=True)
class CodecCost:
    """Seconds one MB of float32 values (262144) takes to encode and to decode in a format."""

    encode_s_per_mb: float
    decode_s_per_mb: float

    @property
    def total_s_per_mb(self) -> float:
        """Both ends: what one MB costs a batch's round trip in CPU time."""
        return self.encode_s_per_mb + self.decode_s_per_mb


def measure_codec_costs(
    formats: Iterable[str] = WIRE_DTYPES,
    *,
    megabytes: float = 1.0,
    repeats: int = 5,
    budget_s: float = 0.1,
    seed: int = 0,
) -> dict[str, CodecCost]:
    """Encode and decode seconds per MB of each wire format in ``formats``, on this host.

    ``megabytes``: the size of the measured tensor (float32 values; rounded to whole samples of
    32 x 16 x 32). At most ``repeats`` passes; none starts once ``budget_s`` is spent after the
    first two. Raises CodecError ``bad_format`` for a name that is not a wire format, ValueError
    for a size, repeat count or budget that is not positive.
    """
    wanted = list(dict.fromkeys(formats))
    unknown = [fmt for fmt in wanted if fmt not in WIRE_DTYPES]
    if unknown:
        raise CodecError(
            "bad_format",
            f"not wire formats: {', '.join(map(repr, unknown))}; known: {', '.join(WIRE_DTYPES)}",
        )
    if not megabytes > 0 or not math.isfinite(megabytes):
        raise ValueError(f"megabytes must be a positive number, got {megabytes!r}")
    if type(repeats) is not int or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not budget_s > 0:
        raise ValueError(f"budget_s must be positive, got {budget_s!r}")
    per_sample = math.prod(_SAMPLE_SHAPE)
    batch = max(1, round(megabytes * VALUES_PER_MB / per_sample))
    rng = np.random.default_rng(seed)
    values = np.maximum(rng.standard_normal((batch, *_SAMPLE_SHAPE), dtype=np.float32), 0) * 2.0
    mb = values.size / VALUES_PER_MB

    encode_s = {fmt: math.inf for fmt in wanted}
    decode_s = {fmt: math.inf for fmt in wanted}
    began = time.perf_counter()
    for done in range(repeats):
        if done >= _MIN_PASSES and time.perf_counter() - began > budget_s:
            break
        for fmt in wanted:
            encoded, decoded = _round_trip(values, fmt)
            encode_s[fmt] = min(encode_s[fmt], encoded)
            decode_s[fmt] = min(decode_s[fmt], decoded)
    return {fmt: CodecCost(encode_s[fmt] / mb, decode_s[fmt] / mb) for fmt in wanted}


def _round_trip(values: np.ndarray, fmt: str) -> tuple[float, float]:
    """Seconds to encode ``values`` in ``fmt`` as the sender does, and to decode the payload as
    the receiver does."""
    started = time.perf_counter()
    payload = encode_frame(_META, {"act": to_wire(values, fmt)})
    encoded = time.perf_counter()
    tensor = decode_frame(payload).tensor("act")
    assert tensor is not None
    restored = from_numpy(from_wire(tensor)).to(torch.float32)
    decoded = time.perf_counter()
    assert restored.shape == values.shape
    return encoded - started, decoded - encoded
