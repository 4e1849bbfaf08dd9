"""Transport benchmark: activation frames through Mosquitto, against raw TCP and shaped links.

(a) Loopback goodput: activation frames (float32 tensors, encoded with schemas.codec) published
    QoS 1 through a private Mosquitto to a subscriber that decodes them, against the same bytes
    length-prefixed over one raw TCP connection (the ceiling). Goodput = frame bytes / time from
    the sender's first send to the receiver's last decode.
(b) Shaped link: the sender runs in a network namespace behind a tbf-shaped veth (testbed.links)
    and reaches the broker on the bridge; goodput as a share of the shaped rate. Falls back to
    the in-app token bucket (transport.shaping) where tc is unavailable, and says so.
(c) Per-message overhead: encode, publish -> deliver, PUBACK and decode times for small and large
    tensors, one message at a time, on loopback.
(d) Wire formats (benchmarks/wire_format_costs.py): encode and decode cost per MB of float32,
    float16, int8 and int4 activations, and the bytes on the wire per element. No broker.

Sends are measured two ways: awaited (one message in flight: what the device agent does today)
and pipelined (``--window`` QoS 1 messages in flight). The sender is its own process
(benchmarks/transport_sender.py); the receiver is this process. Every point is repeated
``--repeats`` times, interleaved, and reported as median [min-max] so the noise shows.

    python benchmarks/bench_transport.py [--quick] [--repeats 3] [--parts abcd] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import wire_format_costs
from benchutil import (
    cpu_seconds,
    machine_info,
    print_machine,
    print_table,
    summary,
    write_json,
)
from transport_sender import (
    ACK,
    MAX_FRAME_BYTES,
    MQTT_TOPIC,
    activation_frame,
    activation_tensors,
)

import runtime
from broker import BrokerConfig, LocalBroker
from schemas import ActivationMeta, decode_frame, parse_meta
from testbed.links import EmulatedLink, LinkLab, link_mode
from testbed.schedule import RateSchedule
from transport import MqttLink, MqttSettings

SENDER = Path(__file__).with_name("transport_sender.py")
KIB, MIB = 1024, 1024 * 1024
TARGET_SHARE = 0.90  # of the shaped rate, for messages of 256 KiB and more
TARGET_MIN_BYTES = 256 * KIB
READY_TIMEOUT_S = 60.0  # the sender imports numpy, aiomqtt, pydantic; a loaded box is slow


@dataclass(frozen=True)
class Plan:
    """What to measure; ``--quick`` shrinks every dimension."""

    loopback_sizes: tuple[int, ...]
    shaped_sizes: tuple[int, ...]
    rates_mbps: tuple[float, ...]
    window: int
    repeats: int
    loopback_volume: int  # bytes per loopback point
    shaped_seconds: float  # expected duration of one shaped point
    min_count: int
    max_count: int
    overhead_reps: dict[int, int]  # tensor bytes -> messages
    format_reps: int  # encodes and decodes per wire format and tensor, part (d)

    def loopback_count(self, size: int) -> int:
        return min(self.max_count, max(self.min_count, self.loopback_volume // size))

    def shaped_count(self, size: int, mbps: float) -> int:
        volume = mbps * 1e6 / 8 * self.shaped_seconds
        return min(self.max_count, max(self.min_count, int(volume // size)))


FULL = Plan(
    loopback_sizes=(4 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB),
    shaped_sizes=(64 * KIB, 256 * KIB, MIB, 4 * MIB),
    rates_mbps=(20.0, 50.0),
    window=8,
    repeats=3,
    loopback_volume=128 * MIB,
    shaped_seconds=2.5,
    min_count=5,
    max_count=4000,
    overhead_reps={KIB: 400, 4 * MIB: 40},
    format_reps=15,
)
QUICK = Plan(
    loopback_sizes=(4 * KIB, 256 * KIB),
    shaped_sizes=(256 * KIB,),
    rates_mbps=(50.0,),
    window=8,
    repeats=1,
    loopback_volume=2 * MIB,
    shaped_seconds=0.3,
    min_count=2,
    max_count=200,
    overhead_reps={KIB: 30, 4 * MIB: 3},
    format_reps=3,
)


@dataclass
class Sample:
    """One measured point."""

    transport: str  # mqtt or tcp
    size: int  # tensor bytes per frame
    window: int
    count: int
    payload_bytes: int
    seconds: float
    send_s_median: float
    rate_mbps: float | None = None  # the shaped rate, None on loopback
    # CPU seconds per message: the sending process, Mosquitto (0 for raw TCP), the receiver.
    sender_cpu_s: float = 0.0
    broker_cpu_s: float = 0.0
    receiver_cpu_s: float = 0.0

    @property
    def goodput_bps(self) -> float:
        return self.payload_bytes * 8 / self.seconds


# ---------------------------------------------------------------------------------------------
# The receiving side (this process)


class Receiver:
    """An MQTT subscriber and a TCP server that decode every frame they get."""

    def __init__(self, link: MqttLink, broker_pid: int) -> None:
        self.link = link
        self.broker_pid = broker_pid
        self._tcp_target: tuple[int, asyncio.Future[float]] | None = None
        self._tcp_seen = 0

    async def mqtt_frames(self, count: int) -> float:
        """Wait for ``count`` frames; time.monotonic() when the last one was decoded."""
        for _ in range(count):
            message = await self.link.receive()
            frame = decode_frame(message.payload, max_bytes=MAX_FRAME_BYTES)
            parse_meta(ActivationMeta, frame.meta)
        return time.monotonic()

    def expect_tcp(self, count: int) -> asyncio.Future[float]:
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._tcp_target, self._tcp_seen = (count, done), 0
        return done

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                frame = decode_frame(await reader.readexactly(size), max_bytes=MAX_FRAME_BYTES)
                parse_meta(ActivationMeta, frame.meta)
                writer.write(ACK)
                self._tcp_seen += 1
                target = self._tcp_target
                if target is not None and self._tcp_seen == target[0]:
                    target[1].set_result(time.monotonic())
        except asyncio.IncompleteReadError:
            pass  # the sender hung up
        finally:
            writer.close()


class Sender:
    """A transport_sender.py process: one connection, one command per measured point."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name

    @classmethod
    @asynccontextmanager
    async def started(
        cls, mode: str, target: str, prefix: Sequence[str] = (), token_bucket: bool = False
    ) -> AsyncIterator[Sender]:
        command = [*prefix, sys.executable, str(SENDER), "--mode", mode, "--target", target]
        if token_bucket:
            command.append("--token-bucket")
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        sender = cls(process, f"{mode} sender")
        try:
            line = await sender._line(READY_TIMEOUT_S)
            if line != "READY":
                raise RuntimeError(f"{sender.name} did not start: {line!r}")
            yield sender
        finally:
            await sender._stop()

    async def run(self, command: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({**command, "timeout_s": timeout_s}).encode() + b"\n")
        await self.process.stdin.drain()
        result: dict[str, Any] = json.loads(await self._line(timeout_s + 5))
        return result

    async def _line(self, timeout_s: float) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} exited: {await self._stderr()}")
        return line.decode().strip()

    async def _stderr(self) -> str:
        assert self.process.stderr is not None
        async with asyncio.timeout(5):
            return (await self.process.stderr.read()).decode()[-2000:]

    async def _stop(self) -> None:
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def measure(
    sender: Sender,
    receiver: Receiver,
    transport: str,
    size: int,
    window: int,
    count: int,
    rate_mbps: float | None,
) -> Sample:
    # Generous: a tenth of the expected rate, and never under 30 s.
    expected_bps = (rate_mbps or 800) * 1e6 / 8
    timeout_s = 30 + 10 * size * count / expected_bps
    command = {"size": size, "count": count, "window": window, "mbps": rate_mbps or 1e6}
    cpu = _cpu(sender, receiver)
    last: asyncio.Future[float]
    # The sender's untimed warm-up frame arrives first: one more to wait for.
    if transport == "mqtt":
        last = asyncio.ensure_future(receiver.mqtt_frames(count + 1))
    else:
        last = receiver.expect_tcp(count + 1)
    try:
        result = await sender.run(command, timeout_s)
        async with asyncio.timeout(timeout_s):
            t_last = await last
    finally:
        last.cancel()
    sender_cpu, broker_cpu, receiver_cpu = (
        (after - before) / (count + 1)
        for before, after in zip(cpu, _cpu(sender, receiver), strict=True)
    )
    return Sample(
        transport=transport,
        size=size,
        window=window,
        count=count,
        payload_bytes=result["payload_bytes"],
        seconds=t_last - result["t_start"],
        send_s_median=result["send_s"]["median"],
        rate_mbps=rate_mbps,
        sender_cpu_s=sender_cpu,
        broker_cpu_s=broker_cpu,
        receiver_cpu_s=receiver_cpu,
    )


def _cpu(sender: Sender, receiver: Receiver) -> tuple[float, float, float]:
    return (
        cpu_seconds(sender.process.pid),
        cpu_seconds(receiver.broker_pid),
        time.process_time(),
    )


@asynccontextmanager
async def receiving(broker: LocalBroker, tcp_host: str) -> AsyncIterator[tuple[Receiver, str]]:
    """The subscriber and the TCP server; yields the receiver and the TCP target address."""
    assert broker.pid is not None
    link = MqttLink(MqttSettings(url=broker.url), "bench-receiver", [(MQTT_TOPIC, 1)])
    async with link:
        receiver = Receiver(link, broker.pid)
        server = await asyncio.start_server(receiver.serve_tcp, tcp_host, 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            yield receiver, f"{tcp_host}:{port}"


# ---------------------------------------------------------------------------------------------
# (a) and (b): goodput


async def loopback_goodput(plan: Plan) -> list[Sample]:
    samples: list[Sample] = []
    async with LocalBroker(BrokerConfig(log_types=("error",))) as broker, AsyncExitStack() as stack:
        receiver, tcp_target = await stack.enter_async_context(receiving(broker, "127.0.0.1"))
        mqtt = await stack.enter_async_context(Sender.started("mqtt", broker.url))
        tcp = await stack.enter_async_context(Sender.started("tcp", tcp_target))
        for _ in range(plan.repeats):
            for size in plan.loopback_sizes:
                for window in (1, plan.window):
                    count = plan.loopback_count(size)
                    for transport, sender in (("mqtt", mqtt), ("tcp", tcp)):
                        sample = await measure(sender, receiver, transport, size, window, count,
                                               None)  # fmt: skip
                        samples.append(sample)
    return samples


async def shaped_goodput(plan: Plan, shaping: str) -> tuple[str, list[Sample]]:
    """Goodput on emulated links: ``tc`` when we can (or are told), else the token bucket."""
    if shaping != "token-bucket":
        support = link_mode()
        if support.mode == "tc":
            return "tc", await _shaped_tc(plan)
        if shaping == "tc":
            raise RuntimeError(f"--shaping tc: not available here: {support.reason}")
        print(f"  NOTE: no tc here ({support.reason}); shaping with the in-app token bucket")
    return "token-bucket", await _shaped_token_bucket(plan)


async def _shaped_tc(plan: Plan) -> list[Sample]:
    subnet = f"10.215.{os.getpid() % 256}.0/24"  # per pid: parallel runs do not collide
    samples: list[Sample] = []
    async with LinkLab(subnet=subnet) as lab, AsyncExitStack() as stack:
        link = lab.add_device("tx", RateSchedule.constant(plan.rates_mbps[0]))
        broker = await stack.enter_async_context(
            LocalBroker(BrokerConfig(extra_hosts=(lab.host_ip,), log_types=("error",)))
        )
        receiver, tcp_target = await stack.enter_async_context(receiving(broker, lab.host_ip))
        url = f"mqtt://{lab.host_ip}:{broker.port}"
        prefix = link.exec_prefix()
        mqtt = await stack.enter_async_context(Sender.started("mqtt", url, prefix))
        tcp = await stack.enter_async_context(Sender.started("tcp", tcp_target, prefix))
        for _ in range(plan.repeats):
            for mbps in plan.rates_mbps:
                await asyncio.to_thread(_set_rate, link, mbps)
                samples += await _shaped_points(plan, mbps, receiver, mqtt, tcp)
    return samples


def _set_rate(link: EmulatedLink, mbps: float) -> None:
    link.set_rate(uplink_mbps=mbps, downlink_mbps=mbps)


async def _shaped_token_bucket(plan: Plan) -> list[Sample]:
    samples: list[Sample] = []
    async with LocalBroker(BrokerConfig(log_types=("error",))) as broker, AsyncExitStack() as stack:
        receiver, tcp_target = await stack.enter_async_context(receiving(broker, "127.0.0.1"))
        mqtt = await stack.enter_async_context(
            Sender.started("mqtt", broker.url, token_bucket=True)
        )
        tcp = await stack.enter_async_context(Sender.started("tcp", tcp_target, token_bucket=True))
        for _ in range(plan.repeats):
            for mbps in plan.rates_mbps:
                samples += await _shaped_points(plan, mbps, receiver, mqtt, tcp)
    return samples


async def _shaped_points(
    plan: Plan, mbps: float, receiver: Receiver, mqtt: Sender, tcp: Sender
) -> list[Sample]:
    samples = []
    for size in plan.shaped_sizes:
        count = plan.shaped_count(size, mbps)
        for window in (1, plan.window):
            for transport, sender in (("mqtt", mqtt), ("tcp", tcp)):
                samples.append(
                    await measure(sender, receiver, transport, size, window, count, mbps)
                )
    return samples


# ---------------------------------------------------------------------------------------------
# (c) per-message overhead


@dataclass
class Overhead:
    size: int
    payload_bytes: int
    encode_s: list[float] = field(default_factory=list)
    deliver_s: list[float] = field(default_factory=list)  # publish call -> subscriber has it
    puback_s: list[float] = field(default_factory=list)  # publish call -> PUBACK
    decode_s: list[float] = field(default_factory=list)


async def per_message_overhead(plan: Plan) -> list[Overhead]:
    results = []
    async with LocalBroker(BrokerConfig(log_types=("error",))) as broker:
        settings = MqttSettings(url=broker.url)
        subscriber = MqttLink(settings, "bench-overhead-rx", [(MQTT_TOPIC, 1)])
        publisher = MqttLink(settings, "bench-overhead-tx", [])
        async with subscriber, publisher:
            for size, reps in plan.overhead_reps.items():
                results.append(await _overhead(size, reps, publisher, subscriber))
    return results


async def _overhead(size: int, reps: int, publisher: MqttLink, subscriber: MqttLink) -> Overhead:
    tensors = activation_tensors(size, np.random.default_rng(size))
    result = Overhead(size=size, payload_bytes=len(activation_frame(tensors, 0)))
    for seq in range(reps + 1):  # the first message warms up: not counted
        began = time.perf_counter()
        payload = activation_frame(tensors, seq)  # what the agent does: meta, then the frame
        encoded = time.perf_counter()
        publishing = asyncio.ensure_future(_timed_publish(publisher, payload))
        async with asyncio.timeout(30):
            message = await subscriber.receive()
            delivered = time.perf_counter()
            frame = decode_frame(message.payload, max_bytes=MAX_FRAME_BYTES)
            parse_meta(ActivationMeta, frame.meta)
            decoded = time.perf_counter()
            acked = await publishing
        if seq:
            result.encode_s.append(encoded - began)
            result.deliver_s.append(delivered - encoded)
            result.puback_s.append(acked - encoded)
            result.decode_s.append(decoded - delivered)
    return result


async def _timed_publish(publisher: MqttLink, payload: bytes) -> float:
    """Publish QoS 1; time.perf_counter() when the PUBACK came."""
    await publisher.publish(MQTT_TOPIC, payload, qos=1)
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Reporting


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def _grouped(samples: list[Sample]) -> dict[tuple[str, int, int, float | None], list[Sample]]:
    groups: dict[tuple[str, int, int, float | None], list[Sample]] = {}
    for sample in samples:
        key = (sample.transport, sample.size, sample.window, sample.rate_mbps)
        groups.setdefault(key, []).append(sample)
    return groups


def _size(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def _mode(window: int) -> str:
    return "awaited" if window == 1 else f"window {window}"


def print_loopback(samples: list[Sample]) -> None:
    groups = _grouped(samples)
    rows = []
    for (transport, size, window, _), mqtt in groups.items():
        if transport != "mqtt":
            continue
        tcp = groups[("tcp", size, window, None)]
        mqtt_mbs = [s.goodput_bps / 8e6 for s in mqtt]
        tcp_mbs = [s.goodput_bps / 8e6 for s in tcp]
        ratio = statistics.median(mqtt_mbs) / statistics.median(tcp_mbs)
        broker_ms_per_mb = statistics.median(s.broker_cpu_s / s.payload_bytes * s.count * 1e9
                                             for s in mqtt)  # fmt: skip
        rows.append((_size(size), _mode(window), mqtt[0].count, _spread(mqtt_mbs),
                     _spread(tcp_mbs), f"{ratio:.0%}", f"{broker_ms_per_mb:.2f}"))  # fmt: skip
    print("\n(a) loopback goodput, MB/s (frame bytes until the last is decoded at the receiver)")
    print_table(["size", "sends", "msgs", "MQTT QoS 1", "raw TCP", "MQTT/TCP",
                 "Mosquitto CPU ms/MB"], rows)  # fmt: skip


def print_shaped(mode: str, samples: list[Sample], window: int) -> list[str]:
    """The table; returns the findings about awaited points in the target's range and about
    any point short of the target."""
    groups = _grouped(samples)
    rows, findings = [], []
    for (transport, size, win, mbps), mqtt in groups.items():
        if transport != "mqtt" or mbps is None:
            continue
        tcp = groups[("tcp", size, win, mbps)]
        share = statistics.median(s.goodput_bps for s in mqtt) / (mbps * 1e6)
        tcp_share = statistics.median(s.goodput_bps for s in tcp) / (mbps * 1e6)
        target = "-" if size < TARGET_MIN_BYTES else ("yes" if share >= TARGET_SHARE else "NO")
        broker_share = statistics.median(s.broker_cpu_s * s.count / s.seconds for s in mqtt)
        rows.append((f"{mbps:g}", _size(size), _mode(win), mqtt[0].count,
                     _spread([s.goodput_bps / 1e6 for s in mqtt]), f"{share:.1%}",
                     f"{tcp_share:.1%}", f"{broker_share:.1%}", target))  # fmt: skip
        if target == "NO" or (win == 1 and size >= TARGET_MIN_BYTES):
            findings.append(_explain(mqtt, groups, window, mbps, share))
    label = "tc tbf in a network namespace" if mode == "tc" else "in-app token bucket (no tc)"
    print(f"\n(b) shaped link ({label}): goodput of frame bytes, Mbit/s and share of the rate")
    print_table(["Mbit/s", "size", "sends", "msgs", "MQTT Mbit/s", "MQTT", "raw TCP",
                 "Mosquitto CPU", f">= {TARGET_SHARE:.0%}"], rows)  # fmt: skip
    if mode == "tc":
        print(f"  ceiling: a 1514-byte Ethernet frame (what tbf counts) carries 1448 bytes of TCP "
              f"payload (timestamps on): {TCP_PAYLOAD_SHARE:.1%} at most")  # fmt: skip
    sizes = sorted({s.size for s in samples})
    overheads = {size: next(s for s in samples if s.size == size) for size in sizes}
    framing = ", ".join(
        f"{_size(size)}: {(s.payload_bytes / s.count - size) + _publish_header(s):.0f} B "
        f"({((s.payload_bytes / s.count - size) + _publish_header(s)) / size:.2%})"
        for size, s in overheads.items()
    )
    print(f"  framing per message (frame meta + tensor headers + MQTT PUBLISH header): {framing}")
    return findings


TCP_PAYLOAD_SHARE = 1448 / 1514


def _publish_header(sample: Sample) -> int:
    """Bytes of an MQTT 5 QoS 1 PUBLISH around a payload: fixed header with the remaining
    length, topic, packet id, properties length."""
    variable = 2 + len(MQTT_TOPIC) + 2 + 1
    remaining = variable + sample.payload_bytes // sample.count
    varint = 1 if remaining < 128 else 2 if remaining < 16384 else 3 if remaining < 2**21 else 4
    return 1 + varint + variable


def _explain(
    mqtt: list[Sample],
    groups: dict[tuple[str, int, int, float | None], list[Sample]],
    window: int,
    mbps: float,
    share: float,
) -> str:
    """Where the time goes for one MQTT point, from the measured numbers."""
    size, win = mqtt[0].size, mqtt[0].window
    streaming = groups[("tcp", size, window, mbps)]
    ceiling_bps = statistics.median(s.goodput_bps for s in streaming)
    pipelined = groups[("mqtt", size, window, mbps)]
    pipelined_share = statistics.median(s.goodput_bps for s in pipelined) / (mbps * 1e6)
    per_message_s = statistics.median(s.seconds / s.count for s in mqtt)
    send_s = statistics.median(s.send_s_median for s in mqtt)
    transfer_s = mqtt[0].payload_bytes / mqtt[0].count * 8 / ceiling_bps
    extra_ms = max(0.0, per_message_s - transfer_s) * 1e3  # below zero: noise
    text = (
        f"{_size(size)} {_mode(win)} at {mbps:g} Mbit/s: {share:.1%} of the rate "
        f"(raw TCP, {_mode(window)}: {ceiling_bps / (mbps * 1e6):.1%}). A message takes "
        f"{per_message_s * 1e3:.1f} ms, {transfer_s * 1e3:.1f} ms of it transfer at the TCP "
        f"ceiling: {extra_ms:.1f} ms more"
    )
    if win != 1:
        return text
    text += f" ({extra_ms / (per_message_s * 1e3):.1%}); publish to PUBACK {send_s * 1e3:.1f} ms"
    if extra_ms < 0.01 * per_message_s * 1e3:
        return text + ": no measurable idle time between awaited publishes"
    return text + (
        ". Awaited, the link idles from the last byte until the PUBACK is back and the next "
        "publish is on its way (paho copies the payload into its packet first), and Mosquitto "
        "acknowledges only after it has read and routed the whole message; with "
        f"{window} in flight this size reaches {pipelined_share:.1%}"
    )


def print_overhead(results: list[Overhead]) -> None:
    print("\n(c) per-message overhead on loopback, one message at a time: median / p99, ms")
    rows = []
    for r in results:
        cells = [
            f"{summary(v)['median'] * 1e3:.3f} / {summary(v)['p99'] * 1e3:.3f}"
            for v in (r.encode_s, r.deliver_s, r.puback_s, r.decode_s)
        ]
        rows.append((_size(r.size), len(r.encode_s), *cells))
    print_table(["tensor", "msgs", "encode", "publish->deliver", "publish->PUBACK", "decode"],
                rows)  # fmt: skip
    print("  encode: ActivationMeta + encode_frame; decode: decode_frame + parse_meta;")
    print("  publish->deliver: from the publish call until the subscriber holds the message")


# ---------------------------------------------------------------------------------------------


async def run(plan: Plan, parts: str, shaping: str) -> dict[str, Any]:
    loopback, shaped, overhead = list[Sample](), list[Sample](), list[Overhead]()
    mode = "skipped"
    if "a" in parts:
        print("measuring (a) loopback goodput ...", flush=True)
        loopback = await loopback_goodput(plan)
    if "b" in parts:
        print("measuring (b) shaped links ...", flush=True)
        mode, shaped = await shaped_goodput(plan, shaping)
    if "c" in parts:
        print("measuring (c) per-message overhead ...", flush=True)
        overhead = await per_message_overhead(plan)
    formats = wire_format_costs.measure(plan.format_reps) if "d" in parts else []

    if loopback:
        print_loopback(loopback)
    findings = print_shaped(mode, shaped, plan.window) if shaped else []
    if findings:
        print("  where the time goes (awaited points >= 256 KiB, and any point short of target):")
        for line in findings:
            print(f"  - {line}")
    if overhead:
        print_overhead(overhead)
    if formats:
        wire_format_costs.print_costs(formats)
    return {
        "loopback": [_sample_dict(s) for s in loopback],
        "shaping": mode,
        "shaped": [_sample_dict(s) for s in shaped],
        "findings": findings,
        "overhead": [
            {
                "size": r.size,
                "payload_bytes": r.payload_bytes,
                **{
                    name: summary(values)
                    for name, values in (
                        ("encode_s", r.encode_s),
                        ("deliver_s", r.deliver_s),
                        ("puback_s", r.puback_s),
                        ("decode_s", r.decode_s),
                    )
                },
            }
            for r in overhead
        ],
        "wire_formats": [
            {
                **asdict(r),
                "bytes_per_element": r.bytes_per_element,
                "encode_ms_per_mb": r.encode_ms_per_mb,
                "decode_ms_per_mb": r.decode_ms_per_mb,
            }
            for r in formats
        ],
    }


def _sample_dict(sample: Sample) -> dict[str, Any]:
    return {**asdict(sample), "goodput_bps": sample.goodput_bps}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test only")
    parser.add_argument("--repeats", type=int, help="repeat every point (default 3; quick 1)")
    parser.add_argument("--window", type=int, help="QoS 1 messages in flight when pipelined")
    parser.add_argument("--parts", default="abcd", help="which of (a), (b), (c), (d) to run")
    parser.add_argument(
        "--shaping",
        choices=["auto", "tc", "token-bucket"],
        default="auto",
        help="how (b) shapes the link; auto: tc where it works, else the token bucket",
    )
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    if args.window:
        plan = replace(plan, window=args.window)
    info = machine_info()
    print_machine(info)
    began = time.perf_counter()
    results = runtime.run(lambda: run(plan, args.parts, args.shaping))
    print(f"\ntook {time.perf_counter() - began:.0f} s; load average now "
          f"{os.getloadavg()[0]:.2f} (was {info['load_average_1m']})")  # fmt: skip
    if args.json:
        write_json(args.json, {"machine": info, "plan": asdict(plan), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
