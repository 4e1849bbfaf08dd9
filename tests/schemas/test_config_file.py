"""Settings come from defaults < config file < ARES_* environment < flags, and show back masked."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ares.cli import main
from device_agent import DeviceSettings
from edge_service import EdgeSettings
from schemas.config_file import ConfigFileError, describe_error, load_settings, show_settings
from transport import LinkError, MqttLink, MqttSettings

EDGE_TOML = """
rounds = 7
alpha = 0.3
policy = "sl"

[mqtt]
url = "mqtts://broker.lan:8883"
username = "ares-edge"
password = "hunter2"
"""


@pytest.fixture
def edge_file(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text(EDGE_TOML)
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("ARES_CONFIG", raising=False)


def test_each_layer_overrides_the_one_below(edge_file, monkeypatch):
    monkeypatch.setenv("ARES_ALPHA", "0.8")
    monkeypatch.setenv("ARES_MQTT__PREFIX", "site/a")
    settings = load_settings(EdgeSettings, edge_file, rounds=9, mqtt={"url": "mqtt://edge:1884"})
    assert settings.rounds == 9  # flag over file
    assert settings.alpha == 0.8  # env over file
    assert settings.policy == "sl"  # file over default
    assert settings.batch_size == 32  # default
    # Nested tables merge key by key across layers.
    assert settings.mqtt.url == "mqtt://edge:1884"
    assert settings.mqtt.prefix == "site/a"
    assert settings.mqtt.username == "ares-edge"


def test_ares_config_names_the_file_when_no_flag_does(edge_file, monkeypatch):
    monkeypatch.setenv("ARES_CONFIG", str(edge_file))
    assert EdgeSettings().rounds == 7


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("device.yaml", "device_id: pi-7\nmqtt:\n  username: pi-7\n  password: pw\n"),
        ("device.json", json.dumps({"device_id": "pi-7", "mqtt": {"username": "pi-7"}})),
    ],
)
def test_yaml_and_json_files(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    settings = load_settings(DeviceSettings, path)
    assert settings.device_id == "pi-7"
    assert settings.mqtt.username == "pi-7"


def test_a_missing_file_or_unknown_format_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_settings(EdgeSettings, tmp_path / "nope.toml")
    other = tmp_path / "edge.ini"
    other.write_text("rounds = 3\n")
    with pytest.raises(ConfigFileError, match=r"\.toml, \.yaml"):
        load_settings(EdgeSettings, other)
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = = 3\n")
    with pytest.raises(ConfigFileError, match=r"broken\.toml"):
        load_settings(EdgeSettings, broken)


def test_an_invalid_value_names_the_setting(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('batch_size = 0\nroundz = 3\n[mqtt]\nurl = "http://x"\n')
    with pytest.raises(ValidationError) as caught:
        load_settings(EdgeSettings, path)
    text = describe_error(caught.value)
    assert "batch_size: Input should be greater than or equal to 1 (got 0)" in text
    assert "roundz: Extra inputs are not permitted" in text
    assert "mqtt.url" in text
    assert "ARES_MQTT__URL" in text


def test_show_masks_secrets_and_says_where_values_came_from(edge_file, monkeypatch):
    monkeypatch.setenv("ARES_BATCH_SIZE", "64")
    flags = {"rounds": 9}
    settings = load_settings(EdgeSettings, edge_file, **flags)
    text = show_settings(settings, edge_file, flags)
    assert "hunter2" not in text
    assert 'password = "********"  # from file' in text
    assert "rounds = 9  # from flag" in text
    assert "batch_size = 64  # from env ARES_BATCH_SIZE" in text
    assert 'policy = "sl"  # from file' in text
    assert "# split = (unset)" in text
    assert "\n[mqtt]\n" in text


def test_shown_settings_load_back_as_the_same_settings(edge_file, tmp_path):
    import tomllib

    settings = load_settings(EdgeSettings, edge_file, rounds=9)
    shown = tomllib.loads(show_settings(settings))
    again = tmp_path / "again.toml"
    again.write_text(show_settings(settings).replace('"********"', '"hunter2"'))
    assert load_settings(EdgeSettings, again) == settings
    assert shown["rounds"] == 9


def test_ares_config_show_command(edge_file, capsys):
    code = main(["config", "show", "edge", "--config", str(edge_file), "--rounds", "4"])
    out = capsys.readouterr().out
    assert code == 0
    assert "rounds = 4  # from flag" in out
    assert "hunter2" not in out


def test_ares_config_show_reports_a_bad_setting(tmp_path, capsys):
    path = tmp_path / "device.toml"
    path.write_text('device_id = "pi 1"\n')
    assert main(["config", "show", "device", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "device_id" in err
    assert "invalid device id" in err


def test_password_file(tmp_path):
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    settings = MqttSettings(username="pi-1", password_file=secret)
    assert settings.resolved_password() == "s3cret"
    with pytest.raises(ValidationError, match="not both"):
        MqttSettings(username="pi-1", password="x", password_file=secret)
    with pytest.raises(ValidationError, match=r"needs mqtt\.username"):
        MqttSettings(password="x")
    secret.write_text("")
    with pytest.raises(LinkError, match="is empty"):
        settings.resolved_password()


async def test_unreadable_credentials_fail_before_connecting(tmp_path):
    missing = MqttSettings(url="mqtts://127.0.0.1:1", ca_file=tmp_path / "ca.crt")
    with pytest.raises(LinkError, match=r"mqtt\.ca_file"):
        async with MqttLink(missing, "t", []):
            pass
    no_password = MqttSettings(username="u", password_file=tmp_path / "gone")
    with pytest.raises(LinkError, match="password_file"):
        async with MqttLink(no_password, "t", []):
            pass


def test_a_device_user_name_must_be_its_id():
    with pytest.raises(ValidationError, match="must equal device_id"):
        DeviceSettings(device_id="pi-1", mqtt=MqttSettings(username="pi-2"))
    assert DeviceSettings(device_id="pi-1", mqtt=MqttSettings(username="pi-1")).device_id == "pi-1"
