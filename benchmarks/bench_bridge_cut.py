"""Bridge outage: how long a site takes to catch up once its WAN link to the core returns.

A core broker and one site broker bridged to it, from the configs `ares broker init` and
`init-site` generate (TLS bridge, accounts, ACLs; ``testbed.sites.LocalSites``), the bridge
crossing an emulated WAN link (``testbed.wan``). A device at the site and an edge at the core
(``MqttLink``, the system's transport). The link is cut for ``--cut-s`` seconds (30 by default,
the issue's figure), either with a reset (``reset``: both brokers notice at once) or silently
(``silent``: the link goes dark and only the keepalives notice). During the cut the device
publishes ``--messages`` QoS 1 activations of ``--size`` bytes and the edge as many gradients to
the device. Reported from the cut: when the core noticed (the bridge's will, state "0"); from
the link's return: when the bridge was connected again (state "1") and when the last message
arrived on each side; whether every message arrived, in order of first arrival, and how many
came twice (QoS 1 is at least once: a message in flight when the link died is sent again).
The bridge runs init-site's production timing (keepalive 15 s, reconnects jittered 2-15 s)
unless ``--keepalive`` / ``--restart-timeout`` say otherwise.

    python benchmarks/bench_bridge_cut.py [--cut-s 30] [--mode reset|silent|both]
        [--messages 20] [--size 100000] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchutil import machine_info, print_machine, print_table, write_json

from broker.bridge import BridgeTiming, notification_topic
from schemas import DeviceChannel, Topics
from testbed.sites import LocalSites
from transport import MqttLink
from transport.base import Message

TOPICS = Topics()
SITE, DEVICE = "hall-a", "pi-a"
HANG_S = 600.0  # a guard only: every wait ends at its event


class Received:
    """Every message of one link with its arrival time."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.seen: list[tuple[float, Message]] = []
        self._arrived = asyncio.Event()

    async def collect(self) -> None:
        async for message in self.link.messages():
            self.seen.append((time.monotonic(), message))
            self._arrived.set()

    async def wait(self, topic: str, count: int, *, payload: bytes | None = None) -> list[Any]:
        """The first ``count`` (time, message) on ``topic``, once they are in."""
        async with asyncio.timeout(HANG_S):
            while True:
                hits = self.on(topic, payload)
                if len(hits) >= count:
                    return hits[:count]
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_tags(self, topic: str, tags: set[bytes]) -> float:
        """When the last of ``tags`` (a message's first 4 bytes) first arrived on ``topic``."""
        async with asyncio.timeout(HANG_S):
            while True:
                seen = {m.payload[:4]: t for t, m in reversed(self.on(topic))}
                if tags <= set(seen):
                    return max(seen[tag] for tag in tags)
                self._arrived.clear()
                await self._arrived.wait()

    def on(self, topic: str, payload: bytes | None = None) -> list[tuple[float, Message]]:
        return [
            (t, m)
            for t, m in self.seen
            if m.topic == topic and (payload is None or m.payload == payload)
        ]


def delivery(received: Received, topic: str, expected: list[bytes]) -> dict[str, Any]:
    """QoS 1 is at least once: every message, in order of first arrival, and the duplicates
    (a message resent after a reconnect that had already got through; receivers dedupe)."""
    tags = [m.payload[:4] for _, m in received.on(topic) if m.payload[:4] in set(expected)]
    first = list(dict.fromkeys(tags))
    return {"all": first == expected, "duplicates": len(tags) - len(first)}


async def one_cut(root: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    timing = BridgeTiming(args.keepalive, *args.restart_timeout)
    state = notification_topic(TOPICS.prefix, SITE)
    act, grad = TOPICS.device(DEVICE, DeviceChannel.ACT), TOPICS.device(DEVICE, DeviceChannel.GRAD)
    async with LocalSites(root, {SITE: (DEVICE,)}, wan=[SITE], timing=timing) as sites:
        edge_link = MqttLink(sites.edge_mqtt(), "edge", [(act, 1), (state, 1)])
        device_link = MqttLink(sites.device_mqtt(DEVICE), DEVICE, [(grad, 1)])
        async with edge_link, device_link:
            edge, device = Received(edge_link), Received(device_link)
            collectors = [asyncio.create_task(r.collect()) for r in (edge, device)]
            try:
                await edge.wait(state, 1, payload=b"1")
                # The bridge's in-topics are subscribed once a first gradient gets through.
                await edge_link.publish(grad, b"warm-up")
                await device.wait(grad, 1)
                wan = sites.wans[SITE]
                cut = time.monotonic()
                await wan.cut(silent=mode == "silent")
                payload = os.urandom(args.size)
                for i in range(args.messages):
                    tag = i.to_bytes(4, "big")
                    await device_link.publish(act, tag + payload)
                    await edge_link.publish(grad, tag + payload)
                published = time.monotonic() - cut
                # Wait out the cut; when the core noticed is read from the record afterwards.
                await asyncio.sleep(max(0.0, args.cut_s - published))
                restored = time.monotonic()
                await wan.restore()
                tags = {i.to_bytes(4, "big") for i in range(args.messages)}
                acts_done = await edge.wait_tags(act, tags)
                grads_done = await device.wait_tags(grad, tags)
                ups = [t for t, m in edge.seen if m.topic == state and m.payload == b"1"]
                downs = [t for t, m in edge.seen if m.topic == state and m.payload == b"0"]
            finally:
                for task in collectors:
                    task.cancel()
                await asyncio.gather(*collectors, return_exceptions=True)
    expected = [i.to_bytes(4, "big") for i in range(args.messages)]
    up, down = delivery(edge, act, expected), delivery(device, grad, expected)
    return {
        "mode": mode,
        "cut_s": args.cut_s,
        "published_during_cut_s": round(published, 3),
        "core_noticed_after_s": round(downs[0] - cut, 2) if downs else None,
        "bridge_back_after_restore_s": round(ups[-1] - restored, 2) if len(ups) > 1 else None,
        "acts_caught_up_s": round(acts_done - restored, 2),
        "grads_caught_up_s": round(grads_done - restored, 2),
        "acts_all_in_order": up["all"],
        "acts_duplicates": up["duplicates"],
        "grads_all_in_order": down["all"],
        "grads_duplicates": down["duplicates"],
        "wan_connections": wan.connections,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut-s", type=float, default=30.0)
    parser.add_argument("--mode", choices=("reset", "silent", "both"), default="both")
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=100_000, help="bytes per message")
    parser.add_argument("--keepalive", type=int, default=15)
    parser.add_argument("--restart-timeout", type=int, nargs=2, default=(2, 15))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    modes = ["reset", "silent"] if args.mode == "both" else [args.mode]
    results = []
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="ares-bridge-cut-") as tmp:
            results.append(await one_cut(Path(tmp), mode, args))
    print(
        f"\n{args.messages} QoS 1 messages of {args.size} bytes each way during a "
        f"{args.cut_s:g} s cut; keepalive {args.keepalive} s, reconnect "
        f"{args.restart_timeout[0]}-{args.restart_timeout[1]} s"
    )
    columns = [
        "mode",
        "core_noticed_after_s",
        "bridge_back_after_restore_s",
        "acts_caught_up_s",
        "grads_caught_up_s",
        "acts_all_in_order",
        "acts_duplicates",
        "grads_all_in_order",
        "grads_duplicates",
    ]
    print_table(columns, [[r[c] for c in columns] for r in results])
    if args.json is not None:
        write_json(args.json, {"machine": info, "args": vars(args) | {"json": None},
                               "results": results})  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
