"""The run report: what the edge did, round by round, as one JSON document (``report.json``).

The edge writes it after every round (``edge_service.report``); ``ares demo`` prints it, ``ares
bench`` keeps one per policy in its results.json and compares them, the benchmarks read them. All
of them read it through these models. Every model is frozen and rejects unknown fields; the
document carries ``v``, the report version.

Version 2 names each device's split point ``cut``. Version 1 (no ``v`` field) called it
``split`` and still reads: it validates as version 2. Fields added since the first reports have
defaults, so every report an edge of this project wrote reads.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from typing_extensions import TypedDict

REPORT_VERSION: Literal[2] = 2
TIE = 0.01  # two runs' measured objectives closer than this (relative) count as a tie


class ReportModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeviceRoundReport(ReportModel):
    """One device in one round."""

    cut: int = Field(validation_alias=AliasChoices("cut", "split"))  # "split" in version 1
    predicted_time_s: float  # the planner's prediction for the round (cost model)
    predicted_energy_j: float
    status: str  # ok, straggler, late, aborted or dropped (edge_service.rounds.Outcome)
    batches: int
    samples: int
    busy_s: float
    server_s: float
    train_loss: float | None
    rtt_median_s: float | None  # batch round trip as the device measured it
    # The device's energy this round by the cost model: its power figures (declared, else the
    # edge's assumption) times its measured compute, send and receive times, and its radio
    # power times the weight transfer (weights_s).
    energy_j: float
    # The link rates the edge believed at the round's end (edge_service.registry's one rule;
    # None where it only had its own assumption), and where they came from.
    uplink_mbps: float | None
    downlink_mbps: float | None
    link_source: str | None = None  # measured, measured (stale), declared or assumed
    battery_pct: float | None
    link_mode: str
    emulation_behind_s: float  # an emulated device's host fell this far behind (0: kept up)
    # The device part's weights, down with the round start and up at its end, over the device's
    # link estimates (else its declared rates): seconds, included in energy_j.
    weights_s: float = 0.0
    # Bytes of those weights as sent, down (re-sends included) and up: float32 values, or
    # quantised deltas with their scales (None: a report from before the count).
    weights_bytes: int | None = None
    # Measured at the edge: round start sent to the device's part received (None: no part).
    round_s: float | None = None
    contributed: bool = False  # its part reached FedAvg (ok, or a straggler's partial part)
    wire_dtype: str | None = None  # activations and gradients on its wire this round
    discarded_batches: int = 0  # batch steps applied this round that FedAvg never saw

    @property
    def time_s(self) -> float:
        """Time the device spent on the round: measured at the edge (``round_s``), else, in a
        report from before that field, its compute plus its batches' round trips."""
        if self.round_s is not None:
            return self.round_s
        return self.busy_s + self.batches * (self.rtt_median_s or 0.0)


class RoundReport(ReportModel):
    round: int
    accuracy: float
    loss: float
    train_loss: float | None
    duration_s: float
    objective: float  # the plan's alpha-weighted objective (normalised)
    devices: dict[str, DeviceRoundReport]
    discarded_batches: int = 0  # over its devices: work thrown away (late, aborted, dropped)

    @property
    def predicted_time_s(self) -> float:
        """The plan's round time: its slowest device."""
        return max((d.predicted_time_s for d in self.devices.values()), default=0.0)


class Resume(TypedDict):
    """The edge carried on from a checkpoint (times are ``time.time()``)."""

    after_round: int
    session: str
    checkpoint_at: float
    resumed_at: float


class RunReport(ReportModel):
    v: Literal[2] = REPORT_VERSION
    policy: str
    alpha: float
    model: str
    dataset: str
    session: str
    started_at: float
    rounds: list[RoundReport] = Field(default_factory=list)
    initial_accuracy: float | None = None
    final_accuracy: float | None = None
    # The run's wall time: every edge process's, up to its last checkpoint, if it was resumed.
    wall_s: float = 0.0
    counters: dict[str, int] = Field(default_factory=dict)  # over the run, resumes included
    resumed: list[Resume] = Field(default_factory=list)
    # The edge's event-loop lag (edge_service.loop_lag.LagStats): recent window and whole run.
    loop_lag: dict[str, float | int] | None = None
