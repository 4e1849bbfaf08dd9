"""The device agent: the protocol session (``device_agent.session``) training with torch on the
device's own shard of the data, in one compute thread."""

from __future__ import annotations

import asyncio
import logging
import time

import torch

from device_agent.ports import Environment
from device_agent.session import DeviceSession
from device_agent.settings import DeviceSettings
from device_agent.trainer import DeviceTrainer, TorchTrainer
from splitnn.data import ArrayDataset
from splitnn.datasets import load_dataset, load_local, shard
from transport import Connect

# No single compute step (a batch, a profile, loading a round's weights) takes this long on the
# slowest board we support: one that does is wedged (see health_problem).
COMPUTE_STALL_S = 600.0

log = logging.getLogger(__name__)


class DeviceAgent(DeviceSession[TorchTrainer]):
    def __init__(
        self,
        settings: DeviceSettings,
        connect: Connect | None = None,
        environment: Environment | None = None,
    ) -> None:
        """``connect`` opens the agent's link (default: MQTT to ``settings.mqtt``);
        ``environment``: the machine's ports (default: this host as it is)."""
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        # Own data can take a while to decode: run() reads it, off the event loop.
        data = None if settings.data is not None else dataset_shard(settings)
        # Each device shuffles its own data its own way.
        trainer = DeviceTrainer(data, seed=settings.seed * 1_000_003 + settings.shard_index)
        super().__init__(
            settings, TorchTrainer(trainer, settings), environment=environment, connect=connect
        )

    async def run(self) -> None:
        own = self.trainer.device_trainer
        if own.data is None:
            own.data = await asyncio.to_thread(own_data, self.settings)
        # torch's one-time costs in the compute thread while we connect and register: the first
        # batch must not carry them, nor must the hello wait.
        warming = asyncio.ensure_future(self.trainer.warm_up())
        try:
            await super().run()
        finally:
            warming.cancel()
            self.trainer.close()

    def health_problem(self) -> str | None:
        """Also unhealthy: a compute step running for longer than COMPUTE_STALL_S."""
        problem = super().health_problem()
        since = self.trainer.computing_since
        if problem is not None or since is None:
            return problem
        if (busy := time.monotonic() - since) > COMPUTE_STALL_S:
            return f"a compute step has been running for {busy:.0f} s"
        return None


def dataset_shard(settings: DeviceSettings) -> ArrayDataset:
    """This device's shard of ``settings.dataset`` (an emulated device's data)."""
    full = load_dataset(settings.dataset, "train", data_dir=settings.data_dir, seed=settings.seed)
    return shard(
        full,
        settings.num_shards,
        settings.shard_index,
        count=settings.shard_count,
        scheme=settings.partition,
        seed=settings.seed,
    )


def own_data(settings: DeviceSettings) -> ArrayDataset:
    """The data at ``settings.data``, read whole (slow for many images: call it in a thread)."""
    assert settings.data is not None
    local = load_local(settings.data, "train", input_shape=settings.input_shape,
                       classes=settings.classes)  # fmt: skip
    log.info("%s: training data %s", settings.device_id, local.summary())
    return local.dataset
