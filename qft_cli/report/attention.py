"""Report section "Attention factors" (``norms_attention``, ``fits`` quantities q/k/v/logits_unmasked).

What a quantum transformer block-encodes inside attention (issue 11): per head h the queries, keys
and values Q_h, K_h, V_h and the unmasked logits L_h = Q_h K_h^T / sqrt(d_head), each against the
number of tokens N with fitted exponents (fits on the per-sample maximum over heads, as
``qft norms attention`` writes them), and heatmaps (layer x head) of the median ratio
measured / bound, on a log colour scale, so that tight bounds (ratio near 1) and bounds that waste
orders of magnitude are seen at a glance. Norms are in the model's hidden-state units.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qft_cli.report.page import (
    FIT_NORM_NAMES,
    _anchor,
    _e,
    _fmt,
    _layer_ticks,
    _log_ticks,
    _Page,
    _Raw,
    _thin,
)
from qft_cli.report.reading import RunRecord, run_fits

#: Quantities of ``norms_attention.parquet`` fitted against N: column prefix -> display name.
QUANTITIES = {"q": "Q<sub>h</sub>", "k": "K<sub>h</sub>", "v": "V<sub>h</sub>",
              "logits_unmasked": "L<sub>h</sub> = Q<sub>h</sub>K<sub>h</sub><sup>T</sup>/√d<sub>head</sub>"}

#: Ratio columns (measured spectral norm / bound) -> (display name, bound formula).
RATIOS = {
    "q_bound_ratio": ("‖Q<sub>h</sub>‖₂ / bound", "‖X‖₂‖W<sub>q,h</sub>‖₂ + √N‖b<sub>q,h</sub>‖₂"),
    "k_bound_ratio": ("‖K<sub>h</sub>‖₂ / bound", "‖X‖₂‖W<sub>k,h</sub>‖₂ + √N‖b<sub>k,h</sub>‖₂"),
    "v_bound_ratio": ("‖V<sub>h</sub>‖₂ / bound", "‖X‖₂‖W<sub>v,h</sub>‖₂ + √N‖b<sub>v,h</sub>‖₂"),
    "logits_unmasked_qk_bound_ratio": ("‖L<sub>h</sub>‖₂ / QK bound", "‖Q<sub>h</sub>‖₂‖K<sub>h</sub>‖₂/√d<sub>head</sub>"),
    "logits_unmasked_weight_bound_ratio": ("‖L<sub>h</sub>‖₂ / weight bound",
                                           "‖X‖₂²‖W<sub>q,h</sub><sup>T</sup>W<sub>k,h</sub>‖₂/√d<sub>head</sub>"),
}

#: Most points per (quantity, layer) trace of the norms-against-N chart, shared out over the layers.
MAX_POINTS_PER_PANEL = 12000


def per_sample_max(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, model_alias, dataset, sample, layer): the maximum over heads of every
    ``*_spectral_norm`` / ``*_frobenius_norm`` column of :data:`QUANTITIES`, and ``num_tokens``.
    Rows with ``finite`` False are left out (the rule of ``qft norms attention``'s fits)."""
    df = table[table["finite"].fillna(False).astype(bool)] if "finite" in table.columns else table
    if "model_alias" not in df.columns:
        df = df.assign(model_alias=df["model"])
    group = [c for c in ("model", "model_alias", "dataset", "sample_index", "layer") if c in df.columns]
    values = [f"{q}_{n}_norm" for q in QUANTITIES for n in ("spectral", "frobenius") if f"{q}_{n}_norm" in df.columns]
    return df.groupby(group, sort=True, dropna=False).agg({**{c: "max" for c in values},
                                                          "num_tokens": "first"}).reset_index()


def attention_fits_of(table: pd.DataFrame) -> pd.DataFrame:
    """``fits.parquet`` rows for a ``norms_attention`` table that came without them, by the rule of
    ``qft norms attention`` itself (:func:`qft_cli.measure.attention.attention_fits`: per
    (model, model_alias, dataset, layer) and quantity, :func:`qft_cli.measure.fits.fit_table` on the
    per-sample maximum over heads)."""
    from qft_cli.measure.attention import (
        attention_fits as fit_attention,  # imports torch: only for old runs
    )

    if "model_alias" not in table.columns:
        table = table.assign(model_alias=table["model"])
    if "finite" not in table.columns:
        table = table.assign(finite=True)
    return fit_attention(table)


def attention_fits(runs: list[RunRecord], combined: pd.DataFrame | None = None) -> pd.DataFrame:
    """Fits of Q, K, V and the logits of every ``norms attention`` run (its ``fits.parquet``, else
    :func:`attention_fits_of`), with ``run``, ``label`` and ``fit_source``; ``combined``: the runs'
    combined ``norms_attention`` table if already built (:func:`qft_cli.report.reading.run_fits`)."""
    return run_fits(runs, "norms_attention", list(QUANTITIES), attention_fits_of, combined)


def median_ratios(table: pd.DataFrame, by: tuple[str, ...] = ("layer",)) -> pd.DataFrame:
    """Median over samples (and heads, unless ``head`` is in ``by``) of every ratio column of
    :data:`RATIOS` present, over finite rows; NaN where a bound does not apply (e.g. the weight
    bound for rotary models)."""
    df = table[table["finite"].fillna(False).astype(bool)] if "finite" in table.columns else table
    ratios = [c for c in RATIOS if c in df.columns]
    return df.groupby(list(by), sort=True)[ratios].median().reset_index()


def _attention_section(page: _Page, table: pd.DataFrame, fits: pd.DataFrame) -> None:
    page.heading(2, "Attention factors: Q, K, V and logits per head", "attention")
    page.para("X is the input of the attention sub-layer (after the pre-LayerNorm where the model has one); per head "
              "h, Q<sub>h</sub> = X W<sub>q,h</sub><sup>T</sup> (+ bias, after rotary embeddings where the model has "
              "them), likewise K<sub>h</sub> (grouped key/value heads matched to their query heads) and "
              "V<sub>h</sub>; the logits L<sub>h</sub> = Q<sub>h</sub>K<sub>h</sub><sup>T</sup>/√d<sub>head</sub> "
              "are unmasked and without additive biases (ALiBi, relative positions). Layers are blocks 1..L. Norms "
              "are in hidden-state units; ratios measured / bound are dimensionless and ≤ 1.")
    finite = table[table["finite"].fillna(False).astype(bool)] if "finite" in table.columns else table
    if len(finite) < len(table):
        page.para(f"{len(table) - len(finite)} (sample, layer, head) row(s) with non-finite values are left out.",
                  "warn")
    for (label, dataset), d in finite.groupby(["label", finite["dataset"].astype(str)], sort=True):
        page.heading(3, f"{_e(label)} on {_e(dataset)}", f"attention-{_anchor(label)}-{_anchor(dataset)}")
        f = fits[(fits["label"] == label) & (fits["dataset"].astype(str) == dataset)] if len(fits) else fits
        _norms_against_n(page, label, dataset, d)
        if len(f):
            _exponents_figure(page, label, dataset, f)
        _ratio_heatmaps(page, label, dataset, d)


def _norms_against_n(page: _Page, label: str, dataset: str, d: pd.DataFrame) -> None:
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    per = per_sample_max(d)
    quantities = [q for q in QUANTITIES if f"{q}_spectral_norm" in per.columns]
    layers = sorted(int(x) for x in per["layer"].unique())
    lo, hi = layers[0], layers[-1]
    colors = dict(zip(layers, sample_colorscale("Viridis", [(l - lo) / (hi - lo) if hi > lo else 0.5 for l in layers])))
    cap = max(50, MAX_POINTS_PER_PANEL // len(layers))
    fig = make_subplots(rows=1, cols=len(quantities), horizontal_spacing=0.05,
                        subplot_titles=[f"‖{QUANTITIES[q]}‖₂" for q in quantities])
    thinned_any = False
    for col, q in enumerate(quantities, start=1):
        for layer, g in per.groupby("layer", sort=True):
            g, thinned = _thin(g, cap)
            thinned_any |= thinned
            fig.add_trace(go.Scatter(x=g["num_tokens"].to_numpy(float), y=g[f"{q}_spectral_norm"].to_numpy(float),
                                     mode="markers", showlegend=False, name=f"layer {int(layer)}",
                                     marker=dict(size=4, color=colors[int(layer)], opacity=0.7),
                                     hovertemplate=f"layer {int(layer)}<br>N=%{{x}}<br>%{{y:.4g}}<extra></extra>"),
                          row=1, col=col)
        y = per[f"{q}_spectral_norm"].to_numpy(float)
        fig.update_yaxes(row=1, col=col, **_log_ticks(y[np.isfinite(y) & (y > 0)]))
        fig.update_xaxes(title_text="tokens N", row=1, col=col, **_log_ticks(per["num_tokens"].to_numpy(float)))
    fig.update_yaxes(title_text="max over heads (hidden-state units)", row=1, col=1)
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker=dict(colorscale="Viridis", cmin=lo, cmax=hi if hi > lo else lo + 1, color=[lo],
                                         showscale=True, colorbar=dict(title="layer", thickness=14, len=0.8,
                                                                       **_layer_ticks(layers)))),
                  row=1, col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=f"{_e(label)}, {_e(dataset)}: ‖Q‖, ‖K‖, ‖V‖, ‖L‖ against N (max over heads)",
                      showlegend=False)
    caption = ("Spectral norm (hidden-state units) of each sample's Q<sub>h</sub>, K<sub>h</sub>, V<sub>h</sub> and "
               "unmasked logits L<sub>h</sub>, the maximum over heads h, against its number of tokens N (log-log); "
               "colour = layer.")
    if thinned_any:
        caption += f" Layers with more than {cap} samples are thinned evenly in N for display; fits use all samples."
    page.figure(fig, caption, height=430)


def _exponents_figure(page: _Page, label: str, dataset: str, f: pd.DataFrame) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    quantities = [q for q in QUANTITIES if q in set(f["quantity"])]
    fig = make_subplots(rows=1, cols=len(quantities), horizontal_spacing=0.05, shared_yaxes=True,
                        subplot_titles=[QUANTITIES[q] for q in quantities])
    for col, q in enumerate(quantities, start=1):
        for norm, color, symbol in (("spectral", "#1f77b4", "circle"), ("frobenius", "#d62728", "diamond")):
            g = f[(f["quantity"] == q) & (f["norm"] == norm)].sort_values("layer")
            if g.empty:
                continue
            b = g["exponent"].to_numpy(float)
            fig.add_trace(go.Scatter(
                x=g["layer"].to_numpy(int), y=b, mode="lines+markers", name=FIT_NORM_NAMES.get(norm, norm),
                legendgroup=norm, showlegend=col == 1, line=dict(color=color, width=1.5),
                marker=dict(color=color, symbol=symbol, size=6),
                error_y=dict(type="data", symmetric=False, array=g["exponent_ci_high"].to_numpy(float) - b,
                             arrayminus=b - g["exponent_ci_low"].to_numpy(float), thickness=1.2, width=3),
                customdata=np.stack([g["exponent_ci_low"], g["exponent_ci_high"], g["r_squared"],
                                     g["num_points"]], axis=1).astype(float),
                hovertemplate="layer %{x}<br>b = %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                              "<br>R² %{customdata[2]:.3f}, %{customdata[3]:.0f} samples<extra>%{fullData.name}</extra>"),
                row=1, col=col)
        fig.add_hline(y=0.5, line=dict(color="#444", dash="dash", width=1), row=1, col=col)
        fig.update_xaxes(title_text="layer (block)", row=1, col=col, **_layer_ticks(f["layer"]))
    fig.update_yaxes(title_text="exponent b", row=1, col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(title=f"{_e(label)}, {_e(dataset)}: exponents b of ‖·‖ ≈ c·N<sup>b</sup> per layer",
                      legend=dict(title="norm"))
    page.figure(fig, "Exponent b of the power law fitted to the per-sample maximum over heads (OLS on log N, log norm) "
                     "with its 95% interval (Student t), per layer; dashed: b = ½ (√N growth). "
                     + ("Read from the run's fits.parquet." if (f["fit_source"] == "fits.parquet").all()
                        else "Fitted here with qft_cli.measure.fits.fit_table where a run has no fits.parquet."), height=400)
    rows = []
    for _, r in f.sort_values(["layer", "quantity", "norm"]).iterrows():
        ci = (f"[{_fmt(r['exponent_ci_low'])}, {_fmt(r['exponent_ci_high'])}]"
              if math.isfinite(r["exponent_ci_low"]) else "–")
        rows.append([int(r["layer"]), _Raw(QUANTITIES.get(r["quantity"], _e(r["quantity"]))),
                     FIT_NORM_NAMES.get(r["norm"], r["norm"]), float(r["exponent"]), _Raw(ci), float(r["coefficient"]),
                     float(r["r_squared"]), int(r["num_points"]),
                     _Raw(f"{int(r['num_tokens_min'])}–{int(r['num_tokens_max'])}")])
    page.html(f"<details><summary>Table of the {len(rows)} fits</summary>")
    page.table(["layer", "quantity", "norm", "exponent b", "95% CI of b", "c (hidden-state units)", "R²", "samples",
                "N range"], rows, cls="attention-fits")
    page.html("</details>")


def _ratio_heatmaps(page: _Page, label: str, dataset: str, d: pd.DataFrame) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    med = median_ratios(d, ("layer", "head_index"))
    ratios = [c for c in RATIOS if c in med.columns and med[c].notna().any()]
    if not ratios:
        return
    layers = sorted(int(x) for x in med["layer"].unique())
    heads = sorted(int(x) for x in med["head_index"].unique())
    values = med[ratios].to_numpy(float)
    values = values[np.isfinite(values) & (values > 0)]
    zmin = math.floor(math.log10(values.min())) if values.size else -1
    zmin = min(zmin, -1)
    fig = make_subplots(rows=1, cols=len(ratios), horizontal_spacing=0.03, shared_yaxes=True,
                        subplot_titles=[RATIOS[c][0] for c in ratios])
    ticks = list(range(zmin, 1))
    for col, c in enumerate(ratios, start=1):
        grid = med.pivot_table(index="layer", columns="head_index", values=c, aggfunc="first").reindex(index=layers,
                                                                                             columns=heads)
        z = grid.to_numpy(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            logz = np.where(z > 0, np.log10(z), np.nan)
        fig.add_trace(go.Heatmap(z=logz, x=heads, y=layers, customdata=z, coloraxis="coloraxis",
                                 hovertemplate="layer %{y}, head %{x}<br>median ratio %{customdata:.3g}"
                                               f"<extra>{RATIOS[c][1]}</extra>"), row=1, col=col)
        fig.update_xaxes(title_text="head", row=1, col=col, tickmode="linear", tick0=0,
                         dtick=max(1, -(-len(heads) // max(2, 24 // len(ratios)))))
    fig.update_yaxes(title_text="layer (block)", row=1, col=1, **({"dtick": 1} if len(layers) <= 24 else {}))
    fig.update_annotations(font_size=12)
    fig.update_layout(title=f"{_e(label)}, {_e(dataset)}: median measured / bound per layer and head",
                      coloraxis=dict(colorscale="Viridis", cmin=zmin, cmax=0,
                                     colorbar=dict(title="ratio", tickvals=ticks,
                                                   ticktext=[f"10<sup>{t}</sup>" if t else "1" for t in ticks])))
    page.figure(fig, "Median over samples of the measured spectral norm divided by its bound, per layer and head, on a "
                     "log colour scale "
                     "(1 = the bound is tight; 10<sup>−2</sup> = it overestimates 100-fold). Bounds: "
                     + "; ".join(f"{RATIOS[c][0]}: {RATIOS[c][1]}" for c in ratios)
                     + ". The weight bound is absent for models with rotary embeddings or q/k biases.",
                height=max(380, 16 * len(layers) + 200))
    table = median_ratios(d, ("layer",))
    page.html("<details><summary>Median ratio measured / bound per layer (over samples and heads)</summary>")
    page.table(["layer"] + [RATIOS[c][0] for c in ratios],
               [[int(r["layer"])] + [float(r[c]) for c in ratios] for _, r in table.iterrows()], cls="attention-ratios")
    page.html("</details>")
