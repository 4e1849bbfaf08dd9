"""The device agent: the protocol session (``device_agent.session``) training with torch on the
device's own shard of the data, in one compute thread."""

from __future__ import annotations

import asyncio
import time

import torch

from device_agent.ports import Environment
from device_agent.session import DeviceSession
from device_agent.settings import DeviceSettings
from device_agent.trainer import DeviceTrainer, TorchTrainer
from splitnn.datasets import load_dataset, shard
from transport import Connect

# No single compute step (a batch, a profile, loading a round's weights) takes this long on the
# slowest board we support: one that does is wedged (see health_problem).
COMPUTE_STALL_S = 600.0


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
        full = load_dataset(
            settings.dataset, "train", data_dir=settings.data_dir, seed=settings.seed
        )
        data = shard(
            full,
            settings.num_shards,
            settings.shard_index,
            count=settings.shard_count,
            scheme=settings.partition,
            seed=settings.seed,
        )
        # Each device shuffles its own shard its own way.
        trainer = DeviceTrainer(data, seed=settings.seed * 1_000_003 + settings.shard_index)
        super().__init__(
            settings, TorchTrainer(trainer, settings), environment=environment, connect=connect
        )

    async def run(self) -> None:
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
