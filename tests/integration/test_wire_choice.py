"""The ares policy chooses each device's wire format with its cut, through a real Mosquitto:
on a slow emulated link it moves split batches to a narrower format the calibration allows, the
plan says which and why, the frames really travel in it, and accuracy holds; with float32 the
only format to choose from everything stays float32."""

from __future__ import annotations

import asyncio

from edge_service import EdgeService
from schemas import DeviceChannel, PlanMessage, Topics, decode_frame, parse_json, wire_format
from tests.integration.helpers import device_settings, edge_settings, emulated_agent, mqtt, train
from transport import MqttLink

ROUNDS = 4


async def _run(mosquitto, name: str, **changes):
    settings = edge_settings(
        mosquitto, rounds=ROUNDS, batch_size=16, seed=3, policy="ares", alpha=0.5,
        client_id=f"edge-{name}", **changes,
    )  # fmt: skip
    topics = Topics()
    watched = [(topics.device(f"dev-{i}", DeviceChannel.ACT), 1) for i in range(2)]
    watched.append((topics.edge_plan, 1))
    seen: set[str] = set()
    plans: list[PlanMessage] = []
    async with MqttLink(mqtt(mosquitto), f"watcher-{name}", watched) as watcher:

        async def watch() -> None:
            while True:
                message = await watcher.receive()
                if message.topic == topics.edge_plan:
                    plans.append(parse_json(PlanMessage, message.payload))
                    continue
                act = decode_frame(message.payload).tensor("act")
                if act is not None:
                    seen.add(wire_format(act))

        watching = asyncio.create_task(watch())
        # A slow emulated link (2 Mbit/s) and devices that may only split (as a board too
        # small for the whole model): bytes on the wire dominate every batch.
        agents = [
            emulated_agent(
                device_settings(
                    mosquitto, i, 2, seed=3, link_mode="token-bucket",
                    uplink_schedule="2", downlink_schedule="2", uplink_mbps=2, downlink_mbps=2,
                    allowed_cuts=[1, 2],
                )
            )
            for i in range(2)
        ]  # fmt: skip
        report = await train(EdgeService(settings), agents, timeout_s=400)
        watching.cancel()
    return report, seen, plans


async def test_ares_chooses_formats_within_the_accuracy_bound(mosquitto):
    report, seen, plans = await _run(mosquitto, "choosing")
    assert report.final_accuracy is not None
    assert report.final_accuracy > 0.85
    used = {d.wire_dtype for r in report.rounds for d in r.devices.values() if d.server_s > 0}
    # Every plan names each device's format, and says why for a chosen one.
    assert plans
    for plan in plans:
        for entry in plan.devices.values():
            assert entry.wire_dtype is not None
            if entry.wire_dtype != "float32":
                assert f"wire {entry.wire_dtype}:" in entry.reason
    # Round 1 plans on the initial model's calibration; from then on the measured costs rule.
    assert seen <= used
    assert used - {"float32"}, f"a 2 Mbit/s link and no narrower format chosen: {used}"


async def test_with_no_format_to_choose_every_batch_stays_float32(mosquitto):
    report, seen, _ = await _run(mosquitto, "fixed", wire_formats=["float32"])
    assert seen <= {"float32"}
    for entry in report.rounds:
        for device in entry.devices.values():
            assert device.wire_dtype == "float32"
