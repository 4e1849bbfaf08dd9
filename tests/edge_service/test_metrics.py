"""Prometheus metrics: the collector's families, and a live /metrics during real training."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import CollectorRegistry, generate_latest

from device_agent import DeviceAgent
from edge_service import EdgeService
from edge_service.metrics import DeviceView, EdgeCollector, EdgeView
from edge_service.report import DeviceRoundReport, RoundReport, RunReport
from tests.integration.helpers import device_settings, edge_settings, wait_until


def _device_round(status: str, energy: float) -> DeviceRoundReport:
    return DeviceRoundReport(
        cut=2, predicted_time_s=1.0, predicted_energy_j=2.0, status=status, batches=3,
        samples=96, busy_s=1.0, server_s=0.1, train_loss=0.5, rtt_median_s=0.01,
        energy_j=energy, uplink_mbps=20.0, downlink_mbps=20.0, battery_pct=None,
        link_mode="direct", emulation_behind_s=0.0,
    )  # fmt: skip


def _view() -> EdgeView:
    report = RunReport(
        policy="ares", alpha=0.5, model="small_cnn", dataset="digits", session="s", started_at=0.0
    )
    for round_no, status in ((1, "ok"), (2, "straggler")):
        report.rounds.append(
            RoundReport(
                round=round_no,
                accuracy=0.5 + round_no / 10,
                loss=1.0,
                train_loss=1.0,
                duration_s=3.0,
                objective=0.7,
                devices={"pi-1": _device_round(status, 4.0), "pi-2": _device_round("ok", 1.5)},
            )
        )
    return EdgeView(
        report=report,
        counters={
            "batches": 42,
            "rejected.bad_shape": 3,
            "bytes_in.act": 1000,
            "messages_in.act": 10,
            "bytes_out.grad": 900,
            "duplicate_batches": 2,
        },
        devices={
            "pi-1": DeviceView("training", 2, 20e6, 40e6, 55.0, speed_ratio=1.25),
            "pi-2": DeviceView("offline", None, None, None, None),
        },
        round_no=3,
        rounds_planned=10,
        loop_lag_s={"0.5": 0.001, "0.99": 0.004},
    )


def _scrape(view: EdgeView) -> str:
    registry = CollectorRegistry()
    registry.register(EdgeCollector(lambda: view))
    return generate_latest(registry).decode()


def test_collector_families():
    text = _scrape(_view())
    expected = [
        "ares_rounds_completed_total 2.0",
        "ares_round_current 3.0",
        "ares_accuracy 0.7",
        "ares_batches_served_total 42.0",
        'ares_rejected_messages_total{reason="bad_shape"} 3.0',
        'ares_bytes_received_total{channel="act"} 1000.0',
        'ares_messages_received_total{channel="act"} 10.0',
        'ares_bytes_sent_total{channel="grad"} 900.0',
        'ares_events_total{event="duplicate_batches"} 2.0',
        "ares_devices_online 1.0",
        'ares_device_split{device="pi-1"} 2.0',
        'ares_device_uplink_bps{device="pi-1"} 2e+07',
        'ares_device_battery_percent{device="pi-1"} 55.0',
        'ares_device_speed_ratio{device="pi-1"} 1.25',
        'ares_device_rounds_total{device="pi-1",status="straggler"} 1.0',
        'ares_device_rounds_total{device="pi-2",status="ok"} 2.0',
        'ares_device_energy_joules_total{device="pi-1"} 8.0',
        'ares_edge_loop_lag_seconds{quantile="0.99"} 0.004',
    ]
    for line in expected:
        assert line in text, line
    assert 'ares_device_split{device="pi-2"}' not in text  # no split known: no sample


async def test_metrics_served_while_training(mosquitto):
    edge = EdgeService(edge_settings(mosquitto, rounds=3, metrics_port=0, batches_per_round=4))
    agents = [DeviceAgent(device_settings(mosquitto, i, 2)) for i in range(2)]
    async with asyncio.TaskGroup() as tasks:
        for agent in agents:
            tasks.create_task(agent.run())
        run = tasks.create_task(edge.run())
        await wait_until(lambda: len(edge.report.rounds) >= 1, timeout_s=120)
        assert edge.metrics is not None
        url = f"http://127.0.0.1:{edge.metrics.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        await run
    # The device part's weights moved every round, and their transfer is in the energy.
    for entry in edge.report.rounds:
        for device in entry.devices.values():
            assert device.weights_s > 0
            assert device.energy_j > 0
    page = text.decode()
    assert "ares_rounds_completed_total" in page
    assert "ares_batches_served_total" in page
    assert 'ares_device_split{device="dev-0"}' in page
    assert 'ares_bytes_received_total{channel="act"}' in page
    assert "ares_devices_online 2.0" in page
    served = [line for line in page.splitlines() if line.startswith("ares_batches_served_total")]
    assert float(served[0].split()[-1]) >= 8  # 2 devices x 4 batches in round 1
