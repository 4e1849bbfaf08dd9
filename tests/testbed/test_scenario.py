"""Scenario files: the shipped ones load, bad ones fail with the file and the field."""

from __future__ import annotations

import pytest

from testbed.scenario import ScenarioError, load_scenario, shipped_scenarios


def test_shipped_scenarios_load():
    assert {"paper-testbed", "bandwidth-drop"} <= set(shipped_scenarios())
    paper = load_scenario("paper-testbed")
    assert paper.model == "vgg5"
    assert [d.profile for d in paper.devices].count("raspberry-pi-3b+") == 1
    assert sum(d.profile.startswith("jetson-nano") for d in paper.devices) == 4
    assert all(d.uplink == 20 for d in paper.devices)
    drop = load_scenario("bandwidth-drop")
    assert any(isinstance(d.uplink, dict) for d in drop.devices)


def test_data_shares_become_consecutive_shards(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ndevices:\n  - {id: a, data_share: 2}\n  - {id: b}\n  - {id: c, data_share: 3}\n"
    )
    assert load_scenario(path).shards() == {"a": (0, 2, 6), "b": (2, 1, 6), "c": (3, 3, 6)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: s\ndevices: []\n", "devices"),
        ("name: s\ndevices:\n  - {id: a}\n  - {id: a}\n", "unique"),
        ("name: s\ndevices:\n  - {id: a, colour: red}\n", "colour"),
        ("name: s\ndevices:\n  - {id: 'a/b'}\n", "invalid device id"),
        ("name: s\nmodel: vgg6\ndevices:\n  - {id: a}\n", "unknown model 'vgg6'.*mobilenetv2"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_scenarios_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message) as err:
        load_scenario(path)
    assert "bad.yaml" in str(err.value)


@pytest.mark.parametrize("model", ["mobilenetv2", "resnet18", "cnn1d", "mypkg.nets:make_net"])
def test_any_registered_model_or_your_own(tmp_path, model):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nmodel: {model}\ndevices:\n  - {{id: a, profile: jetson-nano-5w}}\n")
    assert load_scenario(path).model == model  # your own is imported where it is built


def test_unknown_scenario_lists_the_shipped_ones():
    with pytest.raises(ScenarioError, match="paper-testbed"):
        load_scenario("no-such-scenario")
