"""Recent answers by request id, so a repeated id is answered once (its answer sent again, not
computed again), within a bounded memory."""

from __future__ import annotations

from collections import OrderedDict

from schemas.serving import ServeAnswer


class AnswerCache:
    """The last ``capacity`` answers by request id (least recently used dropped first), and
    the ids in flight (taken, not yet answered)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._answers: OrderedDict[str, ServeAnswer] = OrderedDict()
        self._in_flight: set[str] = set()

    def seen(self, request_id: str) -> bool:
        """Whether ``request_id`` is answered (recently) or in flight."""
        return request_id in self._in_flight or request_id in self._answers

    def answered(self, request_id: str) -> ServeAnswer | None:
        """Its cached answer (and now the most recently used), if it has one."""
        answer = self._answers.get(request_id)
        if answer is not None:
            self._answers.move_to_end(request_id)
        return answer

    def take(self, request_id: str) -> None:
        """``request_id`` is being answered now."""
        self._in_flight.add(request_id)

    def release(self, request_id: str) -> None:
        """``request_id`` is no longer in flight (answered, or given up)."""
        self._in_flight.discard(request_id)

    def store(self, answer: ServeAnswer) -> None:
        """``answer`` is out: remember it (no longer in flight)."""
        if answer.id is None:
            return
        self._in_flight.discard(answer.id)
        self._answers[answer.id] = answer
        self._answers.move_to_end(answer.id)
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)
