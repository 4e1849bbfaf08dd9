"""A device process killed and restarted mid-run: how long until it trains again?

Starts a private Mosquitto, ``ares edge`` and N ``ares device`` processes, waits until round
``--kill-round`` is under way, kills one device with SIGKILL, starts it again at once and
measures, from the new process's start (a fresh interpreter, as systemd would restart it):

- ``hello``: its registration arrives at the broker (imports, data, connect);
- ``profile``: its telemetry with the block timings arrives (profiling or the cached profile);
- ``training``: its first activation of a round arrives (it waited for the next round start).

The last includes waiting for the next round to start, which depends on the round length; the
first two are the device's own start-up. Run it once per repeat and print min/median/max.

    python benchmarks/bench_device_restart.py [--repeats 3] [--devices 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from broker import LocalBroker
from schemas import DeviceChannel, Topics
from transport import MqttLink, MqttSettings


def spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ares", *args], stdout=out, stderr=subprocess.STDOUT, env=env
        )


async def one_restart(
    devices: int, kill_round: int, rounds: int, run_dir: Path
) -> dict[str, float]:
    topics = Topics("ares/v1")
    with LocalBroker() as broker:
        env = {**os.environ, "ARES_MQTT__URL": broker.url, "ARES_TORCH_THREADS": "1"}
        edge = spawn(
            ["edge", "--rounds", str(rounds), "--min-devices", str(devices), "--policy", "sl",
             "--split", "2", "--batches-per-round", "40", "--batch-size", "16", "--fresh",
             "--checkpoint", str(run_dir / "edge.ckpt")],
            run_dir / "edge.log", env,
        )  # fmt: skip

        def device(i: int) -> subprocess.Popen[bytes]:
            return spawn(
                ["device", "--id", f"dev-{i}", "--shard", f"{i}/{devices}", "--exit-on-finish"],
                run_dir / f"dev-{i}.log", env,
            )  # fmt: skip

        procs = [device(i) for i in range(devices)]
        victim = devices - 1
        watch = [
            (topics.edge_status, 1),
            *((topics.device(f"dev-{victim}", ch), 1) for ch in
              (DeviceChannel.HELLO, DeviceChannel.TELEMETRY, DeviceChannel.ACT)),
        ]  # fmt: skip
        marks: dict[str, float] = {}
        try:
            async with (
                asyncio.timeout(240),
                MqttLink(MqttSettings(url=broker.url), "restart-bench", watch) as link,
            ):
                restarted_at: float | None = None
                async for message in link.messages():
                    if message.topic == topics.edge_status and restarted_at is None:
                        status = json.loads(message.payload)
                        if status.get("state") == "training" and status["round"] >= kill_round:
                            procs[victim].send_signal(signal.SIGKILL)
                            procs[victim].wait()
                            restarted_at = time.perf_counter()
                            procs[victim] = device(victim)
                        continue
                    if restarted_at is None:
                        continue
                    channel = message.topic.rsplit("/", 1)[-1]
                    elapsed = time.perf_counter() - restarted_at
                    if channel == "hello":
                        marks.setdefault("hello", elapsed)
                    elif channel == "telemetry" and b'"compute":{' in message.payload:
                        marks.setdefault("profile", elapsed)
                    elif channel == "act" and "hello" in marks:
                        marks["training"] = elapsed
                        break
        finally:
            for proc in [*procs, edge]:
                proc.send_signal(signal.SIGTERM)
            for proc in [*procs, edge]:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--kill-round", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    runs: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            marks = asyncio.run(one_restart(args.devices, args.kill_round, args.rounds, Path(tmp)))
        print(f"run {repeat + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in marks.items()))
        runs.append(marks)
    print("\nrestart to ...   min     median  max   (s, from the new process's start)")
    for key in ("hello", "profile", "training"):
        values = [r[key] for r in runs if key in r]
        if values:
            print(f"  {key:<12} {min(values):7.2f} {statistics.median(values):7.2f} "
                  f"{max(values):7.2f}   ({len(values)} of {len(runs)} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
