"""Two site brokers bridged to a core broker, all running the configs `ares broker` generates.

Real Mosquitto processes (``testbed.sites.LocalSites``): the core (where the edge connects) and
two sites (hall-a, hall-b, where the devices connect), each bridged over TLS to the core with its
own account and the core's ACL. hall-a's bridge crosses a WAN link the test can cut. The clients
are the system's own transport (``MqttLink``) with the generated client configs: devices over
TLS to their site, the edge on the core's loopback listener.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from broker.bridge import notification_topic
from schemas import DeviceChannel, Topics
from testbed.sites import LocalSites
from transport import MqttLink, MqttSettings
from transport.base import Message

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TOPICS = Topics()
PREFIX = TOPICS.prefix
WAIT_S = 30.0  # hang guard only: every wait returns at the event it waits for
SITES = {"hall-a": ("pi-a",), "hall-b": ("pi-b",)}


class Inbox:
    """Every message one link receives, kept in order, with a way to wait for some."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.seen: list[Message] = []
        self._arrived = asyncio.Event()

    async def collect(self) -> None:
        async for message in self.link.messages():
            self.seen.append(message)
            self._arrived.set()

    async def wait_for(
        self, match: Callable[[Message], bool], count: int = 1, *, after: int = 0
    ) -> list[Message]:
        """The first ``count`` messages from index ``after`` on that match, once they are in."""
        async with asyncio.timeout(WAIT_S):
            while True:
                found = [m for m in self.seen[after:] if match(m)]
                if len(found) >= count:
                    return found[:count]
                self._arrived.clear()
                await self._arrived.wait()

    def topics(self) -> set[str]:
        return {m.topic for m in self.seen}


def on(topic: str, payload: bytes | None = None) -> Callable[[Message], bool]:
    return lambda m: m.topic == topic and (payload is None or m.payload == payload)


class Deployment:
    """The running sites, and the links a test opens to them (closed with it)."""

    def __init__(self, sites: LocalSites) -> None:
        self.sites = sites
        self.links: list[MqttLink] = []
        self.collectors: list[asyncio.Task[None]] = []

    async def open(self, settings: MqttSettings, name: str, *filters: str) -> Inbox:
        """An MqttLink with ``settings``, subscribed to ``filters``."""
        # Reconnect quickly after a broker restart (production backs off up to 15 s).
        fast = settings.model_copy(update={"reconnect_max_s": 0.5})
        link = MqttLink(fast, f"{name}-{os.urandom(3).hex()}", [(f, 1) for f in filters])
        await link.__aenter__()
        self.links.append(link)
        inbox = Inbox(link)
        self.collectors.append(asyncio.create_task(inbox.collect()))
        return inbox

    async def edge(self, *filters: str) -> Inbox:
        return await self.open(self.sites.edge_mqtt(), "edge", *filters)

    async def device(self, device: str, *filters: str) -> Inbox:
        return await self.open(self.sites.device_mqtt(device), device, *filters)

    async def inspector(self, site: str, *filters: str) -> Inbox:
        return await self.open(self.sites.inspector_mqtt(site), f"inspector-{site}", *filters)

    async def close(self) -> None:
        for task in self.collectors:
            task.cancel()
        await asyncio.gather(*self.collectors, return_exceptions=True)
        for link in reversed(self.links):
            await link.__aexit__(None, None, None)


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Deployment]:
    async with LocalSites(tmp_path, SITES, wan=["hall-a"]) as sites:
        running = Deployment(sites)
        try:
            yield running
        finally:
            await running.close()


async def wait_bridges_up(edge: Inbox, *sites: str, after: int = 0) -> None:
    """Each site's bridge says "1" on the core (the notification it publishes on connect)."""
    for site in sites:
        await edge.wait_for(on(notification_topic(PREFIX, site), b"1"), after=after)


async def wait_in_topics(edge: Inbox, devices: dict[str, Inbox], token: bytes) -> None:
    """The bridges' ``in`` subscriptions are in place: a retained broadcast published now
    reaches every device. A bridge subscribes to the broadcasts after its devices' topics, on
    one connection, so a device seeing it has its own topics subscribed too."""
    await edge.link.publish(TOPICS.edge_status, token, retain=True)
    for inbox in devices.values():
        await inbox.wait_for(on(TOPICS.edge_status, token))


async def open_site_devices(env: Deployment) -> tuple[Inbox, dict[str, Inbox]]:
    """The edge at the core and every device at its site, with both bridges carrying."""
    edge = await env.edge(
        TOPICS.all_devices(DeviceChannel.ACT),
        TOPICS.all_devices(DeviceChannel.STATUS),
        f"{PREFIX}/bridge/+/state",
    )
    await wait_bridges_up(edge, *SITES)
    devices = {}
    for ids in SITES.values():
        for device in ids:
            devices[device] = await env.device(
                device,
                TOPICS.device(device, DeviceChannel.GRAD),
                TOPICS.device(device, DeviceChannel.CTRL),
                f"{PREFIX}/edge/#",
            )
    await wait_in_topics(edge, devices, b"ready")
    return edge, devices


async def test_device_and_edge_talk_across_the_bridge_and_only_within_their_site(
    deployment: Deployment,
) -> None:
    env = deployment
    # Observers at each site: every topic of the prefix their broker ever carries.
    spies = {site: await env.inspector(site, f"{PREFIX}/#") for site in SITES}
    edge, devices = await open_site_devices(env)
    pi_a = devices["pi-a"]

    # Up: a device at hall-a to the edge at the core; its retained status too.
    await pi_a.link.publish(TOPICS.device("pi-a", DeviceChannel.STATUS), b"online", retain=True)
    await pi_a.link.publish(TOPICS.device("pi-a", DeviceChannel.ACT), b"batch-1")
    [act] = await edge.wait_for(on(TOPICS.device("pi-a", DeviceChannel.ACT)))
    assert act.payload == b"batch-1"

    # Down: the edge's reply reaches pi-a, and only pi-a.
    await edge.link.publish(TOPICS.device("pi-a", DeviceChannel.GRAD), b"grad-1")
    [grad] = await pi_a.wait_for(on(TOPICS.device("pi-a", DeviceChannel.GRAD)))
    assert grad.payload == b"grad-1"

    # The cluster's own topics stay at the core. Then a broadcast as the last message: each
    # bridge forwards in order, so once a site has it, anything that would have leaked to it
    # before (pi-a's act, pi-a's grad, the cluster topic) would already be there.
    cluster_topic = f"{PREFIX}/cluster/assignment"
    await edge.link.publish(cluster_topic, b"replica-0: pi-a, pi-b", retain=True)
    await edge.link.publish(TOPICS.device("pi-b", DeviceChannel.CTRL), b"ctrl-b")
    await devices["pi-b"].wait_for(on(TOPICS.device("pi-b", DeviceChannel.CTRL), b"ctrl-b"))
    await edge.link.publish(TOPICS.edge_status, b"marker", retain=True)
    for spy in spies.values():
        await spy.wait_for(on(TOPICS.edge_status, b"marker"))

    def devices_seen(spy: Inbox) -> set[str]:
        return {parsed[0] for t in spy.topics() if (parsed := TOPICS.parse_device_topic(t))}

    assert devices_seen(spies["hall-a"]) == {"pi-a"}
    assert devices_seen(spies["hall-b"]) == {"pi-b"}
    for site, spy in spies.items():
        crossed = {t for t in spy.topics() if TOPICS.parse_device_topic(t) is None}
        # Broadcasts and its own bridge's state; no cluster topic, no other site's state.
        assert crossed == {TOPICS.edge_status, notification_topic(PREFIX, site)}, site
    assert not any(m.topic == TOPICS.device("pi-b", DeviceChannel.CTRL) for m in pi_a.seen)

    # Retained messages keep their flag across the bridge, both ways: a client arriving later
    # at the site gets the edge's status from the site's own copy, and one at the core gets
    # pi-a's status from the core's.
    late_device = await env.device("pi-a", f"{PREFIX}/edge/status")
    [status] = await late_device.wait_for(on(TOPICS.edge_status))
    assert (status.payload, status.retain) == (b"marker", True)
    late_edge = await env.edge(TOPICS.device("pi-a", DeviceChannel.STATUS))
    [online] = await late_edge.wait_for(on(TOPICS.device("pi-a", DeviceChannel.STATUS)))
    assert (online.payload, online.retain) == (b"online", True)


async def test_qos1_messages_sent_during_a_wan_cut_arrive_after_it(
    deployment: Deployment,
) -> None:
    env = deployment
    spy_a = await env.inspector("hall-a", f"{PREFIX}/bridge/#")
    edge, devices = await open_site_devices(env)
    wan = env.sites.wans["hall-a"]
    pi_a, pi_b = devices["pi-a"], devices["pi-b"]
    state_a = notification_topic(PREFIX, "hall-a")

    await wan.cut()
    # Both ends noticed: the core published the bridge's will, the site its own "0".
    await edge.wait_for(on(state_a, b"0"))
    await spy_a.wait_for(on(state_a, b"0"))
    mark_edge, mark_a = len(edge.seen), len(pi_a.seen)

    # During the cut: each side's broker takes the QoS 1 messages (the publishes complete).
    n = 5
    for i in range(n):
        await pi_a.link.publish(TOPICS.device("pi-a", DeviceChannel.ACT), f"act-{i}".encode())
        await edge.link.publish(TOPICS.device("pi-a", DeviceChannel.GRAD), f"grad-{i}".encode())
    # The other site is not affected by hall-a's cut.
    await pi_b.link.publish(TOPICS.device("pi-b", DeviceChannel.ACT), b"b-during-cut")
    await edge.wait_for(on(TOPICS.device("pi-b", DeviceChannel.ACT), b"b-during-cut"))
    assert not [m for m in edge.seen[mark_edge:] if "pi-a/act" in m.topic]
    assert not [m for m in pi_a.seen[mark_a:] if m.topic.endswith("/grad")]

    # The link comes back: the bridge reconnects under its persistent session, and what was
    # queued on both sides is delivered, in order.
    restored = time.monotonic()
    await wan.restore()
    acts = await edge.wait_for(on(TOPICS.device("pi-a", DeviceChannel.ACT)), n, after=mark_edge)
    grads = await pi_a.wait_for(on(TOPICS.device("pi-a", DeviceChannel.GRAD)), n, after=mark_a)
    caught_up = time.monotonic() - restored
    assert [m.payload for m in acts] == [f"act-{i}".encode() for i in range(n)]
    assert [m.payload for m in grads] == [f"grad-{i}".encode() for i in range(n)]
    await edge.wait_for(on(state_a, b"1"), after=mark_edge)
    assert wan.connections == 2  # the bridge's first connection and its reconnection
    # Within the bridge's reconnect delay (restart_timeout, 1 s here) and a round trip.
    assert caught_up < WAIT_S
    print(f"hall-a caught up {caught_up:.2f} s after its link came back")


async def test_messages_sent_while_the_core_restarts_arrive_after_it(
    deployment: Deployment,
) -> None:
    env = deployment
    spy_a = await env.inspector("hall-a", f"{PREFIX}/bridge/#")
    edge, devices = await open_site_devices(env)
    state_a = notification_topic(PREFIX, "hall-a")
    await spy_a.wait_for(on(state_a, b"1"))
    mark_spy, mark_edge = len(spy_a.seen), len(edge.seen)

    await env.sites.core_running.astop()  # SIGTERM: the core saves its sessions to disk
    await spy_a.wait_for(on(state_a, b"0"), after=mark_spy)  # the site's bridge noticed
    act = TOPICS.device("pi-a", DeviceChannel.ACT)
    for i in range(3):
        await devices["pi-a"].link.publish(act, f"act-{i}".encode())
    await env.sites.core_running.astart()

    # Queued at the site, delivered into the edge's saved session once the bridge is back.
    acts = await edge.wait_for(on(act), 3, after=mark_edge)
    assert [m.payload for m in acts] == [b"act-0", b"act-1", b"act-2"]
    # And the way down works again for every site.
    await wait_in_topics(edge, devices, b"after-core-restart")
    for device, inbox in devices.items():
        await edge.link.publish(TOPICS.device(device, DeviceChannel.GRAD), b"grad")
        await inbox.wait_for(on(TOPICS.device(device, DeviceChannel.GRAD), b"grad"))


async def test_a_device_added_at_a_running_site_crosses_after_the_site_restarts(
    deployment: Deployment,
) -> None:
    env = deployment
    edge, devices = await open_site_devices(env)
    # The files as add-device writes them; SIGHUP to both brokers: the core's ACL now forwards
    # pi-a2's topics for hall-a, and the site's passwd lets pi-a2 in.
    env.sites.add_device("hall-a", "pi-a2")
    assert env.sites.core.site_of("pi-a2") == "hall-a"

    newcomer = await env.device("pi-a2", f"{PREFIX}/edge/#")
    act_a2 = TOPICS.device("pi-a2", DeviceChannel.ACT)
    await newcomer.link.publish(act_a2, b"before-restart")
    # pi-a's message goes the same way after pi-a2's: once the edge has it, pi-a2's would be
    # there had the bridge taken its topic on SIGHUP. It did not: bridges load at start only.
    await devices["pi-a"].link.publish(TOPICS.device("pi-a", DeviceChannel.ACT), b"after")
    await edge.wait_for(on(TOPICS.device("pi-a", DeviceChannel.ACT), b"after"))
    assert act_a2 not in edge.topics()

    mark = len(edge.seen)
    await env.sites.restart_site("hall-a")
    await wait_bridges_up(edge, "hall-a", after=mark)
    # The newcomer reconnects by itself; the core's retained broadcast reaches it through the
    # restarted bridge, whose subscriptions now include pi-a2's topics.
    await wait_in_topics(edge, {"pi-a2": newcomer}, b"ready-again")
    await newcomer.link.publish(act_a2, b"after-restart")
    [crossed] = await edge.wait_for(on(act_a2))
    assert crossed.payload == b"after-restart"


async def test_the_core_refuses_a_bridge_on_topics_of_another_site(
    deployment: Deployment,
) -> None:
    """hall-b's account at the core cannot publish as hall-a's devices, nor read their
    gradients: the ACL gives each bridge its own devices' topics only."""
    env = deployment
    edge, _ = await open_site_devices(env)
    # hall-b's bridge account, as any client would use it, on the core's TLS listener.
    intruder = await env.open(
        env.sites.bridge_mqtt("hall-b"),
        "posing-as-hall-b",
        TOPICS.device("pi-a", DeviceChannel.GRAD),
        TOPICS.device("pi-b", DeviceChannel.GRAD),
    )
    await intruder.link.publish(TOPICS.device("pi-a", DeviceChannel.ACT), b"forged")
    await intruder.link.publish(TOPICS.device("pi-b", DeviceChannel.ACT), b"allowed")
    await edge.wait_for(on(TOPICS.device("pi-b", DeviceChannel.ACT), b"allowed"))
    assert b"forged" not in {m.payload for m in edge.seen}
    await edge.link.publish(TOPICS.device("pi-a", DeviceChannel.GRAD), b"secret")
    await edge.link.publish(TOPICS.device("pi-b", DeviceChannel.GRAD), b"own")
    await intruder.wait_for(on(TOPICS.device("pi-b", DeviceChannel.GRAD), b"own"))
    assert TOPICS.device("pi-a", DeviceChannel.GRAD) not in intruder.topics()
