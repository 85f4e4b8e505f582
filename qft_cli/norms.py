"""Matrix norms that set block-encoding normalisation factors, and power-law fits.

Pure functions on tensors. Every norm is accumulated in float64 whatever the input dtype (SVD of
half precision is unsupported on CPU, and float16 overflows at 65504).

Conventions: a weight matrix ``W`` has shape ``(d_out, d_in)`` (the map of ``nn.Linear``); a
hidden-state matrix ``S`` has shape ``(num_tokens, d)``. A *row* l2 norm is the norm of one row
(for ``S``: one token's vector); a *column* l2 norm is the norm of one column.

References: spectral norm ||A||_2 = sigma_max(A) = sqrt(lambda_max(A^T A)) and Frobenius norm
||A||_F = sqrt(sum_ij A_ij^2) (Golub & Van Loan, *Matrix Computations*, 4th ed., sec. 2.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

ACCUMULATE = torch.float64


def frobenius_norm(matrix: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of ``matrix`` (..., m, n) in float64, shape (...)."""
    return torch.linalg.vector_norm(matrix.to(ACCUMULATE), ord=2, dim=(-2, -1))


def spectral_norm(matrix: torch.Tensor) -> torch.Tensor:
    """Spectral norm (largest singular value) of ``matrix`` (..., m, n) in float64, shape (...).

    Computed as sqrt(lambda_max) of the Gram matrix of the smaller side with ``eigvalsh``
    (no U/V factors are ever formed). The largest eigenvalue of a symmetric matrix is perfectly
    conditioned, so the relative error is O(machine epsilon of float64) ~ 1e-15 relative to
    ||A||_2, independent of the spread of the other singular values. Zero rows (e.g. padding) do
    not change the result.
    """
    a = matrix.to(ACCUMULATE)
    m, n = a.shape[-2], a.shape[-1]
    if m == 0 or n == 0:
        return torch.zeros(a.shape[:-2], dtype=ACCUMULATE, device=a.device)
    gram = a @ a.mT if m <= n else a.mT @ a
    lam = torch.linalg.eigvalsh(gram)[..., -1]
    return lam.clamp_min(0.0).sqrt()


def row_norms(matrix: torch.Tensor) -> torch.Tensor:
    """l2 norm of each row of ``matrix`` (..., m, n) in float64, shape (..., m)."""
    return torch.linalg.vector_norm(matrix.to(ACCUMULATE), ord=2, dim=-1)


def column_norms(matrix: torch.Tensor) -> torch.Tensor:
    """l2 norm of each column of ``matrix`` (..., m, n) in float64, shape (..., n)."""
    return torch.linalg.vector_norm(matrix.to(ACCUMULATE), ord=2, dim=-2)


def vector_stats(values: torch.Tensor, prefix: str) -> dict[str, float]:
    """``{prefix}_mean``, ``{prefix}_var`` (population variance, ddof=0) and ``{prefix}_max`` of a 1-D tensor."""
    v = values.to(ACCUMULATE).flatten()
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_var": float(v.var(unbiased=False)),
            f"{prefix}_max": float(v.max())}


def matrix_norm_record(matrix: torch.Tensor) -> dict[str, float]:
    """All per-matrix numbers of ``norms weights`` for one W (d_out, d_in): ``frobenius_norm``,
    ``spectral_norm``, and mean/var/max of the column and row l2 norms."""
    w = matrix.detach().to(ACCUMULATE)
    return {
        "frobenius_norm": float(frobenius_norm(w)),
        "spectral_norm": float(spectral_norm(w)),
        **vector_stats(column_norms(w), "column_norm"),
        **vector_stats(row_norms(w), "row_norm"),
    }


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares fit of log(norm) = log(c) + b log(N).

    Attributes:
        exponent: b.
        coefficient: c.
        exponent_ci_low / exponent_ci_high: 95% confidence interval of b (Student t, n-2 dof).
        r_squared: coefficient of determination in log-log space.
        num_points: number of (N, norm) pairs with N > 0 and norm > 0 used.
    """

    exponent: float
    coefficient: float
    exponent_ci_low: float
    exponent_ci_high: float
    r_squared: float
    num_points: int


def fit_power_law(num_tokens, norms) -> PowerLawFit:
    """Fit norm ~ c * N^b by ordinary least squares on (log N, log norm).

    Args:
        num_tokens: 1-D array-like of N (> 0).
        norms: 1-D array-like of norms, same length. Pairs with a non-positive or non-finite value
            are dropped.

    Returns:
        :class:`PowerLawFit`; with fewer than 2 distinct N all fields are NaN (and with exactly 2
        points the confidence interval is NaN).

    The 95% interval is b +- t_{0.975, n-2} * se(b), se(b) = sqrt(RSS/(n-2) / sum (x - mean x)^2)
    (standard simple linear regression).
    """
    x = np.asarray(num_tokens, dtype=np.float64)
    y = np.asarray(norms, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    n = int(x.size)
    nan = float("nan")
    if n < 2 or np.ptp(x) == 0:
        return PowerLawFit(nan, nan, nan, nan, nan, n)
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    b = float(((x - xm) * (y - ym)).sum() / sxx)
    a = float(ym - b * xm)
    resid = y - (a + b * x)
    rss = float((resid ** 2).sum())
    tss = float(((y - ym) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else 1.0
    if n > 2:
        from scipy.stats import t as student_t

        se = math.sqrt(rss / (n - 2) / sxx)
        half = float(student_t.ppf(0.975, n - 2)) * se
        low, high = b - half, b + half
    else:
        low = high = nan
    return PowerLawFit(b, math.exp(a), low, high, r2, n)


# --- Large matrices: blocked float64 statistics and a fast spectral norm --------------------------
#
# A weight matrix of a 7B-70B model is read in its stored dtype (bf16) and never converted to float64
# whole: every pass walks blocks of the *long* side (rows of W when d_out >= d_in, else columns), so
# the extra memory is one block in float64 plus, for the fast spectral norm, at most one float32 copy
# of W no larger than ``cache_bytes`` (blocks are converted again on every pass above that).

BLOCK_BYTES = 16 * 2 ** 20          # float64 bytes of one block of the long side
CACHE_BYTES = 192 * 2 ** 20         # a float32 copy of W up to this size is kept for the Krylov passes
EXACT_BELOW = 512                   # short side up to this: the exact Gram path (as cheap as the fast one)
SPECTRAL_RTOL = 1e-6                # required relative accuracy of the fast spectral norm


@dataclass(frozen=True)
class MatrixStats:
    """Norms of one matrix A (m, n), all float64.

    Attributes:
        frobenius_norm: ||A||_F.
        spectral_norm: ||A||_2.
        row_norms: (m,) l2 norm of each row; column_norms: (n,) of each column (float64 tensors).
        method: ``"gram"`` (float64 Gram matrix of the short side + ``eigvalsh``: relative error
            ~1e-15), ``"krylov"`` (the fast path, :func:`krylov_spectral_norm`) or
            ``"gram-fallback"`` (fast path did not meet ``SPECTRAL_RTOL``; exact path used).
        spectral_error_bound: relative a-posteriori error bound of ``spectral_norm`` (see
            :func:`krylov_spectral_norm`); 0.0 for the exact path (float64 rounding only).
        iterations: Krylov block steps (0 for the exact path).
    """

    frobenius_norm: float
    spectral_norm: float
    row_norms: torch.Tensor
    column_norms: torch.Tensor
    method: str
    spectral_error_bound: float
    iterations: int


class LongSideBlocks:
    """A (m, n) seen as L = the long side: ``A_L`` is ``A`` (m >= n) or ``A^T`` (m < n), shape (long, short).

    ``blocks(dtype)`` yields ``(start, X)`` with X = ``A_L[start:start+b]`` converted to ``dtype``
    (b chosen so a float64 block is at most ``block_bytes``); no whole-matrix copy is made.
    """

    def __init__(self, matrix: torch.Tensor, block_bytes: int = BLOCK_BYTES):
        self.matrix = matrix
        self.transposed = matrix.shape[0] < matrix.shape[1]
        self.long_side = matrix.T if self.transposed else matrix
        self.long, self.short = self.long_side.shape
        self.block = max(1, block_bytes // (8 * max(1, self.short)))

    def blocks(self, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.long, self.block):
            yield start, self.long_side[start:start + self.block].to(dtype)


def blocked_gram(matrix: torch.Tensor, block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """Gram matrix of the short side of ``matrix`` (m, n), accumulated in float64 over blocks of the
    long side: ``A^T A`` (n, n) when m >= n, else ``A A^T`` (m, m). Equal to the whole-tensor product
    up to float64 summation order."""
    view = LongSideBlocks(matrix, block_bytes)
    gram = torch.zeros(view.short, view.short, dtype=ACCUMULATE, device=matrix.device)
    for _, x in view.blocks(ACCUMULATE):
        gram.addmm_(x.T, x)
    return gram


def _long_norms(view: LongSideBlocks) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(norms along the long side index (long,), norms along the short side index (short,), all finite)."""
    long_sq = torch.empty(view.long, dtype=ACCUMULATE, device=view.matrix.device)
    short_sq = torch.zeros(view.short, dtype=ACCUMULATE, device=view.matrix.device)
    finite = True
    for start, x in view.blocks(ACCUMULATE):
        finite = finite and bool(torch.isfinite(x).all())
        sq = x * x
        long_sq[start:start + x.shape[0]] = sq.sum(dim=1)
        short_sq += sq.sum(dim=0)
    return long_sq.sqrt(), short_sq.sqrt(), finite


def all_finite(matrix: torch.Tensor, block_bytes: int = BLOCK_BYTES) -> bool:
    """Whether every entry of ``matrix`` (m, n) is finite, checked block by block (no (m, n) bool copy)."""
    view = LongSideBlocks(matrix, block_bytes)
    step = max(1, view.block * 4)
    return all(bool(torch.isfinite(view.long_side[s:s + step]).all()) for s in range(0, view.long, step))


@dataclass(frozen=True)
class KrylovResult:
    """Result of :func:`krylov_spectral_norm`: ``sigma`` (float64 Rayleigh quotient, a lower bound
    of ||A||_2), ``bound`` (relative a-posteriori error bound), ``iterations``, ``converged``."""

    sigma: float
    bound: float
    iterations: int
    converged: bool


def krylov_spectral_norm(matrix: torch.Tensor, *, block_size: int = 32, max_steps: int = 60,
                         rtol: float = SPECTRAL_RTOL, seed: int = 0, cache_bytes: int = CACHE_BYTES,
                         block_bytes: int = BLOCK_BYTES) -> KrylovResult:
    """Largest singular value of ``matrix`` (m, n) by block Lanczos in float32, certified in float64.

    Method: block Krylov iteration on G = A_L^T A_L (the Gram matrix of the short side, never
    formed) from a seeded Gaussian start block of ``block_size`` columns, with full
    reorthogonalisation and Rayleigh-Ritz on the whole Krylov basis after every step, in float32
    (A_L is cached in float32 when that copy is at most ``cache_bytes``, else converted block by
    block on every pass). When the top Ritz value changes by less than ``rtol`` relative in
    one step (and then every second step until certified), the top ``c`` Ritz vectors V (c: the index of the largest relative gap
    theta_c - theta_{c+1} among the top half of the block) are refined in float64: the Rayleigh-Ritz
    values theta_i of V^T G V and the residuals R = G V Y - V Y Theta are computed in float64.

    Bound: theta_1 <= lambda_1 = ||A||_2^2 always (Cauchy interlacing; float64 rounding ~1e-15), so
    ``sigma`` = sqrt(theta_1) never overestimates. Above it, the Kato-Temple / Knyazev bound for a
    Ritz cluster, lambda_1 - theta_1 <= ||R||_2^2 / (theta_c - lambda_{c+1}), with theta_{c+1} in
    place of lambda_{c+1}, gives the relative bound on sigma:
    ``bound = ||R||_2^2 / (theta_c - theta_{c+1}) / (2 theta_1)``. It is a guarantee when
    theta_{c+1} >= lambda_{c+1} is converged, and assumes that the random start block is not
    orthogonal to the top singular vector (probability 0 for a Gaussian start). Iteration continues
    until ``bound <= rtol`` or ``max_steps``; ``converged`` says which.

    Returns:
        :class:`KrylovResult`.
    """
    view = LongSideBlocks(matrix, block_bytes)
    long, short = view.long, view.short
    device = matrix.device
    p = max(1, min(block_size, short // 2))
    cached = None
    if long * short * 4 <= cache_bytes:
        cached = view.long_side.to(torch.float32)

    def apply(q: torch.Tensor, dtype=torch.float32) -> torch.Tensor:  # A_L q: (long, k)
        if cached is not None and dtype == torch.float32:
            return cached @ q
        out = torch.empty(long, q.shape[1], dtype=dtype, device=device)
        for start, x in view.blocks(dtype):
            out[start:start + x.shape[0]] = x @ q
        return out

    def apply_t(u: torch.Tensor, dtype=torch.float32) -> torch.Tensor:  # A_L^T u: (short, k)
        if cached is not None and dtype == torch.float32:
            return cached.T @ u
        out = torch.zeros(short, u.shape[1], dtype=dtype, device=device)
        for start, x in view.blocks(dtype):
            out.addmm_(x.T, u[start:start + x.shape[0]])
        return out

    gen = torch.Generator(device="cpu").manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(short, p, generator=gen, dtype=torch.float32).to(device))
    result = KrylovResult(0.0, math.inf, 0, False)
    if 2 * p > short:  # no room for a second block: caller should use the exact Gram path
        return result
    blocks = min(max_steps, short // p - 1) + 1
    capacity = p * min(blocks, 24)  # grown by doubling: most matrices converge within 24 blocks
    basis = torch.empty(short, capacity, dtype=torch.float32, device=device)   # V, filled block by block
    images = torch.empty(long, capacity, dtype=torch.float32, device=device)   # A_L V
    basis[:, :p] = q
    images[:, :p] = apply(q)
    small = (images[:, :p].T @ images[:, :p]).to(ACCUMULATE)  # V^T G V = (A V)^T (A V)
    previous, next_check = 0.0, 1
    for step in range(1, blocks):
        k = step * p
        if k + p > basis.shape[1]:
            capacity = min(2 * basis.shape[1], p * blocks)
            basis = torch.cat([basis[:, :k], basis.new_empty(short, capacity - k)], dim=1)
            images = torch.cat([images[:, :k], images.new_empty(long, capacity - k)], dim=1)
        q = _next_block(apply_t(images[:, k - p:k]), basis[:, :k], gen)
        aq = apply(q)
        grown = torch.empty(k + p, k + p, dtype=ACCUMULATE, device=device)
        grown[:k, :k] = small
        grown[:k, k:] = (images[:, :k].T @ aq).to(ACCUMULATE)
        grown[k:, :k] = grown[:k, k:].T
        grown[k:, k:] = (aq.T @ aq).to(ACCUMULATE)
        small = grown
        basis[:, k:k + p] = q
        images[:, k:k + p] = aq
        del aq
        theta = float(torch.linalg.eigvalsh(small)[-1])
        last = step == blocks - 1
        settled = abs(theta - previous) <= rtol * abs(theta)
        previous = theta
        if not (last or (settled and step >= next_check)):
            continue
        result = _certify(basis[:, :k + p], small, apply, apply_t, p, step, rtol)
        if result.bound <= rtol or last:
            return result
        next_check = step + 2  # float64 certification costs about two float32 steps: not after every step
    return result


def _next_block(z: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal block spanning the part of ``z`` orthogonal to the orthonormal basis ``v``.

    Classical Gram-Schmidt twice, then QR, then once more against ``v`` (a column that cancelled to
    rounding noise is noise after normalisation). Columns that cancel completely (the Krylov space
    is invariant: e.g. a low-rank matrix) are replaced by random directions, so the basis stays
    orthonormal and Rayleigh-Ritz stays valid."""
    before = torch.linalg.vector_norm(z, dim=0)
    for _ in range(2):
        z = z - v @ (v.T @ z)
    after = torch.linalg.vector_norm(z, dim=0)
    lost = after <= 1e-4 * before.clamp_min(torch.finfo(z.dtype).tiny)
    if bool(lost.any()):
        fresh = torch.randn(z.shape[0], int(lost.sum()), generator=gen, dtype=torch.float32).to(z)
        for _ in range(2):
            fresh = fresh - v @ (v.T @ fresh)
        z[:, lost] = fresh
    q, _ = torch.linalg.qr(z)
    for _ in range(2):
        q = q - v @ (v.T @ q)
    q, _ = torch.linalg.qr(q)
    return q


def _certify(v: torch.Tensor, small: torch.Tensor, apply, apply_t, p: int, step: int,
             rtol: float = SPECTRAL_RTOL) -> KrylovResult:
    """Float64 Rayleigh-Ritz and residual bound of :func:`krylov_spectral_norm` on the top Ritz cluster."""
    evals, evecs = torch.linalg.eigh(small)
    evals, evecs = evals.flip(0), evecs.flip(1)
    half = max(1, min(p, evals.numel() - 1) // 2)
    top = evals[0].clamp_min(torch.finfo(ACCUMULATE).tiny)
    gaps = (evals[:half] - evals[1:half + 1]) / top
    c = int(gaps.argmax()) + 1
    ritz = v.to(ACCUMULATE) @ evecs[:, :c + 1].to(v.device)     # top c vectors and the next one
    ritz, _ = torch.linalg.qr(ritz)
    av = apply(ritz, ACCUMULATE)
    h = av.T @ av                                              # (c+1, c+1) Rayleigh-Ritz in float64
    theta, y = torch.linalg.eigh(h)
    theta, y = theta.flip(0), y.flip(1)
    x = ritz @ y[:, :c]
    residual = apply_t(av @ y[:, :c], ACCUMULATE) - x * theta[:c]
    res = float(torch.linalg.matrix_norm(residual, ord=2))
    theta1 = float(theta[0])
    if theta1 <= 0.0:
        return KrylovResult(0.0, 0.0 if res == 0.0 else math.inf, step, res == 0.0)
    gap = float(theta[c - 1] - max(float(theta[c]), float(evals[c])))
    bound = math.inf if gap <= 0 else res * res / gap / (2 * theta1)
    bound = min(bound, res / theta1)  # some eigenvalue lies within ||r|| of theta_1 (no gap needed)
    return KrylovResult(math.sqrt(theta1), bound, step, bound <= rtol)


def matrix_stats(matrix: torch.Tensor, *, exact: bool = False, rtol: float = SPECTRAL_RTOL,
                 exact_below: int = EXACT_BELOW, block_bytes: int = BLOCK_BYTES,
                 cache_bytes: int = CACHE_BYTES, seed: int = 0) -> MatrixStats:
    """Frobenius norm, spectral norm, and row/column l2 norms of ``matrix`` (m, n), any dtype, without a
    whole-matrix float64 copy (blocks of the long side; see :class:`LongSideBlocks`).

    ``exact=True`` or a short side <= ``exact_below``: the spectral norm is sqrt(lambda_max) of the
    float64 Gram matrix of the short side (:func:`blocked_gram`) by ``eigvalsh`` (relative error
    ~1e-15, as :func:`spectral_norm`). Otherwise :func:`krylov_spectral_norm` (relative error bound
    ``rtol``, reported in ``spectral_error_bound``); when it cannot certify ``rtol`` the exact path is
    used (``method="gram-fallback"``). Row/column norms and the Frobenius norm are float64 sums of
    squares in every case. The matrix must be finite (check with :func:`all_finite`).
    """
    view = LongSideBlocks(matrix, block_bytes)
    long_norms, short_norms, _ = _long_norms(view)
    rows, cols = (short_norms, long_norms) if view.transposed else (long_norms, short_norms)
    frob = float(long_norms.square().sum().sqrt()) if long_norms.numel() else 0.0
    if min(matrix.shape) == 0:
        return MatrixStats(frob, 0.0, rows, cols, "gram", 0.0, 0)
    if not exact and view.short > exact_below:
        fast = krylov_spectral_norm(matrix, rtol=rtol, seed=seed, cache_bytes=cache_bytes, block_bytes=block_bytes)
        if fast.converged and fast.bound <= rtol:
            return MatrixStats(frob, fast.sigma, rows, cols, "krylov", fast.bound, fast.iterations)
        method = "gram-fallback"
    else:
        method = "gram"
    lam = torch.linalg.eigvalsh(blocked_gram(matrix, block_bytes))[-1]
    return MatrixStats(frob, float(lam.clamp_min(0.0).sqrt()), rows, cols, method, 0.0, 0)


def stats_record(stats: MatrixStats) -> dict[str, float]:
    """The per-matrix numbers of ``norms weights`` from :class:`MatrixStats` (as :func:`matrix_norm_record`)."""
    return {"frobenius_norm": stats.frobenius_norm, "spectral_norm": stats.spectral_norm,
            **vector_stats(stats.column_norms, "column_norm"), **vector_stats(stats.row_norms, "row_norm")}
