"""Report section "Weight norms" (``norms_weights``, ``norms_heads``, ``norm_vectors``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qft_cli.report.page import (
    _SYMBOLS,
    HISTOGRAM_BINS,
    MATRIX_ORDER,
    _anchor,
    _bins,
    _color,
    _e,
    _finite,
    _flat_range,
    _log_axis_if_spread,
    _log_ticks,
    _matrix_rank,
    _Page,
    _Raw,
    _rgba,
)


def _weights_section(page: _Page, weights: pd.DataFrame, vectors: pd.DataFrame,
                     heads: pd.DataFrame = pd.DataFrame()) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    page.heading(2, "Weight norms", "weights")
    page.para("Each matrix W has shape (d<sub>out</sub>, d<sub>in</sub>), the map x ↦ Wx of nn.Linear; layer l "
              "is transformer block l. ‖W‖<sub>2</sub> is the largest singular value, the block-encoding "
              "normalisation factor α<sub>W</sub>; ‖W‖<sub>F</sub> is an upper bound for it. Norms are "
              "dimensionless (weight units).")
    labels = sorted((set(weights["label"]) if not weights.empty else set())
                    | (set(vectors["label"]) if not vectors.empty else set()))
    for label in labels:
        page.heading(3, f"Model: {_e(label)}", f"weights-{_anchor(label)}")
        w = _finite(weights[weights["label"] == label]) if not weights.empty else pd.DataFrame()
        if len(w):
            blocks = w[w["matrix"] != "embedding"].copy()
            if "part" not in blocks.columns:
                blocks["part"] = ""
            blocks["part"] = blocks["part"].fillna("").astype(str)
            blocks = expert_series(blocks)
            if len(blocks):
                fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                                    subplot_titles=("spectral norm ‖W‖<sub>2</sub>", "Frobenius norm ‖W‖<sub>F</sub>"))
                keys = sorted({(s, m) for s, m in zip(blocks["part"], blocks["matrix"])},
                              key=lambda sm: (sm[0], _series_rank(sm[1]), sm[1]))
                for i, (part, matrix) in enumerate(keys):
                    g = blocks[(blocks["part"] == part) & (blocks["matrix"] == matrix)].sort_values("layer")
                    name = f"{part} {matrix}".strip()
                    for col, norm in ((1, "spectral_norm"), (2, "frobenius_norm")):
                        fig.add_trace(go.Scatter(
                            x=g["layer"].to_numpy(int), y=g[norm].to_numpy(float), mode="lines+markers",
                            name=_e(name), legendgroup=name, showlegend=col == 1,
                            line=dict(color=_color(_series_rank(matrix)),
                                      dash="dot" if part == "decoder" else ("dash" if " " in matrix else "solid")),
                            marker=dict(symbol=_SYMBOLS[i % len(_SYMBOLS)], size=7),
                            hovertemplate="layer %{x}<br>%{y:.4g}<extra>%{fullData.name}</extra>"), row=1, col=col)
                layers = sorted(blocks["layer"].unique())
                scales = []
                for col, norm in ((1, "spectral_norm"), (2, "frobenius_norm")):
                    values = blocks[norm].to_numpy(float)
                    scales.append(_log_axis_if_spread(values))
                    fig.update_xaxes(title_text="layer l (transformer block)", row=1, col=col,
                                     tickmode="array" if len(layers) <= 40 else "auto",
                                     tickvals=layers if len(layers) <= 40 else None)
                    fig.update_yaxes(title_text="norm (dimensionless)", row=1, col=col,
                                     **(_log_ticks(values) if scales[-1] == "log" else _flat_range(values)))
                yscale = "log" if "log" in scales else "linear"
                fig.update_layout(title=f"{_e(label)}: norms of attention and FFN matrices per layer (dimensionless)",
                                  legend=dict(title="matrix"))
                page.figure(fig, "Spectral (left) and Frobenius (right) norm of each attention (q, k, v, o) and FFN "
                                 "matrix against its layer" + (" (log scale where values span more than a factor 20)" if yscale == "log"
                                                              else "") + ".")
            emb = w[w["matrix"] == "embedding"]
            if len(emb):
                r = emb.iloc[0]
                shape = (f"{int(r['d_out'])} × {int(r['d_in'])}" if "d_out" in emb.columns and "d_in" in emb.columns
                         else "–")
                page.table(["token embedding E (vocab × d)", "‖E‖<sub>2</sub>", "‖E‖<sub>F</sub>",
                            "mean token l2 norm", "max token l2 norm"],
                           [[_Raw(shape), float(r["spectral_norm"]), float(r["frobenius_norm"]),
                             float(r.get("row_norm_mean", math.nan)), float(r.get("row_norm_max", math.nan))]])
        h = _finite(heads[heads["label"] == label]) if not heads.empty else pd.DataFrame()
        if len(h):
            _heads_figure(page, label, h)
            _heads_figure(page, label, h, composites=True)
        v = vectors[vectors["label"] == label] if not vectors.empty else pd.DataFrame()
        if len(v):
            _qkv_histogram(page, label, v[(v["kind"] == "column_norm") & v["matrix"].isin(["q", "k", "v"])])
            _embedding_histogram(page, label, v[(v["kind"] == "token_norm")])


def expert_series(blocks: pd.DataFrame) -> pd.DataFrame:
    """``norms_weights`` block rows with one row per (part, layer, series): dense matrices as they
    are, the shared expert's as ``<matrix> shared``, and the routed experts of a mixture of experts
    as the maximum and the median over the layer's experts (``<matrix> max/expert``,
    ``<matrix> median/expert``; spectral and Frobenius norms each aggregated on their own).
    Tables without an ``expert`` column are returned unchanged."""
    if "expert" not in blocks.columns or blocks.empty:
        return blocks
    expert = blocks["expert"].fillna("").astype(str)
    routed = (expert != "") & (expert != "shared")
    out = blocks.copy()
    out.loc[expert == "shared", "matrix"] = out.loc[expert == "shared", "matrix"] + " shared"
    if not routed.any():
        return out
    grouped = out[routed].groupby(["part", "layer", "matrix"])[["spectral_norm", "frobenius_norm"]]
    summaries = [grouped.agg(how).reset_index().assign(matrix=lambda f, how=how: f["matrix"] + f" {how}/expert")
                 for how in ("max", "median")]
    return pd.concat([out[~routed], *summaries], ignore_index=True)


def _series_rank(name: str) -> int:
    return _matrix_rank(name.split(" ")[0])


#: Per-head composites of ``norms_heads`` (issue 11): matrix -> panel title. ``qk`` is the bilinear
#: form W_q,h^T W_k,h of the logits, ``ov`` the value-output map W_o,h W_v,h.
HEAD_COMPOSITES = {"qk": "W<sub>q,h</sub><sup>T</sup>W<sub>k,h</sub>", "ov": "W<sub>o,h</sub>W<sub>v,h</sub>"}


def _heads_figure(page: _Page, label: str, h: pd.DataFrame, composites: bool = False) -> None:
    """Heatmaps (layer x head) of per-head norms of q, k, v, o (or, with ``composites``, of the
    products qk and ov, on their own colour scale); a menu switches spectral/Frobenius."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    h = h.dropna(subset=["layer", "head_index"])
    part = h["part"].fillna("").astype(str) if "part" in h.columns else pd.Series("", index=h.index)
    h = h.assign(row_key=[f"{s} {int(l)}".strip() for s, l in zip(part, h["layer"])],
                 row_order=[(s, int(l)) for s, l in zip(part, h["layer"])])
    order = list(HEAD_COMPOSITES) if composites else list(MATRIX_ORDER)
    matrices = [m for m in order if m in set(h["matrix"])][:8]
    if not matrices:
        return
    rows = [k for _, k in sorted({(o, k) for o, k in zip(h["row_order"], h["row_key"])})]
    fig = make_subplots(rows=1, cols=len(matrices), horizontal_spacing=0.04,
                        subplot_titles=[HEAD_COMPOSITES[m] if composites else f"W<sub>{m}</sub>" if "_" not in m
                                        else _e(m) for m in matrices])
    z_by_norm: dict[str, list] = {"spectral_norm": [], "frobenius_norm": []}
    for col, m in enumerate(matrices, start=1):
        g = h[h["matrix"] == m]
        heads_axis = sorted(int(x) for x in g["head_index"].unique())
        for norm in z_by_norm:
            grid = g.pivot_table(index="row_key", columns="head_index", values=norm, aggfunc="first")
            grid = grid.reindex(index=rows, columns=heads_axis)
            z_by_norm[norm].append(grid.to_numpy(float))
        fig.add_trace(go.Heatmap(z=z_by_norm["spectral_norm"][-1], x=heads_axis, y=rows, coloraxis="coloraxis",
                                 hovertemplate="layer %{y}, head %{x}<br>%{z:.4g}<extra>" + f"{m}</extra>"),
                      row=1, col=col)
        fig.update_xaxes(title_text="head_index", row=1, col=col, tickmode="linear", tick0=0,  # about 24 ticks per row
                         dtick=max(1, -(-len(heads_axis) // max(2, 24 // len(matrices)))))
    fig.update_yaxes(title_text="layer l", type="category", row=1, col=1)
    for col in range(2, len(matrices) + 1):
        fig.update_yaxes(type="category", showticklabels=False, row=1, col=col)
    title = (f"{_e(label)}: per-head norms of W<sub>q,h</sub><sup>T</sup>W<sub>k,h</sub> and W<sub>o,h</sub>W<sub>v,h</sub> "
             "(dimensionless)" if composites else f"{_e(label)}: per-head norms of the attention matrices (dimensionless)")
    height = max(380, 22 * len(rows) + 220)
    plot_height = height - 140 - 60
    buttons = [dict(label=name, method="update", args=[{"z": z_by_norm[norm]}, {"coloraxis.colorbar.title.text": sym}])
               for name, norm, sym in (("spectral ‖W_h‖₂", "spectral_norm", "‖W<sub>h</sub>‖<sub>2</sub>"),
                                       ("Frobenius ‖W_h‖_F", "frobenius_norm", "‖W<sub>h</sub>‖<sub>F</sub>"))]
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", colorbar=dict(title="‖W<sub>h</sub>‖<sub>2</sub>")),
                      updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right",
                                        y=1 + 30 / plot_height, yanchor="bottom", showactive=True,
                                        pad=dict(r=0, t=0, b=0, l=0))],
                      annotations=list(fig.layout.annotations) + [
                          dict(text="show:", x=1.0, xref="paper", xanchor="right", xshift=-170, y=1.0, yshift=38,
                               yref="paper", yanchor="bottom", showarrow=False)],
                      margin=dict(t=140))
    if composites:
        caption = ("Norm of each head's W<sub>q,h</sub><sup>T</sup>W<sub>k,h</sub> (the bilinear form of the logits; "
                   "grouped key/value heads paired as the model pairs them) and W<sub>o,h</sub>W<sub>v,h</sub> (the "
                   "value-output map) per layer, computed through d<sub>head</sub> × d<sub>head</sub> matrices; one "
                   "colour scale for both panels; the menu at the top right switches between spectral and Frobenius "
                   "norms.")
    else:
        caption = ("Norm of each head's block of W<sub>q</sub>, W<sub>k</sub>, W<sub>v</sub> (its rows) and "
                   "W<sub>o</sub> (its columns) per layer, one colour scale for all panels; the menu at the top right "
                   "switches between spectral and Frobenius norms. With grouped-query attention k and v have fewer "
                   "heads.")
    page.figure(fig, caption, height=height)


def _qkv_histogram(page: _Page, label: str, v: pd.DataFrame) -> None:
    import plotly.graph_objects as go

    if v.empty:
        return
    edges = _bins(v["value"].to_numpy(float))
    centers = (edges[:-1] + edges[1:]) / 2
    layers = sorted(v["layer"].unique())
    if "part" in v.columns and v["part"].fillna("").astype(str).nunique() > 1:
        v = v.assign(part_key=v["part"].fillna("").astype(str))
    else:
        v = v.assign(part_key="")
    options = [("all layers pooled", v)] + [(f"{part} layer {int(layer)}".strip(), g) for (part, layer), g in
                                             sorted(v.groupby(["part_key", "layer"]))]
    fig = go.Figure()
    matrices = [m for m in ("q", "k", "v") if m in set(v["matrix"])]
    for i, (name, g) in enumerate(options):
        for j, m in enumerate(matrices):
            counts, _ = np.histogram(g.loc[g["matrix"] == m, "value"].to_numpy(float), bins=edges)
            fig.add_trace(go.Scatter(x=centers, y=counts, mode="lines", line=dict(shape="hvh", color=_color(j), width=2),
                                     fill="tozeroy", fillcolor=_rgba(_color(j), 0.12), name=f"W<sub>{m}</sub>",
                                     visible=i == 0,
                                     hovertemplate="‖column‖=%{x:.3g}<br>%{y} columns<extra>%{fullData.name}</extra>"))
    buttons = []
    for i, (name, _) in enumerate(options):
        visible = [k // len(matrices) == i for k in range(len(options) * len(matrices))]
        buttons.append(dict(label=name, method="update",
                            args=[{"visible": visible},
                                  {"title.text": f"{_e(label)}: column l2 norms of W<sub>q</sub>, W<sub>k</sub>, "
                                                 f"W<sub>v</sub>, {name} (dimensionless)"}]))
    fig.update_layout(
        title=f"{_e(label)}: column l2 norms of W<sub>q</sub>, W<sub>k</sub>, W<sub>v</sub>, all layers pooled "
              "(dimensionless)",
        xaxis=dict(title="column l2 norm ‖W<sub>:,j</sub>‖<sub>2</sub> (dimensionless)"),
        yaxis=dict(title="number of columns"), legend=dict(title="matrix"),
        updatemenus=[dict(buttons=buttons, direction="down", x=1.0, xanchor="right", y=1.01, yanchor="bottom",
                          showactive=True, pad=dict(r=0, t=0, b=0, l=0))],
        annotations=[dict(text="show:", x=1.0, xref="paper", xanchor="right", xshift=-150, y=1.035, yref="paper",
                          yanchor="bottom", showarrow=False)],
        margin=dict(t=110))
    page.figure(fig, f"Histogram (outlines; {HISTOGRAM_BINS} bins shared by all choices) of the l2 norms of the columns of "
                     f"W<sub>q</sub>, W<sub>k</sub> and W<sub>v</sub> (layers {layers[0]}–{layers[-1]}); choose one "
                     "layer or all layers pooled with the menu at the top right.")


def _embedding_histogram(page: _Page, label: str, v: pd.DataFrame) -> None:
    import plotly.graph_objects as go

    if v.empty:
        return
    values = v["value"].to_numpy(float)
    edges = _bins(values)
    counts, _ = np.histogram(values[np.isfinite(values)], bins=edges)
    fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=float(edges[1] - edges[0]),
                           marker=dict(color=_color(4), line=dict(width=0)), name="tokens",
                           hovertemplate="‖e‖=%{x:.3g}<br>%{y} tokens<extra></extra>"))
    yscale = "log" if counts.max() / max(1, counts[counts > 0].min()) >= 100 else "linear"
    yaxis = dict(title="number of tokens", **(_log_ticks(counts[counts > 0]) if yscale == "log" else {}))
    fig.update_layout(title=f"{_e(label)}: l2 norms of the {len(values):,} token embeddings (dimensionless)",
                      xaxis=dict(title="token embedding l2 norm ‖E<sub>t,:</sub>‖<sub>2</sub> (dimensionless)"),
                      yaxis=yaxis, bargap=0, showlegend=False)
    page.figure(fig, f"Histogram ({HISTOGRAM_BINS} bins) of the l2 norm of every row of the token embedding matrix"
                     + (" (log count axis)." if yscale == "log" else "."), height=380)
