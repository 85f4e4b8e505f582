"""qft_cli.train.stats against independent computations: scipy.stats.t.interval, a bootstrap recomputed
here with the same seeded indices, and paired differences on scripted tables.

(``test_summary`` is reached as ``stats.test_summary``: importing the name would make pytest
collect it as a test.)
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from qft_cli.system.errors import QftInputError
from qft_cli.train import stats
from qft_cli.train.training import classification_metrics


def test_t_interval_matches_scipy():
    values = [0.81, 0.84, 0.79, 0.83]
    got = stats.t_interval(values)
    low, high = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert got.estimate == pytest.approx(np.mean(values), rel=1e-12)
    assert got.low == pytest.approx(low, rel=1e-12)
    assert got.high == pytest.approx(high, rel=1e-12)
    assert got.n == 4
    low90, high90 = sps.t.interval(0.9, 3, loc=np.mean(values), scale=sps.sem(values))
    assert stats.t_interval(values, 0.9)[1:3] == pytest.approx((low90, high90), rel=1e-12)


def test_t_interval_small_and_bad_input():
    one = stats.t_interval([0.7])
    assert one.estimate == 0.7 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    assert all(math.isnan(v) for v in stats.t_interval([])[:3])
    assert stats.t_interval([0.5, float("nan"), 0.7]).n == 2  # NaN dropped, not averaged
    with pytest.raises(QftInputError):
        stats.t_interval([1, 2], confidence=1.5)


def test_paired_difference_pairs_by_seed():
    a = {0: 0.80, 1: 0.85, 2: 0.90, 7: 0.5}  # seed 7 has no partner: dropped
    b = pd.Series({2: 0.88, 0: 0.79, 1: 0.81})
    got = stats.paired_difference(a, b)
    diffs = [0.80 - 0.79, 0.85 - 0.81, 0.90 - 0.88]
    low, high = sps.t.interval(0.95, 2, loc=np.mean(diffs), scale=sps.sem(diffs))
    assert got.estimate == pytest.approx(np.mean(diffs), rel=1e-12)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-10)
    assert got.n == 3
    # the unpaired interval would be much wider: pairing removes the seed-to-seed spread
    assert got.high - got.low < stats.t_interval([0.80, 0.85, 0.90]).high - stats.t_interval([0.80, 0.85, 0.90]).low
    with pytest.raises(QftInputError):
        stats.paired_difference([1.0, 2.0], [1.0])


def _hand_bootstrap(labels, preds, metric, seed, n_resamples, baseline=None, num_labels=2):
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.integers(0, n, size=(n_resamples, n))
    labels, preds = np.asarray(labels), np.asarray(preds)
    values = []
    for row in idx:
        v = classification_metrics(preds[row], labels[row], num_labels)[metric]
        if baseline is not None:
            v -= classification_metrics(np.asarray(baseline)[row], labels[row], num_labels)[metric]
        values.append(v)
    return np.percentile(values, [2.5, 97.5])


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_bootstrap_four_samples_by_hand(metric):
    labels, preds = [0, 1, 1, 0], [0, 1, 0, 1]
    got = stats.bootstrap_interval(labels, preds, metric, seed=5, n_resamples=1000)
    low, high = _hand_bootstrap(labels, preds, metric, 5, 1000)
    assert got.estimate == pytest.approx(classification_metrics(np.array(preds), np.array(labels), 2)[metric])
    assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)
    assert got.n == 4


def test_bootstrap_accuracy_four_samples_exact_values():
    # with every label right except sample 2, accuracy on a resample = 1 - (#draws of 2) / 4
    labels, preds = [0, 1, 1, 0], [0, 1, 0, 0]
    idx = np.random.default_rng(0).integers(0, 4, size=(1000, 4))
    acc = 1 - (idx == 2).sum(axis=1) / 4
    got = stats.bootstrap_interval(labels, preds, "accuracy", seed=0)
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(acc, [2.5, 97.5])), abs=1e-12)
    assert got.estimate == 0.75


def test_bootstrap_paired_difference_and_macro_f1():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 30)
    a = np.where(rng.random(30) < 0.8, labels, (labels + 1) % 3)
    b = np.where(rng.random(30) < 0.6, labels, (labels + 2) % 3)
    for metric in ("accuracy", "f1"):
        got = stats.bootstrap_interval(labels, a, metric, num_labels=3, baseline=b, seed=2, n_resamples=200)
        low, high = _hand_bootstrap(labels, a, metric, 2, 200, baseline=b, num_labels=3)
        want = classification_metrics(a, labels, 3)[metric] - classification_metrics(b, labels, 3)[metric]
        assert got.estimate == pytest.approx(want, abs=1e-12)
        assert (got.low, got.high) == pytest.approx((low, high), abs=1e-12)


def test_bootstrap_bad_input():
    with pytest.raises(QftInputError):
        stats.bootstrap_interval([0, 1], [0], "accuracy")
    with pytest.raises(QftInputError):
        stats.bootstrap_interval([0, 1], [0, 1], "precision")


def _metrics(scores):
    """Scripted metrics.parquet: scores = {(variant, seed): (accuracy, f1)}, with an earlier
    (worse) test row that must be ignored and validation rows."""
    rows = []
    for (variant, seed), (acc, f1) in scores.items():
        rows.append({"variant": variant, "seed": seed, "split": "validation", "step": 10, "epoch": 1.0,
                     "accuracy": 0.1, "f1": 0.1})
        rows.append({"variant": variant, "seed": seed, "split": "test", "step": 5, "epoch": 0.5,
                     "accuracy": 0.0, "f1": 0.0})
        rows.append({"variant": variant, "seed": seed, "split": "test", "step": 20, "epoch": 2.0,
                     "accuracy": acc, "f1": f1})
    return pd.DataFrame(rows)


def test_test_summary_over_seeds_scripted():
    scores = {("vanilla", 0): (0.80, 0.70), ("vanilla", 1): (0.84, 0.75), ("vanilla", 2): (0.82, 0.71),
              ("spectral", 0): (0.78, 0.69), ("spectral", 1): (0.83, 0.72), ("spectral", 2): (0.79, 0.70)}
    out = stats.test_summary(_metrics(scores), dataset="gue", task="prom")
    assert list(out.columns) == stats.SUMMARY_COLUMNS
    assert list(out["variant"]) == ["vanilla", "vanilla", "spectral", "spectral"]
    assert set(out["interval"]) == {"t over seeds"} and set(out["num_seeds"]) == {3}
    assert set(out["dataset"]) == {"gue"} and set(out["task"]) == {"prom"}
    for _, r in out.iterrows():
        col = 0 if r["metric"] == "accuracy" else 1
        mine = [scores[(r["variant"], s)][col] for s in range(3)]
        low, high = sps.t.interval(0.95, 2, loc=np.mean(mine), scale=sps.sem(mine))
        assert (r["mean_value"], r["ci_low"], r["ci_high"]) == pytest.approx((np.mean(mine), low, high), rel=1e-10)
        if r["variant"] == "vanilla":
            assert math.isnan(r["diff_to_vanilla"]) and math.isnan(r["diff_ci_low"])
        else:
            d = [scores[("spectral", s)][col] - scores[("vanilla", s)][col] for s in range(3)]
            dl, dh = sps.t.interval(0.95, 2, loc=np.mean(d), scale=sps.sem(d))
            assert (r["diff_to_vanilla"], r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx(
                (np.mean(d), dl, dh), rel=1e-10)


def test_test_summary_one_seed_bootstrap_from_predictions():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 50)
    pv = np.where(rng.random(50) < 0.8, labels, 1 - labels)
    pf = np.where(rng.random(50) < 0.7, labels, 1 - labels)
    sample = np.arange(50)
    preds = pd.concat([
        pd.DataFrame({"variant": "vanilla", "seed": 3, "sample_index": sample, "label": labels, "prediction": pv}),
        pd.DataFrame({"variant": "frobenius", "seed": 3, "sample_index": sample[::-1], "label": labels[::-1],
                      "prediction": pf[::-1]}),  # stored in another order: paired by sample id
    ])
    m = {v: classification_metrics(p, labels, 2) for v, p in (("vanilla", pv), ("frobenius", pf))}
    metrics = _metrics({("vanilla", 3): (m["vanilla"]["accuracy"], m["vanilla"]["f1"]),
                        ("frobenius", 3): (m["frobenius"]["accuracy"], m["frobenius"]["f1"])})
    out = stats.test_summary(metrics, preds, seed=9, n_resamples=300)
    assert set(out["interval"]) == {"bootstrap over test samples (300 resamples)"}
    for _, r in out.iterrows():
        p = pv if r["variant"] == "vanilla" else pf
        low, high = _hand_bootstrap(labels, p, r["metric"], 9, 300)
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), abs=1e-12)
        assert r["mean_value"] == pytest.approx(m[r["variant"]][r["metric"]])
        if r["variant"] == "frobenius":
            dl, dh = _hand_bootstrap(labels, pf, r["metric"], 9, 300, baseline=pv)
            assert (r["diff_ci_low"], r["diff_ci_high"]) == pytest.approx((dl, dh), abs=1e-12)
            assert r["diff_to_vanilla"] == pytest.approx(m["frobenius"][r["metric"]] - m["vanilla"][r["metric"]])


def test_test_summary_one_seed_without_predictions_and_old_runs():
    old = _metrics({("vanilla", 0): (0.8, 0.7), ("spectral", 0): (0.75, 0.6)}).drop(columns="seed")
    out = stats.test_summary(old)
    assert set(out["interval"]) == {stats.NO_INTERVAL}
    assert out["ci_low"].isna().all()
    spec = out[(out["variant"] == "spectral") & (out["metric"] == "accuracy")].iloc[0]
    assert spec["diff_to_vanilla"] == pytest.approx(-0.05) and math.isnan(spec["diff_ci_low"])
    # no vanilla: the difference columns are NaN
    only = stats.test_summary(_metrics({("spectral", 0): (0.7, 0.6), ("spectral", 1): (0.72, 0.61)}))
    assert only["diff_to_vanilla"].isna().all() and only["ci_low"].notna().all()
    assert stats.test_summary(pd.DataFrame()).empty


def test_summary_display_table_in_percentage_points():
    scores = {("vanilla", 0): (0.80, 0.70), ("vanilla", 1): (0.84, 0.75),
              ("frobenius", 0): (0.78, 0.69), ("frobenius", 1): (0.80, 0.72)}
    out = stats.test_summary(_metrics(scores))
    table = stats.summary_display_table(out, epochs={"vanilla": 2.0, "frobenius": 3.0})
    assert list(table["variant"]) == ["vanilla", "frobenius"]
    acc = out[(out["variant"] == "frobenius") & (out["metric"] == "accuracy")].iloc[0]
    want = f"{100 * acc['mean_value']:.2f} [{100 * acc['ci_low']:.2f}, {100 * acc['ci_high']:.2f}]"
    assert table.loc[1, "accuracy (%)"] == want
    assert table.loc[1, "Δ accuracy (pp)"].startswith("-3.00 [")
    assert table.loc[0, "Δ accuracy (pp)"] == ""
    assert list(table["epochs"]) == ["2.0", "3.0"]
    assert stats.summary_interval_note(out).startswith("[95% interval: t over seeds;")
