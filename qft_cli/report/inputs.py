"""Report section "Input norms ‖S‖ against sequence length N" (``norms_inputs``) and its fitted exponents."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qft_cli.norms import fit_power_law
from qft_cli.report.page import (MAX_POINTS_PER_TRACE, NORM_LABELS, _SYMBOLS, _Page, _Raw, _anchor, _color, _e, _finite,
                                 _fmt, _log_ticks, _thin, _with_label)


def power_law_table(norms_inputs: pd.DataFrame) -> pd.DataFrame:
    """Fitted exponents b of norm ~ c N^b per (model, dataset, layer, norm).

    Args:
        norms_inputs: rows of ``norms_inputs.parquet`` (with ``label`` from :func:`combined_table`,
            or ``model_alias``/``model``); non-finite rows are ignored.

    Returns:
        Columns ``label, dataset, layer, norm`` (``frobenius_norm``/``spectral_norm``),
        ``exponent, exponent_ci_low, exponent_ci_high`` (95% CI), ``coefficient`` (c, in
        hidden-state units), ``r_squared``, ``num_points``, ``min_tokens, max_tokens``. Fits come
        from :func:`qft_cli.norms.fit_power_law` on all points (never the thinned plot data).
    """
    df = _with_label(norms_inputs)
    rows = []
    if df.empty:
        return pd.DataFrame(columns=["label", "dataset", "layer", "norm", "exponent", "exponent_ci_low",
                                     "exponent_ci_high", "coefficient", "r_squared", "num_points",
                                     "min_tokens", "max_tokens"])
    df = _finite(df)
    for (label, dataset, layer), g in df.groupby(["label", "dataset", "layer"], sort=True):
        for norm in NORM_LABELS:
            fit = fit_power_law(g["num_tokens"].to_numpy(), g[norm].to_numpy())
            rows.append({"label": label, "dataset": dataset, "layer": int(layer), "norm": norm,
                         "exponent": fit.exponent, "exponent_ci_low": fit.exponent_ci_low,
                         "exponent_ci_high": fit.exponent_ci_high, "coefficient": fit.coefficient,
                         "r_squared": fit.r_squared, "num_points": fit.num_points,
                         "min_tokens": int(g["num_tokens"].min()), "max_tokens": int(g["num_tokens"].max())})
    return pd.DataFrame(rows)


def _inputs_section(page: _Page, df: pd.DataFrame) -> None:
    import plotly.graph_objects as go

    page.heading(2, "Input norms ‖S‖ against sequence length N", "inputs")
    page.para("S<sub>L</sub> is the N × d hidden-state matrix of one sample at layer L (0 = embedding output, "
              "l = output of block l); only real tokens count. Its norm is the block-encoding normalisation "
              "factor α<sub>S</sub> of the input. Norms are in the model's hidden-state units.")
    finite = _finite(df)
    if len(finite) < len(df):
        page.para(f"{len(df) - len(finite)} sample(s) with non-finite hidden states are left out.", "warn")
    labels = sorted(finite["label"].unique())
    datasets = sorted(finite["dataset"].astype(str).unique(), key=lambda d: ({"random": 0, "mmlu": 1}.get(d, 2), d))
    for dataset in datasets:
        d = finite[finite["dataset"].astype(str) == dataset]
        page.heading(3, f"Dataset: {_e(dataset)}", f"inputs-{_anchor(dataset)}")
        for norm, (norm_name, sub) in NORM_LABELS.items():
            fig = go.Figure()
            thinned_any = False
            for t_i, ((label, layer), g) in enumerate(d.groupby(["label", "layer"], sort=True)):
                g, thinned = _thin(g, MAX_POINTS_PER_TRACE)
                thinned_any |= thinned
                g = g.sort_values("num_tokens")
                fig.add_trace(go.Scatter(
                    x=g["num_tokens"].to_numpy(float), y=g[norm].to_numpy(float), mode="markers",
                    name=f"{_e(label)} · layer {int(layer)}",
                    marker=dict(size=5, color=_color(t_i), symbol=_SYMBOLS[labels.index(label) % len(_SYMBOLS)],
                                opacity=0.75),
                    hovertemplate="N=%{x}<br>‖S‖=%{y:.4g}<extra>%{fullData.name}</extra>"))
            n = d["num_tokens"].to_numpy(float)
            y = d[norm].to_numpy(float)
            ok = (n > 0) & (y > 0)
            if ok.any():
                c0 = float(np.median(y[ok] / np.sqrt(n[ok])))
                grid = np.geomspace(n[ok].min(), n[ok].max(), 60)
                fig.add_trace(go.Scatter(x=grid, y=c0 * np.sqrt(grid), mode="lines", name="reference ∝ √N",
                                         line=dict(color="black", dash="dash", width=1.5), hoverinfo="skip"))
            fig.update_layout(
                title=f"{norm_name.capitalize()} norm ‖S<sub>L</sub>‖<sub>{sub}</sub> vs number of tokens N, "
                      f"dataset {_e(dataset)} (log-log; hidden-state units)",
                xaxis=dict(title="number of tokens N", **_log_ticks(n[ok])),
                yaxis=dict(title=f"‖S<sub>L</sub>‖<sub>{sub}</sub> (hidden-state units)", **_log_ticks(y[ok])),
                legend=dict(title="model · layer"))
            caption = (f"{norm_name.capitalize()} norm of the hidden-state matrix against its number of tokens, one trace per "
                       "model and layer; the dashed line ∝ √N (slope ½) is anchored at the median of ‖S‖/√N.")
            if thinned_any:
                caption += (f" Traces with more than {MAX_POINTS_PER_TRACE} samples are thinned to "
                            f"{MAX_POINTS_PER_TRACE} points evenly spaced in N for display; fits use all samples.")
            page.figure(fig, caption, height=520)
    fits = power_law_table(finite)
    page.heading(3, "Fitted exponents b of ‖S‖ ≈ c·N<sup>b</sup>", "inputs-fits")
    page.para("Ordinary least squares on (log N, log ‖S‖) over all finite samples; 95% confidence interval "
              "of b from Student's t with n − 2 degrees of freedom. b = ½ is the √N growth of the reference "
              "line. Each dataset has its own table.")
    for dataset in datasets:
        f = fits[fits["dataset"].astype(str) == dataset]
        page.html(f"<h4>Dataset: {_e(dataset)}</h4>")
        rows = []
        for _, r in f.iterrows():
            ci = (f"[{_fmt(r['exponent_ci_low'])}, {_fmt(r['exponent_ci_high'])}]"
                  if math.isfinite(r["exponent_ci_low"]) else "–")
            rows.append([r["label"], r["layer"], NORM_LABELS[r["norm"]][0], float(r["exponent"]), _Raw(ci),
                         float(r["coefficient"]), float(r["r_squared"]), int(r["num_points"]),
                         _Raw(f"{int(r['min_tokens'])}–{int(r['max_tokens'])}")])
        page.table(["model", "layer L", "norm", "exponent b", "95% CI of b", "c (hidden-state units)", "R²",
                    "samples", "N range"], rows, cls="fits")
