"""A private two-node RabbitMQ cluster with the MQTT plugin, for the clustered-broker test.

Each node runs from the machine's RabbitMQ installation with everything of its own in a
temporary directory: node name, ports (AMQP, Erlang distribution, MQTT) on loopback, database,
logs, config, enabled plugins and Erlang cookie. Nothing of the system's own RabbitMQ (its
node, config, enabled_plugins file) is read or changed; the nodes only register their names
with the machine's epmd, as any Erlang node does. Node b joins node a at its first boot through
``cluster_formation.classic_config``, the declarative way docs/deployment.md describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from broker import free_port, probe_mqtt

# The Debian/Ubuntu package's scripts run the node as the calling user (the ones in /usr/sbin
# switch to the rabbitmq user, who could not read our temporary directory).
SCRIPTS_DIRS = (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/bin"))
PLUGIN_GLOBS = ("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_mqtt-*",)
START_TIMEOUT_S = 180.0  # a hang guard: readiness is the MQTT listener answering
STOP_TIMEOUT_S = 60.0
USER = "ares"


def missing() -> str | None:
    """Why this machine cannot run the cluster (None: it can)."""
    if scripts_dir() is None:
        return (
            "RabbitMQ is not installed (no rabbitmq-server in "
            + ", ".join(str(d) for d in SCRIPTS_DIRS)
            + ")"
        )
    if not any(Path("/").glob(pattern.lstrip("/")) for pattern in PLUGIN_GLOBS):
        return "RabbitMQ's MQTT plugin (rabbitmq_mqtt) is not installed"
    if shutil.which("epmd") is None and not list(Path("/usr/lib/erlang").glob("erts-*/bin/epmd")):
        return "Erlang's epmd is not installed"
    return None


def scripts_dir() -> Path | None:
    for directory in SCRIPTS_DIRS:
        if (directory / "rabbitmq-server").is_file():
            return directory
    return None


@dataclass
class Node:
    name: str  # e.g. ares-a@localhost
    mqtt_port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def log_tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


class RabbitCluster:
    """Two clustered nodes; ``nodes[0]`` is the seed, ``nodes[1]`` joins it."""

    def __init__(self, root: Path, password: str) -> None:
        directory = scripts_dir()
        assert directory is not None, missing()
        self.scripts = directory
        self.root = root
        self.password = password
        names = ("ares-a@localhost", "ares-b@localhost")
        cookie = root / ".erlang.cookie"
        root.mkdir(parents=True, exist_ok=True)
        cookie.write_text(os.urandom(16).hex())
        cookie.chmod(0o400)  # Erlang refuses a cookie others may read
        self.nodes = [self._node(name, names) for name in names]

    def _node(self, name: str, cluster: tuple[str, ...]) -> Node:
        short = name.split("@")[0]
        home = self.root / short
        home.mkdir()
        mqtt_port = free_port()
        seeds = "".join(
            f"cluster_formation.classic_config.nodes.{i} = {n}\n" for i, n in enumerate(cluster, 1)
        )
        (home / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{free_port()}\n"
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{mqtt_port}\n"
            "mqtt.allow_anonymous = false\n"
            f"default_user = {USER}\n"
            f"default_pass = {self.password}\n"
            "cluster_formation.peer_discovery_backend = classic_config\n" + seeds
        )
        (home / "rabbitmq-env.conf").write_text("")  # not the system's /etc/rabbitmq one
        env = {
            **os.environ,
            "HOME": str(self.root),  # the Erlang cookie both nodes and rabbitmqctl share
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "pid"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "rabbitmq_mqtt",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }
        return Node(name, mqtt_port, env, home / "out.log")

    def __enter__(self) -> RabbitCluster:
        try:
            for node in self.nodes:  # in turn: b must find a running a to join
                self._start(node)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, node: Node) -> None:
        with node.log.open("ab") as out:
            node.process = subprocess.Popen(
                [str(self.scripts / "rabbitmq-server")],
                env=node.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one, by its id
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if node.process.poll() is not None:
                raise RuntimeError(f"RabbitMQ node {node.name} exited:\n{node.log_tail()}")
            try:
                probe_mqtt("127.0.0.1", node.mqtt_port, 1.0)  # any CONNACK: the plugin is up
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"RabbitMQ node {node.name} did not open its MQTT listener in "
                        f"{START_TIMEOUT_S:.0f} s:\n{node.log_tail()}"
                    ) from None
                time.sleep(0.5)  # a process in another program: no event to wait on

    def running_nodes(self) -> list[str]:
        """The cluster's running members, as node b sees them."""
        node = self.nodes[1]
        done = subprocess.run(
            [str(self.scripts / "rabbitmqctl"), "-n", node.name, "cluster_status",
             "--formatter", "json"],
            env=node.env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return sorted(json.loads(done.stdout)["running_nodes"])

    def stop(self) -> None:
        for node in reversed(self.nodes):
            process = node.process
            if process is None or process.poll() is not None:
                continue
            # The script traps SIGTERM and stops the node cleanly (rabbitmqctl stop).
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@contextlib.contextmanager
def rabbit_cluster(root: Path, password: str) -> Iterator[RabbitCluster]:
    with RabbitCluster(root, password) as cluster:
        yield cluster
