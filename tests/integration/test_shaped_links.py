"""On tc-shaped links the devices' own uplink estimates match the shaped rates."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from broker import BrokerConfig, LocalBroker
from edge_service import EdgeService
from testbed.links import LinkLab, link_mode
from testbed.schedule import RateSchedule
from tests.integration.helpers import edge_settings

SUPPORT = link_mode()
pytestmark = pytest.mark.skipif(
    SUPPORT.mode != "tc", reason=f"needs tc-shaped network namespaces: {SUPPORT.reason}"
)
RATES_MBPS = {"slow": 8.0, "fast": 20.0}


async def test_uplink_estimates_are_within_15_percent_of_the_shaped_rates():
    subnet = f"10.214.{os.getpid() % 256}.0/24"
    with LinkLab(subnet) as lab, LocalBroker(BrokerConfig(extra_hosts=(lab.host_ip,))) as broker:
        devices = []
        for index, (name, mbps) in enumerate(RATES_MBPS.items()):
            link = lab.add_device(name, uplink=RateSchedule.constant(mbps))
            command = [
                *link.exec_prefix(), sys.executable, "-m", "ares", "device",
                "--broker", f"mqtt://{lab.host_ip}:{broker.port}", "--id", name,
                "--shard", f"{index}/2", "--exit-on-finish", "--link-mode", "tc",
                "--torch-threads", "1",
            ]  # fmt: skip
            quiet = asyncio.subprocess.DEVNULL
            process = await asyncio.create_subprocess_exec(
                *command, stdin=quiet, stdout=quiet, stderr=quiet
            )
            devices.append(process)
        # Cut 1 sends the largest activations (131 kB a batch): plenty of uplink samples.
        settings = edge_settings(
            broker, rounds=2, min_devices=2, split=1, batches_per_round=12, batch_size=32
        )
        try:
            async with asyncio.timeout(240):
                report = await EdgeService(settings).run()
                for device in devices:
                    await device.wait()
        finally:
            for device in devices:
                if device.returncode is None:
                    device.kill()
                    await device.wait()

    estimates = {d: r.uplink_mbps for d, r in report.rounds[-1].devices.items()}
    print("uplink estimates (Mbit/s) against shaped rates:", estimates, RATES_MBPS)
    for name, shaped in RATES_MBPS.items():
        assert report.rounds[-1].devices[name].link_mode == "tc"
        estimate = estimates[name]
        assert estimate is not None
        assert abs(estimate - shaped) / shaped < 0.15, (name, estimate, shaped)
