"""Report section "Normalisation factors α per model": α_S at given N and the largest α_W per matrix type."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from qft_cli.measure.norms import fit_power_law
from qft_cli.report.page import MATRIX_ORDER, NORM_LABELS, _finite, _Page, _with_label

#: Token counts N at which the normalisation-factor summary reports alpha_S.
SUMMARY_TOKEN_COUNTS = (128, 512)


def input_alpha_summary(norms_inputs: pd.DataFrame, token_counts: Sequence[int] = SUMMARY_TOKEN_COUNTS,
                        fits: pd.DataFrame | None = None) -> pd.DataFrame:
    """alpha_S = ||S||_2 and ||S||_F at given token counts N, per (model, dataset, layer).

    Measured where samples with exactly N tokens exist (the median over them); otherwise from the
    power-law fit c N^b (``source`` says ``fit`` and whether N lies outside the measured range,
    i.e. is an extrapolation). The fit is the run's own (``fits``: :func:`qft_cli.report.inputs.hidden_state_fits`,
    the one the page's fit table shows) where exactly one run has that model, dataset and layer;
    else (several runs pooled, or no ``fits``) :func:`qft_cli.measure.norms.fit_power_law` on the pooled
    samples. Values are in hidden-state units.

    Returns:
        Columns ``label, dataset, layer, num_tokens, spectral_norm, frobenius_norm, source``.
    """
    df = _finite(_with_label(norms_inputs)) if not norms_inputs.empty else norms_inputs
    rows = []
    if df.empty:
        return pd.DataFrame(columns=["label", "dataset", "layer", "num_tokens", "spectral_norm",
                                     "frobenius_norm", "source"])
    own: dict[tuple, list] = {}
    for _, f in (fits if fits is not None else pd.DataFrame()).iterrows():
        own.setdefault((f["label"], str(f["dataset"]), int(f["layer"]), f["norm"] + "_norm"), []).append(f)
    for (label, dataset, layer), g in df.groupby(["label", "dataset", "layer"], sort=True):
        for n in token_counts:
            at_n = g[g["num_tokens"] == n]
            row: dict[str, Any] = {"label": label, "dataset": dataset, "layer": int(layer), "num_tokens": n}
            if len(at_n):
                row.update(spectral_norm=float(at_n["spectral_norm"].median()),
                           frobenius_norm=float(at_n["frobenius_norm"].median()),
                           source=f"measured (median of {len(at_n)} sample{'s' if len(at_n) > 1 else ''})")
            else:
                inside = g["num_tokens"].min() <= n <= g["num_tokens"].max()
                for norm in NORM_LABELS:
                    found = own.get((label, str(dataset), int(layer), norm), [])
                    if len(found) == 1:
                        coefficient, exponent = float(found[0]["coefficient"]), float(found[0]["exponent"])
                    else:
                        fit = fit_power_law(g["num_tokens"].to_numpy(), g[norm].to_numpy())
                        coefficient, exponent = fit.coefficient, fit.exponent
                    row[norm] = coefficient * n ** exponent
                row["source"] = "fit c·N^b" + ("" if inside else
                                               f" (extrapolated; measured N ≤ {int(g['num_tokens'].max())})")
            rows.append(row)
    return pd.DataFrame(rows)


def weight_alpha_summary(norms_weights: pd.DataFrame) -> pd.DataFrame:
    """Largest alpha_W over layers per (model, part, matrix type): spectral and Frobenius.

    Returns:
        Columns ``label, part, matrix, max_spectral_norm, max_spectral_layer,
        max_frobenius_norm, max_frobenius_layer, num_layers`` (dimensionless).
    """
    df = _with_label(norms_weights)
    if df.empty:
        return pd.DataFrame()
    df = _finite(df)
    if "part" not in df.columns:
        df["part"] = ""
    rows = []
    for (label, part, matrix), g in df.groupby(["label", df["part"].fillna(""), "matrix"], sort=False):
        i_s = g["spectral_norm"].idxmax()
        i_f = g["frobenius_norm"].idxmax()
        rows.append({"label": label, "part": part, "matrix": matrix,
                     "max_spectral_norm": float(g.loc[i_s, "spectral_norm"]), "max_spectral_layer": int(g.loc[i_s, "layer"]),
                     "max_frobenius_norm": float(g.loc[i_f, "frobenius_norm"]),
                     "max_frobenius_layer": int(g.loc[i_f, "layer"]), "num_layers": int(g["layer"].nunique())})
    out = pd.DataFrame(rows)
    out["_order"] = out["matrix"].map(lambda m: (("embedding",) + MATRIX_ORDER).index(m)
                                      if m in ("embedding",) + MATRIX_ORDER else 99)
    return out.sort_values(["label", "part", "_order"]).drop(columns="_order").reset_index(drop=True)


def _factors_section(page: _Page, inputs: pd.DataFrame, weights: pd.DataFrame,
                     fits: pd.DataFrame | None = None) -> None:
    page.heading(2, "Normalisation factors α per model", "factors")
    page.para("The numbers a block encoding of a transformer layer pays: α<sub>S</sub> = ‖S‖ of the input at "
              f"N = {', '.join(str(n) for n in SUMMARY_TOKEN_COUNTS)} tokens (measured where samples of exactly N "
              "tokens exist, else from the power-law fit, as the source column says), and the largest "
              "α<sub>W</sub> over layers per matrix type.")
    if not inputs.empty:
        summary = input_alpha_summary(inputs, fits=fits)
        page.html("<h4>Inputs: α<sub>S</sub> (hidden-state units)</h4>")
        page.table(["model", "dataset", "layer L", "N", "‖S‖<sub>2</sub>", "‖S‖<sub>F</sub>", "source"],
                   [[r["label"], r["dataset"], int(r["layer"]), int(r["num_tokens"]), float(r["spectral_norm"]),
                     float(r["frobenius_norm"]), r["source"]] for _, r in summary.iterrows()], cls="alpha-s")
    if not weights.empty:
        summary = weight_alpha_summary(weights)
        page.html("<h4>Weights: largest α<sub>W</sub> over layers (dimensionless)</h4>")
        has_stack = bool((summary["part"].astype(str) != "").any())
        page.table(["model"] + (["part"] if has_stack else []) + ["matrix", "max ‖W‖<sub>2</sub>", "at layer",
                                                                   "max ‖W‖<sub>F</sub>", "at layer", "layers"],
                   [[r["label"]] + ([r["part"]] if has_stack else [])
                    + [r["matrix"], float(r["max_spectral_norm"]), int(r["max_spectral_layer"]),
                       float(r["max_frobenius_norm"]), int(r["max_frobenius_layer"]), int(r["num_layers"])]
                    for _, r in summary.iterrows()], cls="alpha-w")
