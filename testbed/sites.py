"""Several sites on one machine: a core broker and site brokers bridged to it, for real.

For tests, demos and benchmarks. ``LocalSites`` provisions the brokers as an operator would
(``ares broker init`` for the core, ``init-site`` and ``add-device`` per site, in a work
directory), runs each as a Mosquitto process on free loopback ports from its generated
mosquitto.conf (TLS bridges, passwords and ACLs included), and puts an emulated WAN link
(``testbed.wan.WanLink``) between a site and the core where asked, to be cut. Clients get the
generated client configs as ``MqttSettings``: devices over TLS to their site, the edge on the
core's loopback listener.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Self

from broker import LocalBroker, free_port
from broker.bridge import BridgeTiming, bridge_user
from broker.provision import INSPECTOR_USER, BrokerSetup
from broker.setup_dir import SetupDir
from broker.site_dir import CoreDir, SiteDir
from schemas.topics import DEFAULT_PREFIX
from testbed.wan import WanLink
from transport import MqttSettings

MIB = 1024 * 1024
# Reconnect within a second after an outage: production's 2-15 s jitter would only slow a test.
FAST_TIMING = BridgeTiming(keepalive_s=5, restart_base_s=1, restart_cap_s=1)
DEVICE_CA = "ca.crt"  # in each site's clients directory, standing in for a device's /etc/ares


class LocalSites:
    """A core broker and one broker per site, each site bridged to the core.

    ``sites`` maps each site's name to its devices; the sites in ``wan`` reach the core through
    a ``WanLink`` (``wans[name]``), the others directly. Use as ``async with``.
    """

    def __init__(
        self,
        root: Path,
        sites: Mapping[str, Sequence[str]],
        *,
        wan: Iterable[str] = (),
        timing: BridgeTiming = FAST_TIMING,
        max_payload_bytes: int = 64 * MIB,
        prefix: str = DEFAULT_PREFIX,
        persistence: bool = True,
    ) -> None:
        self.root = root
        self.plan = {name: tuple(devices) for name, devices in sites.items()}
        self.wan_sites = frozenset(wan)
        unknown = self.wan_sites - set(self.plan)
        if unknown:
            raise ValueError(f"WAN links for unknown sites {sorted(unknown)}")
        self.timing = timing
        self.max_payload_bytes = max_payload_bytes
        self.prefix = prefix
        self.persistence = persistence
        self.core = CoreDir(root / "core")
        self.sites = {name: SiteDir(root / "sites" / name) for name in self.plan}
        self.core_broker: LocalBroker | None = None
        self.site_brokers: dict[str, LocalBroker] = {}
        self.wans: dict[str, WanLink] = {}
        self._stack = contextlib.AsyncExitStack()

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()  # sites, WAN links, then the core

    async def _start(self) -> None:
        core_setup = self._setup(self.core.root, persistent=self.persistence)
        self.core.init(core_setup)
        core = LocalBroker.from_config_file(self.core.conf, port=core_setup.local_port)
        self.core_broker = await self._stack.enter_async_context(core)
        for name in sorted(self.wan_sites):
            wan = WanLink("127.0.0.1", core_setup.tls_port)
            self.wans[name] = await self._stack.enter_async_context(wan)
        for name, devices in self.plan.items():
            site = self.sites[name]
            site.init_site(
                self._setup(site.root, persistent=False),
                site=name,
                core=self.core,
                core_host="127.0.0.1",  # an address in the core's certificate
                core_port=self.wans[name].port if name in self.wans else core_setup.tls_port,
                timing=self.timing,
            )
            shutil.copy(site.certs / "ca.crt", site.clients / DEVICE_CA)
            for device in devices:
                self._add(site, device)
        # The running core learns of the bridges' accounts and rules as in production: on
        # SIGHUP. A bridge connecting before the reload is refused and retries.
        core.reload()
        for name, site in self.sites.items():
            broker = LocalBroker.from_config_file(site.conf, port=site.load_setup().local_port)
            self.site_brokers[name] = await self._stack.enter_async_context(broker)

    def _setup(self, root: Path, *, persistent: bool) -> BrokerSetup:
        data = None
        if persistent:
            data = root.parent / f"{root.name}-data"
            data.mkdir(parents=True, exist_ok=True)
        return BrokerSetup(
            hosts=("localhost", "127.0.0.1"),
            mount_path=PurePosixPath(root.absolute()),
            max_payload_bytes=self.max_payload_bytes,
            tls_port=free_port(),
            local_port=free_port(),
            bind="127.0.0.1",  # nothing exposed to the network
            prefix=self.prefix,
            persistence_dir=None if data is None else PurePosixPath(data.absolute()),
            # Started as root, mosquitto would switch to "mosquitto", who cannot read our
            # 0600 files; as anyone else it runs as its caller.
            run_as="root" if os.geteuid() == 0 else None,
        )

    def _add(self, site: SiteDir, device: str) -> None:
        site.add_device(device, ca_path=PurePosixPath((site.clients / DEVICE_CA).absolute()))

    # --- while running ------------------------------------------------------------------------

    def add_device(self, site: str, device: str) -> MqttSettings:
        """Provision ``device`` at the running ``site``: both brokers reread their passwords and
        ACLs (SIGHUP). Its topics cross only after ``restart_site``: Mosquitto reads bridges
        at start."""
        self._add(self.sites[site], device)
        self.plan[site] = (*self.plan[site], device)
        self._running(self.core_broker).reload()
        self.site_brokers[site].reload()
        return self.device_mqtt(device)

    async def restart_site(self, site: str) -> None:
        await self.site_brokers[site].arestart()

    @property
    def core_running(self) -> LocalBroker:
        return self._running(self.core_broker)

    # --- client settings (the generated client configs) ----------------------------------------

    def edge_mqtt(self) -> MqttSettings:
        """The edge's: the core's loopback listener."""
        return client_settings(self.core, "edge")

    def device_mqtt(self, device: str) -> MqttSettings:
        """A device's: TLS to its own site's broker."""
        return client_settings(self.sites[self.site_of(device)], device)

    def inspector_mqtt(self, site: str | None = None) -> MqttSettings:
        """The read-only observer's, at a site or (None) at the core."""
        return client_settings(self.core if site is None else self.sites[site], INSPECTOR_USER)

    def bridge_mqtt(self, site: str) -> MqttSettings:
        """The site bridge's account at the core (for checks of the core's ACL)."""
        return client_settings(self.sites[site], bridge_user(site))

    def site_of(self, device: str) -> str:
        for site, devices in self.plan.items():
            if device in devices:
                return site
        raise KeyError(f"no site has device {device!r}")

    @staticmethod
    def _running(broker: LocalBroker | None) -> LocalBroker:
        if broker is None:
            raise RuntimeError("the sites are not started: use `async with LocalSites(...)`")
        return broker


def client_settings(directory: SetupDir, client: str) -> MqttSettings:
    """The [mqtt] table of ``directory``'s ``clients/<client>.toml`` as MqttSettings."""
    table = tomllib.loads(directory.client_file(client).read_text(encoding="utf-8"))["mqtt"]
    return MqttSettings(**table)
