"""Who holds the coordinator role, as one replica sees it: pure bookkeeping, no I/O and no clock
of its own (every ``now`` is time.monotonic() at receipt, handed in).

The rules every replica follows:

- Each replica publishes its status (retained; its will says ``stopped``) and reads every
  cluster topic, its own publishes included.
- When no lease holds, the first live replica by name claims one with the next epoch; the
  holder renews it, same epoch, well within ``lease_s``.
- A claim counts once the broker hands it back. The broker delivers the publishes on one topic
  in the same order to every subscriber, so all replicas see the same *first* lease of an
  epoch: that one owns the epoch, and a later one of it from another replica (two replicas
  that disagreed for a moment on who is alive both claimed it) lost and is ignored. So no two
  replicas ever hold one epoch. A higher epoch supersedes a lower one, which a paused old
  holder may still be renewing.
- A lease holds while it was renewed within ``lease_s`` and its holder is alive in the process
  (session) that claimed it: a restarted replica does not inherit its old process's lease. A
  holder whose lease lapsed claims a new epoch, so every term of the role has its own epoch.
- A replica takes over only after watching the lease for ``lease_s`` since it (re)subscribed:
  the retained lease it gets first may be stale (the last publish, not the highest epoch),
  and a live holder renews within that time.
"""

from __future__ import annotations

from schemas.cluster import CoordinatorLease, ReplicaStatus
from schemas.topics import validate_replica_name


class LeaseBook:
    """The lease and the replicas' statuses as ``me`` has seen them."""

    def __init__(self, me: str, *, lease_s: float, replica_timeout_s: float) -> None:
        if lease_s <= 0 or replica_timeout_s <= 0:
            raise ValueError(
                f"lease_s ({lease_s}) and replica_timeout_s ({replica_timeout_s}) must be > 0"
            )
        self.me = validate_replica_name(me)
        self.lease_s = lease_s
        self.replica_timeout_s = replica_timeout_s
        self._replicas: dict[str, tuple[ReplicaStatus, float]] = {}  # last status, seen at
        self._up_session: dict[str, str] = {}  # the session of each replica's last "up"
        self._lease: CoordinatorLease | None = None
        self._lease_seen_at = 0.0
        self._epoch = 0
        self._owner: tuple[str, str] | None = None  # holder and session of the epoch's 1st lease
        self._session: str | None = None  # my process's, from my claims
        self._watching_since: float | None = None

    @property
    def epoch(self) -> int:
        """The highest epoch seen (0: none)."""
        return self._epoch

    @property
    def lease(self) -> CoordinatorLease | None:
        """The lease of the highest epoch as last renewed (None: none, or cleared)."""
        return self._lease

    # --- observations ---------------------------------------------------------------------------

    def subscribed(self, now: float) -> None:
        """The member (re)subscribed to the cluster's topics: what it missed meanwhile, and the
        retained lease it gets again, may be stale, so it watches ``lease_s`` before taking
        over. Without a call, watching starts at the first ``now`` the book is given."""
        self._watching_since = now

    def saw_replica(self, status: ReplicaStatus, now: float) -> None:
        self._watch(now)
        name = status.replica
        if status.state == "up":
            self._up_session[name] = status.session
        elif self._up_session.get(name, status.session) != status.session:
            # An old process's will, published after its successor (restarted under the same
            # name) said it is up: it speaks for a process that is gone anyway.
            return
        self._replicas[name] = (status, now)

    def saw_lease(self, lease: CoordinatorLease | None, now: float) -> None:
        """``lease`` None: the retained lease was cleared (its epoch stays spent)."""
        self._watch(now)
        if lease is None:
            self._lease = None
            return
        if lease.epoch < self._epoch:
            return  # stale: a paused old holder renewing, or a claim from an outdated view
        owner = (lease.holder, lease.session)
        if lease.epoch == self._epoch and owner != self._owner:
            return  # a claim that lost the race for this epoch
        self._epoch, self._owner = lease.epoch, owner
        self._lease, self._lease_seen_at = lease, now

    # --- judgements -----------------------------------------------------------------------------

    def alive(self, now: float) -> dict[str, ReplicaStatus]:
        """Replicas whose last status is "up" and was seen within ``replica_timeout_s``, by
        name; ``me`` always counts (its last status, if one was seen, may be an old process's
        will), so it is listed whenever a status of it was seen."""
        self._watch(now)
        return {
            name: status
            for name, (status, seen_at) in sorted(self._replicas.items())
            if name == self.me or (status.state == "up" and now - seen_at <= self.replica_timeout_s)
        }

    def holder(self, now: float) -> str | None:
        """The replica holding the role: the lease's holder, while the lease was renewed
        within ``lease_s`` and its holder is alive in the session that claimed it."""
        lease = self._lease
        if lease is None or now - self._lease_seen_at > self.lease_s:
            return None
        if lease.holder == self.me:
            return self.me if lease.session == self._session else None
        status = self.alive(now).get(lease.holder)
        if status is None or status.session != lease.session:
            return None  # gone, or restarted: the new process did not claim it
        return lease.holder

    def am_holder(self, now: float) -> bool:
        return self.holder(now) == self.me

    def should_claim(self, now: float) -> bool:
        """Whether to publish ``claim(...)`` now: to renew my lease, or to take the role when
        no lease holds and I am the first live replica by name (so only one claims)."""
        self._watch(now)
        holder = self.holder(now)
        if holder is not None:
            return holder == self.me
        assert self._watching_since is not None
        if now - self._watching_since < self.lease_s:
            return False  # a live holder's renewal may not have reached me yet
        alive = self.alive(now)
        candidates = set(alive) | {self.me}
        lease = self._lease
        if lease is not None and lease.holder != self.me:
            status = alive.get(lease.holder)
            if status is not None and status.session == lease.session:
                # Alive in the process that holds the lease, yet the lease lapsed: it is stuck
                # or cut off. The next one takes over now rather than when its status times
                # out (the higher epoch stops it if it wakes).
                candidates.discard(lease.holder)
        return min(candidates) == self.me

    def claim(self, session: str, now: float, wall: float) -> CoordinatorLease:
        """The lease to publish (retained) when ``should_claim``: my own renewed, same epoch,
        while it holds; else a new epoch. ``session`` is this process's edge session."""
        lease = self._lease
        if lease is not None and lease.session == session and self.am_holder(now):
            epoch = lease.epoch
        else:
            epoch = self._epoch + 1
        self._session = session
        return CoordinatorLease(
            holder=self.me, session=session, epoch=epoch, lease_s=self.lease_s, renewed_at=wall
        )

    def _watch(self, now: float) -> None:
        if self._watching_since is None:
            self._watching_since = now
