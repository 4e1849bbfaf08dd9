"""A device's link collapses mid-run: ARES moves its cut at the first round boundary after."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from broker import BrokerConfig, LocalBroker
from edge_service import EdgeService
from schemas import Topics
from testbed.links import LinkLab, link_mode
from testbed.schedule import RateSchedule
from tests.integration.helpers import (
    HANG_S,
    edge_settings,
    mqtt,
    wait_for_connected,
    wait_until,
)
from transport import MqttLink

SUPPORT = link_mode()
pytestmark = pytest.mark.skipif(
    SUPPORT.mode != "tc", reason=f"needs tc-shaped network namespaces: {SUPPORT.reason}"
)
DEVICES = {"nano-a": "jetson-nano-maxn", "pi-b": "raspberry-pi-3b+"}


async def test_ares_moves_the_cut_of_the_device_whose_link_dropped(tmp_path):
    subnet = f"10.215.{os.getpid() % 256}.0/24"
    with LinkLab(subnet) as lab, LocalBroker(BrokerConfig(extra_hosts=(lab.host_ip,))) as broker:
        # 40 -> 2 Mbit/s in emulated time: the devices run at time scale 2, so are the links.
        links = {d: lab.add_device(d, uplink=RateSchedule.constant(80.0)) for d in DEVICES}
        processes: dict[str, asyncio.subprocess.Process] = {}
        plans: list[dict] = []
        drop_round: list[int] = []
        try:
            for index, (device_id, profile) in enumerate(DEVICES.items()):
                command = [
                    *links[device_id].exec_prefix(), sys.executable, "-m", "ares", "device",
                    "--broker", f"mqtt://{lab.host_ip}:{broker.port}", "--id", device_id,
                    "--shard", f"{index}/2", "--exit-on-finish", "--link-mode", "tc",
                    "--profile", profile, "--time-scale", "2", "--dataset", "synthetic",
                    "--torch-threads", "1",
                    # The Pi chooses between handing most of VGG5 to the edge and keeping it all:
                    # the choice the link decides, whatever this host's load does to the edge.
                    *(["--allowed-cuts", "2,7"] if device_id == "pi-b" else []),
                ]  # fmt: skip
                with open(tmp_path / f"{device_id}.log", "wb") as log:  # noqa: ASYNC230 - tiny
                    processes[device_id] = await asyncio.create_subprocess_exec(
                        *command, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
                    )
            # The edge starts once both devices are up (a busy host takes its time importing
            # torch in two fresh processes): its registration clock times registration, not
            # the host. Its wait for their profiles (helpers.edge_settings) ends when they are
            # in: planning without them would decide the Pi's cut on the edge's speed.
            waited = await wait_for_connected(broker, processes, logs=tmp_path)
            print(f"device processes connected {waited:.1f} s after their launch")
            settings = edge_settings(
                broker, policy="ares", rounds=6, min_devices=2, model="vgg5",
                dataset="synthetic", batch_size=20, batches_per_round=8, lr=0.01,
                deadline_floor_s=10.0, deadline_slack=2.0, close_grace_s=15.0,
                # The cut's answer to the drop, on float32: a narrower format is another
                # answer (tests/integration/test_wire_choice.py).
                wire_formats=["float32"],
            )  # fmt: skip
            edge = EdgeService(settings)
            async with (
                asyncio.timeout(HANG_S),
                MqttLink(mqtt(broker), "plan-watcher", [(Topics().edge_plan, 1)]) as watcher,
                asyncio.TaskGroup() as tasks,
            ):

                async def collect() -> None:
                    while True:
                        plans.append(json.loads((await watcher.receive()).payload))

                async def drop_while_activations_cross() -> None:
                    # Once the Pi hands most layers to the edge, mid-round.
                    def crossing() -> bool:
                        runner = edge.current_round
                        slot = runner.devices.get("pi-b") if runner else None
                        # An early cut: big activations cross the link every batch.
                        if slot is None or slot.session is None or slot.cut > 3:
                            return False
                        return slot.session.next_seq >= 2

                    await wait_until(crossing, timeout_s=HANG_S)
                    assert edge.current_round is not None
                    drop_round.append(edge.current_round.round_no)
                    await asyncio.to_thread(links["pi-b"].set_rate, 4.0, 4.0)

                collector = tasks.create_task(collect())
                dropper = tasks.create_task(drop_while_activations_cross())
                report = await edge.run()
                dropper.cancel()  # if the Pi never crossed at an early cut: asserted below
                # Every round's plan was published before its round: wait until all are here.
                await wait_until(
                    lambda: {p["round"] for p in plans} >= {r.round for r in report.rounds}
                )
                collector.cancel()
        finally:
            for process in processes.values():
                if process.returncode is None:
                    process.kill()
                await process.wait()

    splits = {r.round: r.devices["pi-b"].cut for r in report.rounds}
    print("link dropped in round", drop_round, "; pi-b cut per round:", splits,
          "uplink estimates:", [r.devices["pi-b"].uplink_mbps for r in report.rounds])  # fmt: skip
    assert drop_round, "pi-b never sent activations at an early cut: its link was not dropped"
    dropped = drop_round[0]
    # The first boundary after the drop moves the cut up: less crosses the slow link.
    assert splits[dropped + 1] > splits[dropped]
    by_round = {p["round"]: p["devices"]["pi-b"]["cut"] for p in plans}
    assert by_round[dropped] == splits[dropped]
    assert by_round[dropped + 1] == splits[dropped + 1]
