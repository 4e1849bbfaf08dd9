"""``ares broker``: run a local test broker, or provision a production one.

    ares broker run [--port N] [--print-config]     a local, unauthenticated Mosquitto for tests
    ares broker init DIR [...]                      write a TLS + passwords + ACL broker setup
    ares broker init-site DIR --core-dir CORE --site NAME
                                                    a site broker bridged to a core (init's)
    ares broker add-device NAME --dir DIR [...]     give a device its credentials (at a site:
                                                    its bridge and the core's ACL too)

Errors in the input (an existing setup, a bad name) exit with status 2 and one line on stderr,
through ``ares.cli.main``'s handling of ValueError.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from pathlib import Path, PurePosixPath

import runtime
from ares.broker_site_command import add_init_site_parser, print_site_device_steps

DEFAULT_MODEL = "vgg5"  # the paper's model and data: the largest messages of the shipped set
DEFAULT_DATASET = "cifar10"
DEFAULT_BATCH_SIZE = 100

__all__ = ["add_broker_parser", "default_hosts"]


def add_broker_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``broker`` and its subcommands on an ``add_subparsers()`` result."""
    broker = subparsers.add_parser(
        "broker",
        help="run a local test broker, or provision a production one (TLS, passwords, ACL)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = broker.add_subparsers(dest="broker_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a local, unauthenticated Mosquitto for testing")
    run.add_argument("--port", type=int, default=0, help="0 picks a free port")
    run.add_argument("--print-config", action="store_true", help="print the config and exit")
    run.set_defaults(handler=_run)

    init = commands.add_parser(
        "init",
        help="write a production Mosquitto setup into DIR",
        description="Write mosquitto.conf, a password file, an ACL, a CA with a server "
        "certificate, and the edge's and the inspector's client configs into DIR.",
    )
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--tls-port", type=int, default=8883, help="devices' TLS listener (8883)")
    init.add_argument("--bind", help="the TLS listener's address (default: every interface)")
    init.add_argument(
        "--local-port", type=int, default=1883, help="plain listener on 127.0.0.1 for the edge"
    )
    init.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="a name or address devices reach the broker by (repeat; the first goes into the "
        "devices' URL); default: this host's name, localhost, 127.0.0.1",
    )
    init.add_argument(
        "--mount-path",
        help="where the broker sees DIR (default: DIR's absolute path; in the compose file "
        "/mosquitto/config)",
    )
    init.add_argument("--prefix", default="ares/v1", help="topic prefix (default ares/v1)")
    init.add_argument(
        "--model", default=DEFAULT_MODEL, help="size the packet limit for this model (vgg5)"
    )
    init.add_argument(
        "--dataset", default=DEFAULT_DATASET, help="... trained on this dataset (cifar10)"
    )
    init.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="... at this batch size (100)"
    )
    init.add_argument(
        "--require-client-cert",
        action="store_true",
        help="TLS clients must also present a certificate signed by the CA",
    )
    init.add_argument(
        "--run-as", help="account mosquitto switches to when started as root (default: mosquitto)"
    )
    init.add_argument(
        "--persistence-dir", help="turn persistence on, in this directory (as the broker sees it)"
    )
    init.add_argument("--force", action="store_true", help="replace an existing setup in DIR")
    init.set_defaults(handler=_init)
    add_init_site_parser(commands)

    add = commands.add_parser(
        "add-device",
        help="give a device its credentials and print its settings",
        description="Add NAME (the device id, also its MQTT user name) to the password file, "
        "write DIR/clients/NAME.toml, and print it with the next steps.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--dir", type=Path, required=True, help="the setup directory of init")
    add.add_argument(
        "--ca-path",
        default="/etc/ares/ca.crt",
        help="where the device keeps ca.crt (its certificate and key go next to it)",
    )
    add.add_argument(
        "--client-cert",
        action="store_true",
        help="issue a client certificate (always done when init had --require-client-cert)",
    )
    add.add_argument("--force", action="store_true", help="replace the device's credentials")
    add.set_defaults(handler=_add_device)


def default_hosts() -> list[str]:
    """This host's name (when it can be a certificate name), localhost and 127.0.0.1."""
    from broker.pki import is_dns_name

    name = socket.gethostname()
    hosts = [name] if name and is_dns_name(name) else []
    return list(dict.fromkeys([*hosts, "localhost", "127.0.0.1"]))


# --- run ----------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from broker import BrokerConfig, LocalBroker, render_config

    if args.print_config:
        print(render_config(BrokerConfig(port=args.port or 1883)))
        return 0
    config = BrokerConfig(port=args.port)
    with LocalBroker(config) as local:
        print(f"Mosquitto listening on {local.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            runtime.run(_forever)
    return 0


async def _forever() -> None:
    await asyncio.Event().wait()


# --- init ---------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from broker.provision import BrokerSetup
    from broker.setup_dir import SetupDir
    from broker.sizing import frame_sizes, model_spec

    root: Path = args.dir
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory")
    sizes = frame_sizes(model_spec(args.model, args.dataset), args.batch_size)
    setup = BrokerSetup(
        hosts=tuple(args.hosts or default_hosts()),
        mount_path=PurePosixPath(args.mount_path or root.absolute()),
        max_payload_bytes=sizes.payload_limit(),
        tls_port=args.tls_port,
        local_port=args.local_port,
        bind=args.bind,
        prefix=args.prefix,
        require_client_cert=args.require_client_cert,
        run_as=args.run_as,
        persistence_dir=PurePosixPath(args.persistence_dir) if args.persistence_dir else None,
    )
    target = SetupDir(root)
    target.init(setup, force=args.force)
    mib = 1024 * 1024
    print(f"Broker setup written to {root}:")
    for path in (target.conf, target.passwd, target.acl, target.certs, target.clients):
        print(f"  {path}")
    print(
        f"\nTLS listener :{setup.tls_port} for devices ({setup.device_url}), plain listener "
        f"127.0.0.1:{setup.local_port} for the edge; certificate names: {', '.join(setup.hosts)}."
    )
    print(
        f"max_packet_size {setup.max_packet_size} bytes ({setup.max_packet_size / mib:.1f} MiB): "
        f"{args.model} on {args.dataset} at batch {args.batch_size} sends at most "
        f"{sizes.largest} bytes (weights {sizes.weights}, activations at cut "
        f"{sizes.activation_cut} {sizes.activations})."
    )
    print(
        "\nNext steps:\n"
        f"  1. Start the broker: mosquitto -c {setup.broker_path('mosquitto.conf')}\n"
        "     or deploy/compose.yaml, which runs it as DIR's owner; the eclipse-mosquitto\n"
        "     image's own user (uid 1883) would need: "
        f"chown 1883:1883 {root}/passwd {root}/certs/server.key\n"
        f"  2. Run the edge with {target.client_file('edge')}: ares edge --config ...\n"
        f"  3. Add each device: ares broker add-device NAME --dir {root}\n"
        "  See docs/security.md."
    )
    return 0


# --- add-device ---------------------------------------------------------------------------------


def _add_device(args: argparse.Namespace) -> int:
    from broker.site_dir import CoreDir, SiteDir

    target = SiteDir(args.dir)  # an ordinary setup unless DIR holds a site.toml
    site = None if target.is_site() else CoreDir(args.dir).site_of(args.name)
    if site is not None:
        raise ValueError(f"device {args.name!r} is already provisioned at site {site}")
    made = target.add_device(
        args.name,
        ca_path=PurePosixPath(args.ca_path),
        client_cert=args.client_cert,
        force=args.force,
    )
    print(made.config_path.read_text(encoding="utf-8"), end="")
    files = [made.config_path, target.certs / "ca.crt"]
    files += [p for p in (made.cert_path, made.key_path) if p is not None]
    device_dir = PurePosixPath(args.ca_path).parent
    if target.is_site():
        print_site_device_steps(args.dir, made.device_id, files)
        return 0
    print(
        "\nNext steps:\n"
        f"  1. Copy to the device ({device_dir}/), keeping the key and the config private "
        f"(chmod 600):\n" + "".join(f"       {path}\n" for path in files) + "  2. Make the broker "
        "reread its password file: kill -HUP <mosquitto pid>, or\n"
        "     docker compose kill -s HUP mosquitto\n"
        f"  3. On the device: ares device --config {device_dir}/{made.device_id}.toml"
    )
    return 0
