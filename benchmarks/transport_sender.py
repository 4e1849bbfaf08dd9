"""The sending side of bench_transport.py: activation frames, as fast as the transport allows.

Run as its own process (inside a device's network namespace for a shaped link). It connects
once, prints ``READY``, then serves one JSON command per stdin line, ``{"size", "count",
"window", "mbps", "timeout_s"}``: it encodes the frames (untimed; encoding is measured on its
own), sends one untimed warm-up frame, then ``count`` frames with at most ``window``
unacknowledged (1: each send awaited, as the device agent does) and prints one JSON line:
``t_start`` and ``t_end`` (time.monotonic(), the same clock as the receiver's on this machine),
the sends' durations (median, p99, max) and the frames' bytes. EOF on stdin ends it.

Transports: ``mqtt`` publishes QoS 1 through ``MqttLink`` (acknowledged by the broker's PUBACK);
``tcp`` writes length-prefixed frames on one plain TCP connection, each acknowledged by the
receiver with one byte once it has decoded the frame. ``--token-bucket`` shapes sends in the
application (transport.shaping) where tc is not available; ``mbps`` then sets its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from benchutil import summary

import runtime
from schemas import ActivationMeta, encode_frame, to_meta
from transport import MqttLink, MqttSettings
from transport.shaping import LinkShaper
from transport.tasks import cancel_and_wait

BATCH = 8  # samples per activation frame
DISTINCT_FRAMES = 4  # encoded up front and cycled, so 4 MB messages do not fill the memory
CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 600.0  # the benchmark may take a while between two commands
ACK = b"k"
MAX_FRAME_BYTES = 2**28
MQTT_TOPIC = "ares/v1/dev/bench/act"
UNSHAPED_BPS = 1e12  # a token bucket this fast delays nothing measurable

Send = Callable[[bytes], Awaitable[None]]


def activation_tensors(tensor_bytes: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Float32 activations of ``tensor_bytes`` (a batch of BATCH) and their int64 labels."""
    features = max(1, tensor_bytes // (4 * BATCH))
    return {
        "act": rng.standard_normal((BATCH, features), dtype=np.float32),
        "labels": rng.integers(0, 10, size=BATCH, dtype=np.int64),
    }


def activation_frame(tensors: dict[str, np.ndarray], seq: int) -> bytes:
    """The activation frame a device publishes for batch ``seq``."""
    meta = ActivationMeta(device_id="bench", round=1, seq=seq)
    return encode_frame(to_meta(meta), tensors, max_bytes=MAX_FRAME_BYTES)


@asynccontextmanager
async def mqtt_sender(target: str, shaper: LinkShaper | None) -> AsyncIterator[Send]:
    settings = MqttSettings(url=target, connect_timeout_s=CONNECT_TIMEOUT_S)
    async with MqttLink(settings, "bench-sender", [], shaper=shaper) as link:

        async def send(frame: bytes) -> None:
            await link.publish(MQTT_TOPIC, frame, qos=1)

        yield send


@asynccontextmanager
async def tcp_sender(target: str, shaper: LinkShaper | None) -> AsyncIterator[Send]:
    host, port = target.rsplit(":", 1)
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, int(port))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = asyncio.get_running_loop()
    pending: deque[asyncio.Future[None]] = deque()  # one per unacknowledged frame, in order

    async def read_acks() -> None:
        while True:
            await reader.readexactly(len(ACK))
            pending.popleft().set_result(None)

    async def send(frame: bytes) -> None:
        acked = loop.create_future()
        pending.append(acked)
        if shaper is not None:
            await shaper.uplink.transfer(len(frame))
        writer.writelines([len(frame).to_bytes(4, "big"), frame])
        await writer.drain()
        await acked

    acks = asyncio.create_task(read_acks())
    try:
        yield send
    finally:
        await cancel_and_wait(acks)
        writer.close()


async def timed_sends(send: Send, frames: list[bytes], count: int, window: int) -> dict[str, Any]:
    """``count`` sends with at most ``window`` in flight; times in time.monotonic()."""
    durations: list[float] = []
    slots = asyncio.Semaphore(window)

    async def one(frame: bytes) -> None:
        began = time.monotonic()
        try:
            await send(frame)
        finally:
            slots.release()
        durations.append(time.monotonic() - began)

    t_start = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        for seq in range(count):
            await slots.acquire()
            tasks.create_task(one(frames[seq % len(frames)]))
    return {
        "t_start": t_start,
        "t_end": time.monotonic(),
        "send_s": summary(durations),
        "payload_bytes": sum(len(frames[seq % len(frames)]) for seq in range(count)),
    }


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    shaper = LinkShaper.at(UNSHAPED_BPS) if args.token_bucket else None
    opened = mqtt_sender if args.mode == "mqtt" else tcp_sender
    async with opened(args.target, shaper) as send:
        print("READY", flush=True)
        while True:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                line = await stdin.readline()
            if not line:
                return
            command = json.loads(line)
            if shaper is not None:
                shaper.set_rates(command["mbps"] * 1e6)
            tensors = activation_tensors(command["size"], np.random.default_rng(command["size"]))
            count = command["count"]
            frames = [activation_frame(tensors, seq) for seq in range(min(count, DISTINCT_FRAMES))]
            async with asyncio.timeout(command["timeout_s"]):
                # Untimed: after the pause between two points TCP restarts from a small
                # congestion window (slow start after idle); the benchmark measures steady state.
                await send(frames[0])
                result = await timed_sends(send, frames, count, command["window"])
            print(json.dumps(result), flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["mqtt", "tcp"], required=True)
    parser.add_argument("--target", required=True, help="mqtt://host:port or host:port (tcp)")
    parser.add_argument("--token-bucket", action="store_true", help="shape in the app (no tc)")
    return parser.parse_args()


if __name__ == "__main__":
    runtime.run(lambda: serve(parse_args()))
