"""SIGTERM stops the edge and the device agent cleanly: exit 0, within a bound, checkpoint kept."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from edge_service.checkpoint import read_checkpoint
from tests.integration.helpers import HANG_S, wait_for_connected, wait_until

BOUND_S = 10.0


async def spawn(*args: str) -> asyncio.subprocess.Process:
    quiet = asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ares", *args, stdin=quiet, stdout=quiet, stderr=quiet
    )


async def stop(process: asyncio.subprocess.Process) -> tuple[int, float]:
    began = time.perf_counter()
    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), BOUND_S + 5)
    return code, time.perf_counter() - began


def rounds_done(path) -> int:
    try:
        return len(json.loads(path.read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


async def test_sigterm_mid_round_exits_zero_within_a_bound(mosquitto, tmp_path):
    report, checkpoint = tmp_path / "report.json", tmp_path / "edge.ckpt"
    processes: list[asyncio.subprocess.Process] = []
    try:
        device = await spawn(
            "device", "--broker", mosquitto.url, "--id", "dev-0", "--torch-threads", "1"
        )
        processes.append(device)
        # The edge's registration clock starts once the device is up, not when it was launched.
        await wait_for_connected(mosquitto, {"dev-0": device})
        edge = await spawn(
            "edge", "--broker", mosquitto.url, "--rounds", "50", "--policy", "sl",
            "--split", "2", "--batch-size", "8", "--torch-threads", "1",
            "--report", str(report), "--checkpoint", str(checkpoint),
        )  # fmt: skip
        processes.append(edge)
        await wait_until(lambda: rounds_done(report) >= 1, timeout_s=HANG_S)
        await asyncio.sleep(0.3)  # into the next round
        code, took = await stop(edge)
        print(f"edge: exit {code} {took:.2f} s after SIGTERM")
        assert code == 0
        assert took < BOUND_S
        saved = read_checkpoint(checkpoint)
        assert saved is not None
        assert saved.round >= 1

        code, took = await stop(device)
        print(f"device: exit {code} {took:.2f} s after SIGTERM")
        assert code == 0
        assert took < BOUND_S
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
