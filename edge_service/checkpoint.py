"""Crash-safe checkpoints of the edge's training state, so a restarted edge can resume a run.

A checkpoint is written after a completed round: the global model, the planner's last plan (for
its hysteresis), the run report so far and what identifies the run. ``write_checkpoint`` is
atomic: it writes a temporary file in the same directory, fsyncs it, renames it onto the target
and fsyncs the directory, so the target is always either the previous checkpoint or the new one,
never a torn mix (a single writer per path is assumed).

The file is a ``torch.save`` of plain containers (dict, list, tuple, str, int, float, bool, None)
and CPU tensors, read back with ``torch.load(..., weights_only=True)``: loading a checkpoint can
never run code, whatever the file holds. Anything unreadable, of another version or missing a
field is a ``CheckpointError``; ``check_compatible`` refuses to resume into a different run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from schemas.errors import AresError

CHECKPOINT_VERSION = 1
FORMAT = "ares-edge-checkpoint"
_TEMP_SUFFIX = ".tmp"

# Every field of the file besides "format" and "version", with the type it must have.
_FIELDS: Mapping[str, type | tuple[type, ...]] = {
    "session": str,
    "round": int,
    "global_state": dict,
    "previous_splits": dict,
    "report": dict,
    "model": str,
    "dataset": str,
    "fingerprint": str,
    "created_at": (int, float),
}


class CheckpointError(AresError, RuntimeError):
    """A checkpoint cannot be written, read, or resumed from; the message says why."""


@dataclass
class Checkpoint:
    """The edge's state after its last completed round."""

    session: str
    round: int  # the last completed round
    global_state: dict[str, torch.Tensor]
    previous_splits: dict[str, int]  # the planner's last plan: device id -> cut (hysteresis)
    report: dict[str, Any]  # the run report so far, as plain JSON-like data
    model: str
    dataset: str
    # A hash of the settings that must match to resume (see ``settings_fingerprint``).
    fingerprint: str
    created_at: float  # time.time() when it was taken
    version: int = field(default=CHECKPOINT_VERSION)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """A stable hash of the settings a resumed run must share (model, dataset, batch size...).

    Keys are sorted, so the order they are given in does not matter; values are hashed through
    their JSON form (``str`` for anything JSON cannot show, such as paths).
    """
    canonical = json.dumps(dict(settings), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- writing ---------------------------------------------------------------------------------


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically; a crash leaves the previous file intact."""
    save_atomically(path, _to_payload(checkpoint))  # validated before the disk is touched


def save_atomically(path: Path, payload: Any) -> None:
    """``torch.save`` ``payload`` to ``path`` through a temporary file, fsynced and renamed
    onto it: a crash leaves the previous file intact."""
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TEMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    _remove_stale_temps(path)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open a directory for this)."""
    if os.name == "nt":  # pragma: no cover - not run on the project's platforms
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Temp files of writers that crashed before their rename (a killed process cannot clean)."""
    prefix = _temp_prefix(path)
    for stale in path.parent.iterdir():
        name = stale.name
        if not (name.startswith(prefix) and name.endswith(_TEMP_SUFFIX)):
            continue
        # mkstemp's random part has no dots: ".edge.ckpt.old.x1y2.tmp" is another file's.
        if "." not in name[len(prefix) : -len(_TEMP_SUFFIX)]:
            with contextlib.suppress(OSError):
                stale.unlink()


def _to_payload(checkpoint: Checkpoint) -> dict[str, Any]:
    if not isinstance(checkpoint.global_state, Mapping):
        raise CheckpointError("global_state must be a dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for name, tensor in checkpoint.global_state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"global_state[{name!r}] is not a named tensor")
        # A CPU copy of its own: torch.save would otherwise store the whole shared storage of
        # a view, and a GPU tensor would need that GPU to load.
        state[name] = tensor.detach().to("cpu", copy=True).contiguous()
    splits = dict(checkpoint.previous_splits)
    for device_id, cut in splits.items():
        if not isinstance(device_id, str) or type(cut) is not int:
            raise CheckpointError(f"previous_splits[{device_id!r}] = {cut!r} is not a str -> int")
    _check_plain(checkpoint.report, "report")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": checkpoint.version,
        "session": checkpoint.session,
        "round": checkpoint.round,
        "global_state": state,
        "previous_splits": splits,
        "report": checkpoint.report,
        "model": checkpoint.model,
        "dataset": checkpoint.dataset,
        "fingerprint": checkpoint.fingerprint,
        "created_at": float(checkpoint.created_at),
    }
    _check_fields(payload)
    return payload


def _check_plain(value: Any, where: str) -> None:
    """Only what ``torch.load(weights_only=True)`` accepts (and JSON-like data needs)."""
    if value is None or type(value) in (str, int, float, bool):
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise CheckpointError(f"{where}: key {key!r} is not a str")
            _check_plain(item, f"{where}.{key}")
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise CheckpointError(
        f"{where} is a {type(value).__name__}; a checkpoint holds only dict, list, tuple, str, "
        "int, float, bool and None (convert dataclasses with asdict, numpy scalars with item())"
    )


# --- reading ---------------------------------------------------------------------------------


def read_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at ``path``; None if there is none; CheckpointError if it is unusable."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # truncated zip, garbage, a refused pickle, an unreadable file...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}: "
            f"{_first_line(exc)}); delete it or start the run fresh"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ARES edge checkpoint")
    version = data.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {version!r}; this edge reads version "
            f"{CHECKPOINT_VERSION} only: start the run fresh"
        )
    try:
        _check_fields(data)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    return Checkpoint(
        session=data["session"],
        round=data["round"],
        global_state=data["global_state"],
        previous_splits=data["previous_splits"],
        report=data["report"],
        model=data["model"],
        dataset=data["dataset"],
        fingerprint=data["fingerprint"],
        created_at=float(data["created_at"]),
        version=version,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else "no detail"


def _check_fields(data: Mapping[str, Any]) -> None:
    """Every field present, of its type; nothing unknown."""
    missing = sorted(set(_FIELDS) - set(data))
    if missing:
        raise CheckpointError(f"missing fields {missing}")
    unknown = sorted(set(data) - set(_FIELDS) - {"format", "version"})
    if unknown:
        raise CheckpointError(f"unknown fields {unknown}")
    for name, expected in _FIELDS.items():
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise CheckpointError(f"field {name!r} is a {type(value).__name__}")
    if data["round"] < 0:
        raise CheckpointError(f"round {data['round']} is negative")
    if not math.isfinite(data["created_at"]):
        raise CheckpointError("created_at is not a finite time")
    for name, tensor in data["global_state"].items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"global_state[{name!r}] is not a named tensor")
    for device_id, cut in data["previous_splits"].items():
        if not isinstance(device_id, str) or type(cut) is not int:
            raise CheckpointError(f"previous_splits[{device_id!r}] = {cut!r} is not a str -> int")


# --- resuming --------------------------------------------------------------------------------


def check_compatible(checkpoint: Checkpoint, fingerprint: str, model: str, dataset: str) -> None:
    """Raise CheckpointError naming every difference between the checkpoint's run and this one."""
    differences = [
        f"{what}: checkpoint has {theirs!r}, this run has {ours!r}"
        for what, theirs, ours in (
            ("model", checkpoint.model, model),
            ("dataset", checkpoint.dataset, dataset),
        )
        if theirs != ours
    ]
    if checkpoint.fingerprint != fingerprint:
        differences.append(
            f"settings fingerprint: checkpoint has {checkpoint.fingerprint[:16]!r}, this run has "
            f"{fingerprint[:16]!r} (model, dataset, batch size or another setting changed)"
        )
    if differences:
        raise CheckpointError(
            f"checkpoint of session {checkpoint.session} (round {checkpoint.round}) belongs to a "
            f"different run: {'; '.join(differences)}. Start fresh to discard it."
        )
