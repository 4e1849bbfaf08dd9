"""The comparison of the policies and its findings, on hand-made reports."""

from __future__ import annotations

import json

import pytest

from experiments.comparison import summarise
from experiments.metrics import BenchReportError
from tests.experiments.handmade import three_policies


def test_summary_normalises_by_fl_and_compares_ares():
    summary = summarise(three_policies(), alpha=0.5)
    policies = summary["policies"]
    assert summary["reference"] == "fl"
    assert policies["fl"]["objective"] == pytest.approx(1.0)
    # ares: 0.5 * 60/100 + 0.5 * 30/60; sl-best: 0.5 * 80/100 + 0.5 * 45/60.
    assert policies["ares"]["objective"] == pytest.approx(0.55)
    assert policies["sl-best"]["objective"] == pytest.approx(0.775)
    assert summary["best_objective"] == "ares"
    assert summary["ares_vs"]["fl"]["time"] == pytest.approx(-0.4)
    assert summary["ares_vs"]["fl"]["energy"] == pytest.approx(-0.5)
    assert summary["ares_vs"]["sl-best"]["time"] == pytest.approx(-0.25)
    assert summary["findings"][0].startswith("ARES has the best measured objective")
    assert summary["target_accuracy"] == pytest.approx(0.64)
    assert policies["ares"]["time_to_target_s"] == 60.0
    assert policies["fl"]["time_to_target_s"] == 100.0


def test_summary_without_fl_normalises_by_the_first_policy():
    runs = three_policies()
    summary = summarise({"sl-best": runs["sl-best"], "ares": runs["ares"]}, alpha=0.5)
    assert summary["reference"] == "sl-best"
    assert summary["policies"]["sl-best"]["objective"] == pytest.approx(1.0)


def test_findings_say_plainly_when_ares_loses_and_why():
    runs = three_policies(ares_behind=40.0)
    # Make ARES slower than fl: its rounds take 120 s each.
    for entry in runs["ares"]["rounds"]:
        entry["duration_s"] = 120.0
    summary = summarise(runs, alpha=0.5)
    findings = " ".join(summary["findings"])
    assert summary["best_objective"] != "ares"
    assert "ARES does NOT have the best measured objective" in findings
    assert "fell behind the emulated boards by 40.0 s" in findings


def test_findings_name_a_misprediction():
    runs = three_policies()
    runs["ares"]["rounds"][0]["duration_s"] = 200.0  # 100x the 2 s predicted; fl: 25x
    findings = " ".join(summarise(runs, alpha=0.5)["findings"])
    assert "ARES does NOT" in findings
    assert "the cost model under-estimated ARES's cuts (or over-estimated fl's)" in findings
    assert "the worst was round 1: 200 s against 2.0 s predicted" in findings
    assert "fell behind" not in findings


def test_no_misprediction_is_claimed_when_the_model_erred_alike():
    runs = three_policies()
    del runs["sl-best"]
    for entry in runs["ares"]["rounds"]:
        entry["duration_s"] = 55.0  # 27.5x its prediction against fl's 25x: within 25%
        for data in entry["devices"].values():
            data["energy_j"] = 30.0  # 120 J against fl's 60 J: ARES loses on energy
    findings = " ".join(summarise(runs, alpha=0.5)["findings"])
    assert "ARES does NOT" in findings
    assert "device energy 100.0% more" in findings
    assert "Likely reason: a misprediction" not in findings
    assert "No emulation lag, stragglers or large misprediction were found" in findings


def test_findings_put_a_loss_with_the_same_cuts_down_to_noise():
    runs = three_policies()
    runs["static"] = json.loads(json.dumps(runs["ares"]))  # the same cuts, faster rounds
    for entry in runs["static"]["rounds"]:
        entry["duration_s"] = 20.0
    findings = " ".join(summarise(runs, alpha=0.5)["findings"])
    assert "ARES does NOT have the best measured objective: 0.550 against static 0.450" in findings
    assert "ARES and static used the same cut for every device in every round" in findings
    assert "misprediction" not in findings.split("static used the same cut")[1]


@pytest.mark.parametrize(
    ("round_s", "lead"),
    [
        # 0.5 * 149/100 + 0.5 * 30/60 = 0.995 against fl's 1.0: a win by less than 1%, a tie.
        (74.5, "ARES has the best measured objective (0.995 at alpha 0.5)."),
        # 0.5 * 151/100 + 0.5 * 30/60 = 1.005: a loss by less than 1%, a tie but not the best.
        (75.5, "ARES ties for the best measured objective (1.005 at alpha 0.5)."),
    ],
)
def test_less_than_one_percent_either_way_is_a_tie(round_s: float, lead: str) -> None:
    runs = three_policies()
    del runs["sl-best"]
    for entry in runs["ares"]["rounds"]:
        entry["duration_s"] = round_s
    findings = summarise(runs, alpha=0.5)["findings"]
    assert findings[0] == lead
    assert findings[1] == "Within 1% of it, so a tie on a shared machine: fl (1.000)."


def test_an_explicit_target_is_used_as_given():
    summary = summarise(three_policies(), alpha=0.5, target_accuracy=0.85)
    assert summary["target_rule"] == "--target-accuracy"
    assert summary["policies"]["sl-best"]["time_to_target_s"] == 80.0
    assert summary["policies"]["ares"]["time_to_target_s"] is None


def test_without_a_finished_run_there_is_nothing_to_compare():
    with pytest.raises(BenchReportError, match="no policy finished"):
        summarise({}, alpha=0.5)
