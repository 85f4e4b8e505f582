"""Report section "Training: vanilla vs spectral vs Frobenius" (``metrics``, ``norms_during_training``,
``gammas``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qft_cli.report.page import (
    _anchor,
    _e,
    _epoch_axis,
    _flat_range,
    _is_synthetic,
    _layer_ticks,
    _matrix_rank,
    _Page,
    _variant_color,
    _variant_rank,
)
from qft_cli.report.reading import RunRecord, combined_table, dataset_and_task
from qft_cli.system.errors import QftInputError
from qft_cli.train import stats

#: Columns of the report's test summary: those of ``test_summary.parquet`` (:data:`qft_cli.train.stats.SUMMARY_COLUMNS`,
#: docs/results.md) plus ``run`` and ``summary_source``.
SUMMARY_COLUMNS = ["run", *stats.SUMMARY_COLUMNS, "summary_source"]


def run_test_summary(run: RunRecord) -> pd.DataFrame:
    """Final test scores of one run with their 95% intervals and paired differences to vanilla.

    Reads the run's ``test_summary.parquet`` where present; for older runs computes it with
    :func:`qft_cli.train.stats.test_summary` from ``metrics`` (and ``predictions`` for the one-seed
    bootstrap).

    Returns:
        :data:`SUMMARY_COLUMNS`; values are fractions in [0, 1]. Empty when the run has no test rows.

    Raises:
        QftInputError: from :func:`qft_cli.train.stats.test_summary` (inconsistent predictions).
    """
    dataset, task = dataset_and_task(run.meta)
    if "test_summary" in run.tables:
        df, source = run.tables["test_summary"].copy(), "test_summary.parquet"
    else:
        metrics = run.tables.get("metrics")
        if metrics is None or "split" not in metrics.columns or not (metrics["split"] == "test").any():
            return pd.DataFrame(columns=SUMMARY_COLUMNS)
        df = stats.test_summary(metrics, run.tables.get("predictions"), dataset=dataset, task=task)
        source = "computed by qft report (qft_cli.train.stats.test_summary)"
    df = df.drop(columns=[c for c in ("run",) if c in df.columns])
    for col, value in (("dataset", dataset), ("task", task)):
        if col not in df.columns:
            df[col] = value
        df[col] = df[col].astype(object).where(df[col].notna(), value).astype(str)
    df.insert(0, "run", run.name)
    df["summary_source"] = source
    return df.reindex(columns=SUMMARY_COLUMNS)


def _baseline_label(variant: str, k: object) -> str:
    """``baseline_kmer (k=4)`` for a k-mer baseline with its k, else the variant name."""
    try:
        k_int = int(k)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        k_int = 0
    return f"{variant} (k={k_int})" if variant == "baseline_kmer" and k_int > 0 else variant


def baseline_sentence(t: pd.DataFrame, what: str = "", metric: str = "accuracy") -> str:
    """One sentence saying, for one run's test summary ``t`` (rows of :func:`run_test_summary`),
    whether each trained variant beats the baseline in ``metric``, by how much (percentage points)
    and with the 95% interval of ``diff_to_baseline`` (paired bootstrap over the same test rows,
    :func:`qft_cli.train.stats.baseline_difference`). A variant *beats* the baseline when the whole
    interval lies above 0, *loses* when it lies below, else the difference is *not resolved*; without
    an interval only the difference is given. Empty when ``t`` has no baseline row.
    """
    if t is None or t.empty or "variant" not in t.columns:
        return ""
    rows = t[t["metric"] == metric]
    base = rows[rows["variant"].isin(stats.BASELINE_VARIANTS)]
    if base.empty:
        return ""
    b = base.iloc[0]
    label = _baseline_label(str(b["variant"]), b.get("baseline_k"))
    parts = []
    for _, r in rows[~rows["variant"].isin(stats.BASELINE_VARIANTS)].iterrows():
        d, low, high = (float(r.get(c, math.nan)) for c in ("diff_to_baseline", "diff_to_baseline_ci_low",
                                                            "diff_to_baseline_ci_high"))
        if not math.isfinite(d):
            continue
        cell = f"{100 * d:+.1f} pp" + (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if math.isfinite(low) and
                                       math.isfinite(high) else "")
        if math.isfinite(low) and low > 0:
            verdict = "beats it"
        elif math.isfinite(high) and high < 0:
            verdict = "loses to it"
        elif math.isfinite(low):
            verdict = "is not resolved from it"
        else:
            verdict = "differs from it (no interval)"
        parts.append(f"{r['variant']} {verdict} by {cell}")
    if not parts:
        return ""
    where = f" on {what}" if what else ""
    name = "accuracy" if metric == "accuracy" else "F1"
    return (f"Against the baseline {label}{where} (test {name} {100 * float(b['mean_value']):.1f}%): "
            + "; ".join(parts) + " (mean over seeds minus baseline, 95% paired bootstrap interval over the same "
            "test rows).")


def _seed_mean(df: pd.DataFrame, keys: list[str], values: list[str]) -> tuple[pd.DataFrame, int]:
    """Mean over seeds per ``keys`` (one line per variant, never seeds mixed into one line)."""
    if "seed" not in df.columns:
        return df, 1
    num_seeds = int(df["seed"].nunique(dropna=True)) or 1
    if num_seeds == 1:
        return df, 1
    return df.groupby(keys, as_index=False, sort=False)[values].mean(), num_seeds


def _seed_note(num_seeds: int) -> str:
    return f" Mean over {num_seeds} seeds." if num_seeds > 1 else ""


def _interval_cell(value: float, low: float, high: float, sign: bool = False) -> str:
    """A table cell ``85.0 [83.2, 86.8]`` in percent (``sign``: ``+1.2 [...]`` in percentage points)
    from fractions (:func:`qft_cli.train.stats._pp`), with a typographic minus; "–" when there is no value."""
    return (stats._pp(value, low, high, 1, sign) or "–").replace("-", "−")


def _training_section(page: _Page, runs: list[RunRecord]) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = combined_table(runs, "metrics")
    during = combined_table(runs, "norms_during_training")
    gammas = combined_table(runs, "gammas")
    page.heading(2, "Training: vanilla vs spectral vs Frobenius", "training")
    page.para("Accuracy and F1 are shown in percent (binary F1 for two classes, macro F1 for POS tagging); "
              "differences to vanilla are in percentage points (pp). Intervals are 95%: Student t over seeds, "
              "or, with one seed, a percentile bootstrap over the test samples (the interval column says which); "
              "the difference to vanilla is paired (same seed, same test samples). Effective norms are those of "
              "the normalised matrices the model actually uses.")
    by_name = {r.name: r for r in runs}
    run_names = [r.name for r in runs if any(t in r.tables for t in ("metrics", "norms_during_training", "gammas",
                                                                       "test_summary"))]
    summaries = []
    for run_name in run_names:
        try:
            summaries.append(run_test_summary(by_name[run_name]))
        except QftInputError as err:
            page.para(f"Run <code>{_e(run_name)}</code>: no test summary ({_e(err)}).", "warn")
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame(columns=SUMMARY_COLUMNS)
    _forest_plot(page, summary)
    for run_name in run_names:
        meta = by_name[run_name].meta
        dataset, task = dataset_and_task(meta)
        what = (dataset or "?") + (f" / {task}" if task else "")
        page.heading(3, f"{_e(meta.get('command', 'train'))}: {_e(what)} ({_e(run_name)})",
                     f"training-{_anchor(run_name)}")
        if _is_synthetic(meta):
            page.para("Synthetic data generated by qft from a seed (not a real benchmark).", "synthetic")
        m = metrics[metrics["run"] == run_name] if not metrics.empty else pd.DataFrame()
        val = m[m["split"] == "validation"] if len(m) else m
        base_val = val[val["variant"].isin(stats.BASELINE_VARIANTS)] if len(val) else val
        val = val[~val["variant"].isin(stats.BASELINE_VARIANTS)] if len(val) else val
        if len(val):
            val, num_seeds = _seed_mean(val, ["variant", "epoch"], ["accuracy", "f1"])
            fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                                subplot_titles=("validation accuracy", "validation F1"))
            groups = sorted(val.groupby("variant"), key=lambda vg: _variant_rank(vg[0]))
            dodge = _dodge(len(groups), int(val.groupby("variant")["epoch"].nunique().max()))
            for v_i, (variant, g) in enumerate(groups):
                g = g.sort_values("epoch")
                epochs = g["epoch"].to_numpy(float)
                for col, metric in ((1, "accuracy"), (2, "f1")):
                    fig.add_trace(go.Scatter(x=epochs + dodge[v_i], y=100 * g[metric].to_numpy(float),
                                             customdata=epochs, mode="lines+markers", name=_e(variant),
                                             legendgroup=str(variant), showlegend=col == 1,
                                             line=dict(color=_variant_color(variant)), marker=dict(size=8),
                                             hovertemplate="epoch %{customdata:.2f}<br>%{y:.2f}%"
                                                           "<extra>%{fullData.name}</extra>"),
                                  row=1, col=col)
            fig.update_xaxes(title_text="epoch", **_epoch_axis(val["epoch"]))
            fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
            fig.update_yaxes(title_text="F1 (%)", row=1, col=2)
            fig.update_layout(title=f"Validation accuracy and F1 per epoch, {_e(what)} (%)",
                              legend=dict(title="variant"))
            k = (meta.get("baseline") or {}).get("k") if isinstance(meta.get("baseline"), dict) else None
            note = _baseline_lines(fig, base_val, k)
            page.figure(fig, "Validation accuracy (left) and F1 (right) after each epoch, one line per variant."
                        + note + _seed_note(num_seeds))
        t = summary[summary["run"] == run_name] if len(summary) else summary
        if len(t):
            _test_scores(page, t, what)
        nd = during[during["run"] == run_name] if not during.empty else pd.DataFrame()
        if len(nd):
            _effective_norms_figure(page, nd, what)
        ga = gammas[gammas["run"] == run_name] if not gammas.empty else pd.DataFrame()
        if len(ga):
            ga, num_seeds = _seed_mean(ga.dropna(subset=["layer", "matrix"]), ["variant", "epoch", "layer", "matrix"],
                                       ["gamma"])
            _layer_small_multiples(
                page, ga, "gamma", f"Learned scales γ over training, {_e(what)}",
                "γ (dimensionless)",
                "The learned scale γ = max_γ·sigmoid(g) (dimensionless, ≤ max γ) of each normalised matrix against epoch: one panel per variant "
                "and matrix type, one line per layer, coloured by layer (colour bar)." + _seed_note(num_seeds))


def _dodge(num_variants: int, num_epochs: int) -> list[float]:
    """x offsets (epochs) of each variant's validation points: with one evaluation (a dot, no line)
    the variants' dots sit side by side (spread over 0.1 epoch), so equal scores do not hide one
    dot under another; otherwise 0 (the lines tell the variants apart)."""
    if num_variants < 2 or num_epochs > 1:
        return [0.0] * num_variants
    step = 0.1 / (num_variants - 1)
    return [(i - (num_variants - 1) / 2) * step for i in range(num_variants)]


def _baseline_lines(fig, rows: pd.DataFrame, k: object) -> str:
    """Dotted horizontal reference lines at the baseline's accuracy (subplot 1) and F1 (subplot 2)
    from ``rows`` (its metrics or summary rows: ``variant`` and ``accuracy``/``f1`` columns, or
    ``metric``/``mean_value``); returns a caption sentence naming it (empty without a baseline)."""
    if rows is None or rows.empty:
        return ""
    variant = str(rows["variant"].iloc[0])
    label = _baseline_label(variant, k)
    for col, metric in ((1, "accuracy"), (2, "f1")):
        if "metric" in rows.columns:
            values = rows.loc[rows["metric"] == metric, "mean_value"]
        else:
            values = rows[metric] if metric in rows.columns else pd.Series(dtype=float)
        values = pd.to_numeric(values, errors="coerce").dropna()
        if values.empty:
            continue
        y = 100 * float(values.iloc[0])
        fig.add_hline(y=y, line=dict(color="#2ca02c", dash="dot", width=2), row=1, col=col,
                      annotation_text=_e(f"{label}: {y:.1f}%"), annotation_position="bottom right")
    return f" Dotted green line: the baseline {_e(label)} (fitted once on the same training split)."


def _test_scores(page: _Page, t: pd.DataFrame, what: str) -> None:
    """Table and error-bar chart of the final test scores of one run (``t``: its summary rows)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    base_rows = t[t["variant"].isin(stats.BASELINE_VARIANTS)]
    k = base_rows["baseline_k"].iloc[0] if len(base_rows) and "baseline_k" in base_rows.columns else None
    variants = sorted(t["variant"].unique(), key=lambda v: (v in stats.BASELINE_VARIANTS, _variant_rank(v)))
    by = {(r["variant"], r["metric"]): r for _, r in t.iterrows()}
    page.html("<h4>Final test scores (95% intervals)</h4>")
    sentence = baseline_sentence(t, what)
    if sentence:
        page.para(_e(sentence), "baseline")
    rows = []
    for v in variants:
        acc, f1 = by.get((v, "accuracy")), by.get((v, "f1"))
        ref = acc if acc is not None else f1
        rows.append([_baseline_label(v, k), int(ref["num_seeds"]) if pd.notna(ref["num_seeds"]) else "–",
                     *[_interval_cell(r["mean_value"], r["ci_low"], r["ci_high"]) if r is not None else "–"
                       for r in (acc,)],
                     *[_interval_cell(r["diff_to_vanilla"], r["diff_ci_low"], r["diff_ci_high"], True) if r is not None else "–"
                       for r in (acc,)],
                     *[_interval_cell(r["mean_value"], r["ci_low"], r["ci_high"]) if r is not None else "–" for r in (f1,)],
                     *[_interval_cell(r["diff_to_vanilla"], r["diff_ci_low"], r["diff_ci_high"], True) if r is not None else "–"
                       for r in (f1,)],
                     str(ref["interval"])])
    sources = set(t["summary_source"].astype(str))
    if sources != {"test_summary.parquet"}:
        page.para("This run has no <code>test_summary.parquet</code>: the intervals are "
                  + ("computed here from its metrics (qft_cli.train.stats.test_summary)."
                     if any(x.startswith("computed") for x in sources) else "not available (final test rows only)."),
                  "muted")
    page.table(["variant", "seeds", "test accuracy (%) [95% CI]", "Δ accuracy vs vanilla (pp) [95% CI]",
                "test F1 (%) [95% CI]", "Δ F1 vs vanilla (pp) [95% CI]", "interval"], rows, cls="test")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=("test accuracy", "test F1"))
    for col, metric in ((1, "accuracy"), (2, "f1")):
        for v in variants:
            r = by.get((v, metric))
            if r is None or not math.isfinite(r["mean_value"]):
                continue
            has_ci = math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"])
            fig.add_trace(go.Scatter(
                x=[_e(v)], y=[100 * r["mean_value"]], mode="markers", name=_e(v), legendgroup=str(v), showlegend=False,
                marker=dict(size=10, color=_variant_color(v)),
                error_y=dict(type="data", symmetric=False, array=[100 * (r["ci_high"] - r["mean_value"])],
                             arrayminus=[100 * (r["mean_value"] - r["ci_low"])], visible=has_ci, thickness=2, width=8),
                hovertemplate=(f"{_e(v)}<br>%{{y:.2f}}%" + (f" [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}]"
                                                            if has_ci else "") + "<extra></extra>")),
                row=1, col=col)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=1)
    fig.update_yaxes(title_text="F1 (%)", row=1, col=2)
    fig.update_xaxes(title_text="variant", type="category")
    fig.update_layout(title=f"Final test scores with 95% intervals, {_e(what)} (%)")
    note = _baseline_lines(fig, base_rows, k)
    page.figure(fig, "Mean final test score per variant with its 95% interval (error bar; "
                     f"{_e(', '.join(sorted(set(t['interval'].astype(str)))))})." + note, height=400)


def _forest_plot(page: _Page, summary: pd.DataFrame) -> None:
    """Paired differences to vanilla with their 95% intervals, one row per (dataset/task, variant, run)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    d = summary[summary["variant"] != "vanilla"] if len(summary) else summary
    d = d[pd.to_numeric(d["diff_to_vanilla"], errors="coerce").notna()] if len(d) else d
    if d.empty:
        return
    d = d.assign(name=[f"{ds}/{tk}".strip("/") for ds, tk in zip(d["dataset"], d["task"])])
    names_runs = d.groupby("name")["run"].nunique()
    d = d.assign(row=[f"{n} · {v}" + (f" [{r}]" if names_runs[n] > 1 else "")
                      for n, v, r in zip(d["name"], d["variant"], d["run"])],
                 order=[(n, _variant_rank(v), r) for n, v, r in zip(d["name"], d["variant"], d["run"])])
    rows = [k for _, k in sorted({(o, k) for o, k in zip(d["order"], d["row"])}, reverse=True)]
    page.heading(3, "Cost of normalisation: paired difference to vanilla", "training-forest")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.06, shared_yaxes=True,
                        subplot_titles=("Δ test accuracy (pp)", "Δ test F1 (pp)"))
    for col, metric in ((1, "accuracy"), (2, "f1")):
        g = d[d["metric"] == metric]
        for variant, gv in g.groupby("variant", sort=False):
            low = (gv["diff_to_vanilla"] - gv["diff_ci_low"]).to_numpy(float)
            high = (gv["diff_ci_high"] - gv["diff_to_vanilla"]).to_numpy(float)
            fig.add_trace(go.Scatter(
                x=100 * gv["diff_to_vanilla"].to_numpy(float), y=[_e(x) for x in gv["row"]], mode="markers",
                name=_e(variant), legendgroup=str(variant), showlegend=col == 1,
                marker=dict(size=10, symbol="square", color=_variant_color(variant)),
                error_x=dict(type="data", symmetric=False, array=100 * high, arrayminus=100 * low, thickness=2, width=6),
                customdata=np.stack([100 * gv["diff_ci_low"].to_numpy(float), 100 * gv["diff_ci_high"].to_numpy(float),
                                     gv["num_seeds"].to_numpy(float)], axis=1),
                hovertemplate="%{y}<br>Δ = %{x:+.2f} pp [%{customdata[0]:+.2f}, %{customdata[1]:+.2f}]"
                              "<br>%{customdata[2]:.0f} seed(s)<extra></extra>"), row=1, col=col)
        fig.add_vline(x=0, line=dict(color="#444", dash="dash", width=1), row=1, col=col)
        fig.update_xaxes(title_text="Δ to vanilla (pp)", zeroline=False, row=1, col=col)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=[_e(r) for r in rows])
    fig.update_layout(title="Paired difference to vanilla, final test scores (pp, 95% intervals)",
                      legend=dict(title="variant", orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top"))
    page.figure(fig, "Forest plot: each normalised variant's final test score minus vanilla's (same seeds, same test "
                     "samples), in percentage points, with its 95% interval; left of the dashed line the variant "
                     "is worse than vanilla.", height=max(360, 34 * len(rows) + 260))


def _effective_norms_figure(page: _Page, nd: pd.DataFrame, what: str) -> None:
    nd = nd.dropna(subset=["layer", "matrix"])
    if nd.empty:
        return
    nd, num_seeds = _seed_mean(nd, ["variant", "epoch", "layer", "matrix"], ["spectral_norm", "frobenius_norm"])
    for norm, sym, name in (("spectral_norm", "2", "Spectral"), ("frobenius_norm", "F", "Frobenius")):
        _layer_small_multiples(
            page, nd, norm,
            f"{name} norm ‖W‖<sub>{sym}</sub> over training, {_e(what)}",
            f"‖W‖<sub>{sym}</sub>",
            f"{name} norm (dimensionless) of each weight matrix per epoch (for normalised variants the effective "
            "matrix the model uses): one panel per variant and matrix type, one line per layer, coloured by layer (colour bar). "
            "Spectral normalisation keeps ‖W‖<sub>2</sub> ≈ 1 (power iteration while training), Frobenius keeps "
            "‖W‖<sub>F</sub> = 1 and so ‖W‖<sub>2</sub> ≤ 1. Axes of values constant up to rounding span ±5%."
            + _seed_note(num_seeds))


def _layer_small_multiples(page: _Page, df: pd.DataFrame, value: str, title: str, y_title: str,
                           caption: str) -> None:
    """Small multiples over training: a panel per (variant, matrix type), a line per layer on a sequential
    colour scale (Viridis, colour bar = layer), integer epoch ticks. Readable at 50+ layers."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    variants = sorted(df["variant"].unique(), key=_variant_rank)
    matrices = sorted(df["matrix"].unique(), key=_matrix_rank)
    layers = sorted(int(x) for x in df["layer"].unique())
    lo, hi = layers[0], layers[-1]
    cols = min(len(matrices), 4)
    per_variant = -(-len(matrices) // cols)
    rows = len(variants) * per_variant
    titles = []
    for v in variants:
        names = [f"W<sub>{_e(m)}</sub>" for m in matrices]  # the variant names its rows (y-axis title)
        titles += names + [""] * (per_variant * cols - len(names))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.05,
                        vertical_spacing=min(0.12, 0.5 / max(rows, 1)))
    colors = dict(zip(layers, sample_colorscale("Viridis", [(l - lo) / (hi - lo) if hi > lo else 0.5 for l in layers])))
    for v_i, v in enumerate(variants):
        g_v = df[df["variant"] == v]
        for m_i, m in enumerate(matrices):
            row, col = v_i * per_variant + m_i // cols + 1, m_i % cols + 1
            g_m = g_v[g_v["matrix"] == m]
            for layer, g in g_m.groupby("layer", sort=True):
                g = g.sort_values("epoch")
                fig.add_trace(go.Scatter(
                    x=g["epoch"].to_numpy(float), y=g[value].to_numpy(float), mode="lines+markers" if len(g) <= 12
                    else "lines", line=dict(color=colors[int(layer)], width=1.5), marker=dict(size=4),
                    showlegend=False, name=f"layer {int(layer)}",
                    hovertemplate=f"{_e(v)} · {_e(m)} · layer {int(layer)}<br>epoch %{{x:.2f}}<br>%{{y:.4g}}"
                                  "<extra></extra>"), row=row, col=col)
            fig.update_yaxes(row=row, col=col, **_flat_range(g_m[value].to_numpy(float)))
            if col == 1:
                fig.update_yaxes(title_text=f"<b>{_e(v)}</b><br>{y_title}", row=row, col=col)
    if hi > lo:  # the colour bar says which colour is which layer (one layer: named in the caption)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(colorscale="Viridis", cmin=lo, cmax=hi, color=[lo], showscale=True,
                                             colorbar=dict(title="layer", thickness=14, len=min(0.6, 600 / (230 * rows)),
                                                           y=1, yanchor="top", **_layer_ticks(layers)))),
                      row=1, col=1)
    else:
        caption += f" One layer: layer {lo}."
    fig.update_annotations(font_size=12)
    fig.update_xaxes(**_epoch_axis(df["epoch"]))
    filled = {(v_i * per_variant + m_i // cols + 1, m_i % cols + 1)
              for v_i in range(len(variants)) for m_i in range(len(matrices))}
    for row in range(1, rows + 1):
        for col in range(1, cols + 1):
            if (row, col) not in filled:  # the unused end of a variant's last row
                fig.update_xaxes(visible=False, row=row, col=col)
                fig.update_yaxes(visible=False, row=row, col=col)
            elif (row + 1, col) not in filled:  # the lowest panel of its column in its variant's block
                fig.update_xaxes(title_text="epoch", row=row, col=col)
    fig.update_layout(title=title, showlegend=False)
    page.figure(fig, caption, height=230 * rows + 130)
