"""The model file: a trained model with its exits, in one versioned file that serving loads.

What it holds: the model spec and its architecture fingerprint, the trained global state, the
calibration (exit positions, the heads' weights, their accuracy and the operating points
measured on held-out data, :mod:`serving.calibration`), the class names, when and from what it
was made. ``ares export`` writes one from an edge checkpoint; the edge writes one at the end of
training when its ``artifact`` setting names a path (:func:`export_artifact`).

Stored as the edge checkpoint is (:mod:`edge_service.checkpoint`): a ``torch.save`` of plain
containers and CPU tensors, written atomically, read with ``torch.load(weights_only=True)``, so
opening a model file never runs code; everything that is not a tensor is one JSON header. Reading
checks the format and version, that this installation builds the same architecture
(fingerprint), and that the weights and the exit heads fit it; any problem is an
``ArtifactError`` whose one line names the file.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from edge_service.checkpoint import save_atomically
from schemas.errors import AresError
from serving.calibration import EPOCHS, Calibration, calibrate
from splitnn.data import ArrayDataset
from splitnn.errors import SplitError
from splitnn.exits import build_exits, check_positions
from splitnn.models import (
    ModelSpec,
    architecture_fingerprint,
    build_model,
    fingerprint_module,
    num_blocks,
)

ARTIFACT_VERSION = 1
FORMAT = "ares-model"
SUFFIX = ".ares"  # what the docs and the demo name model files; not enforced


class ArtifactError(AresError, ValueError):
    """A model file that cannot be written, read or used here; the message names the file."""


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class ModelArtifact:
    """A trained model and its exits, as serving loads them."""

    spec: ModelSpec
    fingerprint: str  # architecture_fingerprint(spec) where it was made
    state: dict[str, Tensor]  # the trained global state
    calibration: Calibration  # exit positions, the heads' weights, their measured curves
    labels: tuple[str, ...] | None  # class names in label order, when the data had them
    created_at: float  # time.time() when it was made
    source: str  # what it was made from: "checkpoint PATH (...)", "training run SESSION"
    version: int = ARTIFACT_VERSION

    @property
    def positions(self) -> tuple[int, ...]:
        return self.calibration.positions

    def build_model(self) -> nn.Sequential:
        """The trained model, in eval mode."""
        model = build_model(self.spec)
        model.load_state_dict(self.state, strict=True)
        return model.eval()

    def build_exits(self) -> nn.ModuleDict:
        """The calibrated exit heads keyed ``str(position)``, in eval mode."""
        exits = build_exits(self.spec, self.calibration.positions)
        exits.load_state_dict(self.calibration.exit_state, strict=True)
        return exits.eval()

    def label(self, index: int) -> str:
        """Class ``index``'s name (its number when the data named none)."""
        return self.labels[index] if self.labels is not None else str(index)


def export_artifact(
    spec: ModelSpec,
    state: Mapping[str, Tensor],
    data: ArrayDataset,
    *,
    source: str,
    positions: Iterable[int] | None = None,
    epochs: int = EPOCHS,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ModelArtifact:
    """Calibrate exits for the trained ``state`` on the held-out ``data`` and pack it all
    (slow: run it in a worker thread from async code)."""
    calibration = calibrate(
        spec, state, data, positions=positions, epochs=epochs, seed=seed, device=device
    )
    return ModelArtifact(
        spec=spec,
        fingerprint=architecture_fingerprint(spec),
        state=_cpu_copies(state),
        calibration=calibration,
        labels=data.label_names,
        created_at=time.time(),
        source=source,
    )


# --- writing ---------------------------------------------------------------------------------


def write_artifact(path: Path, artifact: ModelArtifact) -> None:
    """Write ``artifact`` to ``path`` atomically, after checking it fits its own spec here."""
    path = Path(path)
    if artifact.version != ARTIFACT_VERSION:
        raise ArtifactError(
            f"model file {path}: this installation writes version {ARTIFACT_VERSION}, "
            f"not {artifact.version}"
        )
    exits_fingerprint = _check_fits(artifact, f"model file {path}")
    header = {
        "spec": artifact.spec.to_dict(),
        "fingerprint": artifact.fingerprint,
        "exits_fingerprint": exits_fingerprint,
        "labels": list(artifact.labels) if artifact.labels is not None else None,
        "created_at": float(artifact.created_at),
        "source": artifact.source,
        "calibration": artifact.calibration.to_dict(),
    }
    payload = {
        "format": FORMAT,
        "version": ARTIFACT_VERSION,
        "header": json.dumps(header, separators=(",", ":")),
        "state": _cpu_copies(artifact.state),
        "exit_state": _cpu_copies(artifact.calibration.exit_state),
    }
    try:
        save_atomically(path, payload)
    except OSError as exc:
        raise ArtifactError(f"model file {path} cannot be written: {exc}") from exc


def _cpu_copies(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Copies of their own: torch.save would store a view's whole storage, and a GPU tensor
    # would need that GPU to load.
    return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in state.items()}


# --- reading ---------------------------------------------------------------------------------


class _Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: dict[str, Any]
    fingerprint: str
    exits_fingerprint: str
    labels: list[str] | None
    created_at: float = Field(allow_inf_nan=False)
    source: str
    calibration: dict[str, Any]


def read_artifact(path: Path) -> ModelArtifact:
    """The model file at ``path``, checked against this installation; else an ArtifactError."""
    path = Path(path)
    where = f"model file {path}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(
            f"{where} does not exist (ares export writes one from an edge checkpoint)"
        ) from None
    except pickle.UnpicklingError:  # torch's text suggests weights_only=False: never here
        raise ArtifactError(
            f"{where} is corrupt or unreadable (not plain data and tensors: garbage, or objects "
            "that loading would have to run code for)"
        ) from None
    except Exception as exc:  # truncated zip, a directory, unreadable...
        raise ArtifactError(
            f"{where} is corrupt or unreadable ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an ARES model file")
    version = data.get("version")
    if version != ARTIFACT_VERSION:
        raise ArtifactError(
            f"{where} has version {version!r}; this installation reads version "
            f"{ARTIFACT_VERSION}: export it again with this installation (ares export)"
        )
    extra = sorted(set(data) - {"format", "version", "header", "state", "exit_state"})
    if extra:
        raise ArtifactError(f"{where} has unknown fields {extra}")
    state = _named_tensors(data.get("state"), f"{where}: state")
    exit_state = _named_tensors(data.get("exit_state"), f"{where}: exit_state")
    header_text = data.get("header")
    try:
        if not isinstance(header_text, str):
            raise ValueError("the header is missing")
        header = _Header.model_validate(json.loads(header_text))
        calibration = Calibration.from_dict(header.calibration, exit_state)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ArtifactError(f"{where}: bad header: {field}: {first['msg']}") from None
    except ValueError as exc:  # not JSON, a malformed calibration (CalibrationError)
        raise ArtifactError(f"{where}: bad header: {_first_line(exc)}") from None
    try:
        spec = ModelSpec.from_dict(header.spec)
    except SplitError as exc:  # a malformed spec, or a user's model that does not import here
        raise ArtifactError(f"{where}: its model cannot be used here: {_first_line(exc)}") from None
    artifact = ModelArtifact(
        spec=spec,
        fingerprint=header.fingerprint,
        state=state,
        calibration=calibration,
        labels=tuple(header.labels) if header.labels is not None else None,
        created_at=header.created_at,
        source=header.source,
        version=version,
    )
    exits_here = _check_fits(artifact, where)
    if header.exits_fingerprint != exits_here:
        raise ArtifactError(
            f"{where} has exit heads of architecture {header.exits_fingerprint}; this "
            f"installation builds {exits_here} at the same positions: export it again here"
        )
    return artifact


def _named_tensors(value: object, where: str) -> dict[str, Tensor]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in value.items()
    ):
        raise ArtifactError(f"{where} is not a dict of named tensors")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "no detail"


# --- checks on both sides --------------------------------------------------------------------


def _check_fits(artifact: ModelArtifact, where: str) -> str:
    """Raise an ArtifactError unless the artifact is usable with this installation's model
    code; return the exits' fingerprint here."""
    spec = artifact.spec
    try:
        here = architecture_fingerprint(spec)
    except (SplitError, ValueError) as exc:  # a user's model that does not import or build
        raise ArtifactError(
            f"{where}: model {spec.name} cannot be built here: {_first_line(exc)}"
        ) from None
    if artifact.fingerprint != here:
        raise ArtifactError(
            f"{where} was written for architecture {artifact.fingerprint}; this installation "
            f"builds {here} for {spec.name}: install the same model code"
        )
    check_state(artifact.state, build_model(spec).state_dict(), f"{where}: the weights")
    calibration = artifact.calibration
    try:
        positions = check_positions(spec, calibration.positions)
    except SplitError as exc:
        raise ArtifactError(f"{where}: {exc}") from None
    exits = build_exits(spec, positions)
    check_state(calibration.exit_state, exits.state_dict(), f"{where}: the exit heads")
    cuts = set(range(1, num_blocks(spec) + 1))
    if set(calibration.deepest_exit_accuracy) != cuts or any(
        point.cut not in cuts for point in calibration.points
    ):
        raise ArtifactError(f"{where}: the calibration's cuts are not 1..{len(cuts)}")
    labels = artifact.labels
    if labels is not None and len(labels) != spec.num_classes:
        raise ArtifactError(f"{where}: {len(labels)} label names for {spec.num_classes} classes")
    if not math.isfinite(artifact.created_at):
        raise ArtifactError(f"{where}: created_at is not a finite time")
    return fingerprint_module(exits)


def check_state(state: Mapping[str, Tensor], expected: Mapping[str, Tensor], what: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ArtifactError(
            f"{what} do not fit: missing {_some(missing)}, unexpected {_some(unexpected)}"
        )
    for key, want in expected.items():
        got = state[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ArtifactError(
                f"{what} do not fit: {key} is {tuple(got.shape)} {got.dtype}, the model here "
                f"has {tuple(want.shape)} {want.dtype}"
            )


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) or "none"
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
