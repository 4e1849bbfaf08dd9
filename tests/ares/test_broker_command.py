"""`ares broker run|init|add-device` through the real CLI entry point, and the packet sizing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from ares.broker_command import default_hosts
from ares.cli import main
from broker.provision import PACKET_OVERHEAD
from broker.sizing import DATASET_INPUTS, MARGIN, frame_sizes, model_spec
from schemas.codec import MAX_META_BYTES
from splitnn.datasets import dataset_names, load_dataset
from transport import MqttSettings


def conf_value(root: Path, name: str) -> str:
    for line in (root / "mosquitto.conf").read_text().splitlines():
        if line.startswith(name + " "):
            return line.split(" ", 1)[1]
    raise AssertionError(f"{name} not in mosquitto.conf")


def init(root: Path, *extra: str) -> int:
    return main(["broker", "init", str(root), "--model", "small_cnn", "--dataset", "digits",
                 "--batch-size", "32", *extra])  # fmt: skip


def test_init_then_add_device(tmp_path: Path, capsys):
    root = tmp_path / "b"
    code = init(
        root, "--host", "broker.lan", "--host", "10.0.0.2", "--tls-port", "9883",
        "--local-port", "2883", "--mount-path", "/mosquitto/config",
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "max_packet_size" in out
    assert "Next steps" in out
    assert conf_value(root, "password_file") == "/mosquitto/config/passwd"
    assert conf_value(root, "listener") == "9883"  # the first listener: TLS, every interface
    sizes = frame_sizes(model_spec("small_cnn", "digits"), 32)
    assert int(conf_value(root, "max_packet_size")) == sizes.payload_limit() + PACKET_OVERHEAD

    assert main(["broker", "add-device", "pi-1", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    toml_part, _, steps = out.partition("\nNext steps:")
    doc = tomllib.loads(toml_part)
    assert doc["device_id"] == "pi-1"
    mqtt = MqttSettings(**doc["mqtt"])
    assert mqtt.url == "mqtts://broker.lan:9883"
    assert str(mqtt.ca_file) == "/etc/ares/ca.crt"
    assert mqtt.max_payload_bytes == sizes.payload_limit()
    assert "kill -s HUP mosquitto" in steps
    assert "ca.crt" in steps
    assert (root / "clients" / "pi-1.toml").read_text() == toml_part


def test_client_certificate_flag_and_ca_path(tmp_path: Path, capsys):
    root = tmp_path / "b"
    assert init(root) == 0
    capsys.readouterr()
    args = ["broker", "add-device", "cam-7", "--dir", str(root), "--client-cert"]
    assert main([*args, "--ca-path", "/data/ares/ca.crt"]) == 0
    doc = tomllib.loads(capsys.readouterr().out.partition("\nNext steps:")[0])
    assert doc["mqtt"]["cert_file"] == "/data/ares/cam-7.crt"
    assert doc["mqtt"]["key_file"] == "/data/ares/cam-7.key"
    assert (root / "clients" / "cam-7.crt").is_file()
    assert (root / "clients" / "cam-7.key").is_file()


def test_refusals_exit_2_with_one_clear_line(tmp_path: Path, capsys):
    root = tmp_path / "b"
    assert init(root) == 0
    capsys.readouterr()
    cases = [
        (["broker", "init", str(root)], "already holds a broker setup"),
        (["broker", "add-device", "a/b", "--dir", str(root)], "invalid device id"),
        (["broker", "add-device", "ares-edge", "--dir", str(root)], "service account"),
        (["broker", "add-device", "pi-1", "--dir", str(tmp_path / "nope")], "not a broker setup"),
        (["broker", "init", str(tmp_path / "c"), "--host", "bad host"], "invalid host"),
        (["broker", "init", str(tmp_path / "d"), "--dataset", "mnist"], "unknown dataset"),
        (["broker", "init", str(tmp_path / "e"), "--tls-port", "1883"], "share port"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ares broker: "), (argv, err)
        assert message in err, (argv, err)
        assert err.count("\n") == 1
    assert main(["broker", "add-device", "pi-1", "--dir", str(root)]) == 0
    assert main(["broker", "add-device", "pi-1", "--dir", str(root)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["broker", "add-device", "pi-1", "--dir", str(root), "--force"]) == 0
    assert init(root, "--force") == 0
    assert not (root / "clients" / "pi-1.toml").exists()


def test_run_keeps_the_old_behaviour(capsys):
    assert main(["broker", "run", "--print-config", "--port", "1999"]) == 0
    assert "listener 1999 127.0.0.1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["broker"])  # a subcommand is required now


def test_default_hosts():
    hosts = default_hosts()
    assert hosts[-2:] == ["localhost", "127.0.0.1"]
    assert len(set(hosts)) == len(hosts)


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_dataset_inputs_match_the_datasets(dataset):
    data = load_dataset(dataset, "test")
    channels, side, _ = data.input_shape
    assert DATASET_INPUTS[dataset] == (channels, side, data.num_classes)
    assert set(DATASET_INPUTS) == set(dataset_names())


def test_frame_sizes_of_the_paper_model():
    sizes = frame_sizes(model_spec("vgg5", "cifar10"), 100)
    # Cut 1 carries 32x32x32 floats per sample: the largest activation, plus int64 labels.
    assert sizes.activation_cut == 1
    raw = 32 * 32 * 32 * 100 * 4 + 100 * 8
    assert raw < sizes.activations < raw + 1024  # the codec's framing is small
    assert 0.58e6 * 4 < sizes.weights < 0.6e6 * 4 + 4096  # about 0.58 M float32 parameters
    limit = sizes.payload_limit()
    assert limit >= sizes.largest * MARGIN + MAX_META_BYTES
    assert limit % (64 * 1024) == 0
    assert frame_sizes(model_spec("small_cnn", "digits"), 1).payload_limit() == 1024 * 1024
