"""One root error type: every error class of ours is an AresError, and the CLI turns any of them
into one line (a bad checkpoint used to end ``ares edge`` with a traceback)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from ares.cli import main
from schemas.errors import AresError

PACKAGES = ("schemas", "splitnn", "planner", "broker", "edge_service", "device_agent", "testbed",
            "ares")  # fmt: skip


def error_classes() -> list[type[BaseException]]:
    found = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if info.name.endswith("__main__"):
                continue  # runs the CLI when imported
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == info.name:
                    found.append(cls)
    return found


def test_every_error_class_of_ours_is_an_ares_error():
    classes = error_classes()
    assert len(classes) >= 20
    assert [c.__qualname__ for c in classes if not issubclass(c, AresError)] == []


def test_error_names_are_unique():
    names = [c.__name__ for c in error_classes()]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_a_corrupt_checkpoint_is_one_line_from_the_cli(tmp_path, capsys):
    checkpoint = tmp_path / "edge.ckpt"
    checkpoint.write_bytes(b"not a checkpoint")
    code = main(["edge", "--checkpoint", str(checkpoint), "--broker", "mqtt://127.0.0.1:9",
                 "--torch-threads", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ares edge:")]
    assert len(lines) == 1
    assert "checkpoint" in lines[0]
