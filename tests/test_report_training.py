"""The report's training section: test scores with 95% intervals (test_summary.parquet, else
qft_cli.train.stats.test_summary), the forest plot of paired differences, seeds never mixed into one
line, weight norms over training as small multiples with integer epoch ticks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from test_report import _run_json, figure_titled, plotly_figures

from qft_cli.report import build_report_html, load_runs
from qft_cli.report.training import run_test_summary
from qft_cli.runs.files import write_parquet_atomic

ACC = {  # final test accuracy per (variant, seed): a scripted table for the paired difference
    ("vanilla", 0): 0.80, ("vanilla", 1): 0.84, ("vanilla", 2): 0.82,
    ("frobenius", 0): 0.78, ("frobenius", 1): 0.83, ("frobenius", 2): 0.79,
}


def make_seeded_run(root: Path, name: str = "20261201-000000-train-gue", num_layers: int = 2,
                    matrices=("q", "k", "v", "o", "ffn_up", "ffn_down"), epochs: int = 3) -> Path:
    """A 3-seed train run (vanilla, frobenius) with validation curves, final test rows (ACC) and
    norms_during_training for ``num_layers`` layers."""
    run_dir = root / name
    _run_json(run_dir, "train", ["qft-transformer"], {"dataset": "gue", "task": "prom_core_notata", "seeds": "0,1,2",
                                                      "device": "cpu", "dtype": "float32"}, device="cpu")
    rows, during = [], []
    for (variant, seed), acc in ACC.items():
        for epoch in range(1, epochs + 1):
            val = 0.5 + 0.1 * epoch + 0.01 * seed  # seeds differ: a mixed line would zig-zag
            rows.append({"variant": variant, "seed": seed, "epoch": float(epoch), "step": 10 * epoch,
                         "split": "validation", "accuracy": val, "f1": val - 0.05})
            for layer in range(1, num_layers + 1):
                for matrix in matrices:
                    during.append({"variant": variant, "seed": seed, "epoch": float(epoch), "step": 10 * epoch,
                                   "layer": layer, "matrix": matrix,
                                   "spectral_norm": 1.0 if variant == "frobenius" else 0.1 * layer + seed,
                                   "frobenius_norm": 1.0 if variant == "frobenius" else 0.2 * layer + seed})
        rows.append({"variant": variant, "seed": seed, "epoch": float(epochs), "step": 10 * epochs, "split": "test",
                     "accuracy": acc, "f1": acc - 0.1})
    write_parquet_atomic(pd.DataFrame(rows), run_dir / "metrics.parquet")
    write_parquet_atomic(pd.DataFrame(during), run_dir / "norms_during_training.parquet")
    return run_dir


def test_t_interval_and_paired_difference_against_scipy(tmp_path):
    run = load_runs([make_seeded_run(tmp_path)])[0]
    s = run_test_summary(run)
    assert s["summary_source"].iloc[0].startswith("computed by qft report")
    van = np.array([ACC["vanilla", k] for k in range(3)])
    fro = np.array([ACC["frobenius", k] for k in range(3)])
    row = s[(s["variant"] == "frobenius") & (s["metric"] == "accuracy")].iloc[0]
    low, high = sps.t.interval(0.95, 2, loc=fro.mean(), scale=sps.sem(fro))
    assert row["mean_value"] == pytest.approx(fro.mean()) and row["num_seeds"] == 3
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    d = fro - van  # paired by seed
    low, high = sps.t.interval(0.95, 2, loc=d.mean(), scale=sps.sem(d))
    assert row["diff_to_vanilla"] == pytest.approx(d.mean())
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((low, high))
    page, _ = build_report_html([run])
    # on screen in percent / percentage points with the interval
    assert f"{100 * d.mean():+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]".replace("-", "−") in page
    forest = figure_titled(page, "Paired difference to vanilla")
    acc_trace = [t for t in forest["data"] if t.get("xaxis", "x") == "x" and t.get("type") == "scatter"][0]
    assert acc_trace["x"] == pytest.approx([100 * d.mean()])
    assert acc_trace["error_x"]["array"] == pytest.approx([100 * (high - d.mean())])
    assert acc_trace["error_x"]["arrayminus"] == pytest.approx([100 * (d.mean() - low)])
    assert acc_trace["y"] == ["gue/prom_core_notata · frobenius"]


def test_test_summary_parquet_is_read_as_written(tmp_path):
    run_dir = make_seeded_run(tmp_path)
    rows = [{"dataset": "gue", "task": "prom_core_notata", "variant": v, "metric": m, "num_seeds": 3, "mean_value": mean,
             "ci_low": mean - 0.0123, "ci_high": mean + 0.0123,
             "diff_to_vanilla": math.nan if v == "vanilla" else -0.0456, "diff_ci_low": math.nan if v == "vanilla"
             else -0.0789, "diff_ci_high": math.nan if v == "vanilla" else -0.0123, "interval": "t over seeds"}
            for v, mean in (("vanilla", 0.8111), ("frobenius", 0.7655)) for m in ("accuracy", "f1")]
    write_parquet_atomic(pd.DataFrame(rows), run_dir / "test_summary.parquet")
    run = load_runs([run_dir])[0]
    s = run_test_summary(run)
    assert (s["summary_source"] == "test_summary.parquet").all()
    page, _ = build_report_html([run])
    assert "81.1 [79.9, 82.3]" in page and "−4.6 [−7.9, −1.2]" in page
    bars = figure_titled(page, "Final test scores with 95% intervals")
    van = [t for t in bars["data"] if t["x"] == ["vanilla"]][0]
    assert van["y"] == pytest.approx([81.11]) and van["error_y"]["array"] == pytest.approx([1.23])


def test_seeds_are_averaged_not_mixed_into_one_line(tmp_path):
    page, _ = build_report_html(load_runs([make_seeded_run(tmp_path)]))
    val = figure_titled(page, "Validation accuracy and F1 per epoch")
    acc = [t for t in val["data"] if t.get("xaxis", "x") == "x"]
    assert [t["name"] for t in acc] == ["vanilla", "frobenius"]  # one line per variant
    for t in acc:
        assert t["x"] == [1.0, 2.0, 3.0]  # one point per epoch, not one per (epoch, seed)
        assert t["y"] == pytest.approx([100 * (0.5 + 0.1 * e + 0.01) for e in (1, 2, 3)])  # mean over seeds 0, 1, 2
    assert "Mean over 3 seeds." in page
    spectral = figure_titled(page, "Spectral norm ‖W‖<sub>2</sub> over training")
    lines = [t for t in spectral["data"] if t.get("name", "").startswith("layer")]
    assert len(lines) == 2 * 6 * 2  # variants x matrix types x layers
    vanilla_q_layer2 = [t for t in lines if "vanilla · q · layer 2" in t["hovertemplate"]][0]
    assert vanilla_q_layer2["y"] == pytest.approx([0.2 + 1.0] * 3)  # mean of 0.2 + seed over seeds 0, 1, 2


def test_integer_epoch_ticks(tmp_path):
    run_dir = make_seeded_run(tmp_path, epochs=3)
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    metrics.loc[metrics["split"] == "validation", "epoch"] -= 0.5  # fine-tuning logs at half epochs too
    write_parquet_atomic(metrics, run_dir / "metrics.parquet")
    page, _ = build_report_html(load_runs([run_dir]))
    checked = 0
    for fig in plotly_figures(page):
        for key, axis in fig["layout"].items():
            if key.startswith("xaxis") and "epoch" in str(axis.get("title", {}).get("text", "")):
                assert axis["dtick"] == 1 and axis["tickformat"] == "d" and axis["tick0"] == 0, (fig["id"], key)
                checked += 1
    assert checked >= 2 + 2 * 2  # validation (2 panels), spectral and Frobenius small multiples (bottom row each)


def test_integer_layer_ticks_on_the_layer_colour_bar(tmp_path):
    """Issue 18: 2 layers gave colour-bar ticks 1, 1.5, 2; every layer colour bar ticks whole layers."""
    from qft_cli.report.page import _layer_ticks

    assert _layer_ticks([1, 2]) == {"tickmode": "linear", "tick0": 1, "dtick": 1, "tickformat": "d"}
    assert _layer_ticks(range(0, 61))["dtick"] == 6 and _layer_ticks([3])["tick0"] == 3
    run_dir = make_seeded_run(tmp_path, num_layers=2)
    page, _ = build_report_html(load_runs([run_dir]))
    bars = [t["marker"]["colorbar"] for fig in plotly_figures(page) for t in fig["data"]
            if isinstance(t.get("marker"), dict) and "colorbar" in t["marker"]]
    assert bars and all(b["tickformat"] == "d" and b["dtick"] == 1 and b["tick0"] == 1 for b in bars)


def test_near_constant_trace_has_three_short_ticks():
    from qft_cli.report.page import _flat_range

    axis = _flat_range(np.array([1.0, 1.0 + 1e-7, 1.0 - 1e-7]))
    assert axis["tickvals"] == pytest.approx([0.95, 1.0, 1.05]) and axis["ticktext"] == ["0.95", "1", "1.05"]
    assert axis["range"][0] < 0.95 and axis["range"][1] > 1.05
    assert _flat_range(np.array([1.0, 1.5])) == {}


def test_one_epoch_validation_dots_side_by_side(tmp_path):
    """With one evaluation two variants with the same score drew one dot over the other: the dots now
    sit 0.1 epoch apart (the hover still says the true epoch)."""
    run_dir = make_seeded_run(tmp_path, epochs=1)
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    metrics.loc[metrics["split"] == "validation", ["accuracy", "f1"]] = 0.5  # equal scores
    write_parquet_atomic(metrics, run_dir / "metrics.parquet")
    page, _ = build_report_html(load_runs([run_dir]))
    fig = figure_titled(page, "Validation accuracy and F1 per epoch")
    xs = {t["name"]: t["x"] for t in fig["data"] if t.get("xaxis", "x") == "x"}
    assert len(xs) == 2 and xs["vanilla"] != xs["frobenius"]
    assert abs(xs["vanilla"][0] - xs["frobenius"][0]) == pytest.approx(0.1)
    assert all(t["customdata"] == [1.0] for t in fig["data"])
    two = make_seeded_run(tmp_path / "two", epochs=2)  # with two epochs the lines tell them apart
    fig = figure_titled(build_report_html(load_runs([two]))[0], "Validation accuracy and F1 per epoch")
    assert all(t["x"] == [1.0, 2.0] for t in fig["data"])
