"""``ares export``: the model file for serving, from an edge checkpoint.

The checkpoint holds the trained global state and the model's name; the held-out set is loaded
as the edge loads it (its ``data``, else ``dataset``'s test split), from the same flags, config
file and ``ARES_*`` variables as ``ares edge``. Exit heads are calibrated on it
(:mod:`serving.calibration`) and everything is written as one model file
(:mod:`serving.artifact`); a paragraph on stdout says what the exits achieve.

Exit status: 0; 2 with one line on stderr for a missing or unusable checkpoint, data that does
not fit the model, or a bad flag (``ares.cli.main`` prints it).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from ares.arg_types import positions_arg
from schemas.errors import AresError

if TYPE_CHECKING:  # torch: imported when the command runs, not when the CLI starts
    from serving.artifact import ModelArtifact

__all__ = ["ExportError", "add_export_parser", "run_export", "summary"]

_DESCRIPTION = (
    "Write the model file that serving loads (weights, spec, architecture fingerprint, class "
    "names, early-exit heads and their measured accuracy) from an edge checkpoint. The exits "
    "are calibrated on the edge's held-out set, loaded as ares edge loads it: give the same "
    "--config, --data or --dataset and --input-shape the run had."
)
# The operating points the summary shows, at the deepest exit's cut.
_SHOWN_THRESHOLDS = (0.8, 0.9, 0.95, 0.99)


class ExportError(AresError, ValueError):
    """A checkpoint or held-out set that cannot make a model file; one line."""


def add_export_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``export`` on an ``add_subparsers()`` result, with ``handler=run_export``."""
    from ares.cli import DATASET_HELP, MODEL_HELP, _own_data_flags  # ares.cli imports this

    parser = subparsers.add_parser(
        "export", help="write the model file for serving from an edge checkpoint",
        description=_DESCRIPTION,
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the model file to write")
    parser.add_argument(
        "--checkpoint", type=Path, help="the edge's checkpoint (default: its checkpoint setting)"
    )
    parser.add_argument("--config", type=Path, help="the edge's settings file; or ARES_CONFIG")
    parser.add_argument("--model", help=f"default: the checkpoint's; {MODEL_HELP}")
    parser.add_argument("--dataset", help=f"default: the checkpoint's; {DATASET_HELP}")
    parser.add_argument("--data-dir", type=Path, help="directory of a local dataset (cifar10)")
    _own_data_flags(parser, "the edge's own held-out set, if the run had one")
    parser.add_argument("--seed", type=int, help="the run's seed (the dataset's test split)")
    parser.add_argument(
        "--exits", type=positions_arg, metavar="P,Q,...",
        help="exit positions (an exit at p reads block p's output; default: every boundary "
        "of a model of up to 8 blocks, else 4 to 6 spread over its first two thirds)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, help="passes over the calibration half")
    parser.add_argument("--torch-device", help="auto, cpu, cuda, ...")
    parser.add_argument("--torch-threads", type=int)
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    import torch

    from ares.cli import edge_settings
    from edge_service.checkpoint import read_checkpoint
    from edge_service.run_state import held_out_data, resolve_torch_device
    from serving.artifact import ArtifactError, check_state, export_artifact, write_artifact
    from serving.calibration import EPOCHS
    from splitnn.models import ModelSpec, build_model

    settings, _ = edge_settings(args)
    path = args.checkpoint or settings.checkpoint
    if path is None:
        raise ExportError("no checkpoint: give --checkpoint")
    checkpoint = read_checkpoint(path)
    if checkpoint is None:
        raise ExportError(f"no checkpoint at {path}")
    # What the run trained, unless a flag says otherwise (a model module renamed since).
    trained = {
        "model": args.model or checkpoint.model,
        "dataset": args.dataset or checkpoint.dataset,
    }
    settings = settings.model_copy(update=trained)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    data = held_out_data(settings)
    spec = ModelSpec(settings.model, data.input_shape, data.num_classes)
    try:
        check_state(checkpoint.global_state, build_model(spec).state_dict(), "its weights")
    except ArtifactError as exc:
        raise ExportError(
            f"checkpoint {path} does not fit {spec.name} on {data.name} "
            f"({'x'.join(map(str, spec.input_shape))}, {spec.num_classes} classes): {exc}; give "
            "the --model, --data or --dataset and --input-shape the run had"
        ) from None
    artifact = export_artifact(
        spec,
        checkpoint.global_state,
        data,
        source=f"checkpoint {path} (session {checkpoint.session}, round {checkpoint.round})",
        positions=args.exits if args.exits is not None else settings.exits,
        epochs=args.epochs or EPOCHS,
        seed=settings.seed,
        device=resolve_torch_device(settings.torch_device),
    )
    write_artifact(args.out, artifact)
    print(summary(args.out, artifact))
    return 0


def summary(path: Path, artifact: ModelArtifact) -> str:
    """One paragraph: what was written, the full model's and each exit's accuracy, and a few
    operating points at the deepest exit's cut."""
    spec, calibration = artifact.spec, artifact.calibration
    shape = "x".join(map(str, spec.input_shape))
    text = (
        f"Wrote {path} from {artifact.source}: {spec.name} for {shape} samples in "
        f"{spec.num_classes} classes. On {calibration.samples} held-out samples (another "
        f"{calibration.train_samples} trained the exits) the full model is "
        f"{calibration.full_accuracy:.1%} accurate"
    )
    if not calibration.positions:
        return textwrap.fill(text + "; it has no exits.", 100)
    exits = ", ".join(f"{p}: {calibration.exit_accuracy[p]:.1%}" for p in calibration.positions)
    cut = calibration.positions[-1]
    points = [
        f"threshold {p.threshold}: {p.local_fraction:.0%} answered on the device at "
        f"{p.accuracy:.1%}"
        for p in calibration.points
        if p.cut == cut and p.threshold in _SHOWN_THRESHOLDS
    ]
    text += f"; its exits alone (by position): {exits}."
    if points:
        text += f" At cut {cut}, " + "; ".join(points) + "."
    return textwrap.fill(text, 100)
