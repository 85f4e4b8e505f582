"""Report section "Input norms ‖S‖ against sequence length N" (``norms_inputs``) and its fitted exponents."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qft_cli.measure.fits import fit_table
from qft_cli.report.page import (
    _SYMBOLS,
    FIT_NORM_NAMES,
    MAX_POINTS_PER_TRACE,
    NORM_LABELS,
    _anchor,
    _color,
    _e,
    _finite,
    _fmt,
    _log_ticks,
    _Page,
    _Raw,
    _thin,
    _with_label,
)
from qft_cli.report.reading import RunRecord, run_fits

#: Group columns of the hidden-state fits (as ``qft norms inputs`` writes them to ``fits.parquet``).
FIT_GROUPS = ("model", "model_alias", "dataset", "layer")


def power_law_table(norms_inputs: pd.DataFrame) -> pd.DataFrame:
    """Fitted exponents b of ||S|| ~ c N^b per (model, dataset, layer, norm), as ``fits.parquet``.

    Args:
        norms_inputs: rows of ``norms_inputs.parquet`` (with ``label`` from :func:`combined_table`,
            or ``model_alias``/``model``); non-finite rows are ignored.

    Returns:
        :func:`qft_cli.measure.fits.fit_table` grouped by ``label, dataset, layer`` with quantity
        ``hidden_states``: ``norm`` (``frobenius``/``spectral``), ``exponent``, its 95% Student-t
        interval ``exponent_ci_low/high``, ``coefficient`` (c, hidden-state units), ``r_squared``,
        ``num_points``, ``num_tokens_min/max``. All points are used (never the thinned plot data).
    """
    df = _with_label(norms_inputs)
    if df.empty:
        return fit_table(pd.DataFrame(columns=["label", "dataset", "layer", "num_tokens", *NORM_LABELS]),
                         ["label", "dataset", "layer"], quantity="hidden_states")
    return fit_table(df, ["label", "dataset", "layer"], quantity="hidden_states")


def hidden_state_fits(runs: list[RunRecord], combined: pd.DataFrame | None = None) -> pd.DataFrame:
    """The hidden-state fits of every ``norms inputs`` run: its ``fits.parquet`` where present, else
    fitted here with :func:`qft_cli.measure.fits.fit_table` (:func:`qft_cli.report.reading.run_fits`;
    ``combined``: the runs' combined ``norms_inputs`` table if already built)."""
    def fit(table: pd.DataFrame) -> pd.DataFrame:
        table = table.assign(model_alias=table["model_alias"].fillna(table["model"])) if "model_alias" in table \
            else table.assign(model_alias=table["model"])
        return fit_table(table, list(FIT_GROUPS), quantity="hidden_states")

    return run_fits(runs, "norms_inputs", ["hidden_states"], fit, combined)


def _inputs_section(page: _Page, df: pd.DataFrame, fits: pd.DataFrame) -> None:
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
    page.heading(3, "Fitted exponents b of ‖S‖ ≈ c·N<sup>b</sup>", "inputs-fits")
    page.para("Ordinary least squares on (log N, log ‖S‖) over all finite samples; 95% confidence interval "
              "of b from Student's t with n − 2 degrees of freedom. b = ½ is the √N growth of the reference "
              "line. Each dataset has its own table.")
    sources = sorted(set(fits["fit_source"])) if len(fits) else []
    if "fitted by qft report" in sources:
        page.para("Runs written before <code>fits.parquet</code> existed are fitted here with the same function "
                  "(<code>qft_cli.measure.fits.fit_table</code>); the others show the fits their run wrote.", "muted")
    for dataset in datasets:
        f = fits[fits["dataset"].astype(str) == dataset].sort_values(["label", "layer", "norm"]) if len(fits) else fits
        page.html(f"<h4>Dataset: {_e(dataset)}</h4>")
        rows = []
        for _, r in f.iterrows():
            ci = (f"[{_fmt(r['exponent_ci_low'])}, {_fmt(r['exponent_ci_high'])}]"
                  if math.isfinite(r["exponent_ci_low"]) else "–")
            rows.append([r["label"], int(r["layer"]), FIT_NORM_NAMES.get(r["norm"], r["norm"]), float(r["exponent"]),
                         _Raw(ci), float(r["coefficient"]), float(r["r_squared"]), int(r["num_points"]),
                         _Raw(f"{int(r['num_tokens_min'])}–{int(r['num_tokens_max'])}")])
        page.table(["model", "layer L", "norm", "exponent b", "95% CI of b", "c (hidden-state units)", "R²",
                    "samples", "N range"], rows, cls="fits")
