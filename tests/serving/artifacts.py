"""A small trained model and its artifact for serving tests: small_cnn on digits (1 x 8 x 8, 5
blocks, exits at 1..4), trained for a few steps, its exits calibrated on the digits test set."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from serving.artifact import ModelArtifact, export_artifact, write_artifact
from splitnn import ModelSpec, build_model, load_dataset
from splitnn.data import ArrayDataset

SPEC = ModelSpec("small_cnn", (1, 8, 8), 10)
TRAIN_STEPS = 30


@functools.cache
def digits_test_set() -> ArrayDataset:
    return load_dataset("digits", "test")


@functools.cache
def _artifact() -> ModelArtifact:
    torch.set_num_threads(1)
    state = _trained_state()
    return export_artifact(SPEC, state, digits_test_set(), source="tests", epochs=3, seed=0)


def make_artifact(path: Path) -> ModelArtifact:
    """The artifact, written to ``path`` (built once per test session)."""
    artifact = _artifact()
    write_artifact(path, artifact)
    return artifact


def unsplit_labels(artifact: ModelArtifact, x: np.ndarray) -> np.ndarray:
    """The whole model's labels for samples ``x``, in one plain forward pass."""
    with torch.inference_mode():
        labels: np.ndarray = artifact.build_model()(torch.from_numpy(x)).argmax(dim=1).numpy()
    return labels


def exit_labels(artifact: ModelArtifact, position: int, x: np.ndarray) -> np.ndarray:
    """The exit at ``position``'s labels for samples ``x``."""
    model, exits = artifact.build_model(), artifact.build_exits()
    with torch.inference_mode():
        h = torch.from_numpy(x)
        for block in list(model)[:position]:
            h = block(h)
        labels: np.ndarray = exits[str(position)](h).argmax(dim=1).numpy()
    return labels


def _trained_state() -> dict[str, Tensor]:
    train = load_dataset("digits", "train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(SPEC)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        generator = np.random.default_rng(0)
        for _ in range(TRAIN_STEPS):
            index = generator.choice(len(train), 64, replace=False)
            x, y = torch.from_numpy(train.x[index]), torch.from_numpy(train.y[index])
            optimiser.zero_grad()
            loss_fn(model(x), y).backward()
            optimiser.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
