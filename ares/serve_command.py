"""``ares serve`` (the serving edge) and ``ares device --serve`` (a device answering requests).

The device's inference mode is a flag of ``ares device`` rather than a command of its own: a
serving device is the same device (its id, broker, declared power and links, its emulated board
and link in a testbed), so every ``ares device`` flag applies to it unchanged; ``--serve`` runs
:class:`serving.device.ServingDevice` instead of the training agent, with the flags below.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import runtime
from planner.inference import SERVING_POLICIES
from runtime import logs
from schemas.config_file import env_names

if TYPE_CHECKING:
    from serving.settings import ServeSettings, ServingDeviceSettings

__all__ = [
    "add_serve_parser",
    "add_serving_device_flags",
    "run_serve",
    "run_serving_device",
    "serve_settings",
    "serve_settings_and_flags",
    "serving_device_settings",
    "serving_device_settings_and_flags",
    "serving_mode",
    "serving_variables",
]

log = logging.getLogger("ares")

SERVE_FLAGS = ("artifact", "policy", "alpha", "accuracy_floor", "torch_threads")
DEVICE_FLAGS = ("artifact", "watch_dir", "deadline_ms")


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve`` on an ``add_subparsers()`` result, with ``handler=run_serve``."""
    from ares.cli import _mqtt_flags  # here: ares.cli imports this module

    parser = subparsers.add_parser(
        "serve",
        help="run the serving edge: devices answer requests with a trained model",
        description="Finish the forward passes serving devices hand over and plan every "
        "device's cut and exit threshold from its live readings (ares device --serve runs a "
        "device). The plan is published retained on PREFIX/serve/plan.",
    )
    parser.add_argument("--artifact", type=Path, help="the model file (ares export writes one)")
    parser.add_argument(
        "--policy",
        help="how cuts and thresholds are chosen: "
        + "; ".join(f"{name}: {line}" for name, line in SERVING_POLICIES.summaries().items())
        + "; or your own as package.module:Class",
    )
    parser.add_argument("--alpha", type=float, help="0: save device energy .. 1: save latency")
    parser.add_argument(
        "--accuracy-floor",
        type=float,
        help="how far below the whole model's held-out accuracy a plan may fall (0.01: one "
        "point, the default)",
    )
    parser.add_argument("--torch-threads", type=int)
    _mqtt_flags(parser)
    parser.set_defaults(handler=run_serve, log_name="serve")


def add_serving_device_flags(device: argparse.ArgumentParser) -> None:
    """``ares device``'s inference mode: ``--serve`` and what it takes."""
    group = device.add_argument_group("serving (inference mode: --serve)")
    group.add_argument(
        "--serve",
        action="store_true",
        help="answer requests with a trained model instead of training (needs ares serve)",
    )
    group.add_argument("--artifact", type=Path, help="the model file (ares export writes one)")
    group.add_argument(
        "--watch-dir", type=Path, help="answer images dropped into this folder (id: file name)"
    )
    group.add_argument("--deadline-ms", type=float, help="answer within this, by default (1000)")


def serving_mode(args: argparse.Namespace) -> bool:
    """Whether ``ares device`` was asked to serve; serving flags without ``--serve`` are an
    error rather than ignored."""
    if getattr(args, "serve", False):
        return True
    given = [f"--{name.replace('_', '-')}" for name in DEVICE_FLAGS if getattr(args, name, None)]
    if given:
        raise SystemExit(f"ares device: {', '.join(given)} needs --serve")
    return False


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """The serving edge's settings from its flags (and the file and environment)."""
    return serve_settings_and_flags(args)[0]


def serve_settings_and_flags(args: argparse.Namespace) -> tuple[ServeSettings, dict[str, Any]]:
    """The serving edge's settings, and the values its flags gave (``ares config show``)."""
    from ares.cli import _overrides, load_service_settings
    from serving.settings import ServeSettings

    flags = _overrides(args, *SERVE_FLAGS)
    return load_service_settings(ServeSettings, args.config, flags), flags


def run_serve(args: argparse.Namespace) -> int:
    from serving.edge import ServeEdge

    edge = ServeEdge(serve_settings(args))
    try:
        runtime.run(edge.run, service=edge)
    except asyncio.CancelledError:
        log.info("serving edge stopped")
    return 0


def serving_device_settings(args: argparse.Namespace) -> ServingDeviceSettings:
    """``ares device --serve``'s settings: the device's, and serving's flags."""
    return serving_device_settings_and_flags(args)[0]


def serving_device_settings_and_flags(
    args: argparse.Namespace,
) -> tuple[ServingDeviceSettings, dict[str, Any]]:
    """``ares device --serve``'s settings, and the values its flags gave (``ares config show``)."""
    from ares.cli import device_settings
    from serving.settings import ServingDeviceSettings

    extra: dict[str, Any] = {
        name: getattr(args, name) for name in DEVICE_FLAGS if getattr(args, name) is not None
    }
    settings, flags = device_settings(args, ServingDeviceSettings, extra)
    assert isinstance(settings, ServingDeviceSettings)
    return settings, {**flags, **extra}


def run_serving_device(args: argparse.Namespace) -> int:
    """``ares device --serve``: the device's settings and ports as ``ares device`` makes them."""
    from ares.cli import device_environment
    from serving.device import ServingDevice

    settings = serving_device_settings(args)
    logs.setup_logging(args.log_level, settings.device_id, args.log_format)
    device = ServingDevice(settings, environment=device_environment(settings))
    try:
        runtime.run(device.run, service=device)
    except asyncio.CancelledError:
        log.info("serving device %s stopped", settings.device_id)
    return 0


def serving_variables() -> set[str]:
    """The ``ARES_*`` variables serving's settings read (for the CLI's typo check)."""
    from serving.settings import ServeSettings, ServingDeviceSettings

    return env_names(ServeSettings) | env_names(ServingDeviceSettings)
