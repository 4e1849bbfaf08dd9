"""``ares demo``'s flags into :class:`~ares.demo.DemoOptions`, every setting checked first.

The demo takes its settings as every command does: defaults < config file (``--config`` or
ARES_CONFIG: the edge's settings) < ARES_* variables < flags, with a scenario's values just
below the flags (a scenario is chosen on the command line; any flag refines it). Before the
broker or any process starts, the edge's and every device's settings are built here exactly as
those processes will build them, so a bad value is one line naming its flag, variable or file
key, never a failure half a minute into a run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ares.demo import EDGE_NAMES, DemoOptions, DeviceLaunch, as_flags, scenario_devices
from broker.binary import find_mosquitto
from schemas.config_file import SettingsError, config_file_path, ignoring_config_env
from testbed.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from ares.cluster_demo import ClusterDemo
    from edge_service import EdgeSettings

# The demo's own defaults where they differ from the edge's, or are not settings at all.
DEMO_DEFAULTS: dict[str, Any] = {"rounds": 10, "devices": 3}


class DemoHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each flag's default: the demo's own, else the edge setting's it sets."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        default = action.default if action.default is not None else demo_default(action.dest)
        if default is None or isinstance(default, bool):
            return text
        return f"{text} (default: {str(default).replace('%', '%%')})"  # argparse %-formats it


def demo_default(name: str) -> Any:
    """What the demo runs with when nothing sets ``name`` (None: nothing to show)."""
    if name in DEMO_DEFAULTS:
        return DEMO_DEFAULTS[name]
    # Only for --help: the settings import the edge service (torch).
    from edge_service import EdgeSettings

    field = EdgeSettings.model_fields.get(name)
    return None if field is None or field.default_factory is not None else field.default


def demo_options(args: argparse.Namespace) -> DemoOptions:
    """The run ``args`` ask for, checked: a ValueError (one line) if anything would fail."""
    _check_flags(args)
    scenario = load_scenario(args.scenario) if args.scenario else None
    device_ids = (
        [d.id for d in scenario.devices]
        if scenario is not None
        else [f"dev-{i}" for i in range(args.devices or DEMO_DEFAULTS["devices"])]
    )
    own_data = own_data_layout(args.data, device_ids) if args.data is not None else None
    if own_data is not None:
        args = argparse.Namespace(**{**vars(args), "data": own_data.pop("test")})
    settings, flags = _edge_settings(args, scenario)
    run_dir = args.run_dir or Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    # What the devices share with the edge, whatever gave it: the same data and shards.
    shared: dict[str, Any] = {n: getattr(settings, n) for n in ("dataset", "data_dir", "seed")}
    if "prefix" in settings.mqtt.model_fields_set:
        shared["prefix"] = settings.mqtt.prefix
    if args.partition is not None:  # over the scenario's
        shared["partition"] = args.partition
    for name in ("input_shape", "classes"):  # what the devices' own data must become, as the edge's
        if getattr(settings, name) is not None:
            shared[name] = ",".join(map(str, getattr(settings, name)))
    devices = (
        scenario_devices(scenario, shared)
        if scenario is not None
        else _devices(args.devices or DEMO_DEFAULTS["devices"], shared)
    )
    if own_data is not None:
        devices = tuple(
            replace(d, flags=(*d.flags, "--data", str(own_data[d.device_id]))) for d in devices
        )
    edge = {n: flags.get(n) for n in EDGE_NAMES}
    splits = ("--splits", args.splits) if args.splits else ()
    options = DemoOptions(
        rounds=settings.rounds
        if "rounds" in settings.model_fields_set
        else DEMO_DEFAULTS["rounds"],
        # A URL from any source means that broker; none, a private Mosquitto.
        broker=settings.mqtt.url if "url" in settings.mqtt.model_fields_set else None,
        run_dir=run_dir,
        report=settings.report or run_dir / "report.json",
        timeout_s=args.timeout,
        edge_flags=(*as_flags(edge), *splits),
        devices=devices,
        scenario=scenario,
        config=config_file_path(args.config),
        mqtt=settings.mqtt,
        # A model to serve, unless the settings name their own place for it.
        artifact=None if settings.artifact is not None else run_dir / "model.ares",
    )
    check_before_start(options)
    return options


def cluster_demo_options(args: argparse.Namespace) -> ClusterDemo:
    """``ares demo --edges/--sites``: the run ``args`` ask for, checked as :func:`demo_options`
    checks one edge's, and the replicas' and the devices' settings with their sites."""
    from ares.cluster_demo import ClusterDemo, ClusterLayout, with_sites

    if args.scenario:
        raise ValueError("--edges and --sites do not combine with --scenario yet")
    devices = args.devices if args.devices is not None else DEMO_DEFAULTS["devices"]
    if devices < 1:  # before the layout's checks, which count them
        raise ValueError(f"--devices must be at least 1, got {devices}")
    layout = ClusterLayout.from_flags(args.edges, args.sites, devices)
    options = demo_options(args)
    if options.broker is not None:
        raise ValueError(
            "--edges and --sites start their own brokers: leave out --broker (and "
            "ARES_MQTT__URL or the config file's [mqtt] url)"
        )
    demo = ClusterDemo(with_sites(options, layout), layout)
    check_cluster_before_start(demo)
    return demo


def check_cluster_before_start(demo: ClusterDemo) -> None:
    """As :func:`check_before_start`, for each replica and each device with its site."""
    from ares.cli import build_parser, device_settings, edge_settings

    parser = build_parser()
    for replica in demo.layout.replicas:
        try:
            edge_settings(parser.parse_args(demo.replica_argv(replica)))
        except SettingsError as exc:
            raise SettingsError(f"replica {replica}: {exc}") from None
    for device in demo.options.devices:
        try:
            with ignoring_config_env():
                device_settings(parser.parse_args(demo.options.device_argv(device)))
        except SettingsError as exc:
            raise SettingsError(f"device {device.device_id}: {exc}") from None


def _check_flags(args: argparse.Namespace) -> None:
    """The demo's own flags (the settings' are checked with the settings)."""
    if args.devices is not None and args.scenario:
        raise ValueError(
            "--devices does not combine with --scenario: the scenario lists its devices"
        )
    if args.devices is not None and args.devices < 1:
        raise ValueError(f"--devices must be at least 1, got {args.devices}")
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout:g}")


def _edge_settings(
    args: argparse.Namespace, scenario: Scenario | None
) -> tuple[EdgeSettings, dict[str, Any]]:
    """The edge's settings as its process will build them; and the flags (with the scenario's
    values where no flag is given) that it is given."""
    from ares.cli import edge_settings  # ares.cli imports this module's users lazily, too

    values = vars(args).copy()
    if scenario is not None:
        for name in (*EDGE_NAMES, "rounds"):
            if values.get(name) is None:
                values[name] = getattr(scenario, name, None)
    return edge_settings(argparse.Namespace(**values))


OWN_DATA_SUFFIXES = ("", ".npz", ".csv")


def own_data_layout(root: Path, device_ids: Sequence[str]) -> dict[str, Path]:
    """``ares demo --data ROOT``: ROOT/test is the edge's held-out set and ROOT/ID each
    device's own data (a folder of class folders, or ID.npz or ID.csv); "test" and each id
    map to a path, or a ValueError names what is missing."""
    if not root.is_dir():
        raise ValueError(f"--data {root}: not a folder")
    found: dict[str, Path] = {}
    for name in ("test", *device_ids):
        paths = [root / f"{name}{suffix}" for suffix in OWN_DATA_SUFFIXES]
        present = [p for p in paths if p.exists()]
        if len(present) != 1:
            problem = "none of" if not present else "more than one of"
            names = ", ".join(p.name for p in paths)
            raise ValueError(
                f"--data {root}: {problem} {names} (the edge's held-out set is test; each "
                "device's data is named by its id)"
            )
        found[name] = present[0]
    return found


def _devices(count: int, shared: dict[str, Any]) -> tuple[DeviceLaunch, ...]:
    """``count`` devices on this host, each with its shard of the data."""
    return tuple(
        DeviceLaunch(f"dev-{i}", as_flags({"shard": f"{i}/{count}", **shared}))
        for i in range(count)
    )


def check_before_start(options: DemoOptions) -> None:
    """Build the edge's and each device's settings from the arguments they will be started with,
    as they will: a SettingsError naming the process, if one would refuse to start. Without a
    broker of the user's, Mosquitto must be there to start one (else a BrokerNotFoundError)."""
    from ares.cli import build_parser, device_settings, edge_settings

    if options.broker is None:
        find_mosquitto()
    parser = build_parser()
    try:
        edge_settings(parser.parse_args(options.edge_argv()))
    except SettingsError as exc:
        raise SettingsError(f"the edge: {exc}") from None
    for device in options.devices:
        try:
            with ignoring_config_env():  # the devices are started without ARES_CONFIG
                device_settings(parser.parse_args(options.device_argv(device)))
        except SettingsError as exc:
            raise SettingsError(f"device {device.device_id}: {exc}") from None
