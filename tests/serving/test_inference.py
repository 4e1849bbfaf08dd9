"""The forward passes of serving against the unsplit model: every cut, exits off and on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from serving.artifact import ModelArtifact
from serving.inference import Answer, DeviceModel, EdgeModel, Handoff
from tests.serving.artifacts import (
    SPEC,
    digits_test_set,
    exit_labels,
    make_artifact,
    unsplit_labels,
)

BLOCKS = 5


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    torch.set_num_threads(1)
    return make_artifact(tmp_path_factory.mktemp("artifact") / "model.ares")


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return digits_test_set().x[:40]


def test_exits_off_device_then_edge_is_the_unsplit_model(
    artifact: ModelArtifact, samples: np.ndarray
) -> None:
    device = DeviceModel(artifact.build_model(), artifact.build_exits())
    edge = EdgeModel(artifact.build_model(), SPEC)
    expected = unsplit_labels(artifact, samples)
    for cut in range(BLOCKS):  # cut 0: the raw input goes to the edge
        handoffs = [device.run(x, cut, None, device.fallback_position(cut)) for x in samples]
        assert all(isinstance(h, Handoff) and h.cut == cut for h in handoffs)
        answers = edge.finish(cut, [h.activation for h in handoffs if isinstance(h, Handoff)])
        assert [a.label for a in answers] == expected.tolist(), f"cut {cut}"
        assert all(a.exit is None and 0 < a.confidence <= 1 for a in answers)


def test_cut_l_answers_with_the_whole_model(artifact: ModelArtifact, samples: np.ndarray) -> None:
    device = DeviceModel(artifact.build_model(), artifact.build_exits())
    answers = [device.run(x, BLOCKS, None, BLOCKS) for x in samples]
    assert all(isinstance(a, Answer) and a.exit is None for a in answers)
    labels = [a.label for a in answers if isinstance(a, Answer)]
    assert labels == unsplit_labels(artifact, samples).tolist()


def test_threshold_zero_leaves_at_the_first_exit(
    artifact: ModelArtifact, samples: np.ndarray
) -> None:
    device = DeviceModel(artifact.build_model(), artifact.build_exits())
    first = device.positions[0]
    answers = [device.run(x, 3, 0.0, 3) for x in samples]
    assert all(isinstance(a, Answer) and a.exit == first for a in answers)
    labels = [a.label for a in answers if isinstance(a, Answer)]
    assert labels == exit_labels(artifact, first, samples).tolist()


def test_alone_answers_from_the_fallback_exit(artifact: ModelArtifact, samples: np.ndarray) -> None:
    device = DeviceModel(artifact.build_model(), artifact.build_exits())
    assert device.positions == (1, 2, 3, 4)
    assert device.fallback_position(2) == 2  # the deepest at or below the cut
    assert device.fallback_position(0) == 1  # none below: the shallowest above
    assert device.fallback_position(2, preferred=4) == 4
    assert device.fallback_position(BLOCKS) == BLOCKS
    assert device.fallback_position(None) == 4  # no plan: the deepest exit
    for cut, fallback in ((2, 2), (1, 3), (0, 1), (3, BLOCKS)):
        alone = []
        for x in samples:
            handoff = device.run(x, cut, None, fallback)
            assert isinstance(handoff, Handoff)
            alone.append(device.answer_alone(handoff, fallback))
        direct = [device.answer_directly(x, fallback) for x in samples]
        expected = (
            unsplit_labels(artifact, samples)
            if fallback == BLOCKS
            else exit_labels(artifact, fallback, samples)
        )
        assert [a.label for a in alone] == expected.tolist(), (cut, fallback)
        assert [a.label for a in direct] == expected.tolist()


def test_profile_times_every_block_and_exit(artifact: ModelArtifact) -> None:
    device = DeviceModel(artifact.build_model(), artifact.build_exits())
    forward, heads = device.profile(SPEC.input_shape, repeats=2)
    assert len(forward) == BLOCKS
    assert all(t >= 0 for t in forward)
    assert sorted(heads) == [1, 2, 3, 4]


def test_artifact_fixture_is_written(tmp_path: Path) -> None:
    make_artifact(tmp_path / "again.ares")
    assert (tmp_path / "again.ares").stat().st_size > 0
