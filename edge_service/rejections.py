"""Rejected input: one exception type carrying a reason code, and the counters of them."""

from __future__ import annotations

from collections import Counter

from schemas.errors import AresError


class Rejected(AresError):
    """An inbound message that the edge refuses; ``reason`` is a short code for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Counters:
    """Monotonic event counters (rejections by reason, duplicates, stale messages)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def restore(self, counts: dict[str, int]) -> None:
        """Carry on from counts taken earlier (a resumed run's checkpoint)."""
        self._counts.update(counts)

    def add(self, name: str, amount: int = 1) -> None:
        self._counts[name] += amount

    def __getitem__(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))
