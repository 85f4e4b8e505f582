"""Power-law fits of norms against the number of tokens N, as written to ``fits.parquet``.

One row per group (e.g. model, dataset, layer) and norm: norm ~ c * N^b fitted by ordinary least
squares on (log N, log norm) over every finite, positive sample (:func:`qft_cli.measure.norms.fit_power_law`),
with the 95% Student-t interval of the exponent b. ``qft norms inputs`` fits the hidden-state
matrices S; ``qft norms attention`` fits Q, K, V and the logits (the ``quantity`` column says which).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from qft_cli.measure.norms import fit_power_law

#: Norm columns of the measured tables -> the ``norm`` label written in ``fits.parquet``.
NORMS = {"frobenius_norm": "frobenius", "spectral_norm": "spectral"}

#: Columns of ``fits.parquet`` after the group columns (documented in docs/results.md).
FIT_COLUMNS = ["norm", "exponent", "exponent_ci_low", "exponent_ci_high", "coefficient", "r_squared",
               "num_points", "num_tokens_min", "num_tokens_max"]


def fit_table(table: pd.DataFrame, group_columns: Sequence[str], norm_columns: dict[str, str] | None = None,
              *, quantity: str | None = None) -> pd.DataFrame:
    """Fit norm ~ c N^b per group and norm.

    Args:
        table: one row per measured matrix, with an int column ``num_tokens`` (N), the
            ``group_columns`` and the ``norm_columns``; a boolean ``finite`` column, where present,
            drops rows that are False (and so do NaN, inf and non-positive norms).
        group_columns: columns that identify one fit (e.g. ``["model", "dataset", "layer"]``).
        norm_columns: measured column -> label in the ``norm`` column; default :data:`NORMS`.
        quantity: if given, a ``quantity`` column with this value is inserted after the group
            columns (``hidden_states``, ``q``, ``k``, ``v``, ``logits_unmasked``).

    Returns:
        DataFrame with the group columns, ``quantity`` (when given), then :data:`FIT_COLUMNS`:
        ``exponent`` b (dimensionless), its 95% interval (NaN with fewer than 3 points),
        ``coefficient`` c (in the norm's units), ``r_squared`` in log-log space, ``num_points``
        used and the N range of those points (``num_tokens_min/max``; 0 where none). Groups with
        fewer than 2 distinct N give NaN exponents (never a silent number).
    """
    norm_columns = dict(NORMS if norm_columns is None else norm_columns)
    group_columns = list(group_columns)
    lead = group_columns + (["quantity"] if quantity is not None else [])
    rows = []
    df = table
    if "finite" in df.columns:
        df = df[df["finite"].astype(bool)]
    if not df.empty:
        for key, g in df.groupby(group_columns, sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            base = dict(zip(group_columns, key))
            if quantity is not None:
                base["quantity"] = quantity
            n = g["num_tokens"].to_numpy(dtype=np.float64)
            for column, label in norm_columns.items():
                y = g[column].to_numpy(dtype=np.float64)
                fit = fit_power_law(n, y)
                used = n[np.isfinite(y) & (y > 0) & (n > 0)]
                rows.append({**base, "norm": label, "exponent": fit.exponent,
                             "exponent_ci_low": fit.exponent_ci_low, "exponent_ci_high": fit.exponent_ci_high,
                             "coefficient": fit.coefficient, "r_squared": fit.r_squared,
                             "num_points": int(fit.num_points),
                             "num_tokens_min": int(used.min()) if used.size else 0,
                             "num_tokens_max": int(used.max()) if used.size else 0})
    out = pd.DataFrame(rows, columns=lead + FIT_COLUMNS)
    return out.astype({"num_points": "int64", "num_tokens_min": "int64", "num_tokens_max": "int64",
                       "exponent": "float64", "exponent_ci_low": "float64", "exponent_ci_high": "float64",
                       "coefficient": "float64", "r_squared": "float64"})


def fit_summary(table: pd.DataFrame, fits: pd.DataFrame, group_columns: Sequence[str],
                norm_columns: dict[str, str] | None = None) -> pd.DataFrame:
    """The rows of ``fits`` (from :func:`fit_table`) with the spread of the measured norms beside them.

    Args:
        table: the measured table given to :func:`fit_table`.
        fits: its :func:`fit_table` result over the same ``group_columns`` and ``norm_columns``.
        group_columns / norm_columns: as for :func:`fit_table`.

    Returns:
        ``fits`` with ``num_samples`` (rows of the group, all of them), and ``norm_min``,
        ``norm_median``, ``norm_max`` over the finite, positive values the fit used (the norm's
        units; NaN where none), inserted before ``exponent``; same row order as ``fits``.
    """
    norm_columns = dict(NORMS if norm_columns is None else norm_columns)
    group_columns = list(group_columns)
    rows = []
    for key, g in table.groupby(group_columns, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        used = g[g["finite"].astype(bool)] if "finite" in g.columns else g
        for column, label in norm_columns.items():
            y = used[column].to_numpy(dtype=np.float64)
            y = y[np.isfinite(y) & (y > 0) & (used["num_tokens"].to_numpy() > 0)]
            rows.append({**dict(zip(group_columns, key)), "norm": label, "num_samples": len(g),
                         "norm_min": y.min() if y.size else np.nan,
                         "norm_median": float(np.median(y)) if y.size else np.nan,
                         "norm_max": y.max() if y.size else np.nan})
    spread = pd.DataFrame(rows, columns=group_columns + ["norm", "num_samples", "norm_min", "norm_median", "norm_max"])
    out = fits.merge(spread, on=group_columns + ["norm"], how="left", sort=False)
    lead = [c for c in fits.columns if c not in FIT_COLUMNS] + ["norm"]
    return out[lead + ["num_samples", "norm_min", "norm_median", "norm_max"] + FIT_COLUMNS[1:]]
