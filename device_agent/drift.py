"""A device's block times as it runs them now, from its profile and its last round.

The profile is measured once, when the device registers. In a round the host may run slower or
faster (other work, heat, a shared CPU): the round measures how much, as one factor on the host's
own compute time, and every block's time is re-derived from it. An emulated device is padded to
its board's times (a floor) and only falls behind them where the slowed host exceeds them, so its
drift is uneven:
a cut whose blocks the host runs well within the board's time costs no more than profiled, a cut
where the host lags costs the lag. One ratio of measured to profiled time for the whole round
cannot say which, and planning every cut with it misprices every cut but the one measured.

Pure code: the agent passes its timings in.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

from schemas import ComputeProfile


@dataclass(frozen=True)
class DeviceTimings:
    """``host``: the host's own block times, measured; ``floor``: an emulated board's times
    (its phases never end sooner), None on a real device."""

    host: ComputeProfile
    floor: ComputeProfile | None = None

    def __post_init__(self) -> None:
        if self.floor is not None and (
            (self.floor.model, self.floor.batch_size) != (self.host.model, self.host.batch_size)
            or len(self.floor.forward_s) != len(self.host.forward_s)
        ):
            raise ValueError("the floor must profile the host's model, batch and blocks")

    def host_factor(self, cut: int, batch_size: int, batches: int, host_s: float) -> float | None:
        """How many times its profiled time the host took for ``batches`` batches over blocks
        ``[0, cut)`` that kept it busy ``host_s`` seconds (None: nothing to compare)."""
        profiled = compute_time_s(self.host, cut, batch_size, batches)
        return host_s / profiled if profiled > 0 and host_s > 0 else None

    def at(self, factor: float) -> ComputeProfile:
        """Every block's time with the host running ``factor`` times its profiled time."""
        host, floor = self.host, self.floor
        return ComputeProfile(
            model=host.model,
            batch_size=host.batch_size,
            forward_s=_phase(host.forward_s, floor.forward_s if floor else None, factor),
            backward_s=_phase(host.backward_s, floor.backward_s if floor else None, factor),
            # Encoding runs on the host, at its speed (an emulated board pads block times only).
            codec_s_per_mb=None
            if host.codec_s_per_mb is None
            else {fmt: factor * s for fmt, s in host.codec_s_per_mb.items()},
        )


def _phase(
    host: tuple[float, ...], floor: tuple[float, ...] | None, factor: float
) -> tuple[float, ...]:
    # A phase over blocks [0, c) takes max(factor * host, floor) summed over [0, c): both sums
    # grow with c, so their max does too, and its steps are the blocks' times.
    # (Running sums: entry s - 1 is the time of blocks [0, s).)
    slowed = [factor * t for t in accumulate(host)]
    reached = slowed if floor is None else list(map(max, slowed, accumulate(floor)))
    return tuple(b - a for a, b in zip([0.0, *reached], reached, strict=False))


def compute_time_s(profile: ComputeProfile, cut: int, batch_size: int, batches: int) -> float:
    """What ``profile`` predicts for ``batches`` batches of ``batch_size`` over blocks
    ``[0, cut)``, forward and backward (block times grow about linearly with the batch)."""
    if not 1 <= cut <= len(profile.forward_s):
        raise ValueError(f"cut {cut} outside 1..{len(profile.forward_s)}")
    per_batch = sum(profile.forward_s[:cut]) + sum(profile.backward_s[:cut])
    return per_batch * batch_size / profile.batch_size * batches
