"""Edge checkpoints: exact round trips, atomic writes, and refusal of anything untrustworthy."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import edge_service.checkpoint as checkpoint_module
from edge_service.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointError,
    check_compatible,
    read_checkpoint,
    settings_fingerprint,
    write_checkpoint,
)
from edge_service.report import DeviceRoundReport, RoundReport, RunReport
from splitnn.models import ModelSpec, build_model

FINGERPRINT = settings_fingerprint({"model": "vgg5", "dataset": "cifar10", "batch_size": 32})


def make_report() -> dict:
    report = RunReport(
        policy="ares", alpha=0.5, model="vgg5", dataset="cifar10", session="s1", started_at=1.5
    )
    report.rounds.append(
        RoundReport(
            round=1,
            accuracy=0.25,
            loss=2.1,
            train_loss=None,
            duration_s=3.25,
            objective=0.75,
            devices={
                "dev-0": DeviceRoundReport(
                    cut=2,
                    predicted_time_s=1.0,
                    predicted_energy_j=2.0,
                    status="ok",
                    batches=3,
                    samples=96,
                    busy_s=0.5,
                    server_s=0.25,
                    train_loss=2.0,
                    rtt_median_s=None,
                    energy_j=1.0,
                    uplink_mbps=12.5,
                    downlink_mbps=None,
                    battery_pct=None,
                    link_mode="direct",
                    emulation_behind_s=0.0,
                )
            },
        )
    )
    report.initial_accuracy = 0.1
    report.counters = {"rejected.bad_json": 2, "stale_messages": 1}
    return report.to_dict()


def make_checkpoint(round_no: int = 3, **changes) -> Checkpoint:
    torch.manual_seed(round_no)
    # BatchNorm: int64 0-dim too
    state = build_model(ModelSpec("vgg5", (3, 32, 32), 10)).state_dict()
    fields: dict[str, Any] = {
        "session": "abc123",
        "round": round_no,
        "global_state": {k: v.detach().clone() for k, v in state.items()},
        "previous_splits": {"dev-0": 2, "dev-1": 5},
        "report": make_report(),
        "model": "vgg5",
        "dataset": "cifar10",
        "fingerprint": FINGERPRINT,
        "created_at": time.time(),
    }
    fields.update(changes)
    return Checkpoint(**fields)


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].device.type == "cpu"
        assert b[name].device.type == "cpu"
        left, right = a[name].contiguous().numpy(), b[name].contiguous().numpy()
        assert left.tobytes() == right.tobytes(), name


def test_round_trip_is_exact(tmp_path):
    original = make_checkpoint()
    # Odd tensors too: a non-contiguous view, a slice of a bigger storage, half, bool, NaN/Inf.
    big = torch.randn(64, 64)
    original.global_state.update(
        {
            "odd.transposed": torch.randn(3, 5).t(),
            "odd.slice": big[10:12, 3:7],
            "odd.half": torch.randn(4).half(),
            "odd.bool": torch.tensor([True, False]),
            "odd.special": torch.tensor([float("nan"), float("inf"), -0.0, 1e-45]),
        }
    )
    path = tmp_path / "edge.ckpt"
    write_checkpoint(path, original)
    loaded = read_checkpoint(path)

    assert loaded is not None
    assert_bit_identical(original.global_state, loaded.global_state)
    assert loaded.report == original.report
    assert loaded.previous_splits == original.previous_splits
    assert (loaded.session, loaded.round, loaded.model, loaded.dataset) == (
        "abc123", 3, "vgg5", "cifar10",
    )  # fmt: skip
    assert loaded.fingerprint == FINGERPRINT
    assert loaded.created_at == original.created_at
    assert loaded.version == CHECKPOINT_VERSION
    # Only the slice was stored, not the 64x64 storage it views.
    assert loaded.global_state["odd.slice"].untyped_storage().nbytes() == 2 * 4 * 4
    # The loaded model works.
    model = build_model(ModelSpec("vgg5", (3, 32, 32), 10))
    model.load_state_dict({k: v for k, v in loaded.global_state.items() if not k.startswith("odd")})
    assert sorted(os.listdir(tmp_path)) == ["edge.ckpt"]


def test_missing_file_is_none_and_parent_directories_are_created(tmp_path):
    assert read_checkpoint(tmp_path / "nothing.ckpt") is None
    path = tmp_path / "a" / "b" / "edge.ckpt"
    write_checkpoint(path, make_checkpoint())
    assert read_checkpoint(path) is not None


def test_a_newer_checkpoint_replaces_the_old_one(tmp_path):
    path = tmp_path / "edge.ckpt"
    write_checkpoint(path, make_checkpoint(round_no=1))
    write_checkpoint(path, make_checkpoint(round_no=2))
    loaded = read_checkpoint(path)
    assert loaded is not None
    assert loaded.round == 2
    assert_bit_identical(loaded.global_state, make_checkpoint(round_no=2).global_state)
    assert sorted(os.listdir(tmp_path)) == ["edge.ckpt"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_tensors_are_stored_on_the_cpu(tmp_path):
    original = make_checkpoint()
    on_gpu = {k: v.cuda() for k, v in original.global_state.items()}
    write_checkpoint(tmp_path / "edge.ckpt", make_checkpoint(global_state=on_gpu))
    loaded = read_checkpoint(tmp_path / "edge.ckpt")
    assert loaded is not None
    assert_bit_identical(original.global_state, loaded.global_state)


# --- atomicity -------------------------------------------------------------------------------


def _old_checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "edge.ckpt"
    write_checkpoint(path, make_checkpoint(round_no=1))
    return path, path.read_bytes()


def test_a_failed_rename_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path, before = _old_checkpoint(tmp_path)

    def crash(src, dst):
        assert Path(src).stat().st_size > 0  # the new file was fully written...
        raise OSError("disk on fire")  # ...and the rename never happened

    monkeypatch.setattr(os, "replace", crash)  # the very function the module calls
    with pytest.raises(OSError, match="disk on fire"):
        write_checkpoint(path, make_checkpoint(round_no=2))

    assert path.read_bytes() == before
    loaded = read_checkpoint(path)
    assert loaded is not None
    assert loaded.round == 1
    assert sorted(os.listdir(tmp_path)) == ["edge.ckpt"]


@pytest.mark.parametrize("error", [OSError("no space left on device"), KeyboardInterrupt()])
def test_a_crash_half_way_through_the_write_leaves_the_old_checkpoint(tmp_path, monkeypatch, error):
    path, before = _old_checkpoint(tmp_path)
    real_save = torch.save

    def half_save(obj, f):
        real_save(obj, f)  # write it all, then keep only the first half and die
        f.flush()
        f.truncate(f.tell() // 2)
        raise error

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(type(error)):
        write_checkpoint(path, make_checkpoint(round_no=2))
    monkeypatch.undo()

    assert path.read_bytes() == before
    loaded = read_checkpoint(path)
    assert loaded is not None
    assert loaded.round == 1
    assert sorted(os.listdir(tmp_path)) == ["edge.ckpt"]


def test_a_killed_writer_leaves_the_old_checkpoint_and_the_next_write_cleans_up(tmp_path):
    """A real crash: the process dies (os._exit) after writing the temp file, before renaming."""
    path, before = _old_checkpoint(tmp_path)
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from tests.edge_service.test_checkpoint import make_checkpoint
        import edge_service.checkpoint as ckpt
        ckpt.os.fsync = lambda fd: os._exit(17)  # the temp file's fsync: die right there
        ckpt.write_checkpoint(ckpt.Path({str(path)!r}), make_checkpoint(round_no=2))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == 17, done.stderr.decode()

    assert path.read_bytes() == before
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2
    assert left[1] == "edge.ckpt"
    assert left[0].startswith(".edge.ckpt.")
    assert left[0].endswith(".tmp")
    loaded = read_checkpoint(path)
    assert loaded is not None
    assert loaded.round == 1

    other = tmp_path / ".edge.ckpt.old.abc123.tmp"  # another file's temp: left alone
    other.write_bytes(b"")
    write_checkpoint(path, make_checkpoint(round_no=3))  # ...the next good write does
    assert sorted(os.listdir(tmp_path)) == [other.name, "edge.ckpt"]
    loaded = read_checkpoint(path)
    assert loaded is not None
    assert loaded.round == 3


def test_write_refuses_what_weights_only_could_not_load(tmp_path):
    path = tmp_path / "edge.ckpt"
    bad_reports = [
        {"accuracy": np.float64(0.5)},
        {"rounds": [{"devices": {"dev-0": object()}}]},
        {1: "int key"},
        {"path": Path("/tmp")},
    ]
    for report in bad_reports:
        with pytest.raises(CheckpointError, match="report"):
            write_checkpoint(path, make_checkpoint(report=report))
    with pytest.raises(CheckpointError, match="global_state"):
        write_checkpoint(path, make_checkpoint(global_state={"w": np.zeros(3)}))
    with pytest.raises(CheckpointError, match="previous_splits"):
        write_checkpoint(path, make_checkpoint(previous_splits={"dev-0": 2.5}))
    with pytest.raises(CheckpointError, match="round"):
        write_checkpoint(path, make_checkpoint(round_no=-1))
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# --- refusing bad files ----------------------------------------------------------------------


def test_truncated_or_garbage_files_are_checkpoint_errors(tmp_path):
    path, whole = _old_checkpoint(tmp_path)
    damaged = {
        "empty": b"",
        "half": whole[: len(whole) // 2],
        "all but the last byte": whole[:-1],
        "garbage": os.urandom(4096),
        "text": b"not a checkpoint\n",
        "flipped": whole[:100] + bytes(b ^ 0xFF for b in whole[100:200]) + whole[200:],
    }
    for what, data in damaged.items():
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match="corrupt or unreadable") as caught:
            read_checkpoint(path)
        assert str(path) in str(caught.value), what


def test_a_directory_in_the_way_is_a_checkpoint_error(tmp_path):
    (tmp_path / "edge.ckpt").mkdir()
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "edge.ckpt")


MARKER_NAME = "pwned"


class Malicious:
    """Unpickling this would call ``open(marker, "w")``: code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, how):
    path, marker = tmp_path / "edge.ckpt", tmp_path / MARKER_NAME
    payload = {"format": checkpoint_module.FORMAT, "version": 1, "session": Malicious(marker)}
    with path.open("wb") as out:
        if how == "torch.save":
            torch.save(payload, out)
        else:
            pickle.dump(payload, out, protocol=2)

    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        read_checkpoint(path)
    assert not marker.exists()

    # The payload is live: an unguarded load would have run it.
    if how == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_another_version_is_refused(tmp_path):
    path = tmp_path / "edge.ckpt"
    write_checkpoint(path, make_checkpoint(version=CHECKPOINT_VERSION + 1))
    with pytest.raises(CheckpointError, match=r"version 2; this edge reads version 1 only"):
        read_checkpoint(path)


def test_missing_unknown_or_mistyped_fields_are_refused(tmp_path):
    path = tmp_path / "edge.ckpt"
    write_checkpoint(path, make_checkpoint())
    good = torch.load(path, weights_only=True)

    def refused(data: dict, match: str) -> None:
        torch.save(data, path)
        with pytest.raises(CheckpointError, match=match):
            read_checkpoint(path)

    refused({k: v for k, v in good.items() if k != "dataset"}, r"missing fields \['dataset'\]")
    refused({**good, "surprise": 1}, r"unknown fields \['surprise'\]")
    refused({**good, "round": "3"}, "field 'round' is a str")
    refused({**good, "round": True}, "field 'round' is a bool")
    refused({**good, "global_state": {"w": [1.0, 2.0]}}, r"global_state\['w'\]")
    refused({**good, "previous_splits": {"dev-0": "2"}}, "previous_splits")
    refused({k: v for k, v in good.items() if k != "format"}, "not an ARES edge checkpoint")
    refused([1, 2, 3], "not an ARES edge checkpoint")  # type: ignore[arg-type]


# --- resuming --------------------------------------------------------------------------------


def test_a_compatible_checkpoint_passes():
    check_compatible(make_checkpoint(), FINGERPRINT, "vgg5", "cifar10")


def test_a_different_run_is_refused_naming_what_differs():
    other = settings_fingerprint({"model": "vgg5", "dataset": "cifar10", "batch_size": 64})
    with pytest.raises(CheckpointError) as caught:
        check_compatible(make_checkpoint(), other, "vgg5", "cifar10")
    message = str(caught.value)
    assert "settings fingerprint" in message
    assert FINGERPRINT[:16] in message
    assert other[:16] in message
    assert "model:" not in message
    assert "dataset:" not in message
    assert "Start fresh" in message

    with pytest.raises(CheckpointError) as caught:
        check_compatible(make_checkpoint(), FINGERPRINT, "small_cnn", "digits")
    message = str(caught.value)
    assert "model: checkpoint has 'vgg5', this run has 'small_cnn'" in message
    assert "dataset: checkpoint has 'cifar10', this run has 'digits'" in message
    assert "fingerprint" not in message


def test_the_settings_fingerprint_is_stable_and_sensitive():
    a = settings_fingerprint({"model": "vgg5", "batch_size": 32, "data_dir": Path("/d")})
    b = settings_fingerprint({"data_dir": Path("/d"), "batch_size": 32, "model": "vgg5"})
    assert a == b
    assert len(a) == 64
    assert a != settings_fingerprint({"model": "vgg5", "batch_size": 33, "data_dir": Path("/d")})


@pytest.mark.parametrize(
    ("model", "shape"),
    [("resnet18", (3, 32, 32)), ("mobilenetv2", (3, 32, 32)), ("cnn1d", (3, 64)),
     ("tests.user_models:pixel_net", (3, 8, 8))],
)  # fmt: skip
def test_any_models_state_survives_a_checkpoint(tmp_path, model, shape):
    spec = ModelSpec(model, shape, 10)
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in build_model(spec).state_dict().items()}
    path = tmp_path / "edge.ckpt"
    write_checkpoint(path, make_checkpoint(global_state=state, model=model))
    loaded = read_checkpoint(path)
    assert loaded is not None
    assert loaded.model == model
    assert_bit_identical(state, loaded.global_state)
    build_model(spec).load_state_dict(loaded.global_state)  # every key, shape and dtype fits
