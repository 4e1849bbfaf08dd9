"""What a training run carries from round to round and across restarts of the edge.

The global model, the held-out data it is evaluated on, the edge's own speed per block (the
planner's ``C_s``), the split planner with its policy's state, and the run report. ``prepare``
does the start-up work (data, model, profiling, resuming from the checkpoint): slow, so the
service runs it in a worker thread before it connects. ``persist`` writes the checkpoint and
the report after every round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from edge_service.checkpoint import (
    Checkpoint,
    check_compatible,
    read_checkpoint,
    settings_fingerprint,
    write_checkpoint,
)
from edge_service.evaluation import Evaluation, evaluate
from edge_service.loop_lag import LoopLagMonitor
from edge_service.planning import PlanDefaults, RoundPlan, SplitPlanner
from edge_service.rejections import Counters
from edge_service.report import RunReport
from edge_service.settings import EdgeSettings
from edge_service.wire_calibration import WireAccuracy, calibrate_wire_formats
from schemas import ModelInfo
from splitnn.data import ArrayDataset
from splitnn.datasets import load_dataset, load_local
from splitnn.models import ModelSpec, architecture_fingerprint, build_model, num_blocks
from splitnn.partition import validate_cut
from splitnn.profiling import BlockProfile, profile_blocks
from splitnn.tensors import warm_up_torch

log = logging.getLogger(__name__)


def resolve_torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Stamp:
    """The report's run-wide figures at one moment."""

    counters: dict[str, int]
    wall_s: float
    loop_lag: dict[str, float | int]


@dataclass
class RunState:
    settings: EdgeSettings
    torch_device: torch.device
    test_data: ArrayDataset
    spec: ModelSpec
    global_state: dict[str, torch.Tensor]
    server_profile: BlockProfile
    planner: SplitPlanner
    report: RunReport
    fingerprint: str
    first_round: int = 1  # the first round this process runs (after a resume: the next one)
    wall_before_s: float = 0.0  # earlier processes' wall time (a resumed run)
    started: float = field(default_factory=time.perf_counter)  # this process's run began

    @classmethod
    def prepare(cls, settings: EdgeSettings, report: RunReport) -> RunState:
        """Load the held-out data, build the model, profile the edge, resume if told to.

        ``report`` is the new run's (empty) report; a resumed run carries on its checkpoint's.
        """
        torch_device = resolve_torch_device(settings.torch_device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        warm_up_torch()
        test_data = held_out_data(settings)
        spec = ModelSpec(settings.model, test_data.input_shape, test_data.num_classes)
        torch.manual_seed(settings.seed)
        model = build_model(spec)
        default_cut = settings.split or max(1, num_blocks(spec) // 2)
        for cut in (default_cut, *settings.splits.values()):
            validate_cut(spec, cut)
        # The edge's own speed per block: the planner's C_s, and its guess for silent devices.
        server_profile = profile_blocks(
            spec,
            settings.batch_size,
            device=torch_device,
            wire_itemsize=4,  # per-device wire dtypes are applied by the planner
        )
        state = cls(
            settings=settings,
            torch_device=torch_device,
            test_data=test_data,
            spec=spec,
            global_state={k: v.detach().clone() for k, v in model.state_dict().items()},
            server_profile=server_profile,
            planner=SplitPlanner(
                policy=settings.policy,
                alpha=settings.alpha,
                model_name=spec.name,
                server=server_profile,
                defaults=PlanDefaults.from_settings(settings),
                fixed_split=default_cut,
                fixed_splits=settings.splits,
            ),
            report=report,
            fingerprint=settings_fingerprint(
                {
                    "model": settings.model,
                    "dataset": settings.dataset,
                    "data": settings.data,
                    "data_dir": settings.data_dir,
                    "seed": settings.seed,
                    "batch_size": settings.batch_size,
                }
            ),
        )
        if settings.checkpoint is not None and not settings.fresh:
            state._resume(report.session)
        return state

    @property
    def model_info(self) -> ModelInfo:
        """Enough for a device to build the architecture."""
        return ModelInfo(
            name=self.spec.name,
            input_shape=self.spec.input_shape,
            num_classes=self.spec.num_classes,
            fingerprint=architecture_fingerprint(self.spec),
            labels=self.test_data.label_names,
        )

    def evaluate(self, state: dict[str, torch.Tensor] | None = None) -> Evaluation:
        """A full-model state (default: the global model) on the held-out data (slow: run it
        in a worker thread). The state is only read: a round's average can be evaluated while
        the next round trains from it."""
        model = build_model(self.spec)
        model.load_state_dict(self.global_state if state is None else state)
        return evaluate(
            model,
            self.test_data,
            batch_size=self.settings.eval_batch_size,
            device=self.torch_device,
        )

    def calibrate_wire(
        self, state: dict[str, torch.Tensor] | None = None, round_no: int | None = None
    ) -> WireAccuracy:
        """The lossy wire formats' accuracy cost at every cut for a full-model state (default:
        the global model) on the held-out data; slow, like :meth:`evaluate`."""
        return calibrate_wire_formats(
            self.spec,
            self.global_state if state is None else state,
            self.test_data,
            formats=[f for f in self.settings.wire_formats if f != "float32"],
            samples=self.settings.wire_calibration_samples,
            batch_size=self.settings.batch_size,  # the wire quantises one batch at a time
            device=self.torch_device,
            round_no=round_no,
        )

    def persist(
        self, round_no: int, plan: RoundPlan, global_state: dict[str, torch.Tensor]
    ) -> None:
        """Checkpoint and report after a round was averaged, evaluated and recorded, in a worker
        thread: both grow with devices x rounds (500 x 10: 0.2 s of JSON). ``global_state`` is
        that round's average (the next round may already be training from it). Nothing changes
        the report while the edge awaits this: only the chain of round records
        (``RoundDriver``) does, one at a time. The checkpoint first: a report never lists a
        round that a resume after a crash between the two writes would run again."""
        path = self.settings.checkpoint
        if path is not None:
            write_checkpoint(
                path,
                Checkpoint(
                    session=self.report.session,
                    round=round_no,
                    global_state=global_state,
                    previous_splits=plan.splits,
                    report=self.report.to_dict(),
                    model=self.settings.model,
                    dataset=self.settings.dataset,
                    fingerprint=self.fingerprint,
                    created_at=time.time(),
                ),
            )
        self.write_report()

    def stamp(self, counters: Counters, loop_lag: LoopLagMonitor) -> None:
        """Bring the report's run-wide figures up to date: counters, wall time, loop lag."""
        self.apply_stamp(self.take_stamp(counters, loop_lag))

    def take_stamp(self, counters: Counters, loop_lag: LoopLagMonitor) -> Stamp:
        """The run-wide figures now, for a round's record made later: a round is recorded
        while the next one runs, and its checkpoint must not count the next one's batches (a
        resume would count them twice)."""
        return Stamp(
            counters=counters.snapshot(),
            wall_s=self.wall_before_s + time.perf_counter() - self.started,
            loop_lag=loop_lag.stats().to_dict(),
        )

    def apply_stamp(self, stamp: Stamp) -> None:
        self.report.counters = stamp.counters
        self.report.wall_s = stamp.wall_s
        self.report.loop_lag = stamp.loop_lag

    def write_report(self) -> None:
        if self.settings.report is not None:
            self.report.write(self.settings.report)

    def _resume(self, session: str) -> None:
        """Carry on from the last checkpoint, if there is one."""
        assert self.settings.checkpoint is not None
        checkpoint = read_checkpoint(self.settings.checkpoint)
        if checkpoint is None:
            return
        check_compatible(checkpoint, self.fingerprint, self.settings.model, self.settings.dataset)
        self.global_state = checkpoint.global_state
        self.report = RunReport.from_dict(checkpoint.report)
        self.report.session = session
        # Counters and wall time carry on: the report covers the run, not this process.
        self.wall_before_s = self.report.wall_s
        self.report.resumed.append(
            {
                "after_round": checkpoint.round,
                "session": session,
                "checkpoint_at": checkpoint.created_at,
                "resumed_at": time.time(),
            }
        )
        self.planner.resume(checkpoint.previous_splits)
        self.first_round = checkpoint.round + 1
        log.info("resuming from %s: round %d of %d done", self.settings.checkpoint,
                 checkpoint.round, self.settings.rounds)  # fmt: skip


def held_out_data(settings: EdgeSettings) -> ArrayDataset:
    """The edge's held-out set: its own (``data``, read whole) or the dataset's test split."""
    if settings.data is None:
        name, seed = settings.dataset, settings.seed
        return load_dataset(name, "test", data_dir=settings.data_dir, seed=seed)
    local = load_local(settings.data, "test", input_shape=settings.input_shape,
                       classes=settings.classes)  # fmt: skip
    log.info("held-out set %s", local.summary())
    return local.dataset
