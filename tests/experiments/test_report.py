"""summary.md and the terminal's table, from a hand-made results document."""

from __future__ import annotations

from experiments.report import final_table, render_summary
from tests.experiments.handmade import results_document, three_policies


def test_summary_markdown_has_the_tables_and_the_findings():
    text = render_summary(results_document(three_policies()))
    assert (
        "| ares **(best)** | 1-3 changing | - | 0.7000 | 60.0 | - | 60.0 | 30.0 | 0.550 |" in text
    )
    assert "-40.0% | -50.0% | -25.0% | -33.3% |" in text  # against fl, then sl-best
    assert "| a | 40.0 | 20.0 | 30.0 |" in text  # energy per device: fl, ares, sl-best
    assert "| **total** | **60.0** | **30.0** | **45.0** |" in text
    assert "against fl: training time 40.0% shorter, device energy 50.0% less" in text
    assert "sl-best: classic split learning at cut 2 for every device; by hand" in text
    assert "ARES has the best measured objective" in text
    table = final_table(results_document(three_policies())["summary"])
    assert "<- best" in table.splitlines()[3]  # ares, the second row below the header
