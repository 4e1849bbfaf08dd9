"""The ``ares`` command: a thin layer that turns flags into settings and starts a service.

Precedence: defaults < config file (--config or ARES_CONFIG) < ARES_* environment variables <
command-line flags. ``ares config show edge|device [flags]`` prints the result.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

import runtime
from ares.arg_types import partition_arg, positions_arg, shape_arg, wire_formats_arg
from ares.bench_command import add_bench_parser
from ares.broker_command import add_broker_parser
from ares.demo_command import DemoHelpFormatter
from ares.export_command import add_export_parser
from ares.plan_command import add_plan_parser
from ares.serve_command import (
    add_serve_parser,
    add_serving_device_flags,
    run_serving_device,
    serving_mode,
    serving_variables,
)
from broker.binary import ENV_VAR as MOSQUITTO_ENV
from planner.policies import POLICIES
from runtime import logs
from schemas.config_file import (
    CONFIG_ENV,
    ENV_PREFIX,
    NESTED,
    SettingsError,
    describe_error,
    env_names,
    load_settings,
    setting_sources,
    show_settings,
)
from schemas.errors import AresError
from schemas.messages import WIRE_DTYPES
from schemas.partitions import PARTITION_HELP
from schemas.weight_delta import WEIGHT_WIRES
from testbed.scenario import shipped_scenarios

if TYPE_CHECKING:
    from device_agent import DeviceSettings
    from device_agent.ports import Environment
    from edge_service import EdgeSettings
    from schemas.config_file import ServiceSettings

log = logging.getLogger("ares")
SettingsT = TypeVar("SettingsT", bound="ServiceSettings")

# ARES_* variables that are not settings: read by the CLI, the broker code, scripts/setup.sh and
# deploy/compose.yaml. Any other one that no settings class reads is most likely a typo.
OTHER_VARIABLES = frozenset({
    CONFIG_ENV, logs.FORMAT_ENV, MOSQUITTO_ENV, "ARES_VENV", "ARES_TORCH_VERSION", "ARES_UID",
    "ARES_GID", "ARES_BROKER_DIR",
})  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup_logging(args.log_level, getattr(args, "log_name", "") or "", args.log_format)
    for line in unknown_variables(os.environ):
        print(f"ares {args.command}: warning: {line}", file=sys.stderr)
    try:
        return int(args.handler(args))
    except ValidationError as exc:
        print(f"ares {args.command}: invalid settings:\n{describe_error(exc)}", file=sys.stderr)
        return 2
    except (AresError, ValueError, OSError) as exc:
        # Every error of ours (bad cuts, missing datasets, unreachable brokers, a bad
        # checkpoint...) and the system's own: a clear line, not a traceback.
        print(f"ares {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ares", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=logs.default_format(),
        help="text, or json (one JSON object per line); default $ARES_LOG_FORMAT or text",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="broker, edge service and N devices on this machine",
        description="Start a broker, the edge service and N device agents on this machine, "
        "train, and print the rounds. Settings as for every command: defaults < config file < "
        "ARES_* variables < a scenario's values < flags; the file and the variables are the "
        "edge's (the devices get its dataset, data_dir and seed).",
        formatter_class=DemoHelpFormatter,
    )
    _training_flags(demo)
    _own_data_flags(
        demo,
        "a folder holding the edge's held-out set as test and each device's own data under its "
        "id (dev-0, dev-1, ...; folders of class sub-folders, or .npz or .csv files)",
    )
    demo.add_argument("--config", type=Path, help="the edge's settings file; or ARES_CONFIG")
    demo.add_argument("--devices", type=int, help="number of device agents (not with --scenario)")
    demo.add_argument(
        "--scenario",
        help="a testbed scenario: a YAML file, or a shipped one: " + ", ".join(shipped_scenarios()),
    )
    demo.add_argument(
        "--broker",
        help="use this broker (mqtt://host:port), or ARES_MQTT__URL, or the file's [mqtt] url "
        "(default: a private Mosquitto)",
    )
    demo.add_argument("--splits", help="per-device cuts for sl, e.g. dev-0=1,dev-1=3")
    demo.add_argument(
        "--partition",
        type=partition_arg,
        metavar="SCHEME",
        help=f"how the data is split among the devices: {PARTITION_HELP} (default: iid, or "
        "the scenario's)",
    )
    demo.add_argument(
        "--run-dir", type=Path, help="where logs and the report go (default: a new one in runs/)"
    )
    demo.add_argument("--timeout", type=float, default=1800.0, help="give up after this many s")
    scale_out = demo.add_argument_group(
        "scale-out", "one run served by several edge replicas (docs/architecture.md, Scale-out)"
    )
    scale_out.add_argument(
        "--edges", type=int, help="edge replicas edge-1, edge-2, ... (default: one edge)"
    )
    scale_out.add_argument(
        "--sites",
        type=int,
        help="site brokers site-1, site-2, ... bridged to a core broker where the replicas "
        "run; the devices are dealt round the sites, replica K runs at site K "
        "(default: one broker)",
    )
    demo.set_defaults(handler=_demo)

    edge = sub.add_parser("edge", help="run the edge service")
    _training_flags(edge)
    _own_data_flags(edge, f"the edge's held-out set, instead of --dataset's test split; {OWN_DATA}")
    _mqtt_flags(edge)
    edge.add_argument("--min-devices", type=int, help="devices to wait for before round 1")
    edge.add_argument("--splits", help="per-device cuts for sl, e.g. dev-0=1,dev-1=3")
    edge.add_argument(
        "--wire-dtypes", help="per-device wire formats, e.g. pi-1=float16,jetson-1=int8"
    )
    edge.add_argument("--torch-device", help="auto, cpu, cuda, cuda:1, ...")
    edge.add_argument("--torch-threads", type=int)
    edge.add_argument("--keep-devices", action="store_true", help="do not stop devices at the end")
    edge.add_argument("--checkpoint", type=Path, help="checkpoint file (default ares-edge.ckpt)")
    edge.add_argument(
        "--artifact",
        type=Path,
        help="when training ends, write the trained model with calibrated early exits here, "
        "for ares serve (default: none; ares export makes one from the checkpoint)",
    )
    edge.add_argument(
        "--exits",
        type=positions_arg,
        metavar="P,Q,...",
        help="where the early exits sit: after these blocks, e.g. 1,3 (default: spread)",
    )
    edge.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (0: any free one)"
    )
    edge.add_argument(
        "--fresh",
        action="store_true",
        default=None,
        help="ignore an existing checkpoint and start from round 1",
    )
    cluster = edge.add_argument_group(
        "scale-out", "one of several edge replicas on one core broker (docs/deployment.md)"
    )
    cluster.add_argument("--replica", help="this replica's name; without it the only edge")
    cluster.add_argument("--site", help="the site this replica runs at (devices stay local)")
    cluster.add_argument(
        "--replica-capacity",
        dest="replica_capacity_bps",
        type=float,
        help="batches per second it serves, relative to the other replicas (default 1)",
    )
    edge.set_defaults(handler=_edge, log_name="edge")

    device = sub.add_parser("device", help="run a device agent")
    _mqtt_flags(device)
    device.add_argument("--id", dest="device_id", help="device id (default: host name)")
    device.add_argument("--dataset", help=DATASET_HELP)
    device.add_argument("--data-dir", type=Path, help="directory of a local dataset (cifar10)")
    _own_data_flags(device, f"this device's own data, instead of a shard of --dataset; {OWN_DATA}")
    device.add_argument("--shard", help="which shard of the dataset this device owns: INDEX/COUNT")
    device.add_argument("--partition", type=partition_arg, metavar="SCHEME", help=PARTITION_HELP)
    device.add_argument("--seed", type=int)
    device.add_argument("--torch-threads", type=int)
    device.add_argument("--exit-on-finish", action="store_true", default=None)
    device.add_argument("--uplink-mbps", type=float, help="declared uplink rate for the planner")
    device.add_argument("--downlink-mbps", type=float, help="declared downlink rate")
    device.add_argument("--memory-mb", type=float, help="memory available for training")
    device.add_argument("--allowed-cuts", help="cuts this device may take, e.g. 2,3,5")
    device.add_argument("--site", help="where it is (its site broker), for the edge replicas")
    emulation = device.add_argument_group("emulation (testbed)")
    emulation.add_argument("--profile", help="emulate a built-in device, e.g. raspberry-pi-3b+")
    emulation.add_argument("--time-scale", type=float, help="run the emulation this much faster")
    emulation.add_argument("--link-mode", choices=["direct", "tc", "token-bucket"])
    emulation.add_argument(
        "--uplink",
        dest="uplink_schedule",
        help="token-bucket uplink: Mbit/s "
        "or a JSON schedule such as '{\"steps\": [[0, 40], [60, 2]]}'",
    )
    emulation.add_argument("--downlink", dest="downlink_schedule", help="like --uplink")
    emulation.add_argument("--battery-wh", type=float, help="an emulated battery of this size")
    emulation.add_argument("--battery-pct", type=float, help="its charge at the start")
    emulation.add_argument(
        "--data-share",
        dest="shard_count",
        type=int,
        help="own this many consecutive shards from --shard on",
    )
    device.add_argument(
        "--power", help="board power in W while computing,transmitting,receiving: e.g. 7.3,2.3,2.3"
    )
    add_serving_device_flags(device)
    device.set_defaults(handler=_device)

    add_plan_parser(sub)
    add_serve_parser(sub)
    add_bench_parser(sub)
    add_export_parser(sub)

    config = sub.add_parser("config", help="settings: show what a service would run with")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="print a service's effective settings (secrets masked) as TOML",
        description="Takes the service's own flags, e.g.: ares config show device --config "
        "/etc/ares/device.toml --id pi-1",
    )
    show.add_argument("service", choices=["edge", "device", "serve"])
    show.add_argument("flags", nargs=argparse.REMAINDER, help="that service's flags")
    show.set_defaults(handler=_config_show)

    add_broker_parser(sub)
    return parser


def _training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, help="rounds of training")
    p.add_argument(
        "--policy",
        help="how cuts are chosen: "
        + "; ".join(f"{name}: {summary}" for name, summary in POLICIES.summaries().items())
        + "; or your own as package.module:Class",
    )
    p.add_argument("--alpha", type=float, help="0: save device energy .. 1: save time")
    p.add_argument(
        "--split", type=int, help="the sl policy's cut, for every device (default: the middle one)"
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--dataset", help=DATASET_HELP)
    p.add_argument("--data-dir", type=Path, help="directory of a local dataset (cifar10)")
    p.add_argument("--batch-size", type=int, help="samples per batch")
    p.add_argument("--batches-per-round", type=int, help="default: one local epoch")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument(
        "--wire-dtype",
        choices=WIRE_DTYPES,
        help="activations and gradients on the wire: float32, float16, or quantised int8 or "
        "int4 (affine per channel)",
    )
    p.add_argument(
        "--weight-wire",
        choices=WEIGHT_WIRES,
        help="the device part's weights, down with each round start and up with each part: "
        "float32, or quantised deltas against the round start both sides hold, int8-delta "
        "(default; a quarter of the bytes) or int4-delta (an eighth)",
    )
    p.add_argument(
        "--wire-formats",
        type=wire_formats_arg,
        help="formats the ares policy may choose per device with its cut, --wire-dtype first "
        "(default: all; '' or --wire-dtype alone: none to choose)",
    )
    p.add_argument(
        "--wire-accuracy-bound",
        type=float,
        help="a format is allowed where its accuracy cost on held-out data is within this many "
        "points (default 1)",
    )
    p.add_argument("--seed", type=int, help="model initialisation and data shards")
    p.add_argument("--report", type=Path, help="write the JSON run report here")


# Written out, not read from the registries: those import torch, and the CLI starts without it
# (tests/ares/test_cli.py holds these to the registries).
BUILTIN_MODELS = ("small_cnn", "vgg5", "tiny", "mobilenetv2", "resnet18", "cnn1d")
MODEL_HELP = (
    f"{', '.join(BUILTIN_MODELS)}, or your own as package.module:callable (an nn.Sequential of "
    "blocks; see README: Bring your own model and data)"
)
BUILTIN_DATASETS = ("digits", "cifar10", "synthetic")
DATASET_HELP = f"{', '.join(BUILTIN_DATASETS)}, or a path to local data"
OWN_DATA = "a folder of class sub-folders of PNG/JPEG images, a .npz of x and y, or a .csv"


def _own_data_flags(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--data", type=Path, help=data_help)
    p.add_argument(
        "--input-shape",
        type=shape_arg,
        metavar="CxHxW",
        help="what images in --data become (default 3x32x32; 1xHxW: grayscale)",
    )
    p.add_argument(
        "--classes",
        type=names_arg,
        metavar="A,B,...",
        help="class names in label order (default: the sorted class folder names)",
    )


def _mqtt_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="settings file (TOML, YAML or JSON); or ARES_CONFIG")
    mqtt = p.add_argument_group("broker connection (the [mqtt] table of the config file)")
    mqtt.add_argument("--broker", help="broker URL, mqtt://host:port or mqtts://host:port (TLS)")
    mqtt.add_argument("--prefix", help="topic prefix (default ares/v1)")
    mqtt.add_argument("--username", help="MQTT user name (a device's must be its id)")
    mqtt.add_argument("--password-file", type=Path, help="file whose first line is the password")
    mqtt.add_argument("--ca-file", type=Path, help="CA certificate that signed the broker's")
    mqtt.add_argument("--cert-file", type=Path, help="client certificate, if the broker wants one")
    mqtt.add_argument("--key-file", type=Path, help="the client certificate's private key")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``ARES_*`` variable nothing reads, with the likely intended name.

    An unknown config file key is refused; an unknown variable cannot be (the environment holds
    variables for many programs), but it is as likely a typo, so it is named.
    """
    given = sorted(
        v for v in environ if v.upper().startswith(ENV_PREFIX) and v.upper() not in OTHER_VARIABLES
    )
    if not given:
        return []
    # Only now: the settings classes import the services (torch), too slow for every command.
    from device_agent import DeviceSettings
    from edge_service import EdgeSettings

    known = sorted(
        env_names(EdgeSettings) | env_names(DeviceSettings) | serving_variables() | OTHER_VARIABLES
    )
    lines = []
    for variable in given:
        name = variable.upper()
        if name in known or name.split("__")[0] in NESTED_VARIABLES:
            continue  # a table's unknown key is refused by the table itself
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{variable} is not a setting of any service and is ignored{hint}")
    return lines


# The prefixes of a table's variables (ARES_MQTT__URL, ...).
NESTED_VARIABLES = frozenset(ENV_PREFIX + table.upper() for table in NESTED)

MQTT_FLAGS = (
    ("url", "broker"), ("prefix", "prefix"), ("username", "username"),
    ("password_file", "password_file"), ("ca_file", "ca_file"), ("cert_file", "cert_file"),
    ("key_file", "key_file"),
)  # fmt: skip


def _overrides(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Flags the user gave (not None), as settings keyword arguments."""
    values: dict[str, Any] = {
        n: getattr(args, n) for n in names if getattr(args, n, None) is not None
    }
    mqtt = {
        key: getattr(args, flag)
        for key, flag in MQTT_FLAGS
        if getattr(args, flag, None) is not None
    }
    if mqtt:
        values["mqtt"] = mqtt
    return values


# Settings whose flag is not "--" and the setting's name with dashes (see setting_sources).
FLAG_NAMES = {
    "mqtt.url": "--broker", "device_id": "--id", "uplink_schedule": "--uplink",
    "downlink_schedule": "--downlink", "shard_count": "--data-share", "shard_index": "--shard",
    "num_shards": "--shard", "power_compute_w": "--power", "power_transmit_w": "--power",
    "power_receive_w": "--power", "finish_devices": "--keep-devices",
}  # fmt: skip


def load_service_settings(
    cls: type[SettingsT], config_file: Path | None, flags: dict[str, Any]
) -> SettingsT:
    """``cls`` from defaults, the file, the environment and ``flags``; a bad value is a
    SettingsError naming the flag, variable or file key it came from."""
    try:
        return load_settings(cls, config_file, **flags)
    except ValidationError as exc:
        sources = setting_sources(cls, config_file, flags, FLAG_NAMES)
        lines = describe_error(exc, sources).splitlines()
        raise SettingsError(
            "invalid settings: " + "; ".join(line.strip() for line in lines)
        ) from None


TRAINING = (
    "rounds", "policy", "alpha", "split", "model", "dataset", "data_dir", "batch_size",
    "batches_per_round", "lr", "wire_dtype", "seed", "report", "data", "input_shape", "classes",
    "wire_formats", "wire_accuracy_bound",
    "weight_wire",
)  # fmt: skip


def edge_settings(args: argparse.Namespace) -> tuple[EdgeSettings, dict[str, Any]]:
    """The edge's settings from its flags (and the file and environment); and the flags."""
    from edge_service import EdgeSettings

    values = _overrides(
        args, *TRAINING, "min_devices", "torch_device", "torch_threads", "checkpoint", "fresh",
        "metrics_port", "replica", "site", "replica_capacity_bps",
    )  # fmt: skip
    # getattr: the demo builds the edge's settings from its own flags, a subset of these.
    if getattr(args, "splits", None):
        values["splits"] = parse_per_device(args.splits, "--splits")
    if getattr(args, "wire_dtypes", None):
        values["wire_dtypes"] = parse_per_device(args.wire_dtypes, "--wire-dtypes")
    if getattr(args, "keep_devices", False):
        values["finish_devices"] = False
    if getattr(args, "artifact", None) is not None:
        values["artifact"] = args.artifact
    if getattr(args, "exits", None) is not None:
        values["exits"] = args.exits
    return load_service_settings(EdgeSettings, args.config, values), values


def _edge(args: argparse.Namespace) -> int:
    from edge_service import EdgeService

    settings, _ = edge_settings(args)
    service = EdgeService(settings)
    try:
        report = runtime.run(service.run, service=service)
    except asyncio.CancelledError:
        log.info("edge stopped")
        return 0
    except TimeoutError as exc:  # too few devices registered
        log.error("%s", exc)
        return 1
    if settings.replica is not None and not report.rounds:  # another replica coordinated
        log.info("replica %s done: %d batch steps served in %.1f s", settings.replica,
                 report.counters.get("batches", 0), report.wall_s)  # fmt: skip
        return 0
    log.info("finished: final accuracy %s in %.1f s", report.final_accuracy, report.wall_s)
    return 0


def device_settings(
    args: argparse.Namespace,
    cls: type[DeviceSettings] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[DeviceSettings, dict[str, Any]]:
    """A device agent's settings from its flags (and the file and environment); and the flags.
    ``cls``: a device's settings class with more settings (serving's), set from ``extra``."""
    from device_agent import DeviceSettings

    values = _overrides(
        args, "device_id", "dataset", "data_dir", "data", "input_shape", "classes", "partition",
        "seed", "torch_threads",
        "exit_on_finish", "uplink_mbps", "downlink_mbps", "memory_mb", "profile", "time_scale",
        "link_mode", "uplink_schedule", "downlink_schedule", "battery_wh", "battery_pct",
        "shard_count", "site",
    )  # fmt: skip
    if args.allowed_cuts:
        values["allowed_cuts"] = parse_ints(args.allowed_cuts, "--allowed-cuts")
    if args.power:
        compute, transmit, receive = parse_floats(args.power, 3, "--power")
        values.update(power_compute_w=compute, power_transmit_w=transmit, power_receive_w=receive)
    if args.shard:
        index, count = parse_shard(args.shard)
        values.update(shard_index=index, num_shards=count)
    values.update(extra or {})
    return load_service_settings(cls or DeviceSettings, args.config, values), values


def device_environment(settings: DeviceSettings) -> Environment:
    """The agent's ports: the testbed's emulation where the settings ask for an emulated board,
    battery or token-bucket link, else this host as it is."""
    if settings.emulated:
        from testbed.emulation import Emulation

        return Emulation(settings).environment()
    from device_agent.host import host_environment

    return host_environment(settings.sysfs_root)


def _device(args: argparse.Namespace) -> int:
    from device_agent import DeviceAgent

    if serving_mode(args):
        return run_serving_device(args)
    settings, _ = device_settings(args)
    logs.setup_logging(args.log_level, settings.device_id, args.log_format)
    agent = DeviceAgent(settings, environment=device_environment(settings))
    try:
        runtime.run(agent.run, service=agent)
    except asyncio.CancelledError:
        log.info("device %s stopped", settings.device_id)
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from ares.serve_command import (
        serve_settings_and_flags,
        serving_device_settings_and_flags,
        serving_mode,
    )

    service_args = build_parser().parse_args([args.service, *args.flags])
    build: Callable[[argparse.Namespace], tuple[ServiceSettings, dict[str, Any]]]
    if args.service == "edge":
        build = edge_settings
    elif args.service == "serve":
        build = serve_settings_and_flags
    elif serving_mode(service_args):
        build = serving_device_settings_and_flags
    else:
        build = device_settings
    settings, flags = build(service_args)
    print(f"# ares {args.service}: effective settings (defaults < file < ARES_* env < flags)")
    print(show_settings(settings, service_args.config, flags, FLAG_NAMES), end="")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ares.demo import run_demo
    from ares.demo_command import demo_options

    if args.edges is not None or args.sites is not None:
        from ares.cluster_demo import run_cluster_demo
        from ares.demo_command import cluster_demo_options

        return run_cluster_demo(cluster_demo_options(args))
    return run_demo(demo_options(args))  # every setting is checked before anything starts


def parse_per_device(text: str, flag: str) -> dict[str, str]:
    """``dev-0=1,dev-1=3`` -> {"dev-0": "1", "dev-1": "3"} (settings validate the values)."""
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SystemExit(f"ares: bad {flag} entry {item!r}; expected DEVICE=VALUE")
        values[name.strip()] = value.strip()
    return values


def parse_floats(text: str, count: int, flag: str) -> list[float]:
    """``7.3,2.3,2.3`` -> [7.3, 2.3, 2.3]; ``count`` -1 takes any number of them."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or (count >= 0 and len(values) != count):
        expected = f"{count} numbers" if count >= 0 else "numbers"
        raise SystemExit(f"ares: bad {flag} {text!r}; expected {expected} separated by commas")
    return values


def parse_ints(text: str, flag: str) -> list[int]:
    """``1,3`` -> [1, 3]."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        problem = f"ares: bad {flag} {text!r}; expected whole numbers separated by commas"
        raise SystemExit(problem) from None


def names_arg(text: str) -> list[str]:
    """``--classes``: cat,dog -> ["cat", "dog"]."""
    names = [n.strip() for n in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated names, got {text!r}")
    return names


def parse_shard(text: str) -> tuple[int, int]:
    """``2/5`` -> (2, 5)."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit():
        raise SystemExit(f"ares: bad --shard {text!r}; expected INDEX/COUNT, e.g. 0/3")
    return int(index), int(count)
