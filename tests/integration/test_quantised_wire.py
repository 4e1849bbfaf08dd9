"""int8 activations and gradients through a real Mosquitto: the frames really are int8 both
ways, and the run reaches the float32 run's accuracy (same seed, shards, data order and cut)
within 1 point."""

from __future__ import annotations

import asyncio

from device_agent import DeviceAgent
from edge_service import EdgeService
from schemas import DeviceChannel, Topics, decode_frame, wire_format
from tests.integration.helpers import device_settings, edge_settings, mqtt, train
from transport import MqttLink

ROUNDS = 5


async def _run(mosquitto, wire: str) -> tuple[float, set[str]]:
    """Final accuracy, and the wire formats seen on dev-0's act and grad topics."""
    settings = edge_settings(
        mosquitto, rounds=ROUNDS, batch_size=16, split=1, seed=3, wire_dtype=wire,
        client_id=f"edge-{wire}",
    )  # fmt: skip
    topics = Topics()
    watched = [(topics.device("dev-0", c), 1) for c in (DeviceChannel.ACT, DeviceChannel.GRAD)]
    seen: set[str] = set()
    async with MqttLink(mqtt(mosquitto), f"watcher-{wire}", watched) as watcher:

        async def watch() -> None:
            while True:
                message = await watcher.receive()
                frame = decode_frame(message.payload)
                for name in ("act", "grad"):
                    tensor = frame.tensor(name)
                    if tensor is not None:
                        seen.add(f"{name}:{wire_format(tensor)}")

        watching = asyncio.create_task(watch())
        agent = DeviceAgent(device_settings(mosquitto, 0, 1, seed=3))
        report = await train(EdgeService(settings), [agent])
        watching.cancel()
    assert [r.devices["dev-0"].status for r in report.rounds] == ["ok"] * ROUNDS
    assert not any(k.startswith("rejected") for k in report.counters), report.counters
    assert report.final_accuracy is not None
    return report.final_accuracy, seen


async def test_int8_on_the_wire_reaches_float32_accuracy_within_one_point(mosquitto):
    float32, seen32 = await _run(mosquitto, "float32")
    int8, seen8 = await _run(mosquitto, "int8")
    # The last frame of a run may still be in flight when the watcher stops: at least one of
    # each was seen (every batch sends one of each), and none in another format.
    assert seen32 == {"act:float32", "grad:float32"}
    assert seen8 == {"act:int8", "grad:int8"}
    assert float32 > 0.9
    assert abs(int8 - float32) <= 0.01, (int8, float32)
