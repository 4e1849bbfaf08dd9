"""The coordinator lease as each replica's LeaseBook judges it (edge_service.cluster.lease)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_service.cluster.lease import LeaseBook
from schemas.cluster import CoordinatorLease, ReplicaStatus

LEASE_S = 3.0
TIMEOUT_S = 10.0
WARM = LEASE_S  # a book takes over only after watching this long (retained leases may be stale)


def _book(name: str) -> LeaseBook:
    book = LeaseBook(name, lease_s=LEASE_S, replica_timeout_s=TIMEOUT_S)
    book.subscribed(0.0)
    return book


def _status(name: str, state: str = "up", session: str | None = None) -> ReplicaStatus:
    return ReplicaStatus.model_validate(
        dict(
            replica=name,
            session=session or f"s-{name}",
            state=state,
            capacity_bps=1.0,
            sent_at=0.0,
        )
    )


def _lease(holder: str, epoch: int, session: str | None = None) -> CoordinatorLease:
    return CoordinatorLease(
        holder=holder, session=session or f"s-{holder}", epoch=epoch, lease_s=LEASE_S, renewed_at=0
    )


def _show(message: ReplicaStatus | CoordinatorLease | None, now: float, *books: LeaseBook) -> None:
    """The broker hands ``message`` to every book at ``now``."""
    for book in books:
        if isinstance(message, ReplicaStatus):
            book.saw_replica(message, now)
        else:
            book.saw_lease(message, now)


def _claim(book: LeaseBook, now: float, *everyone: LeaseBook) -> CoordinatorLease:
    """``book`` claims (it must want to) and the broker hands the lease to ``everyone``."""
    assert book.should_claim(now)
    lease = book.claim(f"s-{book.me}", now, wall=1.7e9 + now)
    _show(lease, now, *everyone)
    return lease


def _pair(now: float = WARM) -> tuple[LeaseBook, LeaseBook]:
    """Replicas a and b, each having seen both statuses."""
    a, b = _book("a"), _book("b")
    _show(_status("a"), now, a, b)
    _show(_status("b"), now, a, b)
    return a, b


def test_the_first_replica_alone_claims_epoch_1():
    a = _book("a")
    assert a.epoch == 0
    assert a.holder(0.0) is None
    assert not a.should_claim(WARM - 0.1), "takes over only after watching for a lease"
    assert a.should_claim(WARM)
    lease = a.claim("s-a", WARM, wall=123.0)
    assert (lease.holder, lease.session, lease.epoch) == ("a", "s-a", 1)
    assert (lease.lease_s, lease.renewed_at) == (LEASE_S, 123.0)
    assert not a.am_holder(WARM), "a claim counts once the broker hands it back"
    a.saw_lease(lease, WARM + 0.01)
    assert a.am_holder(WARM + 0.01)
    assert a.holder(WARM + 0.01) == "a"
    assert a.epoch == 1
    assert a.lease == lease


def test_of_two_replicas_only_the_smaller_name_claims():
    a, b = _pair()
    assert a.should_claim(WARM)
    assert not b.should_claim(WARM)
    _claim(a, WARM, a, b)
    assert a.am_holder(WARM)
    assert not b.am_holder(WARM)
    assert b.holder(WARM) == "a"
    assert not b.should_claim(WARM)


def test_the_holder_keeps_renewing_the_same_epoch():
    a, b = _pair()
    _claim(a, WARM, a, b)
    now = WARM
    for _ in range(20):  # well past lease_s in all
        now += LEASE_S / 3
        _show(_status("a"), now, a, b)  # its heartbeat
        assert a.should_claim(now)
        assert _claim(a, now, a, b).epoch == 1
        assert a.am_holder(now)
        assert b.holder(now) == "a"
    assert a.epoch == b.epoch == 1


def test_a_stopped_holder_is_replaced_with_the_next_epoch_at_once():
    a, b = _pair()
    _claim(a, WARM, a, b)
    now = WARM + 0.1
    assert not b.should_claim(now)
    _show(_status("a", "stopped"), now, a, b)  # its will
    assert b.holder(now) is None
    assert b.should_claim(now)
    lease = _claim(b, now, b)
    assert (lease.holder, lease.epoch) == ("b", 2)
    assert b.am_holder(now)


def test_a_silent_holder_is_replaced_once_its_lease_lapses():
    a, b = _pair()
    _claim(a, WARM, a, b)
    # a falls silent; its status is still within replica_timeout_s, its lease is not.
    assert not b.should_claim(WARM + LEASE_S)
    later = WARM + LEASE_S + 0.1
    assert "a" in b.alive(later)
    assert b.holder(later) is None
    assert b.should_claim(later), "the lapsed holder does not block the next replica"
    assert _claim(b, later, b).epoch == 2


def test_a_holder_whose_lease_lapsed_claims_a_new_epoch():
    a = _book("a")
    _claim(a, WARM, a)
    later = WARM + LEASE_S + 1  # paused: no renewal seen
    assert not a.am_holder(later)
    assert a.should_claim(later)
    assert a.claim("s-a", later, wall=0.0).epoch == 2, "a new term gets a new epoch"


def test_a_stale_lower_epoch_lease_is_ignored():
    a, b, c = _book("a"), _book("b"), _book("c")
    for name in "abc":
        _show(_status(name), WARM, a, b, c)
    _claim(a, WARM, a, b, c)
    _show(_status("a", "stopped"), WARM, b, c)  # b and c take a for dead; it is only paused
    _claim(b, WARM, b, c)
    _show(_lease("a", 1), WARM + 1, b, c)  # a wakes and renews its old lease
    assert b.am_holder(WARM + 1)
    assert c.holder(WARM + 1) == "b"
    assert b.epoch == c.epoch == 2
    assert b.lease is not None
    assert b.lease.holder == "b"


def test_a_holder_that_sees_a_newer_lease_naming_another_steps_down():
    a, b = _pair()
    _claim(a, WARM, a, b)
    assert a.am_holder(WARM)
    _show(_lease("b", 2), WARM + 1, a, b)
    assert not a.am_holder(WARM + 1)
    assert a.holder(WARM + 1) == "b"
    assert not a.should_claim(WARM + 1)
    assert a.epoch == 2


def test_the_first_lease_of_an_epoch_wins_a_race():
    # b did not know a yet: both claim epoch 1; the broker hands b's claim out first.
    a, b = _book("a"), _book("b")
    _show(_status("a"), WARM, a)
    _show(_status("b"), WARM, a, b)
    lease_b = b.claim("s-b", WARM, wall=0.0)
    lease_a = a.claim("s-a", WARM, wall=0.0)
    assert lease_a.epoch == lease_b.epoch == 1
    _show(_status("a"), WARM, b)
    for lease in (lease_b, lease_a):
        _show(lease, WARM, a, b)
    assert b.am_holder(WARM)
    assert not a.am_holder(WARM)
    assert a.holder(WARM) == b.holder(WARM) == "b"
    assert not a.should_claim(WARM)


def test_a_restarted_replica_does_not_inherit_its_old_lease():
    old = _lease("a", 4, session="s-old")
    a, b = _book("a"), _book("b")
    for book in (a, b):
        book.saw_replica(_status("a", session="s-old"), 0.0)
        book.saw_replica(_status("b"), 0.0)
        book.saw_lease(old, 0.0)
    assert a.holder(0.0) is None, "the lease names an earlier process of a"
    _show(_status("a", session="s-new"), 0.5, a, b)
    assert b.holder(0.5) is None, "nor does b count on it"
    assert not b.should_claim(WARM), "a is the first replica alive, in a new process"
    assert a.should_claim(WARM)
    assert a.claim("s-new", WARM, wall=0.0).epoch == 5


def test_an_old_process_s_will_after_its_successor_said_up_is_ignored():
    b = _book("b")
    _show(_status("a", session="s-old"), 0.0, b)
    _show(_status("a", session="s-new"), 1.0, b)
    _show(_status("a", "stopped", session="s-old"), 1.5, b)
    assert b.alive(1.5)["a"].session == "s-new"
    _show(_status("a", "stopped", session="s-new"), 2.0, b)
    assert "a" not in b.alive(2.0)


def test_alive_counts_up_and_recent_replicas_and_always_me():
    a = _book("a")
    _show(_status("a", "stopped"), 0.0, a)  # a retained will of an earlier process of a
    _show(_status("b"), 0.0, a)
    _show(_status("c", "stopped"), 0.0, a)
    assert set(a.alive(TIMEOUT_S)) == {"a", "b"}
    assert set(a.alive(TIMEOUT_S + 0.1)) == {"a"}
    assert a.alive(TIMEOUT_S)["b"].replica == "b"


def test_a_cleared_lease_is_taken_over_with_the_next_epoch():
    a, b = _pair()
    _claim(a, WARM, a, b)
    _show(None, WARM + 0.5, a, b)
    assert a.holder(WARM + 0.5) is None
    assert a.lease is None
    assert a.epoch == 1, "the cleared epoch stays spent"
    assert a.should_claim(WARM + 0.5)
    assert not b.should_claim(WARM + 0.5)
    assert a.claim("s-a", WARM + 0.5, wall=0.0).epoch == 2


def test_a_resubscribed_book_waits_before_taking_over():
    a = _book("a")
    a.subscribed(100.0)
    assert not a.should_claim(100.0 + LEASE_S / 2)
    assert a.should_claim(100.0 + LEASE_S)


@pytest.mark.parametrize(("lease_s", "timeout_s"), [(0.0, 1.0), (1.0, -1.0)])
def test_nonsense_timings_are_refused(lease_s, timeout_s):
    with pytest.raises(ValueError, match="must be > 0"):
        LeaseBook("a", lease_s=lease_s, replica_timeout_s=timeout_s)


def test_a_bad_name_is_refused():
    with pytest.raises(ValueError, match="invalid edge replica name"):
        LeaseBook("a/b", lease_s=1.0, replica_timeout_s=1.0)


# --- no two holders of one epoch, whatever the timing ----------------------------------------

NAMES = ("a", "b", "c")
Message = ReplicaStatus | CoordinatorLease | None


@dataclass
class _Broker:
    """One topic order for everyone; each replica reads it at its own pace."""

    books: dict[str, LeaseBook]
    log: list[Message] = field(default_factory=list)
    read: dict[str, int] = field(default_factory=dict)
    now: float = 0.0

    def deliver(self, name: str) -> None:
        position = self.read.get(name, 0)
        if position < len(self.log):
            _show(self.log[position], self.now, self.books[name])
            self.read[name] = position + 1

    def act(self, name: str) -> None:
        """What the member's lease loop does: claim or renew when the book says so."""
        book = self.books[name]
        if book.should_claim(self.now):
            self.log.append(book.claim(f"s-{name}", self.now, wall=self.now))


steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.floats(0.0, 2 * LEASE_S)),
        st.tuples(st.just("deliver"), st.sampled_from(NAMES)),
        st.tuples(st.just("act"), st.sampled_from(NAMES)),
        st.tuples(st.just("status"), st.sampled_from(NAMES), st.sampled_from(["up", "stopped"])),
        st.tuples(st.just("clear")),
    ),
    max_size=120,
)


@given(steps=steps)
@settings(max_examples=400, deadline=None)
def test_no_two_books_hold_the_same_epoch(steps):
    broker = _Broker({name: _book(name) for name in NAMES})
    for step in steps:
        match step:
            case ("tick", seconds):
                broker.now += seconds
            case ("deliver", name):
                broker.deliver(name)
            case ("act", name):
                broker.act(name)
            case ("status", name, state):
                broker.log.append(_status(name, state))
            case ("clear",):
                broker.log.append(None)
        holders = [book for book in broker.books.values() if book.am_holder(broker.now)]
        epochs = [book.epoch for book in holders]
        assert len(set(epochs)) == len(epochs), f"two holders of one epoch: {holders}"
        for book in holders:
            assert book.lease is not None
            assert book.lease.epoch == book.epoch


def test_the_property_s_model_reaches_a_holder():
    """The model above can fail: it does produce holders, and would catch two."""
    broker = _Broker({name: _book(name) for name in NAMES})
    for name in NAMES:
        broker.log.append(_status(name))
    broker.now = WARM
    for _ in range(len(NAMES)):
        for name in NAMES:
            broker.deliver(name)
    broker.act("a")
    for name in NAMES:
        broker.deliver(name)
    assert [n for n, b in broker.books.items() if b.am_holder(broker.now)] == ["a"]
