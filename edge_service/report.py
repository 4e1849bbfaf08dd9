"""The run report: one JSON document, rewritten atomically after every round."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DeviceRoundReport:
    split: int
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
    uplink_mbps: float | None  # the device's own estimates (telemetry)
    downlink_mbps: float | None
    battery_pct: float | None
    link_mode: str
    emulation_behind_s: float  # an emulated device's host fell this far behind (0: kept up)
    # The device part's weights, down with the round start and up at its end, over the device's
    # link estimates (else its declared rates): seconds, included in energy_j.
    weights_s: float = 0.0
    # Measured at the edge: round start sent to the device's part received (None: no part).
    round_s: float | None = None
    contributed: bool = False  # its part reached FedAvg (ok, or a straggler's partial part)
    discarded_batches: int = 0  # batch steps applied this round that FedAvg never saw


@dataclass
class RoundReport:
    round: int
    accuracy: float
    loss: float
    train_loss: float | None
    duration_s: float
    objective: float  # the plan's alpha-weighted objective (normalised)
    devices: dict[str, DeviceRoundReport]
    discarded_batches: int = 0  # over its devices: work thrown away (late, aborted, dropped)


@dataclass
class RunReport:
    policy: str
    alpha: float
    model: str
    dataset: str
    session: str
    started_at: float
    rounds: list[RoundReport] = field(default_factory=list)
    initial_accuracy: float | None = None
    final_accuracy: float | None = None
    # The run's wall time: every edge process's, up to its last checkpoint, if it was resumed.
    wall_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)  # over the run, resumes included
    # Each resume from a checkpoint: after_round, session, checkpoint_at, resumed_at (time.time()).
    resumed: list[dict[str, Any]] = field(default_factory=list)
    # The edge's event-loop lag (edge_service.loop_lag.LagStats): recent window and whole run.
    loop_lag: dict[str, float | int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """The inverse of ``to_dict`` (a resumed edge carries on its checkpoint's report)."""
        rounds = [
            RoundReport(
                **{
                    **entry,
                    "devices": {
                        d: DeviceRoundReport(**device) for d, device in entry["devices"].items()
                    },
                }
            )
            for entry in data["rounds"]
        ]
        return cls(**{**data, "rounds": rounds})

    def write(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename) so readers never see a torn file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.to_dict(), out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
