"""The model file: a bit-exact round trip, and one clear error for anything it must not load."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import splitnn.models
import tests.user_models
from schemas.errors import AresError
from serving.artifact import (
    ARTIFACT_VERSION,
    ArtifactError,
    ModelArtifact,
    export_artifact,
    read_artifact,
    write_artifact,
)
from splitnn import ModelSpec, build_model, load_dataset
from splitnn.exits import forward_with_exits
from splitnn.models import architecture_fingerprint

SPEC = ModelSpec("tests.user_models:pixel_net", (1, 8, 8), 10)  # a user's model: 4 blocks


@pytest.fixture(scope="module")
def artifact() -> ModelArtifact:
    """pixel_net as built (untrained: the file does not care), exits calibrated on digits."""
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        state = build_model(SPEC).state_dict()
    data = load_dataset("digits", "test")
    return export_artifact(SPEC, state, data, source="tests", epochs=2)


@pytest.fixture
def written(artifact: ModelArtifact, tmp_path: Path) -> Path:
    path = tmp_path / "model.ares"
    write_artifact(path, artifact)
    return path


@pytest.fixture
def fresh_probes() -> Iterator[None]:
    """The spec's shapes and fingerprint are cached per spec: drop them around a test that
    swaps the model code under the same name."""
    splitnn.models._probe.cache_clear()
    yield
    splitnn.models._probe.cache_clear()


def _tamper(path: Path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def _header(payload: dict) -> dict:
    header: dict = json.loads(payload["header"])
    return header


def _error(path: Path) -> str:
    with pytest.raises(ArtifactError) as caught:
        read_artifact(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_round_trip_is_bit_identical(artifact, written) -> None:
    again = read_artifact(written)
    assert again.spec == artifact.spec
    assert again.fingerprint == artifact.fingerprint == architecture_fingerprint(SPEC)
    assert again.labels == artifact.labels
    assert again.created_at == artifact.created_at
    assert again.source == "tests"
    assert again.version == ARTIFACT_VERSION
    assert again.calibration.to_dict() == artifact.calibration.to_dict()
    for saved, loaded in (
        (artifact.state, again.state),
        (artifact.calibration.exit_state, again.calibration.exit_state),
    ):
        assert list(loaded) == list(saved)
        for key, tensor in saved.items():
            assert loaded[key].dtype == tensor.dtype
            assert torch.equal(loaded[key], tensor)
    assert again.positions == (1, 2, 3)
    x = torch.from_numpy(load_dataset("digits", "test").x[:16])
    with torch.no_grad():
        before = forward_with_exits(artifact.build_model(), artifact.build_exits(), x)
        after = forward_with_exits(again.build_model(), again.build_exits(), x)
    assert torch.equal(before[1], after[1])
    assert all(torch.equal(before[0][p], after[0][p]) for p in before[0])
    assert not again.build_model().training


def test_writing_leaves_no_temporary_files(written) -> None:
    assert os.listdir(written.parent) == ["model.ares"]


def test_another_architecture_under_the_same_name_is_refused(
    artifact, written, monkeypatch, fresh_probes
) -> None:
    monkeypatch.setattr(tests.user_models, "pixel_net", tests.user_models.wider_pixel_net)
    here = architecture_fingerprint(SPEC)
    assert here != artifact.fingerprint
    assert _error(written) == (
        f"model file {written} was written for architecture {artifact.fingerprint}; this "
        f"installation builds {here} for tests.user_models:pixel_net: install the same model code"
    )


def test_a_tampered_fingerprint_is_refused(written) -> None:
    _tamper(written, lambda p: p.update(header=json.dumps({**_header(p), "fingerprint": "beef"})))
    assert "was written for architecture beef" in _error(written)


def test_weights_that_do_not_fit_are_refused(written) -> None:
    def shrink(payload: dict) -> None:
        payload["state"]["0.0.weight"] = payload["state"]["0.0.weight"][:4]

    _tamper(written, shrink)
    assert "0.0.weight is (4, 1, 3, 3)" in _error(written)


def test_exit_heads_that_do_not_fit_are_refused(written) -> None:
    _tamper(written, lambda p: p["exit_state"].pop("2.2.bias"))
    assert "exit heads do not fit: missing 2.2.bias" in _error(written)


def test_another_version_is_refused(written) -> None:
    _tamper(written, lambda p: p.update(version=ARTIFACT_VERSION + 1))
    assert f"version {ARTIFACT_VERSION + 1}" in _error(written)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.9])
def test_a_truncated_file_is_refused(written, keep) -> None:
    data = written.read_bytes()
    written.write_bytes(data[: int(len(data) * keep)])
    assert "corrupt or unreadable" in _error(written)


def test_garbage_is_refused(tmp_path) -> None:
    path = tmp_path / "garbage.ares"
    path.write_bytes(os.urandom(4096))
    assert "corrupt or unreadable" in _error(path)


def test_a_pickle_that_would_run_code_is_refused(tmp_path) -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buffer = io.BytesIO()
    torch.save({"format": "ares-model", "x": Exploit()}, buffer, pickle_protocol=2)
    path = tmp_path / "evil.ares"
    path.write_bytes(buffer.getvalue())
    assert "corrupt or unreadable" in _error(path)


def test_other_files_are_refused(tmp_path) -> None:
    path = tmp_path / "checkpoint.ckpt"
    torch.save({"format": "ares-edge-checkpoint", "version": 1}, path)
    assert _error(path) == f"{path} is not an ARES model file"
    assert "does not exist" in _error(tmp_path / "missing.ares")
    assert "corrupt or unreadable" in _error(tmp_path)  # a directory


def test_a_malformed_header_is_refused(written) -> None:
    _tamper(written, lambda p: p.update(header="{not json"))
    assert "bad header" in _error(written)


def test_a_model_that_does_not_import_here_is_refused(written) -> None:
    def rename(payload: dict) -> None:
        header = _header(payload)
        header["spec"]["name"] = "not_installed_anywhere:net"
        payload["header"] = json.dumps(header)

    _tamper(written, rename)
    assert "cannot be used here" in _error(written)


def test_artifact_errors_are_ares_errors() -> None:
    assert issubclass(ArtifactError, AresError)


def test_an_artifact_that_does_not_fit_its_own_spec_is_not_written(artifact, tmp_path) -> None:
    wrong = ModelArtifact(
        spec=artifact.spec,
        fingerprint="0" * 16,
        state=artifact.state,
        calibration=artifact.calibration,
        labels=None,
        created_at=0.0,
        source="tests",
    )
    with pytest.raises(ArtifactError, match="install the same model code"):
        write_artifact(tmp_path / "wrong.ares", wrong)
    assert not list(tmp_path.iterdir())
