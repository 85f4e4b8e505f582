"""Norm maths against independent float64 computations (torch.linalg.matrix_norm, numpy, scipy)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from qft_cli.measure.norms import (
    column_norms,
    fit_power_law,
    frobenius_norm,
    matrix_norm_record,
    row_norms,
    spectral_norm,
    vector_stats,
)


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


# --- blocked statistics and the fast (block Krylov) spectral norm ----------------------------------

from qft_cli.measure.norms import (  # noqa: E402
    LongSideBlocks,
    all_finite,
    blocked_gram,
    krylov_spectral_norm,
    matrix_stats,
    stats_record,
)


def _with_spectrum(m, n, s, seed):
    """U diag(s) V^T (float64) with Haar-random orthonormal U (m, k), V (n, k)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=gen, dtype=torch.float64))
    return u @ torch.diag(torch.as_tensor(s, dtype=torch.float64)) @ v.T


@pytest.mark.parametrize("shape", [(37, 11), (11, 37), (64, 64)])
def test_blocked_accumulation_equals_whole_tensor(shape):
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(*shape, generator=gen).to(torch.bfloat16)
    whole = a.double()
    tiny_blocks = 8 * min(shape) * 3  # three rows (or columns) of the long side per block
    gram = blocked_gram(a, block_bytes=tiny_blocks)
    expected = whole.T @ whole if shape[0] >= shape[1] else whole @ whole.T
    torch.testing.assert_close(gram, expected, rtol=1e-13, atol=1e-12)
    stats = matrix_stats(a, exact=True, block_bytes=tiny_blocks)
    torch.testing.assert_close(stats.row_norms, torch.linalg.vector_norm(whole, dim=1), rtol=1e-13, atol=0)
    torch.testing.assert_close(stats.column_norms, torch.linalg.vector_norm(whole, dim=0), rtol=1e-13, atol=0)
    assert stats.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(whole, ord="fro").item(), rel=1e-13)
    assert stats.spectral_norm == pytest.approx(torch.linalg.matrix_norm(whole, ord=2).item(), rel=1e-12)
    assert stats.method == "gram"
    rec = stats_record(stats)
    assert rec["row_norm_max"] == pytest.approx(float(torch.linalg.vector_norm(whole, dim=1).max()), rel=1e-13)
    assert LongSideBlocks(a, tiny_blocks).block == 3


def test_gram_is_of_the_short_side(monkeypatch):
    seen = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda g: seen.append(tuple(g.shape)) or real(g))
    gen = torch.Generator().manual_seed(6)
    for a in (torch.randn(5000, 8, generator=gen), torch.randn(8, 5000, generator=gen)):
        stats = matrix_stats(a, exact=True)
        assert stats.spectral_norm == pytest.approx(torch.linalg.matrix_norm(a.double(), ord=2).item(), rel=1e-12)
    assert seen == [(8, 8), (8, 8)]


@pytest.mark.parametrize("shape,cache", [((700, 400), 2 ** 30), ((400, 700), 0), ((600, 600), 0)])
def test_fast_path_within_its_bound_on_clustered_top_singular_values(shape, cache):
    # s1 and s2 differ by 1e-9 relative, then a slow decay: the top vector is ill-defined, the value is not
    k = min(shape)
    s = [5.0, 5.0 * (1 - 1e-9), 4.99] + list(np.linspace(4.9, 0.1, k - 3))
    a = _with_spectrum(*shape, s, seed=7)
    reference = torch.linalg.matrix_norm(a, ord=2).item()  # float64 SVD
    for matrix in (a, a.float()):
        ref = torch.linalg.matrix_norm(matrix.double(), ord=2).item()
        fast = krylov_spectral_norm(matrix, cache_bytes=cache, block_bytes=8 * k * 50)
        assert fast.converged and fast.bound <= 1e-6
        assert abs(fast.sigma - ref) / ref <= fast.bound + 1e-14
        assert fast.sigma <= ref * (1 + 1e-13)  # a Rayleigh quotient never overestimates
    stats = matrix_stats(a, exact_below=0, cache_bytes=cache)
    assert stats.method == "krylov" and stats.iterations > 0
    assert stats.spectral_norm == pytest.approx(reference, rel=1e-6)
    assert stats.spectral_error_bound <= 1e-6


def test_fast_path_on_a_random_bfloat16_matrix_within_1e6_of_float64_svd():
    gen = torch.Generator().manual_seed(8)
    a = (torch.randn(900, 600, generator=gen) * 0.02).to(torch.bfloat16)  # Marchenko-Pastur edge: small gaps
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    stats = matrix_stats(a, cache_bytes=0)
    assert stats.method == "krylov"
    assert abs(stats.spectral_norm - ref) / ref <= max(stats.spectral_error_bound, 1e-12) <= 1e-6


def test_fast_path_falls_back_to_the_exact_path_when_it_cannot_certify():
    gen = torch.Generator().manual_seed(9)
    a = torch.randn(300, 200, generator=gen)
    stats = matrix_stats(a, exact_below=0, rtol=1e-30)
    assert stats.method == "gram-fallback" and stats.spectral_error_bound == 0.0
    assert stats.spectral_norm == pytest.approx(torch.linalg.matrix_norm(a.double(), ord=2).item(), rel=1e-12)


def test_rank_one_and_zero_matrices():
    a = torch.outer(torch.arange(1.0, 701.0), torch.ones(600))
    expected = torch.linalg.matrix_norm(a.double(), ord=2).item()
    assert matrix_stats(a).spectral_norm == pytest.approx(expected, rel=1e-6)
    z = matrix_stats(torch.zeros(700, 600))
    assert z.spectral_norm == 0.0 and z.frobenius_norm == 0.0


def test_all_finite_blockwise():
    a = torch.zeros(1000, 20)
    assert all_finite(a, block_bytes=8 * 20)
    a[999, 3] = float("nan")
    assert not all_finite(a, block_bytes=8 * 20)


@pytest.mark.parametrize("shape", [(300, 130), (130, 300)])
@pytest.mark.parametrize("cache", [2 ** 30, 0])
@pytest.mark.parametrize("bf16", [False, True])
def test_gram_operator_equals_float64_product_in_both_orientations(shape, cache, bf16):
    from qft_cli.measure.norms import _gram_operator, bf16_products_are_accurate

    if bf16 and not bf16_products_are_accurate():
        pytest.skip("no fast and accurate bfloat16 matrix products on this CPU")
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(*shape, generator=gen).to(torch.bfloat16)
    view = LongSideBlocks(a)
    assert view.transposed == (shape[0] < shape[1])
    # cache 0: bf16 uses A alone (x @ A form for one product), float32 converts blocks on every call
    apply = _gram_operator(view, cache, fused_bytes=4 * 130 * 7, bf16=bf16)  # fused blocks of 7 rows of A_L
    qt = torch.randn(5, 130, generator=gen)
    whole = a.double() if shape[0] >= shape[1] else a.double().T
    expected = (whole.T @ (whole @ qt.double().T)).T
    torch.testing.assert_close(apply(qt).double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_float32_estimate_is_the_true_ritz_residual():
    # the block recurrence G V = V T + Q B E^T: ||B y_last|| is the residual of the Ritz pair (theta, V y)
    from qft_cli.measure.norms import _estimate

    gen = torch.Generator().manual_seed(12)
    a = torch.randn(400, 200, generator=gen, dtype=torch.float64)
    g = a.T @ a
    p, steps = 8, 4
    v, _ = torch.linalg.qr(torch.randn(200, p, generator=gen, dtype=torch.float64))
    blocks, b = [v], None
    for _ in range(steps):
        z = g @ blocks[-1]
        basis = torch.cat(blocks, 1)
        z = z - basis @ (basis.T @ z)
        z = z - basis @ (basis.T @ z)
        q, b = torch.linalg.qr(z)
        blocks.append(q)
    basis = torch.cat(blocks[:-1], 1)
    t = basis.T @ g @ basis
    theta, _, _, y = _estimate(t, b, p)
    ritz = basis @ y[:, 0]
    true_residual = torch.linalg.vector_norm(g @ ritz - theta[0] * ritz).item()
    assert torch.linalg.vector_norm(b @ y[-p:, 0]).item() == pytest.approx(true_residual, rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("exact", [False, True])
def test_nonfinite_matrix_gives_finite_false_and_nan_norms(bad, exact):
    a = torch.randn(700, 600, generator=torch.Generator().manual_seed(13)).to(torch.bfloat16)
    a[17, 5] = bad
    stats = matrix_stats(a, exact=exact)
    assert not stats.finite
    assert math.isnan(stats.spectral_norm) and math.isnan(stats.frobenius_norm)
    assert stats.row_norms.shape == (700,) and math.isfinite(stats.row_norms[16].item())
    assert not math.isfinite(stats.row_norms[17].item())
    assert matrix_stats(a[18:], exact=exact).finite  # the rest is fine


def test_fast_path_certifies_once_and_reports_row_column_norms_from_that_pass():
    gen = torch.Generator().manual_seed(14)
    a = (torch.randn(600, 1100, generator=gen) * 0.02).to(torch.bfloat16)  # transposed orientation
    fast = krylov_spectral_norm(a)
    assert fast.converged and 1 <= fast.certifications <= 2
    stats = matrix_stats(a)
    whole = a.double()
    assert stats.method == "krylov" and stats.finite
    torch.testing.assert_close(stats.row_norms, torch.linalg.vector_norm(whole, dim=1), rtol=1e-13, atol=0)
    torch.testing.assert_close(stats.column_norms, torch.linalg.vector_norm(whole, dim=0), rtol=1e-13, atol=0)
    ref = torch.linalg.matrix_norm(whole, ord=2).item()
    assert abs(stats.spectral_norm - ref) / ref <= stats.spectral_error_bound <= 1e-6


@pytest.mark.parametrize("left", [True, False])
def test_bf16_split_product_is_accurate_to_1e5_where_plain_bf16_is_not(left):
    from qft_cli.measure.norms import bf16_product, bf16_products_are_accurate

    if not bf16_products_are_accurate():
        pytest.skip("no fast and accurate bfloat16 matrix products on this CPU")
    gen = torch.Generator().manual_seed(15)
    a = (torch.randn(512, 384, generator=gen) * 0.02).to(torch.bfloat16)
    x = torch.randn(384, 16, generator=gen) if left else torch.randn(16, 512, generator=gen)
    ref = a.double() @ x.double() if left else x.double() @ a.double()
    out = bf16_product(a, x, left=left)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert ((out.double() - ref).norm() / ref.norm()).item() <= 1e-5
    plain = (a @ x.to(torch.bfloat16)) if left else (x.to(torch.bfloat16) @ a)
    assert ((plain.double() - ref).norm() / ref.norm()).item() > 1e-4  # what the split avoids


def test_bf16_and_float32_iterations_certify_the_same_norm():
    from qft_cli.measure.norms import bf16_products_are_accurate

    if not bf16_products_are_accurate():
        pytest.skip("no fast and accurate bfloat16 matrix products on this CPU")
    gen = torch.Generator().manual_seed(16)
    a = (torch.randn(1000, 700, generator=gen) * 0.02).to(torch.bfloat16)
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    fast = krylov_spectral_norm(a)                     # bf16 products (auto)
    slow = krylov_spectral_norm(a.float())             # float32 products: same matrix, other dtype
    for r in (fast, slow):
        assert r.converged and abs(r.sigma - ref) / ref <= r.bound <= 1e-6
    assert abs(fast.iterations - slow.iterations) <= 2  # the split products converge as float32 does


# --- holes closed by hand mutation testing (issue 9) ------------------------------------------------


def _bf16_hardware() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


@pytest.mark.parametrize("left", [True, False])
def test_bf16_split_product_is_exact_on_exactly_representable_data(left):
    # runs on every CPU (no skip): A entries in {-1, 0, 1}, x = +-(1 or 2) + k 2^-12 (|k| <= 3), so
    # x_hi = +-(1 or 2), x_lo = k 2^-12 (both exact in bfloat16), every partial sum of A x_hi is an
    # integer below 256 and of A x_lo a multiple of 2^-12 below 2^-5: exact in bfloat16 and float32,
    # whatever the rounding of the accumulator. Catches a dropped x_lo term, a lost beta=-1, a wrong half.
    from qft_cli.measure.norms import bf16_product

    gen = torch.Generator().manual_seed(21)
    a = torch.randint(-1, 2, (40, 32), generator=gen).to(torch.bfloat16)
    shape = (32, 5) if left else (5, 40)
    sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
    whole = torch.randint(1, 3, shape, generator=gen)
    frac = torch.randint(-3, 4, shape, generator=gen)
    x = (sign * (whole + frac * 2.0 ** -12)).to(torch.float32)
    assert (x.to(torch.bfloat16).float() != x).any()  # x_lo is really used
    ref = a.double() @ x.double() if left else x.double() @ a.double()
    out = bf16_product(a, x, left=left)
    assert out.dtype == torch.float32
    assert torch.equal(out.double(), ref)


@pytest.mark.skipif(not _bf16_hardware(), reason="no AMX / AVX512-BF16 on this CPU")
def test_bf16_self_check_passes_where_the_hardware_has_bf16_products():
    # the accuracy tests of the split product skip when the self-check fails, and a broken split
    # product fails the self-check: on a CPU with bf16 products the check itself must pass (if this
    # fails on a new torch build, the fast path of `norms weights` is silently lost there)
    from qft_cli.measure.norms import bf16_products_are_accurate

    assert bf16_products_are_accurate()


def _diagonal_view(s, long):
    """LongSideBlocks of A_L = [diag(s); 0] (long, len(s)), float64: G = A_L^T A_L = diag(s^2)."""
    a = torch.zeros(long, len(s), dtype=torch.float64)
    a[:len(s), :len(s)] = torch.diag(torch.as_tensor(s, dtype=torch.float64))
    return LongSideBlocks(a)


@pytest.mark.parametrize("ritz_next,phi", [(16.0, 1e-2), (20.0, 1e-2), (16.0, 0.5)])
def test_certificate_is_the_knyazev_bound_of_an_explicit_ritz_vector(ritz_next, phi):
    # G = diag(25, 16, 1, 0.25, 0.09, 0.04); basis x1 = cos(phi) e1 + sin(phi) e3, x2 = e2. By hand:
    # theta_1 = 25 cos^2 + sin^2, ||G x1 - theta_1 x1|| = cos sin (25 - 1), theta_2 = 16, and the bound
    # on sigma is ||R||^2 / (theta_1 - max(theta_2, float32 Ritz value 2)) / (2 theta_1), capped by
    # ||R|| / theta_1 (the case phi = 0.5: theta_1 - 16 is small)
    from qft_cli.measure.norms import _certify

    s = [5.0, 4.0, 1.0, 0.5, 0.3, 0.2]
    view = _diagonal_view(s, 9)
    basis = torch.zeros(2, 6, dtype=torch.float32)
    basis[0, 0], basis[0, 2], basis[1, 1] = math.cos(phi), math.sin(phi), 1.0
    co, si = basis[0, 0].double().item(), basis[0, 2].double().item()
    co, si = co / math.hypot(co, si), si / math.hypot(co, si)
    theta1 = 25 * co ** 2 + si ** 2
    res = co * si * 24
    gap = theta1 - max(16.0, ritz_next)
    expected = min(res ** 2 / gap / (2 * theta1), res / theta1)
    ritz = torch.tensor([theta1, ritz_next], dtype=torch.float64)
    got, sums = _certify(view, basis, ritz, torch.eye(2, dtype=torch.float64), 1, stats=True)
    assert got.sigma == pytest.approx(math.sqrt(theta1), rel=1e-14)
    assert got.bound == pytest.approx(expected, rel=1e-9)
    assert (5.0 - got.sigma) / 5.0 <= got.bound  # it bounds the true error
    if phi == 0.5:
        assert got.bound == pytest.approx(res / theta1, rel=1e-9)
    if (ritz_next, phi) == (16.0, 1e-2):
        assert got.bound < res / theta1 and got.bound <= 3 * (5.0 - got.sigma) / 5.0  # and is sharp here
    torch.testing.assert_close(sums.short_sq, torch.tensor(s, dtype=torch.float64) ** 2, rtol=1e-15, atol=0)
    assert _certify(view, basis, ritz, torch.eye(2, dtype=torch.float64), 1, stats=False)[1] is None


def test_certificate_of_a_two_vector_cluster():
    # G = diag(25, 24.5, 1, 0.25, 0.09, 0.04): cluster c = 2 from x1 = cos(phi) e1 + sin(phi) e3 and
    # x2 = cos(psi) e2 + sin(psi) e4, next vector e5. X^T G X is diagonal, so the Ritz values are
    # theta = (25 cos^2 phi + sin^2 phi, 24.5 cos^2 psi + 0.25 sin^2 psi, 0.09); the residuals of x1 and
    # x2 are orthogonal, of norms cos sin (25 - 1) and cos sin (24.5 - 0.25): ||R||_2 is the larger,
    # that of x2 (psi > phi); the gap is theta_2 - max(theta_3, float32 Ritz value 3)
    from qft_cli.measure.norms import _certify

    s = [5.0, math.sqrt(24.5), 1.0, 0.5, 0.3, 0.2]
    view = _diagonal_view(s, 7)
    basis = torch.zeros(3, 6, dtype=torch.float32)
    basis[0, 0], basis[0, 2] = math.cos(1e-3), math.sin(1e-3)
    basis[1, 1], basis[1, 3] = math.cos(3e-3), math.sin(3e-3)
    basis[2, 4] = 1.0

    def unit(i, j):
        co, si = basis[i, j[0]].double().item(), basis[i, j[1]].double().item()
        return co / math.hypot(co, si), si / math.hypot(co, si)

    (c1, s1), (c2, s2) = unit(0, (0, 2)), unit(1, (1, 3))
    theta1, theta2 = 25 * c1 ** 2 + s1 ** 2, 24.5 * c2 ** 2 + 0.25 * s2 ** 2
    res = max(c1 * s1 * 24, c2 * s2 * 24.25)
    assert res == c2 * s2 * 24.25
    ritz = torch.tensor([theta1, theta2, 0.01], dtype=torch.float64)
    got, _ = _certify(view, basis, ritz, torch.eye(3, dtype=torch.float64), 2, stats=False)
    assert got.sigma == pytest.approx(math.sqrt(theta1), rel=1e-14)
    assert got.bound == pytest.approx(min(res ** 2 / (theta2 - 0.09) / (2 * theta1), res / theta1), rel=1e-9)
    ritz[2] = 0.2  # a larger float32 estimate of lambda_3 is the one used
    got, _ = _certify(view, basis, ritz, torch.eye(3, dtype=torch.float64), 2, stats=False)
    assert got.bound == pytest.approx(min(res ** 2 / (theta2 - 0.2) / (2 * theta1), res / theta1), rel=1e-9)
    one, _ = _certify(view, basis, ritz, torch.eye(3, dtype=torch.float64), 1, stats=False)
    res1 = c1 * s1 * 24
    assert one.bound == pytest.approx(min(res1 ** 2 / (theta1 - theta2) / (2 * theta1), res1 / theta1), rel=1e-9)


@pytest.mark.parametrize("steps", [2, 5])
def test_float32_estimate_is_the_smallest_cluster_bound_from_true_residuals(steps):
    # _estimate's bound for cluster c is min(||R_c||^2 / (theta_c - theta_{c+1}), ||R_c||) / (2 theta_1),
    # R_c = G V Y_c - V Y_c Theta_c formed here explicitly (float64 block Lanczos), minimised over c
    from qft_cli.measure.norms import _estimate

    gen = torch.Generator().manual_seed(22)
    a = _with_spectrum(300, 120, [6.0, 5.9, 5.85] + list(np.linspace(5.0, 0.1, 117)), seed=22)
    g = a.T @ a
    p = 4
    blocks = [torch.linalg.qr(torch.randn(120, p, generator=gen, dtype=torch.float64))[0]]
    for _ in range(steps):
        basis = torch.cat(blocks, 1)
        z = g @ blocks[-1]
        z = z - basis @ (basis.T @ z)
        z = z - basis @ (basis.T @ z)
        q, b = torch.linalg.qr(z)
        blocks.append(q)
    basis = torch.cat(blocks[:-1], 1)
    theta, bound, c_best, y = _estimate(basis.T @ g @ basis, b, p)
    ref_theta, ref_y = torch.linalg.eigh(basis.T @ g @ basis)
    torch.testing.assert_close(theta, ref_theta.flip(0), rtol=1e-12, atol=0)
    expected, capped = {}, 0
    for c in range(1, p + 1):
        x = basis @ y[:, :c]
        torch.testing.assert_close((x.T @ g @ x).diagonal(), theta[:c], rtol=1e-10, atol=0)  # Ritz pairs, descending
        res = torch.linalg.matrix_norm(g @ x - x * theta[:c], ord=2).item()
        gap = (theta[c - 1] - theta[c]).item()
        expected[c] = min(res ** 2 / gap, res) / (2 * theta[0].item())
        capped += res < res ** 2 / gap
    best = min(expected, key=expected.get)
    assert len(set(expected.values())) == p  # the c matter
    assert capped > 0 if steps == 2 else capped < p  # both sides of the min are used
    assert c_best == best
    assert bound == pytest.approx(expected[best], rel=1e-6)


@pytest.mark.parametrize("short", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("transposed", [False, True])
def test_fast_path_on_short_sides_below_two_blocks(short, transposed):
    # the Krylov block is min(16, short // 2) columns: 1 for short sides 2 and 3 (a 1 x 1 T at step 0)
    gen = torch.Generator().manual_seed(23 + short)
    a = torch.randn(700, short, generator=gen)
    a = a.T if transposed else a
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    stats = matrix_stats(a, exact_below=0)
    assert abs(stats.spectral_norm - ref) / ref <= max(stats.spectral_error_bound, 1e-12) <= 1e-6
    assert stats.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(a.double()).item(), rel=1e-13)
    if 2 <= short <= 4:  # the basis (blocks of 1, 1, 2 columns) reaches the whole space: exact
        assert stats.method == "krylov"


def test_block_size_one_is_plain_lanczos():
    a = _with_spectrum(120, 100, [4.0, 2.0] + list(np.linspace(1.5, 0.1, 98)), seed=24)
    fast = krylov_spectral_norm(a, block_size=1)
    assert fast.converged and abs(fast.sigma - 4.0) / 4.0 <= fast.bound <= 1e-6
    one_step = krylov_spectral_norm(a, block_size=1, max_steps=0)  # a single vector: nothing to certify
    assert not one_step.converged and one_step.sigma <= 4.0
    # more than 24 steps: the basis and T grow (doubling) past their first allocation
    b = torch.randn(400, 300, generator=torch.Generator().manual_seed(31))
    ref = torch.linalg.matrix_norm(b.double(), ord=2).item()
    slow = krylov_spectral_norm(b, block_size=1)
    assert slow.converged and 24 < slow.iterations <= 40
    assert abs(slow.sigma - ref) / ref <= slow.bound <= 1e-6


@pytest.mark.parametrize("exponent", [-50, -40, 40, 60, 63])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_scale_invariant_from_1e_minus_15_to_1e19(exponent, dtype):
    # the Krylov vectors' norms were float32 sums of squares: above ||A||_2 ~ 1e10 (G Q ~ 1e19) they
    # overflowed, below ~1e-10 they underflowed, every direction counted as lost and the fast path fell
    # back to the exact one; 2^63 * 0.05 * (sqrt(700) + sqrt(600)): ||A||_2 ~ 2e19, G ~ 5e38 / 1.5
    gen = torch.Generator().manual_seed(25)
    a = (torch.randn(700, 600, generator=gen, dtype=torch.float64) * 0.05 * 2.0 ** exponent).to(dtype)
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    stats = matrix_stats(a, exact_below=0)
    assert stats.method == "krylov"
    assert abs(stats.spectral_norm - ref) / ref <= stats.spectral_error_bound <= 1e-6


@pytest.mark.parametrize("exponent", [64, 66, 100])
def test_gram_overflowing_float32_uses_the_exact_path(exponent):
    # finite entries whose Gram matrix overflows float32 after the first step (2^64: the projections
    # onto the basis overflow though G Q does not) used to reach eigh with NaNs and raise
    gen = torch.Generator().manual_seed(25)
    a = (torch.randn(700, 600, generator=gen, dtype=torch.float64) * 0.05 * 2.0 ** exponent).float()
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    stats = matrix_stats(a, exact_below=0)
    assert stats.finite and stats.method == "gram"
    assert stats.spectral_norm == pytest.approx(ref, rel=1e-12)
    assert stats.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(a.double()).item(), rel=1e-12)


def test_certified_bound_never_exceeds_the_requested_rtol():
    # converged means bound <= rtol for every rtol, not about it; the bound holds for the float64 SVD
    a = _with_spectrum(300, 200, [3.0, 2.97, 2.95] + list(np.linspace(2.9, 0.1, 197)), seed=26).float()
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    for rtol in np.geomspace(1e-2, 1e-11, 6):
        fast = krylov_spectral_norm(a, rtol=float(rtol))
        assert fast.converged and fast.bound <= rtol
        assert (ref - fast.sigma) / ref <= fast.bound + 1e-15
    # two block steps: the one certificate (at the last step) gives the same bound b whatever rtol
    b = krylov_spectral_norm(a, max_steps=1, rtol=1e-30).bound
    assert 1e-5 < b < 1
    for rtol, converged in ((b / 3, False), (b * 1.01, True)):
        fast = krylov_spectral_norm(a, max_steps=1, rtol=rtol)
        assert fast.bound == b and fast.converged == converged and fast.certifications == 1


def test_krylov_step_and_certificate_counts_on_seeded_float32_matrices():
    # not a timing: the number of block steps (2 float32 passes each) and of float64 certificate
    # passes on fixed seeded matrices; a Krylov that converges or certifies needlessly slowly while
    # still correct (estimates skipped, certifying too early) fails here
    gen = torch.Generator().manual_seed(27)
    random = torch.randn(600, 900, generator=gen)          # Marchenko-Pastur edge: small gaps
    clustered = _with_spectrum(700, 600, [5.0, 5.0 * (1 - 1e-9), 4.99] + list(np.linspace(4.9, 0.1, 597)),
                               seed=7).float()
    for a, steps in ((random, 16), (clustered, 20)):
        fast = krylov_spectral_norm(a)
        assert fast.converged and fast.iterations <= steps and fast.certifications <= 2, fast


def test_exact_below_is_inclusive():
    a = _with_spectrum(300, 64, [5.0] + list(np.linspace(2.0, 0.1, 63)), seed=28)
    for exact_below, method in ((64, "gram"), (63, "krylov")):
        for a in (a, a.T):
            stats = matrix_stats(a, exact_below=exact_below)
            assert stats.method == method
            assert stats.spectral_norm == pytest.approx(torch.linalg.matrix_norm(a.double(), ord=2).item(), rel=1e-6)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_empty_matrices(shape):
    stats = matrix_stats(torch.zeros(shape, dtype=torch.bfloat16), exact_below=0)
    assert stats.row_norms.shape == (shape[0],) and stats.column_norms.shape == (shape[1],)
    assert stats.row_norms.dtype == stats.column_norms.dtype == torch.float64
    assert (stats.row_norms == 0).all() and (stats.column_norms == 0).all()
    assert stats.spectral_norm == stats.frobenius_norm == 0.0 and stats.finite and stats.method == "gram"


def test_bf16_self_check_rejects_a_product_that_rounds_twice(monkeypatch):
    # a build whose addmm rounds A x_hi to bfloat16 before subtracting loses the residual r: ~1e-3
    import qft_cli.measure.norms as norms

    def rounded_twice(a, x, *, left=True):
        hi, lo = norms._split_bf16(x)
        return ((a @ hi).float() + (a @ lo).float()) if left else ((hi @ a).float() + (lo @ a).float())

    monkeypatch.setattr(norms, "_BF16_ACCURATE", {})
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(norms, "bf16_product", rounded_twice)
    assert not norms.bf16_products_are_accurate()
    monkeypatch.setattr(norms, "_BF16_ACCURATE", {})
    monkeypatch.setattr(norms, "bf16_product", lambda a, x, *, left=True: (a.double() @ x.double() if left
                                                                          else x.double() @ a.double()).float())
    assert norms.bf16_products_are_accurate()  # a float32-accurate product passes
    assert not norms.bf16_products_are_accurate("cuda")  # CPU only


@pytest.mark.parametrize("exact", [False, True])
def test_float64_entries_whose_squares_overflow_are_measured_not_nan(exact):
    # |a_ij| ~ 1e200: finite, but a_ij^2 overflows float64; the norms (~1e202) are representable
    gen = torch.Generator().manual_seed(29)
    base = torch.randn(700, 600, generator=gen, dtype=torch.float64)
    a = base * 1e200
    stats = matrix_stats(a, exact=exact)
    assert stats.finite and stats.method == "gram"
    assert stats.spectral_norm == pytest.approx(torch.linalg.matrix_norm(base, ord=2).item() * 1e200, rel=1e-12)
    assert stats.frobenius_norm == pytest.approx(torch.linalg.matrix_norm(base).item() * 1e200, rel=1e-12)
    torch.testing.assert_close(stats.row_norms, torch.linalg.vector_norm(base, dim=1) * 1e200, rtol=1e-13, atol=0)
    torch.testing.assert_close(stats.column_norms, torch.linalg.vector_norm(base, dim=0) * 1e200, rtol=1e-13, atol=0)
    a[3, 4] = float("nan")  # and a NaN among them is still not finite
    bad = matrix_stats(a, exact=exact)
    assert not bad.finite and math.isnan(bad.spectral_norm) and math.isnan(bad.frobenius_norm)


@pytest.mark.parametrize("rank", [1, 3, 16, 17, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_on_low_rank_matrices(rank, dtype):
    # the Krylov space becomes invariant after one or two steps (rank <= block or a few blocks):
    # cancelled directions are replaced by random ones and the certificate is exact
    a = _with_spectrum(700, 600, list(np.linspace(3.0, 1.0, rank)), seed=30 + rank).to(dtype)
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    stats = matrix_stats(a, exact_below=0)
    assert stats.method == "krylov" and stats.iterations <= 5
    assert stats.spectral_error_bound <= 1e-9  # here the bound is sharp: equal to the error up to rounding
    assert abs(stats.spectral_norm - ref) / ref <= stats.spectral_error_bound * (1 + 1e-3) + 1e-14


@pytest.mark.parametrize("multiplicity", [2, 16, 17, 20])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_fast_path_on_a_repeated_top_singular_value(multiplicity, dtype):
    # up to and beyond the block of 16 columns; float64 and float16 inputs (float32 Krylov products)
    s = [5.0] * multiplicity + list(np.linspace(4.9, 0.1, 600 - multiplicity))
    a = _with_spectrum(600, 700, s, seed=40 + multiplicity).to(dtype)  # transposed orientation
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    stats = matrix_stats(a, exact_below=0)
    assert stats.method == "krylov"
    assert abs(stats.spectral_norm - ref) / ref <= stats.spectral_error_bound <= 1e-6
