"""The bench's plots, from a hand-made results document."""

from __future__ import annotations

from experiments.plots import PLOT_FILES, write_plots
from tests.experiments.handmade import results_document, three_policies

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_non_empty_pngs(tmp_path):
    written = write_plots(results_document(three_policies()), tmp_path)
    assert sorted(p.name for p in written) == sorted(PLOT_FILES)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG), path
        assert len(data) > 5000, path


def test_without_an_adaptive_policy_there_is_no_split_plot(tmp_path):
    runs = three_policies()
    written = write_plots(results_document({"fl": runs["fl"]}), tmp_path)
    assert "splits.png" not in {p.name for p in written}
    assert len(written) == 3
