"""The compose file, the edge's Dockerfile and the build context, checked statically.

No container engine runs here: the compose file is parsed as YAML (and by ``docker compose
config`` where the plugin is installed), the Dockerfile instruction by instruction.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from tests.deploy import DEPLOY

ROOT = DEPLOY.parent
COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_broker_service(compose):
    broker = compose["services"]["mosquitto"]
    assert broker["image"] == "eclipse-mosquitto:2"
    assert broker["command"] == ["mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
    [mount] = broker["volumes"]
    assert mount["type"] == "bind"
    assert mount["target"] == "/mosquitto/config"
    assert mount["read_only"] is True
    assert "${ARES_BROKER_DIR:?" in mount["source"]  # no default: secrets stay out of the repo
    assert any(str(port).startswith("8883:8883") for port in broker["ports"])
    assert not any("1883:" in str(port) for port in broker["ports"])  # plain MQTT stays inside
    health = broker["healthcheck"]
    command = " ".join(health["test"][1:])
    assert health["test"][0] == "CMD-SHELL"
    assert "mosquitto_sub -h 127.0.0.1 -p 1883" in command
    assert "'$$SYS/" in command  # $$: compose must not read $SYS as a variable


def test_edge_service(compose):
    edge = compose["services"]["edge"]
    assert (DEPLOY / edge["build"]["context"] / edge["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    assert edge["network_mode"] == "service:mosquitto"
    assert edge["depends_on"]["mosquitto"]["condition"] == "service_healthy"
    assert edge["environment"]["ARES_CONFIG"] == "/etc/ares/edge.toml"
    mounts = {m["target"]: m for m in edge["volumes"] if isinstance(m, dict)}
    config = mounts["/etc/ares/edge.toml"]
    assert config["source"].endswith("/clients/edge.toml")
    assert config["read_only"] is True
    named = [v.split(":") for v in edge["volumes"] if isinstance(v, str)]
    assert ["ares-state", "/var/lib/ares"] in named
    assert "ares-state" in compose["volumes"]
    assert seconds(edge["stop_grace_period"]) >= 10  # the edge needs ~5 s to stop
    assert edge["restart"] == "on-failure"  # finished training (exit 0) stays finished


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_docker_compose_accepts_the_file(tmp_path):
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        ).returncode
    ):
        pytest.skip("no docker compose plugin here; the YAML checks above stand in")
    setup = tmp_path / "broker"
    (setup / "clients").mkdir(parents=True)
    (setup / "clients/edge.toml").write_text("[mqtt]\n")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={"ARES_BROKER_DIR": str(setup), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert "$SYS/broker/uptime" in " ".join(
        rendered["services"]["mosquitto"]["healthcheck"]["test"]
    )


# --- the Dockerfile -------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DEPLOY.joinpath("Dockerfile").read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def packages() -> set[str]:
    """The project's packages, as pyproject.toml names them."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {name.rstrip("*") for name in include}


def copied_from_context() -> set[str]:
    """The sources of every COPY from the build context (all words but the destination)."""
    sources: set[str] = set()
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            sources.update(rest.split()[:-1])
    return sources


def test_the_image_installs_every_package_and_cpu_torch():
    steps = instructions()
    copied = copied_from_context()
    assert packages() <= copied
    assert {"pyproject.toml", "README.md"} <= copied  # the build needs both
    for source in copied:
        assert (ROOT / source).exists(), source
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    froms = [rest for word, rest in steps if word == "FROM"]
    assert all(f.startswith("python:3.11") for f in froms)


def test_the_image_runs_the_edge_unprivileged():
    steps = instructions()
    user = [rest for word, rest in steps if word == "USER"][-1]
    assert not user.startswith(("0", "root"))
    assert [rest for word, rest in steps if word == "ENTRYPOINT"] == ['["ares"]']
    assert [rest for word, rest in steps if word == "CMD"] == ['["edge"]']
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "ARES_CHECKPOINT=/var/lib/ares/edge.ckpt" in env  # on the compose file's volume
    assert "ARES_CONFIG=/etc/ares/edge.toml" in env


def test_the_build_context_is_an_allow_list():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything out (broker setups hold keys), then only these back in
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert copied_from_context() <= allowed
    assert allowed <= packages() | {"pyproject.toml", "README.md"}


def test_install_script_digests_every_package():
    script = (DEPLOY / "install.sh").read_text()
    digest = script[script.index("source_digest()") :].split("}", 1)[0]
    for package in packages():
        assert f" {package}" in digest or f"{package} " in digest, package
