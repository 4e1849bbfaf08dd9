"""A device's word is checked: a forged "offline" status does not evict a live device, and a
device that was evicted (it missed the ping) registers again after the abort and trains on."""

from __future__ import annotations

import asyncio

from device_agent import DeviceAgent
from edge_service import EdgeService
from schemas import DeviceChannel, DeviceStatus, Topics, to_json
from tests.integration.helpers import device_settings, edge_settings, mqtt, wait_until
from transport import MqttLink


def in_round(
    edge: EdgeService, device_id: str, round_no: int, batches: int, *, or_later: bool = False
) -> bool:
    runner = edge.current_round
    now = runner.round_no if runner else 0
    slot = runner.devices.get(device_id) if runner and (now == round_no or or_later) else None
    return slot is not None and slot.session is not None and slot.session.next_seq >= batches


async def test_a_forged_offline_status_does_not_evict_a_live_device(mosquitto):
    edge = EdgeService(
        edge_settings(mosquitto, rounds=3, min_devices=2, split=2, batches_per_round=30)
    )
    agents = [DeviceAgent(device_settings(mosquitto, i, 2)) for i in range(2)]
    forged = to_json(DeviceStatus(device_id="dev-1", state="offline"))
    topic = Topics("ares/v1").device("dev-1", DeviceChannel.STATUS)

    async def forge_mid_round() -> None:
        await wait_until(lambda: in_round(edge, "dev-1", 1, 3))
        # What `mosquitto_pub -t ares/v1/dev/dev-1/status -m '{...offline...}'` does.
        async with MqttLink(mqtt(mosquitto), "forger", []) as link:
            await link.publish(topic, forged, qos=1, retain=True)

    async with asyncio.timeout(240), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        tasks.create_task(forge_mid_round())
        report = await edge.run()

    # The forgery was checked and refuted (devices going offline at the end are pinged too).
    assert edge.counters["liveness.refuted"] == 1
    for round_report in report.rounds:
        assert round_report.devices["dev-1"].status == "ok", round_report.round
        assert round_report.devices["dev-1"].batches == 30


async def test_an_evicted_device_registers_again_after_the_abort(mosquitto):
    edge = EdgeService(
        edge_settings(
            mosquitto, rounds=5, min_devices=2, split=2, batches_per_round=60,
            liveness_timeout_s=0.5,
        )
    )  # fmt: skip
    agents = [DeviceAgent(device_settings(mosquitto, i, 2)) for i in range(2)]
    victim = agents[1]
    answer_ping = victim._publish_status
    unanswered: list[str] = []

    async def deaf_once(state, round_no=None, *, nonce=None):
        if nonce is not None and not unanswered:
            unanswered.append(nonce)  # as if frozen past the edge's liveness timeout
            return
        await answer_ping(state, round_no, nonce=nonce)

    victim._publish_status = deaf_once  # type: ignore[method-assign]
    hellos_before: list[int] = []

    async def offline_mid_round() -> None:
        # Any round: on a loaded machine a stalled agent may miss a ping and be evicted from
        # round 1 before its third batch; it is back for a later round.
        await wait_until(lambda: in_round(edge, "dev-1", 1, 3, or_later=True))
        hellos_before.append(edge.counters["messages_in.hello"])
        async with MqttLink(mqtt(mosquitto), "will-of-a-stranger", []) as link:
            status = DeviceStatus(device_id="dev-1", state="offline")
            await link.publish(Topics("ares/v1").device("dev-1", DeviceChannel.STATUS),
                               to_json(status), qos=1, retain=True)  # fmt: skip

    async with asyncio.timeout(240), asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        tasks.create_task(offline_mid_round())
        report = await edge.run()

    assert unanswered
    assert edge.counters["liveness.refuted"] == 0
    # Evicted in the round under way when the ping went unanswered (round 1, or a later one
    # if rounds run faster than the timeout); the abort made it say hello again and the edge
    # took it back for a later round.
    statuses = [r.devices["dev-1"].status for r in report.rounds if "dev-1" in r.devices]
    assert "dropped" in statuses[:-1], statuses
    assert edge.counters["messages_in.hello"] > hellos_before[0]
    assert statuses[-1] == "ok", statuses
