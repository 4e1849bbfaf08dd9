"""The device's half of split learning: its blocks, its optimiser, its own data.

:class:`DeviceTrainer` is plain synchronous torch; :class:`TorchTrainer` runs it in a worker
thread as the session's trainer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from device_agent.ports import HostTimings
from device_agent.profile_cache import ProfileCache, host_facts
from device_agent.settings import DeviceSettings
from schemas import ModelInfo, RoundStart, WireDtype, WireTensor, from_wire, to_wire
from splitnn.data import ArrayDataset, BatchStream
from splitnn.errors import SplitError
from splitnn.models import ModelSpec, architecture_fingerprint, num_blocks
from splitnn.partition import build_part, load_part_state
from splitnn.profiling import profile_blocks
from splitnn.tensors import arrays_to_state, from_numpy, state_to_arrays, to_numpy, warm_up_torch

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeviceTrainer:
    def __init__(self, data: ArrayDataset | None, seed: int) -> None:
        """``data`` None: the agent loads it (off the event loop) before it registers."""
        self.data = data
        self.seed = seed
        self._stream: BatchStream | None = None
        self._part: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._outputs: torch.Tensor | None = None
        self._wire_dtype: WireDtype = "float32"
        self.trains_whole_model = False
        self.loss_fn = nn.CrossEntropyLoss()

    @property
    def dataset(self) -> ArrayDataset:
        if self.data is None:
            raise RuntimeError("the device's data is not loaded yet")
        return self.data

    def start_round(self, start: RoundStart, state: Mapping[str, np.ndarray]) -> None:
        """Build the device part for this round's cut from the edge's weights."""
        info = start.model
        spec = ModelSpec.of(info)
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
        self._wire_dtype = train.wire_dtype
        self.trains_whole_model = start.cut == num_blocks(spec)
        # The data order continues across rounds; a new batch size starts a new order.
        if self._stream is None or self._stream.batch_size != train.batch_size:
            self._stream = BatchStream(len(self.dataset), train.batch_size, self.seed)

    def forward(self) -> tuple[WireTensor, np.ndarray]:
        """Forward the next batch to the cut; returns (activations in the wire format: cast or
        quantised, labels)."""
        x, y = self._next_batch()
        assert self._part is not None
        self._outputs = self._part(x)
        return to_wire(to_numpy(self._outputs.detach()), self._wire_dtype), to_numpy(y)

    def backward(self, grad: WireTensor) -> None:
        """Finish the batch with the gradient of the cut activations from the edge."""
        assert self._outputs is not None
        assert self._optimizer is not None
        self._optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self._outputs, from_numpy(from_wire(grad)).to(torch.float32))
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
        return -(-len(self.dataset) // batch_size)

    def state(self) -> dict[str, np.ndarray]:
        assert self._part is not None
        return state_to_arrays(self._part.state_dict())

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._stream is not None
        index = self._stream.next_batch()
        return torch.from_numpy(self.dataset.x[index]), torch.from_numpy(self.dataset.y[index])


def model_problem(model: ModelInfo) -> str | None:
    """Why this device cannot train the edge's ``model`` (it cannot build it, or builds another
    architecture), in one line; None if it can."""
    try:
        here = architecture_fingerprint(ModelSpec.of(model))
    except SplitError as exc:
        return f"cannot build the edge's model: {exc}"
    if model.fingerprint is not None and here != model.fingerprint:
        return (
            f"model {model.name} is architecture {here} here but {model.fingerprint} on the "
            "edge: install the same model code on the edge and on this device"
        )
    return None


class TorchTrainer:
    """The session's :class:`~device_agent.session.Trainer` over a :class:`DeviceTrainer`: its
    torch work in one compute thread, and block timings measured here (kept in the profile
    cache, ``device_agent.profile_cache``, when ``settings.profile_cache``)."""

    def __init__(self, device_trainer: DeviceTrainer, settings: DeviceSettings) -> None:
        self.device_trainer = device_trainer
        self.device_id = settings.device_id
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.device_id}-compute")
        self._profile_cache = (
            ProfileCache(settings.profile_cache_dir) if settings.profile_cache else None
        )
        self.computing_since: float | None = None  # set by the compute thread while it works

    @property
    def samples(self) -> int:
        return len(self.device_trainer.dataset)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.device_trainer.dataset.input_shape

    @property
    def num_classes(self) -> int:
        return self.device_trainer.dataset.num_classes

    @property
    def labels(self) -> tuple[str, ...] | None:
        return self.device_trainer.dataset.label_names

    @property
    def trains_whole_model(self) -> bool:
        return self.device_trainer.trains_whole_model

    async def start_round(self, start: RoundStart, state: Mapping[str, np.ndarray]) -> None:
        await self.run(self.device_trainer.start_round, start, state)

    async def forward(self) -> tuple[WireTensor, np.ndarray]:
        return await self.run(self.device_trainer.forward)

    async def backward(self, grad: WireTensor) -> None:
        await self.run(self.device_trainer.backward, grad)

    async def local_step(self) -> tuple[float, int]:
        return await self.run(self.device_trainer.local_step)

    async def state(self) -> dict[str, np.ndarray]:
        return await self.run(self.device_trainer.state)

    async def profile(
        self, model: ModelInfo, batch_size: int, *, urgent: bool = False
    ) -> HostTimings:
        """From the profile cache, else measured (and cached), in the compute thread; urgent,
        the cache is read beside it, which may still be warming up. (Only then: torch work in
        another thread costs threads of its own, which compete with the compute thread's.)"""
        spec = ModelSpec.of(model)
        if urgent:
            cached = await asyncio.to_thread(self._cached_timings, spec, batch_size)
        else:
            cached = await self.run(self._cached_timings, spec, batch_size)
        if cached is not None:
            return cached
        return await self.run(self._measure_timings, spec, batch_size)

    async def check_model(self, model: ModelInfo) -> str | None:
        # In the compute thread: building a model beside it costs torch threads of its own.
        return await self.run(model_problem, model)

    async def warm_up(self) -> None:
        """torch's one-time costs (seconds of lazy imports), in the compute thread."""
        await self.run(warm_up_torch)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the compute thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._stamped, fn, args
        )

    def close(self) -> None:
        """Stop the compute thread (the step in hand finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _stamped(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        # In the compute thread (one): the stamp says since when it has been busy.
        self.computing_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.computing_since = None

    def _measure_timings(self, spec: ModelSpec, batch_size: int) -> HostTimings:
        """Profile every block here, and cache the result."""
        measured = profile_blocks(spec, batch_size)
        timings = HostTimings(measured.forward_s, measured.backward_s)
        if self._profile_cache is not None:
            self._profile_cache.store(self._cache_key(spec, batch_size), timings)
        return timings

    def _cached_timings(self, spec: ModelSpec, batch_size: int) -> HostTimings | None:
        if self._profile_cache is None:
            return None
        cached = self._profile_cache.load(self._cache_key(spec, batch_size), num_blocks(spec))
        if cached is not None:
            log.info("%s: block timings of %s from the profile cache", self.device_id, spec.name)
        return cached

    @staticmethod
    def _cache_key(spec: ModelSpec, batch_size: int) -> str:
        facts = host_facts(torch.__version__, torch.get_num_threads())
        return ProfileCache.key(architecture_fingerprint(spec), batch_size, facts)
