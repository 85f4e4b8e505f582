"""Baselines (``qft_cli/train/baseline.py``): the k-mer logistic regression against scikit-learn
called by hand, a planted k-mer signal found (accuracy near 1) and none found where there is none
(near chance), the most-frequent-tag baseline worked by hand, the metric code equal to training's,
the paired bootstrap difference to the baseline against a hand loop, and the baseline row in a
tiny ``qft train`` run's tables, its printed table and its report sentence."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from qft_cli.train import stats
from qft_cli.train.baseline import fit_baseline, fit_kmer_baseline, fit_majority_tag_baseline, kmer_features
from qft_cli.train.training import classification_metrics


def _task(n, planted, seed, length=40):
    """Random DNA; with ``planted``, class 1 carries the 5-mer GATTA (twice), class 0 never."""
    rng = random.Random(seed)
    seqs, labels = [], []
    for i in range(n):
        label = i % 2
        s = "".join(rng.choice("ACGT") for _ in range(length)).replace("GATTA", "GACTA")
        if planted and label:
            for _ in range(2):
                j = rng.randrange(0, length - 5)
                s = s[:j] + "GATTA" + s[j + 5:]
        seqs.append(s)
        labels.append(label if planted else rng.randrange(2))
    return seqs, labels


def _by_hand(train, val, test, k):
    """The documented model, written out: CountVectorizer char k-grams, l2 rows, LogisticRegression."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False)
    x_train = vec.fit_transform(train[0]).astype(np.float64)
    norm = lambda x: x.multiply(1 / np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).clip(1e-300)))  # noqa: E731
    model = LogisticRegression(C=1.0, max_iter=2000).fit(norm(x_train), train[1])
    return (model.predict(norm(vec.transform(val[0]).astype(np.float64))),
            model.predict(norm(vec.transform(test[0]).astype(np.float64))))


def test_planted_kmer_is_found_and_matches_sklearn_by_hand():
    train, val, test = _task(300, True, 0), _task(100, True, 1), _task(200, True, 2)
    result = fit_kmer_baseline(train, val, test, num_labels=2)
    assert result.test["accuracy"] > 0.95 and result.k in (3, 4, 5, 6)
    best_k, best_f1, best_test = None, -1.0, None
    for k in (3, 4, 5, 6):  # k chosen on validation F1, ties to the smaller k
        val_pred, test_pred = _by_hand(train, val, test, k)
        f1 = classification_metrics(val_pred, np.asarray(val[1]), 2)["f1"]
        assert result.validation_by_k[k]["f1"] == pytest.approx(f1, abs=1e-12)
        if f1 > best_f1:
            best_k, best_f1, best_test = k, f1, test_pred
    assert result.k == best_k
    np.testing.assert_array_equal(result.test_predictions, best_test)
    assert result.test == pytest.approx(classification_metrics(best_test, np.asarray(test[1]), 2))


def test_no_signal_is_near_chance():
    train, val, test = _task(300, False, 3), _task(100, False, 4), _task(400, False, 5)
    result = fit_kmer_baseline(train, val, test, num_labels=2)
    assert 0.4 < result.test["accuracy"] < 0.6  # 400 test rows: 3 standard errors of chance is 0.075


def test_kmer_features_are_unit_rows_of_overlapping_counts():
    x, (y,) = kmer_features(["AAAC", "ACAC"], [["AAAA", "GG"]], 2)
    # AAAC: AA x2, AC x1 -> (2, 1)/sqrt(5); vocabulary from train only: AA, AC, CA
    dense = x.toarray()
    np.testing.assert_allclose(dense[0], [2 / np.sqrt(5), 1 / np.sqrt(5), 0])
    np.testing.assert_allclose(dense[1], [0, 2 / np.sqrt(5), 1 / np.sqrt(5)])
    np.testing.assert_allclose(y.toarray(), [[1, 0, 0], [0, 0, 0]])  # GG is no training k-mer: a zero row


def test_majority_tag_by_hand():
    train = ([["the", "dog", "runs"], ["the", "run", "dog"]], [[1, 2, 3], [1, 2, 2]])
    # dog: tag 2 twice; the: 1; runs: 3; run: 2; overall most frequent tag: 2 (3 of 6)
    test = ([["the", "dog", "cat"]], [[1, 2, 0]])
    result = fit_majority_tag_baseline(train, train, test, num_labels=4)
    np.testing.assert_array_equal(result.test_predictions, [1, 2, 2])  # unseen "cat" -> 2
    assert result.test["accuracy"] == pytest.approx(2 / 3)
    # macro F1 over classes present (0, 1, 2): F1_0 = 0, F1_1 = 1, F1_2 = 2*1/(1+2) = 2/3
    assert result.test["f1"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    assert fit_baseline("token_classification", {"train": {"inputs": train[0], "labels": train[1]},
                                                 "validation": {"inputs": train[0], "labels": train[1]},
                                                 "test": {"inputs": test[0], "labels": test[1]}}, 4).variant \
        == "baseline_majority_tag"


@pytest.mark.parametrize("num_labels", [2, 5])
def test_point_metrics_equal_training_metrics(num_labels):
    rng = np.random.default_rng(num_labels)
    y, p = rng.integers(0, num_labels, 300), rng.integers(0, num_labels, 300)
    y[:7] = -100
    assert stats.point_metrics(y, p, num_labels) == pytest.approx(classification_metrics(p, y, num_labels))


def test_baseline_difference_against_a_hand_loop():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    seeds = [np.where(rng.random(80) < 0.8, y, 1 - y) for _ in range(3)]
    base = np.where(rng.random(80) < 0.7, y, 1 - y)
    got = stats.baseline_difference(y, seeds, base, "accuracy", n_resamples=200, seed=5)
    idx = np.random.default_rng(5).integers(0, 80, size=(200, 80))
    diffs = [np.mean([(s[i] == y[i]).mean() for s in seeds]) - (base[i] == y[i]).mean() for i in idx]
    assert got.estimate == pytest.approx(np.mean([(s == y).mean() for s in seeds]) - (base == y).mean())
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))


def test_summary_rows_of_a_baseline():
    metrics = pd.DataFrame([
        {"variant": "baseline_kmer", "seed": 0, "split": "test", "step": 0, "epoch": 0.0, "accuracy": 0.5, "f1": 0.5},
        *[{"variant": v, "seed": s, "split": "test", "step": 10, "epoch": 1.0, "accuracy": a, "f1": a}
          for v, s, a in (("vanilla", 0, 0.75), ("vanilla", 1, 1.0), ("spectral", 0, 0.5), ("spectral", 1, 0.75))],
    ])
    y = np.array([0, 1, 0, 1])
    preds = {("baseline_kmer", 0): [0, 0, 1, 1], ("vanilla", 0): [0, 1, 0, 0], ("vanilla", 1): [0, 1, 0, 1],
             ("spectral", 0): [0, 0, 0, 1], ("spectral", 1): [0, 1, 1, 1]}
    predictions = pd.DataFrame([{"variant": v, "seed": s, "sample_index": i, "label": int(y[i]), "prediction": p[i],
                                 "num_labels": 2} for (v, s), p in preds.items() for i in range(4)])
    summary = stats.test_summary(metrics, predictions, dataset="d", task="t", baseline_k=4)
    assert list(dict.fromkeys(summary["variant"])) == ["vanilla", "spectral", "baseline_kmer"]
    acc = summary[summary["metric"] == "accuracy"].set_index("variant")
    assert acc.loc["vanilla", "diff_to_baseline"] == pytest.approx(0.875 - 0.5)
    assert acc.loc["spectral", "diff_to_baseline"] == pytest.approx(0.625 - 0.5)
    assert np.isnan(acc.loc["baseline_kmer", "diff_to_vanilla"]) and np.isnan(acc.loc["baseline_kmer", "diff_to_baseline"])
    assert (summary["baseline_k"] == 4).all()
    display = stats.summary_display_table(summary)
    assert "baseline_kmer (k=4)" in set(display["variant"])
    assert display.set_index("variant").loc["vanilla", "Δ acc. vs baseline (pp)"].startswith("+37.50 [")


def test_report_sentence():
    from qft_cli.report.training import baseline_sentence

    t = pd.DataFrame([
        {"variant": "vanilla", "metric": "accuracy", "mean_value": 0.85, "diff_to_baseline": 0.05,
         "diff_to_baseline_ci_low": 0.02, "diff_to_baseline_ci_high": 0.08, "baseline_k": 4},
        {"variant": "spectral", "metric": "accuracy", "mean_value": 0.79, "diff_to_baseline": -0.01,
         "diff_to_baseline_ci_low": -0.03, "diff_to_baseline_ci_high": 0.01, "baseline_k": 4},
        {"variant": "frobenius", "metric": "accuracy", "mean_value": 0.70, "diff_to_baseline": -0.10,
         "diff_to_baseline_ci_low": -0.13, "diff_to_baseline_ci_high": -0.07, "baseline_k": 4},
        {"variant": "baseline_kmer", "metric": "accuracy", "mean_value": 0.80, "diff_to_baseline": float("nan"),
         "diff_to_baseline_ci_low": float("nan"), "diff_to_baseline_ci_high": float("nan"), "baseline_k": 4},
    ])
    text = baseline_sentence(t, "gue / prom_core_notata")
    assert text == ("Against the baseline baseline_kmer (k=4) on gue / prom_core_notata (test accuracy 80.0%): "
                    "vanilla beats it by +5.0 pp [+2.0, +8.0]; spectral is not resolved from it by -1.0 pp "
                    "[-3.0, +1.0]; frobenius loses to it by -10.0 pp [-13.0, -7.0] (mean over seeds minus "
                    "baseline, 95% paired bootstrap interval over the same test rows).")
    assert baseline_sentence(t[t["variant"] != "baseline_kmer"]) == ""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny ``qft train`` on FASTA class files (one vanilla model, one epoch) and its report."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from qft_cli.cli.app import app

    root = tmp_path_factory.mktemp("baseline")
    data = root / "motif"
    data.mkdir()
    seqs, labels = _task(120, True, 7, length=24)
    for c in (0, 1):
        (data / f"{c}.fa").write_text("".join(f">s{i}\n{s}\n" for i, (s, y) in enumerate(zip(seqs, labels)) if y == c))
    out = root / "runs"
    result = CliRunner().invoke(app, ["train", "--data-dir", str(data), "--tokenizer", "char", "--max-length", "28",
                                      "--d-model", "16", "--num-heads", "2", "--d-ff", "32", "--norm", "vanilla",
                                      "--num-epochs", "1", "--early-stopping", "0", "--batch-size", "32",
                                      "--device", "cpu", "--quiet", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = next(out.iterdir())
    report = root / "report.html"
    rep = CliRunner().invoke(app, ["report", str(run_dir), "-o", str(report), "--quiet"])
    assert rep.exit_code == 0, rep.output
    return run_dir, result.output, report.read_text()


def test_baseline_row_in_a_tiny_train_run(tiny_run):
    run_dir, output, html = tiny_run
    meta = json.loads((run_dir / "run.json").read_text())
    k = meta["baseline"]["k"]
    assert meta["baseline"]["variant"] == "baseline_kmer" and k in (3, 4, 5, 6) and meta["baseline"]["split_seed"] == 42
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    base = metrics[metrics["variant"] == "baseline_kmer"]
    assert sorted(base["split"]) == ["test", "validation"] and (base["seed"] == 42).all()
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    b, v = (predictions[predictions["variant"] == x].sort_values("sample_index") for x in ("baseline_kmer", "vanilla"))
    assert list(b["label"]) == list(v["label"]) and len(b) == 12  # the same test rows (0.1 x 60 = 6 per class)
    test_acc = float(base.loc[base["split"] == "test", "accuracy"].iloc[0])
    assert test_acc == pytest.approx((b["label"].to_numpy() == b["prediction"].to_numpy()).mean())
    summary = pd.read_parquet(run_dir / "test_summary.parquet")
    row = summary[(summary["variant"] == "vanilla") & (summary["metric"] == "accuracy")].iloc[0]
    assert row["diff_to_baseline"] == pytest.approx(row["mean_value"] - test_acc)
    assert row["baseline_k"] == k
    assert f"baseline_kmer (k={k})" in output
    assert "Against the baseline baseline_kmer" in html and html.count(f"baseline_kmer (k={k}):") >= 4


def test_baseline_none_skips_it(tmp_path):
    from qft_cli.cli.app import app

    data = tmp_path / "motif"
    data.mkdir()
    seqs, labels = _task(30, True, 8, length=16)
    for c in (0, 1):
        (data / f"{c}.fa").write_text("".join(f">s{i}\n{s}\n" for i, (s, y) in enumerate(zip(seqs, labels)) if y == c))
    result = CliRunner().invoke(app, ["train", "--data-dir", str(data), "--tokenizer", "char", "--d-model", "16",
                                      "--num-heads", "2", "--d-ff", "32", "--norm", "vanilla", "--max-steps", "1",
                                      "--eval-strategy", "no", "--early-stopping", "0", "--baseline", "none",
                                      "--device", "cpu", "--quiet", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    assert "baseline" not in json.loads((run_dir / "run.json").read_text())
    assert set(pd.read_parquet(run_dir / "metrics.parquet")["variant"]) == {"vanilla"}


def test_finetune_on_fasta_class_files_fits_the_kmer_baseline(tmp_path):
    from qft_cli.cli.app import app

    data = tmp_path / "named"
    data.mkdir()
    seqs, labels = _task(60, True, 9, length=24)
    for name, c in (("positives.fa", 1), ("negatives.fasta", 0)):
        (data / name).write_text("".join(f">s{i}\n{s}\n" for i, (s, y) in enumerate(zip(seqs, labels)) if y == c))
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["finetune", "tiny-dnabert", "--dataset", "gue", "--data-dir", str(data),
                                      "--class-file", "1=positives.fa", "--class-file", "0=negatives.fasta",
                                      "--split-sizes", "0.6,0.2,0.2", "--max-steps", "1", "--num-epochs", "1",
                                      "--batch-size", "16", "--warmup-ratio", "0", "--device", "cpu", "-q", "--norm", "vanilla",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = next(out.iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["data"]["fasta"]["split_sizes"] == [0.6, 0.2, 0.2] and meta["data"]["sizes"]["test"] == 12
    assert meta["baseline"]["variant"] == "baseline_kmer"
    summary = pd.read_parquet(run_dir / "test_summary.parquet")
    assert list(dict.fromkeys(summary.variant)) == ["vanilla", "baseline_kmer"]


def test_pos_tagging_gets_the_majority_tag_baseline(tmp_path, shared_data):
    from qft_cli.cli.app import app
    from qft_cli.data.tasks import load_task, subsample

    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["finetune", "tiny-bert", "--dataset", "conll2003", "--data-dir",
                                      str(shared_data / "conll2003"), "--max-train-samples", "64",
                                      "--max-eval-samples", "32", "--max-steps", "1", "--num-epochs", "1",
                                      "--batch-size", "16", "--warmup-ratio", "0", "--device", "cpu", "-q",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run_dir = next(out.iterdir())
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    base = metrics[(metrics.variant == "baseline_majority_tag") & (metrics.split == "test")]
    data = load_task("conll2003", data_dir=shared_data / "conll2003")  # the same subsets, drawn by hand
    subsample(data, "train", 64, 42)
    for split in ("validation", "test"):
        subsample(data, split, 32, 42)
    by_hand = fit_majority_tag_baseline(*[(data.splits[s]["inputs"], data.splits[s]["labels"])
                                          for s in ("train", "validation", "test")], num_labels=data.num_labels)
    assert float(base.accuracy.iloc[0]) == pytest.approx(by_hand.test["accuracy"])
    assert json.loads((run_dir / "run.json").read_text())["baseline"]["k"] is None
