"""Messages between the edge replicas of one training run (topics: ``Topics.cluster_*``).

Several ``ares edge`` processes (replicas) share one run through the core broker. Each says it
is alive (``ReplicaStatus``, retained, its will says ``stopped``); one holds the coordinator
role under a lease (``CoordinatorLease``, retained) and orders each round
(``RoundOrder``, retained: which replica serves which device); each replica answers with its
share of the round, a frame whose meta is a ``PartialMeta``; the coordinator publishes the
merged global model, a frame whose meta is a ``GlobalModelMeta`` (retained).

``epoch`` is the lease's term: every coordinator's messages carry the term it holds, so a
replica can tell an old coordinator's order or model from the current one's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from schemas.messages import (
    Count,
    DeviceId,
    DevicePlanEntry,
    Hello,
    RoundNo,
    Seconds,
    TrainConfig,
    WireModel,
)
from schemas.topics import validate_replica_name

ReplicaName = Annotated[str, AfterValidator(validate_replica_name)]
Epoch = Annotated[int, Field(ge=1)]
Cut = Annotated[int, Field(ge=1)]
# A part's FedAvg weight (its samples); splitnn.fedavg takes any finite non-negative one.
PartWeight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# A device's round outcome, as edge_service.rounds has it (schemas may not import services).
Outcome = Literal["ok", "straggler", "late", "aborted", "dropped"]
ReplicaState = Literal["up", "stopped"]


class ReplicaStatus(WireModel):
    """Retained on the replica's topic, sent on connect and as a heartbeat; its will says
    ``stopped``. What the coordinator assigns devices by: liveness, site and capacity."""

    kind: Literal["replica_status"] = "replica_status"
    replica: ReplicaName
    session: str  # this replica process's edge session: a restarted replica has a new one
    state: ReplicaState
    site: str | None = None  # the site it is closest to (devices there are served by it first)
    capacity_bps: Annotated[float, Field(gt=0, allow_inf_nan=False)]  # batches per second
    serving: list[DeviceId] = Field(default_factory=list)  # the devices of its round in flight
    round: Count = 0
    attempt: Count = 0
    sent_at: float  # wall clock, informational: liveness is judged by the time of receipt


class CoordinatorLease(WireModel):
    """Retained: who holds the coordinator role, renewed well within ``lease_s``. A higher
    ``epoch`` supersedes a lower one (edge_service.cluster.lease)."""

    kind: Literal["coordinator_lease"] = "coordinator_lease"
    holder: ReplicaName
    session: str  # the holder's edge session (ReplicaStatus.session)
    epoch: Epoch
    lease_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    renewed_at: float  # wall clock, informational


class OrderEntry(WireModel):
    """One device of a round order: the replica that serves it, and how."""

    replica: ReplicaName
    plan: DevicePlanEntry  # the planner's entry: cut, wire format, predictions, reason
    train: TrainConfig
    # The device's registration, for a replica that may not have heard it (registration is
    # not retained: a replica started after the device said hello); None when it has.
    hello: Hello | None = None


class RoundOrder(WireModel):
    """Retained: the coordinator's order for one attempt of a round. Each replica serves the
    devices that name it, starting from the global model of ``base_round``; a newer attempt
    (a lost replica's devices repeated elsewhere) or epoch replaces the order in flight."""

    kind: Literal["round_order"] = "round_order"
    coordinator: ReplicaName
    epoch: Epoch
    round: RoundNo
    attempt: Count
    base_round: Count  # the global model's round this round starts from (0: the initial one)
    deadline_s: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    devices: dict[DeviceId, OrderEntry]

    def for_replica(self, name: str) -> dict[DeviceId, OrderEntry]:
        """The devices ``name`` serves in this attempt."""
        return {device: entry for device, entry in self.devices.items() if entry.replica == name}


class DeviceOutcome(WireModel):
    """What one device contributed to a round, without its tensors (those are summed into its
    replica's partial): edge_service.rounds.DeviceResult on the wire."""

    device_id: DeviceId
    cut: Cut
    status: Outcome
    batches: Count = 0
    samples: Count = 0
    busy_s: Seconds = 0.0
    server_s: Seconds = 0.0
    service_s: Seconds = 0.0
    train_loss: float | None = None  # may be NaN (a diverged device): msgpack carries it
    rtt_median_s: Seconds | None = None
    uplink_s: Seconds = 0.0
    downlink_s: Seconds = 0.0
    behind_s: Seconds = 0.0
    round_s: Seconds | None = None
    detail: str = ""
    weights_down_bytes: Count | None = None
    weights_up_bytes: Count | None = None
    contributed: bool  # whether its part is in the partial sum


class PartialMeta(WireModel):
    """A replica's share of a round, as JSON in the share frame's ``#share`` tensor (not its
    metadata: the outcomes outgrow that limit at a few hundred devices; edge_service.cluster.
    shares). The frame's other tensors are the FedAvg partial sums
    (float64), one per model state key; ``weights`` holds each counted part's weight and
    ``dtypes`` each key's torch dtype name (``float32``, ``int64``), to cast the average back."""

    kind: Literal["partial"] = "partial"
    replica: ReplicaName
    epoch: Epoch  # the order's
    round: RoundNo
    attempt: Count
    weights: list[PartWeight]
    dtypes: dict[str, str]
    results: list[DeviceOutcome]


class GlobalModelMeta(WireModel):
    """Meta of the global model's frame (retained); its tensors are the model's state."""

    kind: Literal["global_model"] = "global_model"
    coordinator: ReplicaName
    epoch: Epoch
    round: Count  # the round it is the outcome of (0: the initial model)
    accuracy: float | None = None
