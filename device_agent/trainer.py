"""The device's half of split learning: its blocks, its optimiser, its own data.

Plain synchronous torch; the agent runs these methods in a worker thread.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from schemas import RoundStart
from splitnn.data import ArrayDataset, BatchStream
from splitnn.models import ModelSpec, num_blocks
from splitnn.partition import build_part, load_part_state
from splitnn.tensors import arrays_to_state, from_numpy, state_to_arrays, to_numpy


class DeviceTrainer:
    def __init__(self, data: ArrayDataset, seed: int) -> None:
        self.data = data
        self.seed = seed
        self._stream: BatchStream | None = None
        self._part: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._outputs: torch.Tensor | None = None
        self._wire_dtype = torch.float32
        self.trains_whole_model = False
        self.loss_fn = nn.CrossEntropyLoss()

    def start_round(self, start: RoundStart, state: dict[str, np.ndarray]) -> None:
        """Build the device part for this round's cut from the edge's weights."""
        info = start.model
        spec = ModelSpec(info.name, info.in_channels, info.image_size, info.num_classes)
        bad = [k for k, a in state.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        if bad:
            raise ValueError(f"the edge sent non-finite weights for {', '.join(bad[:3])}")
        part = build_part(spec, 0, start.cut)
        load_part_state(part, arrays_to_state(state))
        part.train()
        train = start.train
        self._part = part
        self._optimizer = torch.optim.SGD(
            part.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
        self._wire_dtype = getattr(torch, train.wire_dtype)
        self.trains_whole_model = start.cut == num_blocks(spec)
        # The data order continues across rounds; a new batch size starts a new order.
        if self._stream is None or self._stream.batch_size != train.batch_size:
            self._stream = BatchStream(len(self.data), train.batch_size, self.seed)

    def forward(self) -> tuple[np.ndarray, np.ndarray]:
        """Forward the next batch to the cut; returns (activations in wire dtype, labels)."""
        x, y = self._next_batch()
        assert self._part is not None
        self._outputs = self._part(x)
        return to_numpy(self._outputs.detach().to(self._wire_dtype)), to_numpy(y)

    def backward(self, grad: np.ndarray) -> None:
        """Finish the batch with the gradient of the cut activations from the edge."""
        assert self._outputs is not None
        assert self._optimizer is not None
        self._optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self._outputs, from_numpy(grad).to(torch.float32))
        self._optimizer.step()
        self._outputs = None

    def local_step(self) -> tuple[float, int]:
        """A whole training step on the device (the cut is after the last block)."""
        x, y = self._next_batch()
        assert self._part is not None
        assert self._optimizer is not None
        self._optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self._part(x), y)
        loss.backward()
        self._optimizer.step()
        return float(loss.item()), int(y.shape[0])

    def batches_per_round(self, batch_size: int) -> int:
        """One local epoch, as the edge plans it when batches per round is not set."""
        return -(-len(self.data) // batch_size)

    def state(self) -> dict[str, np.ndarray]:
        assert self._part is not None
        return state_to_arrays(self._part.state_dict())

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._stream is not None
        index = self._stream.next_batch()
        return torch.from_numpy(self.data.x[index]), torch.from_numpy(self.data.y[index])
