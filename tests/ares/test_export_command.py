"""``ares export`` and the edge's own model file at the end of training."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from ares.cli import main
from device_agent import DeviceAgent, DeviceSettings
from edge_service import EdgeService, EdgeSettings
from edge_service.checkpoint import Checkpoint, write_checkpoint
from serving.artifact import read_artifact
from splitnn import ModelSpec, build_model
from transport import MemoryBroker


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    for variable in ("ARES_CONFIG", "ARES_MODEL", "ARES_DATASET", "ARES_DATA", "ARES_SEED"):
        monkeypatch.delenv(variable, raising=False)


def _checkpoint(path: Path, model: str, state: dict[str, torch.Tensor]) -> None:
    write_checkpoint(
        path,
        Checkpoint(
            session="s1", round=3, global_state=state, previous_splits={}, report={},
            model=model, dataset="digits", fingerprint="f", created_at=time.time(),
        ),
    )  # fmt: skip


async def test_the_edge_writes_the_model_file_and_export_makes_the_same_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short real run (one device, one round of 4 batches) through the in-process broker."""
    broker = MemoryBroker()
    edge = EdgeService(
        EdgeSettings(
            policy="sl", split=2, rounds=1, batches_per_round=4, min_devices=1,
            checkpoint=tmp_path / "edge.ckpt", artifact=tmp_path / "edge.ares",
            torch_threads=1, compute_workers=1, registration_timeout_s=120,
            profile_timeout_s=120,
        ),
        connect=broker.connect,
    )  # fmt: skip
    agent = DeviceAgent(
        DeviceSettings(device_id="dev-0", exit_on_finish=True, torch_threads=1),
        connect=broker.connect,
    )
    async with asyncio.timeout(300), asyncio.TaskGroup() as tasks:
        tasks.create_task(agent.run())
        report = await edge.run()
    assert len(report.rounds) == 1
    from_edge = read_artifact(tmp_path / "edge.ares")
    assert from_edge.source == f"training run {edge.session}"
    assert from_edge.positions == (1, 2, 3, 4)
    assert all(torch.equal(from_edge.state[k], v) for k, v in edge.global_state.items())

    argv = [
        "export",
        "--checkpoint",
        str(tmp_path / "edge.ckpt"),
        "--out",
        str(tmp_path / "x.ares"),
    ]
    assert await asyncio.to_thread(main, argv) == 0
    paragraph = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert paragraph.startswith(f"Wrote {tmp_path / 'x.ares'} from checkpoint ")
    assert "small_cnn for 1x8x8 samples in 10 classes" in paragraph
    assert "the full model is" in paragraph
    assert "At cut 4, threshold 0.8:" in paragraph
    exported = read_artifact(tmp_path / "x.ares")
    assert exported.source.endswith(f"(session {edge.session}, round 1)")
    # The same state, data and seed: the same heads, bit for bit, and the same curves.
    assert exported.calibration.to_dict() == from_edge.calibration.to_dict()
    for key, tensor in from_edge.calibration.exit_state.items():
        assert torch.equal(exported.calibration.exit_state[key], tensor)


def test_export_of_a_users_model_at_chosen_exits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = ModelSpec("tests.user_models:pixel_net", (1, 8, 8), 10)
    _checkpoint(tmp_path / "c.ckpt", spec.name, build_model(spec).state_dict())
    out = tmp_path / "deep" / "m.ares"
    argv = ["export", "--checkpoint", str(tmp_path / "c.ckpt"), "--out", str(out), "--exits", "2"]
    assert main([*argv, "--epochs", "2"]) == 0
    assert "exits alone (by position): 2: " in " ".join(capsys.readouterr().out.split())
    artifact = read_artifact(out)
    assert artifact.spec == spec
    assert artifact.positions == (2,)
    assert artifact.source == f"checkpoint {tmp_path / 'c.ckpt'} (session s1, round 3)"


def test_a_missing_checkpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.ckpt"
    assert main(["export", "--checkpoint", str(missing), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err == f"ares export: no checkpoint at {missing}\n"


@pytest.fixture
def small_cnn_export(tmp_path: Path) -> list[str]:
    """``ares export`` of a checkpoint of an untrained small_cnn, to ``tmp_path / "m"``."""
    spec = ModelSpec("small_cnn", (1, 8, 8), 10)
    _checkpoint(tmp_path / "c.ckpt", "small_cnn", build_model(spec).state_dict())
    return ["export", "--checkpoint", str(tmp_path / "c.ckpt"), "--out", str(tmp_path / "m")]


def test_a_checkpoint_of_another_model_is_one_line(
    tmp_path: Path, small_cnn_export: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*small_cnn_export, "--model", "tests.user_models:pixel_net"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith(
        f"ares export: checkpoint {tmp_path / 'c.ckpt'} does not fit tests.user_models:pixel_net "
        "on digits (1x8x8, 10 classes): its weights do not fit"
    )
    assert not (tmp_path / "m").exists()


def test_bad_exit_positions_are_one_line(
    small_cnn_export: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*small_cnn_export, "--exits", "5"]) == 2
    assert "exit positions for small_cnn must be ints in 1..4" in capsys.readouterr().err
