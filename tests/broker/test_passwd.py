"""Mosquitto $7$ password lines: the format mosquitto_passwd writes, and the broker accepts ours."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import aiomqtt
import pytest

from broker import BrokerConfig, LocalBroker, probe_mqtt
from broker.passwd import (
    DEFAULT_ITERATIONS,
    PasswordFileError,
    hash_password,
    new_password,
    parse_file,
    parse_line,
    render_file,
)

NOT_AUTHORIZED = 5


def test_line_format_and_verification():
    entry = hash_password("pi-1", "s3cret", salt=b"0123456789ab")
    line = entry.line()
    assert line.startswith(f"pi-1:$7${DEFAULT_ITERATIONS}$MDEyMzQ1Njc4OWFi$")
    again = parse_line(line + "\n")
    assert again == entry
    assert again.verify("s3cret")
    assert not again.verify("s3cret ")


def test_fresh_salts_and_passwords():
    a, b = hash_password("u", "pw"), hash_password("u", "pw")
    assert a.salt != b.salt
    assert a.digest != b.digest
    passwords = {new_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(len(p) >= 43 and p.replace("-", "").replace("_", "").isalnum() for p in passwords)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("no-colon", "without ':'"),
        ("u:$6$salt$hash", r"not a \$7\$"),
        ("u:$7$x$AAAA$AAAA", "malformed"),
        ("u:$7$101$AAAA$AAAA", "malformed"),  # a digest of the wrong length
        (":$7$101$AAAA$AAAA", "must not be empty"),
        ("a b:$7$101$AAAA$AAAA", "invalid user name"),
    ],
)
def test_bad_lines_are_refused(line, message):
    with pytest.raises(PasswordFileError, match=message):
        parse_line(line)


def test_file_round_trip_skips_comments_and_refuses_duplicates():
    entries = [hash_password("a", "1"), hash_password("b", "2")]
    text = "# users\n\n" + render_file(entries)
    assert parse_file(text) == entries
    with pytest.raises(PasswordFileError, match="twice"):
        parse_file(render_file([*entries, hash_password("a", "3")]))


@pytest.mark.parametrize("name", ["", "a:b", "tab\there", "nl\n"])
def test_user_names_the_file_cannot_hold(name):
    with pytest.raises(PasswordFileError):
        hash_password(name, "pw")


def test_reads_what_mosquitto_passwd_writes(tmp_path: Path):
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    path = tmp_path / "passwd"
    subprocess.run([tool, "-c", "-b", str(path), "pi-1", "from-the-tool"], check=True)
    (entry,) = parse_file(path.read_text())
    assert entry.username == "pi-1"
    assert entry.verify("from-the-tool")
    assert not entry.verify("something-else")


async def test_the_real_broker_accepts_our_lines(tmp_path: Path):
    password = new_password()
    path = tmp_path / "passwd"
    path.write_text(render_file([hash_password("pi-1", password, iterations=1000)]))
    config = BrokerConfig(allow_anonymous=False, password_file=path)
    async with LocalBroker(config) as broker:
        async with aiomqtt.Client(broker.host, broker.port, username="pi-1", password=password):
            pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(
                broker.host, broker.port, username="pi-1", password=password + "x"
            ):
                pass
        assert probe_mqtt(broker.host, broker.port) == NOT_AUTHORIZED
