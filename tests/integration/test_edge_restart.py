"""The edge killed with SIGKILL and started again resumes from its checkpoint; devices resync."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from device_agent import DeviceAgent
from tests.integration.helpers import device_settings, wait_until

ROUNDS = 4


async def start_edge(url: str, tmp_path, *extra: str) -> asyncio.subprocess.Process:
    command = [
        sys.executable, "-m", "ares", "edge", "--broker", url, "--rounds", str(ROUNDS),
        "--min-devices", "2", "--policy", "sl", "--split", "2", "--batch-size", "16",
        "--torch-threads", "1", "--checkpoint", str(tmp_path / "edge.ckpt"),
        "--report", str(tmp_path / "report.json"), *extra,
    ]  # fmt: skip
    log = open(tmp_path / "edge.log", "ab")  # noqa: SIM115, ASYNC230 - handed to the child
    return await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
    )


def rounds_done(tmp_path) -> int:
    try:
        return len(json.loads((tmp_path / "report.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


async def test_edge_resumes_after_sigkill_and_training_completes(mosquitto, tmp_path):
    agents = [DeviceAgent(device_settings(mosquitto, i, 2)) for i in range(2)]
    async with asyncio.timeout(300), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        first = await start_edge(mosquitto.url, tmp_path)
        await wait_until(lambda: rounds_done(tmp_path) >= 2, timeout_s=180)
        first.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        assert await first.wait() == -signal.SIGKILL

        second = await start_edge(mosquitto.url, tmp_path)
        await wait_until(lambda: rounds_done(tmp_path) > 2, timeout_s=180)
        print(f"edge killed to the next round done: {time.perf_counter() - killed:.1f} s")
        assert await second.wait() == 0

    report = json.loads((tmp_path / "report.json").read_text())
    log = (tmp_path / "edge.log").read_text()
    assert "resuming from" in log
    assert [r["round"] for r in report["rounds"]] == list(range(1, ROUNDS + 1))
    for entry in report["rounds"][-2:]:
        assert {d["status"] for d in entry["devices"].values()} == {"ok"}
    assert report["final_accuracy"] > report["initial_accuracy"] + 0.3
    assert all(agent.rounds_done >= ROUNDS for agent in agents)
    # The report covers the whole run, not the restarted process: every applied batch step of
    # the rounds it lists is counted, its wall time spans them, and it says where it resumed.
    listed = sum(d["batches"] for r in report["rounds"] for d in r["devices"].values())
    assert report["counters"]["batches"] == listed
    assert report["wall_s"] >= sum(r["duration_s"] for r in report["rounds"])
    (resumed,) = report["resumed"]
    assert resumed["after_round"] >= 2
    assert resumed["checkpoint_at"] <= resumed["resumed_at"]
