"""Without tc, a token bucket in the agent shapes its traffic and its estimates follow."""

from __future__ import annotations

from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import device_settings, edge_settings, train


async def test_token_bucket_link_is_measured_at_its_rate(mosquitto):
    settings = edge_settings(mosquitto, rounds=2, split=1, batches_per_round=10, batch_size=32)
    agent = DeviceAgent(
        device_settings(
            mosquitto, 0, 1, link_mode="token-bucket", uplink_schedule="8", downlink_schedule="16"
        )
    )
    report = await train(EdgeService(settings), [agent])
    device = report.rounds[-1].devices["dev-0"]
    print("token-bucket estimates:", device.uplink_mbps, device.downlink_mbps)
    assert device.link_mode == "token-bucket"
    assert device.uplink_mbps is not None
    assert device.downlink_mbps is not None
    assert abs(device.uplink_mbps - 8) / 8 < 0.15
    assert abs(device.downlink_mbps - 16) / 16 < 0.15
