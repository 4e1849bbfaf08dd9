"""Accuracy and loss of a full model on held-out data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from splitnn.data import ArrayDataset


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    samples: int


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset, *, batch_size: int, device: torch.device
) -> Evaluation:
    model.to(device).eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.x[start : start + batch_size]).to(device)
        y = torch.from_numpy(data.y[start : start + batch_size]).to(device)
        out = model(x)
        total_loss += float(loss_fn(out, y).item())
        correct += int((out.argmax(dim=1) == y).sum().item())
    n = len(data)
    return Evaluation(accuracy=correct / n, loss=total_loss / n, samples=n)
