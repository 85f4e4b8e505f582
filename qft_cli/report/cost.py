"""Report section "Quantum cost": the ratio of Theorem 5.1's quantum query count to the classical
operation count against the sequence length l (``qft cost``: ``cost.parquet``, ``crossover.parquet``,
``trained_cost.parquet``), the worst-case check and the accuracy-against-cost frontier.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qft_cli.report.page import _color, _e, _Page, _variant_color


def _star(value: float, max_length: int) -> str:
    return f"none below 2^{int(math.log2(max_length))}" if not np.isfinite(value) else f"{int(value):,}"


def _cost_section(page: _Page, cost: pd.DataFrame, crossover: pd.DataFrame, trained: pd.DataFrame) -> None:
    """Draw the section; each table may be empty (then its part is left out)."""
    import plotly.graph_objects as go

    page.heading(2, "Quantum cost", "quantum-cost")
    constants = sorted(set(cost["constant"]) | set(crossover["constant"])) if len(cost) else []
    epsilons = sorted(set(cost["epsilon"])) if len(cost) else []
    page.para("Queries to the input block encodings of one layer, Theorem 5.1 of Guo et al. (arXiv 2502.01146, "
              "ch. 5.2; arXiv 2402.16714 Sect. IV.6): <i>Q</i> = constant · d · N² · α<sub>S</sub> · α<sub>W</sub> · "
              "ln²(1/ε), N = ⌈log₂ l⌉, against the classical single-layer cost <i>C</i> = l d + d² (ch. 5.3). "
              "α<sub>W</sub> = max(‖W<sub>q</sub>‖, ‖W<sub>k</sub>‖, ‖W<sub>v</sub>‖) of the block; α<sub>S</sub> = the "
              "fitted power law c l<sup>b</sup> of its input; the band is the 95% interval of b. Spectral norm = the "
              "optimal block encoding, Frobenius norm = the QRAM data structure. "
              + (f"Hidden constant of the O~ = {', '.join(f'{c:g}' for c in constants)}; ε = "
                 f"{', '.join(f'{e:g}' for e in epsilons)}." if constants else ""))
    if len(cost) and len(crossover):
        worst = crossover[crossover["worst_layer"].astype(bool)]
        for norm in ("spectral", "frobenius"):
            w = worst[worst["norm"] == norm]
            if w.empty:
                continue
            fig = go.Figure()
            for i, r in enumerate(w.itertuples(index=False)):
                c = cost[(cost["model_alias"] == r.model_alias) & (cost["dataset"] == r.dataset)
                         & (cost["norm"] == norm) & (cost["layer"] == r.layer)]
                if "run" in c.columns and "run" in w.columns:
                    c = c[c["run"] == r.run]
                c = c.sort_values("num_tokens")
                if c.empty:
                    continue
                color = _color(i)
                name = _e(f"{r.model_alias} · {r.dataset} · block {r.layer}")
                x = c["num_tokens"].to_numpy()
                fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]),
                                         y=np.concatenate([c["ratio_high"].to_numpy(), c["ratio_low"].to_numpy()[::-1]]),
                                         fill="toself", line=dict(width=0), fillcolor=color, opacity=0.18,
                                         hoverinfo="skip", showlegend=False, legendgroup=name))
                inside = c[~c["extrapolated"].astype(bool)]
                fig.add_trace(go.Scatter(x=inside["num_tokens"], y=inside["ratio"], mode="lines", name=name,
                                         line=dict(color=color), legendgroup=name))
                fig.add_trace(go.Scatter(x=c["num_tokens"], y=c["ratio"], mode="lines", name=name + " (extrapolated)",
                                         line=dict(color=color, dash="dot"), legendgroup=name, showlegend=False))
                measured = c[c["num_samples_at_length"] > 0]
                fig.add_trace(go.Scatter(x=measured["num_tokens"], y=measured["ratio_measured"], mode="markers",
                                         marker=dict(color=color, size=4), name=name + " (measured median)",
                                         legendgroup=name, showlegend=False))
                if np.isfinite(r.crossover_length):
                    fig.add_vline(x=r.crossover_length, line=dict(color=color, dash="dash", width=1))
            fig.add_hline(y=1.0, line=dict(color="black", width=1))
            fig.update_layout(title=f"Quantum queries / classical operations, {norm} norm (worst block)",
                              xaxis=dict(type="log", title="sequence length l (tokens)"),
                              yaxis=dict(type="log", title="Q / C"))
            page.figure(fig, f"Ratio Q/C against l, {norm} norm ({'optimal block encoding' if norm == 'spectral' else 'QRAM'}): "
                             "solid where l lies inside the measured token counts, dotted where the power law is "
                             "extrapolated, dots at the measured medians; the band is the 95% interval of the "
                             "exponent b; dashed verticals mark l*; the black line is Q = C.")
        page.html("<h4>Crossover length l* and the worst-case assumptions</h4>")
        page.para("l*: from this length on the quantum count is at most the classical one (the worst block decides). "
                  "The source's worst case assumes α<sub>S</sub> = O(√l) (b ≤ 0.5) and α<sub>W</sub> = O(√d) "
                  "(α<sub>W</sub>/√d bounded), giving O~(d<sup>3/2</sup> √l).")
        rows = []
        for r in crossover.sort_values(["model_alias", "dataset", "norm", "layer"]).itertuples(index=False):
            verdict = ("b ≤ 0.5" if r.alpha_s_exponent_ci_high <= 0.5 else
                       "b > 0.5" if r.alpha_s_exponent_ci_low > 0.5 else "0.5 inside interval")
            rows.append([r.model_alias, r.dataset, r.norm, int(r.layer), "yes" if r.worst_layer else "",
                         int(r.hidden_size), float(r.alpha_w), float(r.alpha_w_over_sqrt_d), float(r.alpha_s_exponent),
                         f"{r.alpha_s_exponent_ci_low:.3f} … {r.alpha_s_exponent_ci_high:.3f}", verdict,
                         _star(r.crossover_length, r.max_length),
                         f"{_star(r.crossover_length_low, r.max_length)} … {_star(r.crossover_length_high, r.max_length)}",
                         float(r.ratio_at_512), float(r.ratio_at_4096), float(r.ratio_at_32768)])
        page.table(["model", "dataset", "norm", "block", "worst", "d", "α<sub>W</sub>", "α<sub>W</sub>/√d", "b",
                    "b 95%", "worst case", "l*", "l* 95%", "Q/C @512", "Q/C @4096", "Q/C @32768"], rows, cls="cost")
    if len(trained):
        fig = go.Figure()
        for norm, symbol in (("spectral", "circle"), ("frobenius", "diamond")):
            for r in trained.itertuples(index=False):
                fig.add_trace(go.Scatter(
                    x=[getattr(r, f"cost_reduction_{norm}")], y=[r.mean_value], mode="markers",
                    marker=dict(color=_variant_color(r.variant), symbol=symbol, size=10),
                    error_y=dict(type="data", symmetric=False, array=[r.ci_high - r.mean_value],
                                 arrayminus=[r.mean_value - r.ci_low]),
                    name=_e(f"{r.variant} · α_W {norm}"), text=[_e(r.run_id)]))
        fig.update_layout(title="Accuracy against the cost reduction of the trained variants",
                          xaxis=dict(type="log", title="α_W(vanilla) / α_W(variant): factor of fewer queries"),
                          yaxis=dict(title="test accuracy (mean over seeds, 95% interval)"))
        page.figure(fig, "Each normalised variant's test accuracy against the factor by which Theorem 5.1's query "
                         "count shrinks through its α_W (max over W_q, W_k, W_v, worst block, last recorded step, mean "
                         "over seeds) at equal α_S; circles: spectral α_W, diamonds: Frobenius α_W.")
