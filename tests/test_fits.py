"""fits.fit_table against an independent least-squares fit (numpy.polyfit, scipy.stats.linregress)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qft_cli.measure.fits import FIT_COLUMNS, fit_table


def _table():
    rng = np.random.default_rng(3)
    rows = []
    for layer, (c, b) in {1: (2.0, 0.5), 2: (0.7, 1.0)}.items():
        for n in (4, 8, 16, 32, 64, 128):
            for _ in range(3):
                noise = math.exp(rng.normal(0, 0.05))
                rows.append({"model": "m", "dataset": "d", "layer": layer, "num_tokens": n,
                             "frobenius_norm": c * n ** b * noise, "spectral_norm": c * n ** (b / 2) * noise,
                             "finite": True})
    rows.append({"model": "m", "dataset": "d", "layer": 1, "num_tokens": 256, "frobenius_norm": 1e9,
                 "spectral_norm": 1e9, "finite": False})  # dropped: not finite
    return pd.DataFrame(rows)


def test_fit_table_matches_linregress_per_group_and_norm():
    table = _table()
    fits = fit_table(table, ["model", "dataset", "layer"])
    assert list(fits.columns) == ["model", "dataset", "layer", *FIT_COLUMNS]
    assert len(fits) == 4
    for _, row in fits.iterrows():
        g = table[(table["layer"] == row["layer"]) & table["finite"]]
        column = {"frobenius": "frobenius_norm", "spectral": "spectral_norm"}[row["norm"]]
        ref = stats.linregress(np.log(g["num_tokens"]), np.log(g[column]))
        half = stats.t.ppf(0.975, len(g) - 2) * ref.stderr
        assert row["exponent"] == pytest.approx(ref.slope, rel=1e-10)
        assert row["coefficient"] == pytest.approx(math.exp(ref.intercept), rel=1e-10)
        assert row["exponent_ci_low"] == pytest.approx(ref.slope - half, rel=1e-10)
        assert row["exponent_ci_high"] == pytest.approx(ref.slope + half, rel=1e-10)
        assert row["r_squared"] == pytest.approx(ref.rvalue ** 2, rel=1e-10)
        assert row["num_points"] == 18 and row["num_tokens_min"] == 4 and row["num_tokens_max"] == 128


def test_fit_table_quantity_column_and_degenerate_group():
    table = pd.DataFrame({"layer": [1, 1, 2], "num_tokens": [5, 5, 7], "frobenius_norm": [1.0, 2.0, 3.0],
                          "spectral_norm": [1.0, 1.5, 2.0]})
    fits = fit_table(table, ["layer"], quantity="q")
    assert list(fits.columns) == ["layer", "quantity", *FIT_COLUMNS]
    assert (fits["quantity"] == "q").all()
    assert fits["exponent"].isna().all()  # one distinct N per group: no fit, NaN rather than a number
    assert fits.loc[fits["layer"] == 1, "num_points"].tolist() == [2, 2]


def test_fit_table_empty_has_schema():
    fits = fit_table(pd.DataFrame(columns=["layer", "num_tokens", "frobenius_norm", "spectral_norm"]), ["layer"])
    assert fits.empty and list(fits.columns) == ["layer", *FIT_COLUMNS]


def test_fit_summary_adds_the_spread_of_the_fitted_values():
    from qft_cli.measure.fits import fit_summary

    table = _table()
    fits = fit_table(table, ["model", "dataset", "layer"])
    out = fit_summary(table, fits, ["model", "dataset", "layer"])
    assert list(out.columns) == ["model", "dataset", "layer", "norm", "num_samples", "norm_min", "norm_median",
                                 "norm_max", *FIT_COLUMNS[1:]]
    pd.testing.assert_frame_equal(out[fits.columns], fits)  # same rows, same order, fit values untouched
    for _, row in out.iterrows():
        g = table[table["layer"] == row["layer"]]
        used = g[g["finite"]][f"{row['norm']}_norm"].to_numpy()  # the non-finite row is left out
        assert row["num_samples"] == len(g) == (19 if row["layer"] == 1 else 18)
        assert (row["norm_min"], row["norm_median"], row["norm_max"]) == (used.min(), np.median(used), used.max())
