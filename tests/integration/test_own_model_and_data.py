"""A model of the user's (defined in a test module, not built in) trained through a real broker
on data that each device alone holds (folders of tiny PNGs that the test writes); a device whose
installed model code differs is refused, and the others train on."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from device_agent import DeviceAgent
from edge_service import EdgeService
from tests.integration.helpers import (
    HANG_S,
    device_settings,
    edge_settings,
    wait_for_connected,
    wait_until,
)

MODEL = "tests.user_models:pixel_net"
CLASSES = ("blue", "green", "red")  # the sorted folder names: label 0, 1, 2
SHAPE = (3, 8, 8)


def write_pngs(root: Path, per_class: int, seed: int, *, corrupt: int = 0) -> Path:
    """``root/<class>/*.png``: 8x8 images whose class is their brightest colour channel."""
    rng = np.random.default_rng(seed)
    for channel, name in ((2, "blue"), (1, "green"), (0, "red")):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, size=(8, 8, 3))
            pixels[..., channel] += 100 + rng.integers(0, 36, size=(8, 8))
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    for i in range(corrupt):
        (root / "red" / f"broken-{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def shadow_model_code(root: Path) -> Path:
    """A directory where ``tests.user_models:pixel_net`` is other code: another installation."""
    package = root / "tests"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "user_models.py").write_text(
        "from torch import nn\n\n\n"
        "def pixel_net(input_shape, num_classes):\n"
        "    c, h, w = input_shape\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))\n"
    )
    return root


async def test_a_users_model_on_each_devices_own_images(mosquitto, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    edge = EdgeService(
        edge_settings(
            mosquitto, model=MODEL, data=write_pngs(tmp_path / "edge", 20, seed=1),
            input_shape=SHAPE, policy="ares", rounds=4, min_devices=2, batch_size=8,
            lr=0.05,
        )
    )  # fmt: skip
    folders = [write_pngs(tmp_path / f"dev-{i}", 24, seed=10 + i, corrupt=i) for i in range(2)]
    agents = [
        DeviceAgent(device_settings(mosquitto, i, 2, data=folder, input_shape=SHAPE))
        for i, folder in enumerate(folders)
    ]
    log_path = tmp_path / "odd.log"
    with log_path.open("wb") as log:
        # Started from a directory where the same model name is other code.
        odd = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ares", "device", "--broker", mosquitto.url, "--id", "odd-0",
            "--data", str(write_pngs(tmp_path / "odd", 6, seed=3)), "--input-shape", "3x8x8",
            "--torch-threads", "1",
            cwd=shadow_model_code(tmp_path / "elsewhere"),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        await wait_for_connected(mosquitto, {"odd-0": odd})
        async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
            for agent in agents:
                tasks.create_task(agent.run())
            report = await edge.run()
            await wait_until(lambda: "refused" in log_path.read_text(), HANG_S)
    finally:
        if odd.returncode is None:
            odd.kill()
        await odd.wait()

    # The refused device: one line on each side, and no part in any round.
    refusals = [r.getMessage() for r in caplog.records if "refused this session" in r.message]
    assert len(refusals) == 1, refusals
    assert "odd-0" in refusals[0]
    assert "install the same model code" in refusals[0]
    odd_lines = [line for line in log_path.read_text().splitlines() if "refused" in line]
    assert len(odd_lines) == 1, odd_lines
    assert "install the same model code" in odd_lines[0]
    assert edge.devices["odd-0"].state == "refused"
    assert all(set(r.devices) == {"dev-0", "dev-1"} for r in report.rounds)

    # The others trained the user's model on their own images, well above chance (1/3).
    assert all(d.status == "ok" for r in report.rounds for d in r.devices.values())
    assert report.final_accuracy is not None
    print("accuracy per round:", [r.accuracy for r in report.rounds])
    assert report.final_accuracy >= 0.8, [r.accuracy for r in report.rounds]
    # Device 1's corrupt image was skipped and counted, not fatal.
    assert any("skipped 1" in r.getMessage() for r in caplog.records)
    assert edge.spec.name == MODEL


@pytest.mark.parametrize(
    ("edge_classes", "device_shape", "problem"),
    [
        (None, (3, 16, 16), "samples of shape (3, 16, 16); the model takes (3, 8, 8)"),
        (["blue", "green", "red", "white"], SHAPE, "not the edge's"),
    ],
)
async def test_a_device_whose_data_does_not_fit_is_refused_naming_its_folder(
    mosquitto, tmp_path, caplog, edge_classes, device_shape, problem
):
    """Wrong image size, or classes numbered otherwise: the hello is refused with one line that
    names the device's data; the device that fits trains on."""
    caplog.set_level(logging.INFO)
    edge_data = write_pngs(tmp_path / "edge", 4, seed=1)
    if edge_classes:
        (edge_data / "white").mkdir()  # a class the misfit device's folders lack...
        edge_classes = ["white", "blue", "green", "red"]  # ...listed first: labels shift
    edge = EdgeService(
        edge_settings(
            mosquitto, model=MODEL, data=edge_data, input_shape=SHAPE, classes=edge_classes,
            rounds=1, min_devices=1, batch_size=4,
        )
    )  # fmt: skip
    misfit_data = write_pngs(tmp_path / "misfit", 4, seed=2)
    misfit = DeviceAgent(
        device_settings(
            mosquitto, 1, 2, device_id="misfit", data=misfit_data, input_shape=device_shape
        )
    )
    fitting = DeviceAgent(
        device_settings(
            mosquitto, 0, 2, data=write_pngs(tmp_path / "dev-0", 4, seed=3), input_shape=SHAPE,
            classes=edge_classes,
        )
    )  # fmt: skip
    async with asyncio.timeout(HANG_S), asyncio.TaskGroup() as tasks:
        running = tasks.create_task(misfit.run())
        tasks.create_task(fitting.run())
        report = await edge.run()
        await wait_until(lambda: any("rejected hello" in r.message for r in caplog.records))
        running.cancel()
    rejected = [r.getMessage() for r in caplog.records if "rejected hello" in r.message]
    assert str(misfit_data) in rejected[0]
    assert problem in rejected[0]
    assert set(report.rounds[0].devices) == {"dev-0"}
