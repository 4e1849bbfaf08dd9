"""``ares broker init-site``: a site broker bridged to a core broker (docs/deployment.md).

ares broker init CORE [...]                                 the core (an ordinary setup)
ares broker init-site SITE --core-dir CORE --site NAME      a site broker and its bridge
ares broker add-device NAME --dir SITE                      a device at that site
"""

from __future__ import annotations

import argparse
from pathlib import Path, PurePosixPath

__all__ = ["add_init_site_parser", "print_site_device_steps"]


def add_init_site_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``init-site`` on ``ares broker``'s subcommands."""
    site = commands.add_parser(
        "init-site",
        help="write a site broker's setup, bridged to a core broker setup",
        description="Write into DIR a broker setup for one site's devices (TLS, passwords, "
        "ACL, as init writes) whose mosquitto.conf bridges to the core broker set up in "
        "--core-dir: the site's devices' topics and the edge's broadcasts cross, nothing else. "
        "Registers the site at the core: its bridge's account and ACL. The site takes the "
        "core's topic prefix and packet limit. See docs/deployment.md.",
    )
    site.add_argument("dir", type=Path, metavar="DIR")
    site.add_argument(
        "--core-dir", type=Path, required=True, help="the core's setup directory (ares broker init)"
    )
    site.add_argument("--site", required=True, metavar="NAME", help="the site's name, e.g. hall-a")
    site.add_argument(
        "--core-host",
        help="the name the bridge reaches the core by; one of the core certificate's names "
        "(default: the core's first --host)",
    )
    site.add_argument(
        "--core-port", type=int, help="the core's TLS port (default: the core's --tls-port)"
    )
    site.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="a name or address the site's devices reach the site broker by (repeat); default: "
        "this host's name, localhost, 127.0.0.1",
    )
    site.add_argument("--tls-port", type=int, default=8883, help="devices' TLS listener (8883)")
    site.add_argument("--bind", help="the TLS listener's address (default: every interface)")
    site.add_argument(
        "--local-port", type=int, default=1883, help="plain listener on 127.0.0.1 (1883)"
    )
    site.add_argument(
        "--mount-path", help="where the site broker sees DIR (default: DIR's absolute path)"
    )
    site.add_argument(
        "--require-client-cert",
        action="store_true",
        help="the site's devices must also present a certificate signed by the site's CA",
    )
    site.add_argument("--run-as", help="account mosquitto switches to when started as root")
    site.add_argument(
        "--persistence-dir",
        help="turn persistence on, in this directory (as the broker sees it): recommended, "
        "so messages queued for the core survive a restart of the site broker",
    )
    site.add_argument(
        "--keepalive", type=int, default=15, help="the bridge's keepalive in seconds (15)"
    )
    site.add_argument(
        "--restart-timeout",
        type=int,
        nargs=2,
        default=(2, 15),
        metavar=("BASE", "CAP"),
        help="the bridge's reconnect delay, jittered from BASE up to CAP seconds (2 15)",
    )
    site.add_argument("--force", action="store_true", help="replace an existing site setup")
    site.set_defaults(handler=_init_site)


def _init_site(args: argparse.Namespace) -> int:
    from ares.broker_command import default_hosts
    from broker.bridge import BridgeTiming
    from broker.provision import BrokerSetup
    from broker.site_dir import CoreDir, SiteDir

    root: Path = args.dir
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory")
    core = CoreDir(args.core_dir)
    core_setup = core.load_setup()
    setup = BrokerSetup(
        hosts=tuple(args.hosts or default_hosts()),
        mount_path=PurePosixPath(args.mount_path or root.absolute()),
        max_payload_bytes=core_setup.max_payload_bytes,
        tls_port=args.tls_port,
        local_port=args.local_port,
        bind=args.bind,
        prefix=core_setup.prefix,
        require_client_cert=args.require_client_cert,
        run_as=args.run_as,
        persistence_dir=PurePosixPath(args.persistence_dir) if args.persistence_dir else None,
    )
    target = SiteDir(root)
    made = target.init_site(
        setup,
        site=args.site,
        core=core,
        core_host=args.core_host,
        core_port=args.core_port,
        timing=BridgeTiming(args.keepalive, *args.restart_timeout),
        force=args.force,
    )
    record = target.load_record()
    print(f"Site {made.site} written to {root}, registered at the core {core.root}:")
    for path in (target.conf, target.passwd, target.acl, target.certs, target.clients):
        print(f"  {path}")
    print(
        f"\nThe site broker listens for its devices on {setup.device_url} (TLS) and bridges to "
        f"the core at {record.core_host}:{record.core_port} (TLS, as {made.bridge.username}).\n"
        f"The core's acl and passwd now hold the bridge's account: make the core reread them\n"
        f"(kill -HUP <mosquitto pid> on the core) before the site broker starts.\n"
        "\nNext steps:\n"
        f"  1. Copy {root} to the site broker's host ({setup.mount_path}); keep it private:\n"
        "     mosquitto.conf holds the bridge's password.\n"
        f"  2. Add the site's devices: ares broker add-device NAME --dir {root}\n"
        f"  3. Start the site broker: mosquitto -c {setup.broker_path('mosquitto.conf')}\n"
        f"  Its state: {made.bridge.prefix}/bridge/{made.site}/state on both brokers "
        '("1" connected, "0" not). See docs/deployment.md.'
    )
    return 0


def print_site_device_steps(site_dir: Path, device_id: str, files: list[Path]) -> None:
    """The next steps after ``add-device`` at a site: both brokers must learn of the device."""
    from broker.site_dir import SiteDir

    target = SiteDir(site_dir)
    record = target.load_record()
    setup = target.load_setup()
    print(
        "\nNext steps:\n"
        "  1. Copy to the device, keeping the key and the config private (chmod 600):\n"
        + "".join(f"       {path}\n" for path in files)
        + f"  2. The core's acl now forwards {device_id}'s topics for site {record.site}: copy\n"
        f"     {record.core_dir / 'acl'} to the core and make it reread it (kill -HUP)\n"
        f"  3. The site broker's bridge has new topic lines: copy {site_dir} (passwd and\n"
        f"     mosquitto.conf) to the site and RESTART its broker (Mosquitto reads bridges\n"
        f"     only at start; SIGHUP rereads passwd but not the bridge):\n"
        f"     mosquitto -c {setup.broker_path('mosquitto.conf')}\n"
        f"  4. On the device: ares device --config <its dir>/{device_id}.toml"
    )
