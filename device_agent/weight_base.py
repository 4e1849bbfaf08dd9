"""The device's side of weight deltas (``schemas.weight_delta``): the round start it holds.

A round start whose ``weights_base`` names a round carries deltas against the start of that
round, which the device holds if it uploaded its part of it in the same edge session (the edge
keeps the same once it accepted the part). The device rebuilds its start from them, trains, and
uploads its part as deltas against that start in the round's weight wire; on sending the part
that start becomes what it holds. A restarted agent holds nothing; one that cannot apply a
round start's deltas asks the edge for full weights (``schemas.WeightsResync``).

No torch: numpy arrays in and out, as the session's trainer takes and gives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from schemas import CodecError, Frame, RoundStart
from schemas.weight_delta import EncodedWeights, apply_weights, delta_format, encode_weights


@dataclass(frozen=True)
class HeldStart:
    """The start of round ``round`` of edge session ``session``, as this device rebuilt it."""

    session: str
    round: int
    weights: dict[str, np.ndarray]


class WeightBase:
    """What the device holds to read and send deltas: its last round's start, and the start of
    the round in progress until its part is sent."""

    def __init__(self) -> None:
        self.held: HeldStart | None = None
        self._current: HeldStart | None = None

    @property
    def held_round(self) -> int | None:
        return None if self.held is None else self.held.round

    def start(self, start: RoundStart, frame: Frame) -> dict[str, np.ndarray]:
        """The round's start weights, deltas added to the start this device holds (fresh
        arrays). CodecError ``bad_base`` if it does not hold the deltas' base, or the
        weight-delta reasons if they do not fit it."""
        base = None
        if frame.quantized:
            base = self._base_for(start)
        weights = apply_weights({**frame.tensors, **frame.quantized}, base)
        self._current = HeldStart(start.session, start.round, weights)
        return weights

    def upload(self, start: RoundStart, trained: Mapping[str, np.ndarray]) -> EncodedWeights:
        """The trained part for the wire: deltas against the round's start where the round's
        weight wire asks for them and they are smaller."""
        current = self._current
        base = current.weights if current is not None and self._is(current, start) else None
        return encode_weights(trained, base, delta_format(start.train.weight_wire))

    def sent(self, start: RoundStart) -> None:
        """The round's part went out: its start is what this device holds from now on."""
        current = self._current
        if current is not None and self._is(current, start):
            self.held = current

    def _base_for(self, start: RoundStart) -> dict[str, np.ndarray]:
        held, wanted = self.held, start.weights_base
        if wanted is None:
            raise CodecError("bad_base", "deltas in a round start that names no base")
        if held is None or (held.session, held.round) != (start.session, wanted):
            holds = "none" if held is None else f"round {held.round} of session {held.session}"
            raise CodecError(
                "bad_base",
                f"deltas against round {wanted}'s start of session {start.session}; this "
                f"device holds {holds}",
            )
        return held.weights

    @staticmethod
    def _is(held: HeldStart, start: RoundStart) -> bool:
        return (held.session, held.round) == (start.session, start.round)
