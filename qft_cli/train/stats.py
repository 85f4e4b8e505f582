"""Uncertainty of test scores: Student-t intervals over seeds and bootstrap intervals over test samples.

``qft train`` and ``qft finetune`` write ``test_summary.parquet`` through :func:`test_summary`;
``qft report`` calls the same function for older runs that lack the file. Conventions:

* Over seeds (two or more seeds with a test score): the 95% Student-t interval of the mean,
  ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (n-1 in the
  denominator), and the *paired* difference variant - vanilla: the t interval of the per-seed
  differences over the seeds both variants finished (the variance shared by a seed cancels).
* With one seed: a seeded percentile bootstrap over the test samples (1,000 resamples by default,
  ``numpy.random.default_rng(seed)``, Efron & Tibshirani, *An Introduction to the Bootstrap*, ch. 13).
  The paired difference resamples the sample indices once and scores both variants on the same
  resample.
* Accuracy and F1 follow :func:`qft_cli.train.training.classification_metrics`: binary F1 of class 1 for
  two classes, otherwise macro F1 over the classes that occur in labels or predictions.

All values are fractions in [0, 1]; :func:`summary_display_table` turns them into percentage points
for the screen.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import pandas as pd

from qft_cli.system.errors import QftInputError

#: Metrics summarised in ``test_summary.parquet`` (columns of ``metrics.parquet``).
SUMMARY_METRICS = ("accuracy", "f1")

#: Columns of ``test_summary.parquet`` (documented in docs/results.md); a ``run`` column leads
#: them where the input metrics carry one.
SUMMARY_COLUMNS = ["dataset", "task", "variant", "metric", "num_seeds", "mean_value", "ci_low", "ci_high",
                   "diff_to_vanilla", "diff_ci_low", "diff_ci_high", "interval",
                   "diff_to_baseline", "diff_to_baseline_ci_low", "diff_to_baseline_ci_high", "baseline_k"]

#: Variants that are baselines fitted beside the trained models (:mod:`qft_cli.train.baseline`):
#: listed last, never compared to vanilla; every other variant is compared to them.
BASELINE_VARIANTS = ("baseline_kmer", "baseline_majority_tag")

INTERVAL_T = "t over seeds"
NO_INTERVAL = "none (one seed, no test predictions)"


def interval_bootstrap_label(n_resamples: int) -> str:
    """The ``interval`` label of a bootstrap row, e.g. ``bootstrap over test samples (1000 resamples)``."""
    return f"bootstrap over test samples ({n_resamples} resamples)"


class Interval(NamedTuple):
    """A point estimate with its confidence interval (NaN bounds where none can be given).

    Attributes:
        estimate: the mean (t) or the statistic on the full sample (bootstrap).
        low, high: interval bounds, same units as ``estimate``.
        n: number of values (seeds) or of resampled units (test samples) behind it.
    """

    estimate: float
    low: float
    high: float
    n: int


# ----------------------------------------------------------------------------- Student t

def _finite(values: Any) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of the mean.

    Args:
        values: 1-d numbers (e.g. one test accuracy per seed); NaN/inf entries are dropped.
        confidence: coverage in (0, 1).

    Returns:
        :class:`Interval` ``(mean, mean - h, mean + h, n)`` with ``h = t_{(1+c)/2, n-1} s / sqrt(n)``,
        ``s`` the sample standard deviation (ddof 1). NaN bounds for ``n < 2``; all NaN for ``n = 0``.
        Equals ``scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=scipy.stats.sem(values))``.

    Raises:
        QftInputError: ``confidence`` outside (0, 1).
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise QftInputError(f"confidence {confidence} must lie strictly between 0 and 1 (e.g. 0.95)")
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Union[Mapping[Any, float], pd.Series, Sequence[float]],
                      b: Union[Mapping[Any, float], pd.Series, Sequence[float]],
                      confidence: float = 0.95) -> Interval:
    """Mean paired difference ``a - b`` and its Student-t interval.

    Args:
        a, b: per-seed scores. Mappings / Series are paired by key (seed); keys present in only
            one side, and pairs with a NaN, are dropped. Plain sequences are paired by position
            and must have equal length.
        confidence: coverage in (0, 1).

    Returns:
        :class:`Interval` of the differences (see :func:`t_interval`); ``n`` = number of pairs.

    Raises:
        QftInputError: sequences of different lengths, or ``confidence`` outside (0, 1).
    """
    if isinstance(a, (Mapping, pd.Series)) or isinstance(b, (Mapping, pd.Series)):
        a_map, b_map = dict(a.items()), dict(b.items())  # type: ignore[union-attr]
        keys = [k for k in a_map if k in b_map]
        diffs = [float(a_map[k]) - float(b_map[k]) for k in keys]
    else:
        a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a_arr.shape != b_arr.shape:
            raise QftInputError(f"paired difference needs equally many values, got {a_arr.size} and {b_arr.size}")
        diffs = list(a_arr - b_arr)
    return t_interval(diffs, confidence)


# ----------------------------------------------------------------------------- bootstrap

def _weighted_metric(counts: np.ndarray, labels: np.ndarray, predictions: np.ndarray, metric: str,
                     num_labels: int) -> np.ndarray:
    """Metric of every resample; ``counts`` (R x n) says how often each row is drawn."""
    counts = counts.astype(np.float64)
    total = counts.sum(axis=1)
    if metric == "accuracy":
        return counts @ (labels == predictions).astype(np.float64) / total
    classes = [1] if num_labels == 2 else sorted(set(labels.tolist()) | set(predictions.tolist()))
    f1s, present = [], []
    for c in classes:
        tp = counts @ ((labels == c) & (predictions == c)).astype(np.float64)
        denom = counts @ ((labels == c).astype(np.float64) + (predictions == c).astype(np.float64))
        f1s.append(np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0))
        present.append(denom > 0)
    f1 = np.stack(f1s)
    if num_labels == 2:
        return f1[0]
    mask = np.stack(present)
    return (f1 * mask).sum(axis=0) / np.maximum(mask.sum(axis=0), 1)


def point_metrics(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and F1 of one set of predictions, with the bootstrap's metric code (entries with
    label -100 dropped); equal to :func:`qft_cli.train.training.classification_metrics`.

    Returns:
        ``{"accuracy": float, "f1": float}``; NaN without labels.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    keep = y != -100
    y, p = y[keep], p[keep]
    if y.size == 0:
        return {m: math.nan for m in SUMMARY_METRICS}
    ones = np.ones((1, y.size), dtype=np.int64)
    return {m: float(_weighted_metric(ones, y, p, m, num_labels)[0]) for m in SUMMARY_METRICS}


def _resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` rows is drawn in each resample (R x n), from
    ``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))``."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n), idx.reshape(-1)), 1)
    return counts


def baseline_difference(labels: Sequence[int], predictions: Sequence[Sequence[int]], baseline: Sequence[int],
                        metric: str = "accuracy", *, num_labels: int = 2, confidence: float = 0.95,
                        n_resamples: int = 1000, seed: int = 0) -> Interval:
    """Paired percentile bootstrap of ``mean_s metric(predictions[s]) - metric(baseline)`` over test rows.

    Every seed's predictions and the baseline's are scored on the *same* resampled rows (the
    resampling of :func:`bootstrap_interval`), so the interval covers test-sample noise of both;
    the mean over seeds is taken inside each resample.

    Args:
        labels: int class ids of the test rows.
        predictions: one prediction array per seed of the variant (same rows, same order).
        baseline: the baseline's predictions on the same rows.
        metric, num_labels, confidence, n_resamples, seed: as in :func:`bootstrap_interval`.

    Returns:
        :class:`Interval` (estimate on the full test set; ``n`` = test rows).

    Raises:
        QftInputError: unknown metric, no predictions, or mismatched lengths.
    """
    if metric not in SUMMARY_METRICS:
        raise QftInputError(f"unknown metric '{metric}': use accuracy or f1")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    q = np.asarray(baseline, dtype=np.int64).reshape(-1)
    ps = [np.asarray(p, dtype=np.int64).reshape(-1) for p in predictions]
    if not ps or q.shape != y.shape or any(p.shape != y.shape for p in ps):
        raise QftInputError(f"the baseline difference needs one prediction per label for every seed and the baseline "
                            f"({y.size} labels)")
    keep = y != -100
    y, q, ps = y[keep], q[keep], [p[keep] for p in ps]
    n = int(y.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)

    def stat(c: np.ndarray) -> np.ndarray:
        own = np.mean([_weighted_metric(c, y, p, metric, num_labels) for p in ps], axis=0)
        return own - _weighted_metric(c, y, q, metric, num_labels)

    estimate = float(stat(np.ones((1, n), dtype=np.int64))[0])
    alpha = (1 - confidence) / 2
    low, high = np.percentile(stat(_resample_counts(n, n_resamples, seed)), [100 * alpha, 100 * (1 - alpha)])
    return Interval(estimate, float(low), float(high), n)


def bootstrap_interval(labels: Sequence[int], predictions: Sequence[int], metric: str = "accuracy", *,
                       num_labels: int = 2, baseline: Optional[Sequence[int]] = None,
                       confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of a test metric (or of a paired difference) over test samples.

    The resample indices are ``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))``
    (one row per resample, n = number of test samples); the interval is
    ``numpy.percentile(stats, [100 (1-c)/2, 100 (1+c)/2])`` of the resampled statistics.

    Args:
        labels, predictions: int class ids, one per test sample (entries with label -100 dropped).
        metric: ``accuracy`` or ``f1`` (F1 as in :func:`qft_cli.train.training.classification_metrics`).
        num_labels: 2 -> binary F1 of class 1; otherwise macro F1 over classes present in the resample.
        baseline: predictions of a second variant on the *same* samples (same order); the statistic
            is then ``metric(predictions) - metric(baseline)``, both scored on each resample.
        confidence: coverage in (0, 1).
        n_resamples: number of bootstrap resamples (>= 1).
        seed: seed of the resampling.

    Returns:
        :class:`Interval` with the statistic on the full test set and the percentile bounds
        (fractions); ``n`` = number of test samples. All NaN with no samples.

    Raises:
        QftInputError: unknown metric, mismatched lengths, ``n_resamples < 1``, bad ``confidence``.
    """
    if metric not in SUMMARY_METRICS:
        raise QftInputError(f"unknown metric '{metric}': use accuracy or f1")
    if not 0 < confidence < 1:
        raise QftInputError(f"confidence {confidence} must lie strictly between 0 and 1 (e.g. 0.95)")
    if n_resamples < 1:
        raise QftInputError(f"n_resamples {n_resamples} must be at least 1")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    q = None if baseline is None else np.asarray(baseline, dtype=np.int64).reshape(-1)
    if p.shape != y.shape or (q is not None and q.shape != y.shape):
        raise QftInputError(f"bootstrap needs one prediction per label: {y.size} labels, {p.size} predictions"
                            + ("" if q is None else f", {q.size} baseline predictions"))
    keep = y != -100
    y, p = y[keep], p[keep]
    q = q[keep] if q is not None else None
    n = int(y.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    counts = _resample_counts(n, n_resamples, seed)
    full = np.ones((1, n), dtype=np.int64)

    def stat(c: np.ndarray) -> np.ndarray:
        value = _weighted_metric(c, y, p, metric, num_labels)
        if q is not None:
            value = value - _weighted_metric(c, y, q, metric, num_labels)
        return value

    estimate = float(stat(full)[0])
    alpha = (1 - confidence) / 2
    low, high = np.percentile(stat(counts), [100 * alpha, 100 * (1 - alpha)])
    return Interval(estimate, float(low), float(high), n)


# ----------------------------------------------------------------------------- the summary table

def _variant_order(variants: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(variants))
    trained = [v for v in seen if v != "vanilla" and v not in BASELINE_VARIANTS]
    return (["vanilla"] if "vanilla" in seen else []) + trained + [v for v in seen if v in BASELINE_VARIANTS]


def final_test_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The last ``test`` row (largest step, then epoch) of each (run, variant, seed) in ``metrics``.

    A ``metrics`` without a ``seed`` column (runs before multi-seed support) counts as one seed
    (``seed`` -1 in the result). Returns an empty frame without test rows.
    """
    if metrics is None or metrics.empty or "split" not in metrics.columns:
        return pd.DataFrame()
    test = metrics[metrics["split"] == "test"].copy()
    if test.empty:
        return test
    if "seed" not in test.columns:
        test["seed"] = -1
    test["seed"] = test["seed"].fillna(-1).astype("int64")
    order = [c for c in ("step", "epoch") if c in test.columns]
    keys = [c for c in ("run", "variant", "seed") if c in test.columns]
    if order:
        test = test.sort_values(order, kind="stable")
    return test.groupby(keys, sort=False).tail(1).reset_index(drop=True)


def _infer_num_labels(predictions: pd.DataFrame) -> int:
    if "num_labels" in predictions.columns and len(predictions):
        return int(predictions["num_labels"].max())
    values = np.concatenate([predictions["label"].to_numpy(), predictions["prediction"].to_numpy()])
    values = values[values != -100]
    return 2 if values.size == 0 or values.max() <= 1 else int(values.max()) + 1


def _predictions_of(predictions: Optional[pd.DataFrame], variant: str, seed: int,
                    run: Any = None) -> Optional[pd.DataFrame]:
    if predictions is None or predictions.empty:
        return None
    rows = predictions[predictions["variant"] == variant]
    if "seed" in rows.columns and seed != -1:
        rows = rows[rows["seed"] == seed]
    if run is not None and "run" in rows.columns:
        rows = rows[rows["run"] == run]
    return rows.sort_values("sample_index", kind="stable") if len(rows) else None


def test_summary(metrics: pd.DataFrame, predictions: Optional[pd.DataFrame] = None, *,
                 dataset: Optional[str] = None, task: Optional[str] = None, num_labels: Optional[int] = None,
                 confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0,
                 baseline_k: Optional[int] = None) -> pd.DataFrame:
    """``test_summary.parquet``: per variant and metric, the mean with its 95% interval and the paired
    difference to vanilla.

    Args:
        metrics: ``metrics.parquet`` rows (``variant``, ``split``, ``step``, ``epoch``, ``accuracy``,
            ``f1``, and ``seed`` where present; optional ``run``, ``dataset``, ``task`` columns).
            The final test row of each (variant, seed) is used (:func:`final_test_rows`).
        predictions: ``predictions.parquet`` rows (``variant``, ``seed``, ``sample``, ``label``,
            ``prediction``, optional ``num_labels``/``run``); used only for variants with exactly
            one seed, for a bootstrap interval over the test samples.
        dataset, task: written in the ``dataset``/``task`` columns when ``metrics`` lacks them.
        num_labels: number of classes for the bootstrap F1; default from the predictions
            (``num_labels`` column, else 2 when every id is 0/1, else the largest id + 1).
        confidence: coverage of every interval.
        n_resamples, seed: bootstrap settings (:func:`bootstrap_interval`).
        baseline_k: the k of the ``baseline_kmer`` variant (the ``baseline_k`` column; 0 without one).

    Returns:
        Long-format DataFrame with :data:`SUMMARY_COLUMNS` (``run`` first where ``metrics`` has it),
        one row per (dataset, task, variant, metric), vanilla first. Values are fractions.
        ``num_seeds`` counts seeds with a finite score; with >= 2 seeds the intervals are Student t
        over seeds (``interval`` = ``t over seeds``), the difference paired by seed; with one seed
        and predictions, percentile bootstrap over the test samples (difference on the same
        resamples); otherwise NaN bounds and ``interval`` = :data:`NO_INTERVAL`. The
        ``diff_*`` columns are NaN for vanilla itself and for runs without a vanilla variant.
        A baseline variant (:data:`BASELINE_VARIANTS`, one fit per split seed) is listed last and
        never compared to vanilla; every other variant gets ``diff_to_baseline``: its mean score
        minus the baseline's, with the paired bootstrap interval of :func:`baseline_difference`
        over the test rows (NaN bounds without predictions, e.g. POS tagging).
    """
    final = final_test_rows(metrics)
    lead = ["run"] if "run" in final.columns else []
    columns = lead + SUMMARY_COLUMNS
    if final.empty:
        return pd.DataFrame(columns=columns)
    for col, value in (("dataset", dataset), ("task", task)):
        if col not in final.columns:
            final[col] = value
    rows: list[dict[str, Any]] = []
    group_keys = lead + ["dataset", "task"]
    for key, group in final.groupby(group_keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        base = dict(zip(group_keys, key))
        run = base.get("run")
        labels_k = num_labels
        if labels_k is None and predictions is not None and not predictions.empty:
            labels_k = _infer_num_labels(predictions)
        per_variant = {v: g.set_index("seed") for v, g in group.groupby("variant", sort=False)}
        vanilla = per_variant.get("vanilla")
        baseline_variant = next((v for v in BASELINE_VARIANTS if v in per_variant), None)
        k_value = int(baseline_k) if baseline_k and baseline_variant == "baseline_kmer" else 0
        for variant in _variant_order(list(group["variant"])):
            g = per_variant[variant]
            is_baseline = variant in BASELINE_VARIANTS
            for metric in SUMMARY_METRICS:
                scores = g[metric].astype("float64")
                scores = scores[np.isfinite(scores)]
                row = {**base, "variant": variant, "metric": metric, "num_seeds": int(len(scores))}
                nan_diff = Interval(math.nan, math.nan, math.nan, 0)
                to_base = nan_diff
                if baseline_variant is not None and not is_baseline and len(scores):
                    to_base = _baseline_diff(scores, per_variant[baseline_variant], predictions, variant,
                                             baseline_variant, metric, run, labels_k or 2, confidence,
                                             n_resamples, seed)
                row.update({"diff_to_baseline": to_base.estimate, "diff_to_baseline_ci_low": to_base.low,
                            "diff_to_baseline_ci_high": to_base.high, "baseline_k": k_value})
                compare = vanilla if not is_baseline else None
                if len(scores) >= 2:
                    est = t_interval(scores.to_numpy(), confidence)
                    diff = nan_diff
                    if compare is not None and variant != "vanilla":
                        diff = paired_difference(scores, vanilla[metric].astype("float64"), confidence)
                    label = INTERVAL_T
                else:
                    seed_value = int(scores.index[0]) if len(scores) else -1
                    own = _predictions_of(predictions, variant, seed_value, run)
                    base_pred = _predictions_of(predictions, "vanilla", seed_value, run)
                    if own is not None and len(scores):
                        est = bootstrap_interval(own["label"], own["prediction"], metric, num_labels=labels_k or 2,
                                                 confidence=confidence, n_resamples=n_resamples, seed=seed)
                        est = Interval(float(scores.iloc[0]), est.low, est.high, est.n)
                        diff = nan_diff
                        if compare is not None and variant != "vanilla" and base_pred is not None:
                            both = own.merge(base_pred, on="sample_index", suffixes=("", "_vanilla"))
                            if len(both) != len(own) or not (both["label"] == both["label_vanilla"]).all():
                                raise QftInputError(f"predictions of {variant} and vanilla cover different test "
                                                    "samples: rerun the experiment (predictions.parquet is inconsistent)")
                            diff = bootstrap_interval(both["label"], both["prediction"], metric,
                                                      num_labels=labels_k or 2, baseline=both["prediction_vanilla"],
                                                      confidence=confidence, n_resamples=n_resamples, seed=seed)
                            if len(vanilla) and seed_value in vanilla.index:
                                diff = Interval(float(scores.iloc[0]) - float(vanilla.loc[seed_value, metric]),
                                                diff.low, diff.high, diff.n)
                        label = interval_bootstrap_label(n_resamples)
                    else:
                        est = Interval(float(scores.iloc[0]) if len(scores) else math.nan, math.nan, math.nan,
                                       len(scores))
                        diff = nan_diff
                        if compare is not None and variant != "vanilla" and len(scores):
                            diff = paired_difference(scores, vanilla[metric].astype("float64"), confidence)
                        label = NO_INTERVAL
                row.update({"mean_value": est.estimate, "ci_low": est.low, "ci_high": est.high,
                            "diff_to_vanilla": diff.estimate, "diff_ci_low": diff.low, "diff_ci_high": diff.high,
                            "interval": label})
                rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    floats = ["mean_value", "ci_low", "ci_high", "diff_to_vanilla", "diff_ci_low", "diff_ci_high",
              "diff_to_baseline", "diff_to_baseline_ci_low", "diff_to_baseline_ci_high"]
    return out.astype({**{c: "float64" for c in floats}, "num_seeds": "int64", "baseline_k": "int64"})


def _baseline_diff(scores: pd.Series, base: pd.DataFrame, predictions: Optional[pd.DataFrame], variant: str,
                   baseline_variant: str, metric: str, run: Any, num_labels: int, confidence: float,
                   n_resamples: int, seed: int) -> Interval:
    """``diff_to_baseline`` of one variant and metric: mean over its seeds minus the baseline's
    score, with the :func:`baseline_difference` interval when every seed has test predictions."""
    base_scores = base[metric].astype("float64")
    base_scores = base_scores[np.isfinite(base_scores)]
    if not len(base_scores):
        return Interval(math.nan, math.nan, math.nan, 0)
    estimate = float(scores.mean()) - float(base_scores.iloc[0])
    base_pred = _predictions_of(predictions, baseline_variant, int(base_scores.index[0]), run)
    own = [_predictions_of(predictions, variant, int(s), run) for s in scores.index]
    if base_pred is None or any(o is None for o in own):
        return Interval(estimate, math.nan, math.nan, len(scores))
    columns = []
    for o in own:
        both = base_pred.merge(o, on="sample_index", suffixes=("_baseline", ""))
        if len(both) != len(base_pred) or not (both["label"] == both["label_baseline"]).all():
            raise QftInputError(f"predictions of {variant} and {baseline_variant} cover different test samples: "
                                "rerun the experiment (predictions.parquet is inconsistent)")
        columns.append(both["prediction"].to_numpy())
    diff = baseline_difference(base_pred["label"].to_numpy(), columns, base_pred["prediction"].to_numpy(), metric,
                               num_labels=num_labels, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return Interval(estimate, diff.low, diff.high, diff.n)


def _pp(value: float, low: float, high: float, digits: int = 1, sign: bool = False) -> str:
    if not math.isfinite(value):
        return ""
    fmt = f"{'+' if sign else ''}.{digits}f"
    text = f"{100 * value:{fmt}}"
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{100 * low:{fmt}}, {100 * high:{fmt}}]"
    return text


def summary_display_table(summary: pd.DataFrame, epochs: Optional[Mapping[str, float]] = None) -> pd.DataFrame:
    """The final table printed by ``qft train`` / ``qft finetune``: one row per variant.

    Args:
        summary: the output of :func:`test_summary` (one dataset/task).
        epochs: optional ``variant -> mean epochs trained`` for an ``epochs`` column.

    Returns:
        Strings in percentage points with the 95% interval in brackets: columns ``variant``,
        ``seeds``, ``accuracy (%)``, ``F1 (%)``, ``Δ accuracy (pp)``, ``Δ F1 (pp)`` (paired
        difference variant - vanilla, signed), and ``epochs`` when given. Empty cells where no
        value exists. The kind of interval is in :func:`summary_interval_note`.
    """
    rows = []
    if summary is None or summary.empty:
        return pd.DataFrame(rows)
    with_baseline = "diff_to_baseline" in summary.columns and bool(summary["variant"].isin(BASELINE_VARIANTS).any())
    for variant, g in summary.groupby("variant", sort=False):
        by = {r["metric"]: r for _, r in g.iterrows()}
        acc, f1 = by.get("accuracy"), by.get("f1")
        ref = acc if acc is not None else f1
        name_shown = variant
        if variant == "baseline_kmer" and ref is not None and "baseline_k" in ref and int(ref["baseline_k"] or 0) > 0:
            name_shown = f"{variant} (k={int(ref['baseline_k'])})"
        row = {"variant": name_shown, "seeds": str(int(acc["num_seeds"])) if acc is not None else ""}
        for name, r in (("accuracy (%)", acc), ("F1 (%)", f1)):
            row[name] = _pp(r["mean_value"], r["ci_low"], r["ci_high"], 2) if r is not None else ""
        for name, r in (("Δ accuracy (pp)", acc), ("Δ F1 (pp)", f1)):
            row[name] = (_pp(r["diff_to_vanilla"], r["diff_ci_low"], r["diff_ci_high"], 2, sign=True)
                         if r is not None else "")
        if with_baseline:
            row["Δ acc. vs baseline (pp)"] = (_pp(acc["diff_to_baseline"], acc["diff_to_baseline_ci_low"],
                                                  acc["diff_to_baseline_ci_high"], 2, sign=True)
                                              if acc is not None else "")
        if epochs is not None:
            e = epochs.get(variant, math.nan)
            row["epochs"] = f"{e:.1f}" if e is not None and math.isfinite(e) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def summary_interval_note(summary: pd.DataFrame) -> str:
    """One line under the printed table saying what the bracketed intervals are, e.g.
    ``[95% interval: t over seeds; Δ = paired difference to vanilla]``; empty for an empty summary."""
    if summary is None or summary.empty:
        return ""
    kinds = ", ".join(dict.fromkeys(str(k) for k in summary["interval"]))
    extra = ""
    if "variant" in summary.columns and summary["variant"].isin(BASELINE_VARIANTS).any():
        extra = "; Δ vs baseline: mean minus the baseline's, paired bootstrap over the same test rows"
    return f"[95% interval: {kinds}; Δ = paired difference to vanilla, percentage points{extra}]"
