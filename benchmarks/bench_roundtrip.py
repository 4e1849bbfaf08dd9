"""Batch round trip through a real Mosquitto: activations up, gradient down.

Runs `ares demo` (broker, edge and device as separate processes) for a few configurations and
prints, per configuration, the median time a device waits from publishing a batch's activations
to holding its gradient (server compute included), the edge's compute per batch, and the bytes
each way. Also times the frame codec alone.

With ``--tls`` it runs the production setup instead (``ares broker init``: passwords, ACL, TLS)
and the same round trip twice per configuration: the device over the TLS listener, and over the
plain loopback listener with the same credentials and ACL. The edge sits on the loopback
listener both times, as deployed, so the difference is the device's TLS alone.

    python benchmarks/bench_roundtrip.py [--rounds 3] [--tls]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from broker import LocalBroker, free_port
from broker.provision import BrokerSetup
from broker.setup_dir import SetupDir
from broker.sizing import frame_sizes, model_spec
from schemas import decode_frame, encode_frame

CONFIGS = [
    # model, dataset, cut, batch size, devices
    ("small_cnn", "digits", 2, 32, 1),
    ("small_cnn", "digits", 2, 32, 3),
    ("vgg5", "synthetic", 5, 100, 1),
    ("vgg5", "synthetic", 1, 100, 1),
]
ACT_ELEMENTS = {("small_cnn", 2): 32 * 8 * 8, ("vgg5", 5): 4096, ("vgg5", 1): 32768}
TLS_CONFIGS = [c for c in CONFIGS if c[4] == 1]  # one device: the link's cost, not contention
BATCHES_PER_ROUND = 20


def run_config(model: str, dataset: str, cut: int, batch: int, devices: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "ares", "demo", "--devices", str(devices),
            "--rounds", str(rounds), "--model", model, "--dataset", dataset, "--split", str(cut),
            "--policy", "sl", "--batch-size", str(batch), "--batches-per-round", "20",
            "--run-dir", tmp, "--report", str(report_path),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=900)
        report = json.loads(report_path.read_text())
    rtt, server = summarise(report)
    print(
        f"{describe(model, dataset, cut, batch, devices)}  round trip median {rtt * 1e3:7.2f} ms  "
        f"(edge compute {server * 1e3:6.2f} ms)"
    )


def summarise(report: dict[str, Any]) -> tuple[float, float]:
    """Median batch round trip and edge compute per batch, in seconds, over rounds 2 and on."""
    # Round 1 pays one-off costs (first allocations, connection warm-up): report the rest.
    entries = [d for r in report["rounds"][1:] for d in r["devices"].values()]
    rtt = statistics.median(d["rtt_median_s"] for d in entries)
    server = statistics.median(d["server_s"] / d["batches"] for d in entries)
    return rtt, server


def describe(model: str, dataset: str, cut: int, batch: int, devices: int) -> str:
    act_bytes = ACT_ELEMENTS[(model, cut)] * batch * 4
    return (
        f"{model:<10} {dataset:<10} cut {cut}  batch {batch:>3}  devices {devices}  "
        f"act {act_bytes / 1e6:6.2f} MB"
    )


# --- the production setup: TLS against plain TCP ------------------------------------------------


def bench_tls(rounds: int) -> None:
    """Each TLS configuration through an ``ares broker init`` setup, over TLS and over TCP."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        target = SetupDir(work / "broker")
        # Sized for the largest configuration, as a deployment would be.
        largest = max(
            frame_sizes(model_spec(m, d), b).payload_limit() for m, d, _, b, _ in TLS_CONFIGS
        )
        setup = BrokerSetup(
            hosts=("localhost", "127.0.0.1"),
            mount_path=PurePosixPath(target.root.absolute()),
            max_payload_bytes=largest,
            tls_port=free_port(),
            local_port=free_port(),
            bind="127.0.0.1",
            # Started as root, mosquitto would switch to "mosquitto", who cannot read 0600 files.
            run_as="root" if os.geteuid() == 0 else None,
        )
        target.init(setup)
        shutil.copy(target.certs / "ca.crt", target.clients / "ca.crt")
        device = target.add_device("dev-0", ca_path=PurePosixPath(target.clients / "ca.crt"))
        with LocalBroker.from_config_file(target.conf, port=setup.local_port):
            print(
                f"production broker: max_packet_size {setup.max_packet_size}, "
                f"TLS :{setup.tls_port}, loopback :{setup.local_port}"
            )
            for model, dataset, cut, batch, devices in TLS_CONFIGS:
                results = {}
                transports = (
                    ("tcp", setup.local_url),
                    ("tls", f"mqtts://localhost:{setup.tls_port}"),
                )
                for transport, url in transports:
                    mqtt_env = {
                        "ARES_MQTT__URL": url,
                        "ARES_MQTT__USERNAME": "dev-0",
                        "ARES_MQTT__PASSWORD": device.config.password,
                        "ARES_MQTT__MAX_PAYLOAD_BYTES": str(setup.max_payload_bytes),
                    }
                    if transport == "tls":
                        mqtt_env["ARES_MQTT__CA_FILE"] = str(target.clients / "ca.crt")
                    report = _run_services(
                        work, target.client_file("edge"), mqtt_env, model, dataset, cut, batch,
                        rounds,
                    )  # fmt: skip
                    results[transport] = summarise(report)
                (tcp, tcp_server), (tls, tls_server) = results["tcp"], results["tls"]
                # Without the edge's compute, which varies with the machine's load, what is
                # left is the transfer through the broker both ways: where TLS costs.
                tcp_net, tls_net = tcp - tcp_server, tls - tls_server
                print(
                    f"{describe(model, dataset, cut, batch, devices)}  round trip median: "
                    f"tcp {tcp * 1e3:7.2f} ms, tls {tls * 1e3:7.2f} ms; without edge compute: "
                    f"tcp {tcp_net * 1e3:7.2f} ms, tls {tls_net * 1e3:7.2f} ms "
                    f"({(tls_net - tcp_net) * 1e3:+.2f} ms)"
                )


def _run_services(
    work: Path,
    edge_config: Path,
    device_env: dict[str, str],
    model: str,
    dataset: str,
    cut: int,
    batch: int,
    rounds: int,
) -> dict[str, Any]:
    """The edge (its generated config: loopback listener) and one device, as processes."""
    report_path = work / "report.json"
    report_path.unlink(missing_ok=True)
    env = {**os.environ, "ARES_TORCH_THREADS": "1"}
    edge_args = [
        "edge", "--config", str(edge_config), "--rounds", str(rounds), "--min-devices", "1",
        "--model", model, "--dataset", dataset, "--split", str(cut), "--batch-size", str(batch),
        "--batches-per-round", str(BATCHES_PER_ROUND), "--policy", "sl", "--fresh",
        "--checkpoint", str(work / "edge.ckpt"), "--report", str(report_path),
    ]  # fmt: skip
    device_args = ["device", "--id", "dev-0", "--dataset", dataset, "--exit-on-finish"]
    with _processes() as spawn:
        edge = spawn(edge_args, env, work / "edge.log")
        device = spawn(device_args, {**env, **device_env}, work / "device.log")
        try:
            edge.wait(timeout=900)
            device.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"benchmark run timed out; logs in {work}") from None
        if edge.returncode != 0:
            tail = (work / "edge.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"the edge failed (exit {edge.returncode}):\n{tail}")
    return dict(json.loads(report_path.read_text()))


@contextlib.contextmanager
def _processes() -> Iterator[Any]:
    """Start ``python -m ares`` processes; whatever happens, none outlives the block."""
    started: list[subprocess.Popen[bytes]] = []
    logs = []

    def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        logs.append(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ares", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        started.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for out in logs:
            out.close()


def bench_codec() -> None:
    for size in (64 * 1024, 4 * 1024 * 1024):
        array = np.random.default_rng(0).random(size // 4, dtype=np.float32)
        payload = encode_frame({"round": 1, "seq": 0}, {"act": array})
        repeats = 200
        began = time.perf_counter()
        for _ in range(repeats):
            encode_frame({"round": 1, "seq": 0}, {"act": array})
        encode_s = (time.perf_counter() - began) / repeats
        began = time.perf_counter()
        for _ in range(repeats):
            decode_frame(payload)
        decode_s = (time.perf_counter() - began) / repeats
        print(
            f"codec {size / 1024:7.0f} KiB: encode {encode_s * 1e3:.3f} ms, "
            f"decode {decode_s * 1e3:.4f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tls", action="store_true", help="production broker: TLS against plain TCP"
    )
    args = parser.parse_args()
    if args.tls:
        bench_tls(args.rounds)
        return
    bench_codec()
    for config in CONFIGS:
        run_config(*config, rounds=args.rounds)


if __name__ == "__main__":
    main()
