"""Norm maths against independent float64 computations (torch.linalg.matrix_norm, numpy, scipy)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from qft_cli.norms import (column_norms, fit_power_law, frobenius_norm, matrix_norm_record, row_norms,
                           spectral_norm, vector_stats)


def test_known_values():
    w = torch.tensor([[3.0, 3.0], [0.0, 3.0]])
    assert spectral_norm(w).item() == pytest.approx(4.854101966249685, rel=1e-12)  # 3(1+sqrt5)/2
    assert frobenius_norm(w).item() == pytest.approx(math.sqrt(27), rel=1e-12)


def test_half_precision_does_not_overflow():
    w = torch.full((16, 16), 300.0, dtype=torch.float16)  # rank one: sigma = 16 * 300
    assert spectral_norm(w).item() == pytest.approx(4800.0, rel=1e-12)
    assert frobenius_norm(w).item() == pytest.approx(4800.0, rel=1e-12)
    assert math.isfinite(matrix_norm_record(w)["spectral_norm"])
    b = torch.full((16, 16), 300.0, dtype=torch.bfloat16)
    assert spectral_norm(b).item() == pytest.approx(4800.0, rel=1e-12)


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (1, 9), (9, 1), (64, 64), (3, 200)])
def test_against_torch_linalg(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3
    assert spectral_norm(a).item() == pytest.approx(torch.linalg.matrix_norm(a, ord=2).item(), rel=1e-12)
    assert frobenius_norm(a).item() == pytest.approx(torch.linalg.matrix_norm(a, ord="fro").item(), rel=1e-12)


def test_ill_conditioned_spectrum():
    # singular values spread over 12 decades: the largest is still exact
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -12, 30, dtype=torch.float64) * 7.5
    a = u[:, :30] @ torch.diag(s) @ v.T
    assert spectral_norm(a).item() == pytest.approx(7.5, rel=1e-12)


def test_batched_and_zero_rows():
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(4, 6, 10, generator=gen, dtype=torch.float64)
    expected = torch.linalg.matrix_norm(a, ord=2)
    torch.testing.assert_close(spectral_norm(a), expected, rtol=1e-12, atol=0)
    padded = torch.cat([a, torch.zeros(4, 3, 10, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(spectral_norm(padded), expected, rtol=1e-12, atol=0)
    assert spectral_norm(torch.zeros(0, 3)).item() == 0.0


def test_row_column_stats_against_numpy():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(8, 5, generator=gen)
    an = a.double().numpy()
    np.testing.assert_allclose(column_norms(a).numpy(), np.sqrt((an ** 2).sum(axis=0)), rtol=1e-12)
    np.testing.assert_allclose(row_norms(a).numpy(), np.sqrt((an ** 2).sum(axis=1)), rtol=1e-12)
    rec = matrix_norm_record(a)
    cols = np.linalg.norm(an, axis=0)
    assert rec["column_norm_mean"] == pytest.approx(cols.mean(), rel=1e-12)
    assert rec["column_norm_var"] == pytest.approx(cols.var(ddof=0), rel=1e-12)
    assert rec["column_norm_max"] == pytest.approx(cols.max(), rel=1e-12)
    rows = np.linalg.norm(an, axis=1)
    assert rec["row_norm_var"] == pytest.approx(rows.var(ddof=0), rel=1e-12)
    assert set(vector_stats(torch.tensor([1.0, 3.0]), "x")) == {"x_mean", "x_var", "x_max"}


def test_power_law_exact():
    n = np.arange(1, 513)
    fit = fit_power_law(n, 3 * n ** 0.5)
    assert fit.exponent == pytest.approx(0.5, abs=1e-12)
    assert fit.coefficient == pytest.approx(3.0, rel=1e-10)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.num_points == 512


def test_power_law_ci_against_scipy():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 500, size=200)
    y = 2.0 * n ** 0.7 * np.exp(rng.normal(0, 0.1, size=200))
    fit = fit_power_law(n, y)
    ref = stats.linregress(np.log(n), np.log(y))
    half = stats.t.ppf(0.975, 198) * ref.stderr
    assert fit.exponent == pytest.approx(ref.slope, rel=1e-10)
    assert fit.exponent_ci_low == pytest.approx(ref.slope - half, rel=1e-10)
    assert fit.exponent_ci_high == pytest.approx(ref.slope + half, rel=1e-10)
    assert fit.r_squared == pytest.approx(ref.rvalue ** 2, rel=1e-10)


def test_power_law_degenerate():
    assert math.isnan(fit_power_law([5, 5, 5], [1, 2, 3]).exponent)
    fit = fit_power_law([1, 2, 0, 4], [1, 2, 5, float("nan")])  # drops N=0 and NaN
    assert fit.num_points == 2 and fit.exponent == pytest.approx(1.0) and math.isnan(fit.exponent_ci_low)
