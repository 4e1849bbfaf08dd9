"""On tc-shaped links the devices' own uplink estimates follow the shaped rates.

The kernel shapes these links, so what holds however slow the host is: a publish returns at
its PUBACK, after all of the message but tbf's burst crossed at the rate, so no uplink sample,
nor the estimate made of them, is faster than that. A busy host only adds time (the device's
handling of each PUBACK), so the estimates are asked to be near the rate in the round whose
estimate the host disturbed least.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from broker import BrokerConfig, LocalBroker
from edge_service import EdgeService
from testbed.links import LinkLab, link_mode, tbf_params
from testbed.schedule import RateSchedule
from tests.integration.helpers import HANG_S, edge_settings, wait_for_connected

SUPPORT = link_mode()
pytestmark = pytest.mark.skipif(
    SUPPORT.mode != "tc", reason=f"needs tc-shaped network namespaces: {SUPPORT.reason}"
)
RATES_MBPS = {"slow": 8.0, "fast": 20.0}
# Cut 1 sends the largest activations, (32, 16, 8, 8) float32 a batch: the only messages large
# enough to be timed. Their payload is a little larger (header and labels), which only
# tightens the bound below.
ACTIVATION_BYTES = 32 * 16 * 8 * 8 * 4
NEAR = 0.85  # the least disturbed round's estimate reaches this share of the rate


async def test_uplink_estimates_follow_the_shaped_rates(tmp_path):
    subnet = f"10.214.{os.getpid() % 256}.0/24"
    with LinkLab(subnet) as lab, LocalBroker(BrokerConfig(extra_hosts=(lab.host_ip,))) as broker:
        devices: dict[str, asyncio.subprocess.Process] = {}
        try:
            for index, (name, mbps) in enumerate(RATES_MBPS.items()):
                link = lab.add_device(name, uplink=RateSchedule.constant(mbps))
                command = [
                    *link.exec_prefix(), sys.executable, "-m", "ares", "device",
                    "--broker", f"mqtt://{lab.host_ip}:{broker.port}", "--id", name,
                    "--shard", f"{index}/2", "--exit-on-finish", "--link-mode", "tc",
                    "--torch-threads", "1",
                ]  # fmt: skip
                with open(tmp_path / f"{name}.log", "wb") as log:  # noqa: ASYNC230 - tiny
                    devices[name] = await asyncio.create_subprocess_exec(
                        *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
                    )
            # The edge starts once both devices are up: its registration clock must not time
            # two fresh processes importing torch on a busy host.
            waited = await wait_for_connected(broker, devices, logs=tmp_path)
            print(f"device processes connected {waited:.1f} s after their launch")
            settings = edge_settings(
                broker, rounds=2, min_devices=2, split=1, batches_per_round=12, batch_size=32
            )
            async with asyncio.timeout(HANG_S):
                report = await EdgeService(settings).run()
                for device in devices.values():
                    await device.wait()
        finally:
            for device in devices.values():
                if device.returncode is None:
                    device.kill()
                    await device.wait()

    estimates = {d: [r.devices[d].uplink_mbps for r in report.rounds] for d in RATES_MBPS}
    print("uplink estimates per round (Mbit/s) against shaped rates:", estimates, RATES_MBPS)
    for name, shaped in RATES_MBPS.items():
        assert report.rounds[-1].devices[name].link_mode == "tc"
        per_round = [e for e in estimates[name] if e is not None]
        assert len(per_round) == len(report.rounds), (name, estimates[name])
        tbf = tbf_params(shaped)
        # Never faster than the rate beyond the burst, on any host.
        bound = tbf.rate_bps * ACTIVATION_BYTES / (ACTIVATION_BYTES - tbf.burst_bytes) / 1e6
        assert max(per_round) <= bound + 1e-3, (name, per_round, bound)
        # Near the rate when the host keeps up.
        assert max(per_round) >= NEAR * shaped, (name, per_round, shaped)
