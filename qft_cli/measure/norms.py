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
        finite: False when the matrix has a NaN or an infinity (the norms are NaN then).
    """

    frobenius_norm: float
    spectral_norm: float
    row_norms: torch.Tensor
    column_norms: torch.Tensor
    method: str
    spectral_error_bound: float
    iterations: int
    finite: bool = True


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
    return _float64_pass(LongSideBlocks(matrix, block_bytes), gram=True).gram


def all_finite(matrix: torch.Tensor, block_bytes: int = BLOCK_BYTES) -> bool:
    """Whether every entry of ``matrix`` (m, n) is finite, checked block by block (no (m, n) bool copy)."""
    view = LongSideBlocks(matrix, block_bytes)
    step = max(1, view.block * 4)
    return all(bool(torch.isfinite(view.long_side[s:s + step]).all()) for s in range(0, view.long, step))


@dataclass(frozen=True)
class KrylovResult:
    """Result of :func:`krylov_spectral_norm`: ``sigma`` (float64 Rayleigh quotient, a lower bound
    of ||A||_2), ``bound`` (relative a-posteriori error bound), ``iterations`` (block steps),
    ``converged`` (``bound <= rtol``), ``finite`` (False: a product G Q was not finite, so A
    has a NaN or an infinity, or G overflows float32; nothing else is meaningful then) and
    ``certifications`` (float64 passes over A made to certify)."""

    sigma: float
    bound: float
    iterations: int
    converged: bool
    finite: bool = True
    certifications: int = 0


FUSED_BYTES = 8 * 2 ** 20   # float32 bytes of one row block of A_L in the fused product A_L^T (A_L Q)
KRYLOV_BLOCK = 16          # columns per block step (16: fastest on 4096-wide random matrices, vs 8-64)
MAX_STEPS = 100             # block steps before the exact path is used instead
STREAM_BYTES = 2 * 2 ** 20  # float64 bytes of one block in a pass without the Gram matrix
CERTIFY_AT = 0.8            # certify in float64 once the float32 estimate is below this * rtol (it is close)


@dataclass
class _Float64Pass:
    """What one float64 pass over A_L (long, short) computed (see :func:`_float64_pass`)."""

    long_sq: torch.Tensor | None = None      # (long,) squared l2 norms of the rows of A_L
    short_sq: torch.Tensor | None = None     # (short,) squared l2 norms of the columns of A_L
    gram: torch.Tensor | None = None         # (short, short) A_L^T A_L
    image_gram: torch.Tensor | None = None   # (r, r) (A_L X)^T (A_L X)
    gram_times: torch.Tensor | None = None   # (short, r) A_L^T A_L X


def _float64_pass(view: LongSideBlocks, *, stats: bool = False, gram: bool = False,
                  vectors: torch.Tensor | None = None, scale: float = 1.0) -> _Float64Pass:
    """One pass over the float64 blocks of A_L, accumulating what is asked: the squared row and
    column norms (``stats``), the Gram matrix of the short side (``gram``), and for float64
    ``vectors`` X (short, r) both (A_L X)^T (A_L X) and A_L^T A_L X. One conversion of each block
    serves all of them; a NaN or infinity in A makes the squared norms non-finite. Blocks are
    ``view.block`` rows for the Gram matrix (each block updates all of it), else at most
    ``STREAM_BYTES`` (they stay in cache between the products: about 1.7x faster). ``scale`` (a power
    of two, so exact) multiplies every block first: the pass is then of ``scale * A``."""
    device = view.matrix.device
    out = _Float64Pass()
    if stats:
        out.long_sq = torch.empty(view.long, dtype=ACCUMULATE, device=device)
        out.short_sq = torch.zeros(view.short, dtype=ACCUMULATE, device=device)
    if gram:
        out.gram = torch.zeros(view.short, view.short, dtype=ACCUMULATE, device=device)
    if vectors is not None:
        out.image_gram = torch.zeros(vectors.shape[1], vectors.shape[1], dtype=ACCUMULATE, device=device)
        out.gram_times = torch.zeros(view.short, vectors.shape[1], dtype=ACCUMULATE, device=device)
    rows = view.block if gram else min(view.block, max(1, STREAM_BYTES // (8 * max(1, view.short))))
    for start in range(0, view.long, rows):
        x = view.long_side[start:start + rows].to(ACCUMULATE)
        if scale != 1.0:
            x *= scale
        if stats:
            sq = x * x
            out.long_sq[start:start + x.shape[0]] = sq.sum(dim=1)
            out.short_sq += sq.sum(dim=0)
            del sq
        if gram:
            out.gram.addmm_(x.T, x)
        if vectors is not None:
            image = x @ vectors
            out.image_gram.addmm_(image.T, image)
            out.gram_times.addmm_(x.T, image)
    return out


def _split_bf16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32) = hi + lo + O(2^-17 |x|) with hi, lo in bfloat16."""
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.to(torch.float32)).to(torch.bfloat16)


def bf16_product(a: torch.Tensor, x: torch.Tensor, *, left: bool = True) -> torch.Tensor:
    """``a @ x`` (``left``) or ``x @ a`` for a bfloat16 matrix ``a`` and a float32 ``x``, in float32,
    with bfloat16 matrix products only (AMX / AVX512-BF16 on CPU, several times float32's speed).

    With x = x_hi + x_lo (both bfloat16) and A exact in bfloat16: y0 = bf16(A x_hi); r = bf16(A x_hi
    - y0), one ``addmm`` with beta = -1, whose float32 accumulator is rounded once (checked by
    :func:`bf16_products_are_accurate`); then A x = y0 + r + bf16(A x_lo) with a relative error
    of about 2^-17 (1e-5 measured: 4e-6 on random 4096^2 matrices). Two matrix products of
    ``a``, with 2p and p columns.

    Shapes: ``a`` (r, c) bfloat16; ``left``: x (c, p) -> (r, p); else x (p, r) -> (p, c).
    """
    hi, lo = _split_bf16(x)
    dim = 1 if left else 0                        # the axis of x's columns (left) or rows (right) in y
    pair = torch.cat([hi, lo], dim=dim)
    y0, y_lo = (a @ pair if left else pair @ a).split(x.shape[dim], dim=dim)
    r = torch.addmm(y0, a, hi, beta=-1) if left else torch.addmm(y0, hi, a, beta=-1)
    out = y0.to(torch.float32)
    out += y_lo
    out += r
    return out


_BF16_ACCURATE: dict[str, bool] = {}


def bf16_products_are_accurate(device: torch.device | str = "cpu") -> bool:
    """Whether :func:`bf16_product` is fast and accurate here: on a CPU with AMX or AVX512-BF16, and
    within 1e-5 relative of float64 on a seeded test (a build whose bf16 ``addmm`` rounded twice
    would be off by ~2e-3). Checked once per process."""
    device = torch.device(device)
    if device.type != "cpu":
        return False
    if "cpu" not in _BF16_ACCURATE:
        fast = False
        try:
            fast = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
        except AttributeError:
            pass
        ok = False
        if fast:
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(256, 192, generator=gen).to(torch.bfloat16)
            x = torch.randn(192, 8, generator=gen)
            xt = torch.randn(8, 256, generator=gen)
            ref_left = a.double() @ x.double()
            ref_right = xt.double() @ a.double()
            err = max(float((bf16_product(a, x).double() - ref_left).norm() / ref_left.norm()),
                      float((bf16_product(a, xt, left=False).double() - ref_right).norm() / ref_right.norm()))
            ok = err <= 1e-5
        _BF16_ACCURATE["cpu"] = ok
    return _BF16_ACCURATE["cpu"]


def _gram_operator(view: LongSideBlocks, cache_bytes: int, fused_bytes: int = FUSED_BYTES, bf16: bool | None = None):
    """``apply(qt) -> (A_L^T A_L qt^T)^T`` in float32 for row blocks ``qt`` (r, short).

    A stored in bfloat16 on a CPU where :func:`bf16_products_are_accurate` (``bf16=None``: auto):
    both products by :func:`bf16_product` on A as stored (relative error ~1e-5, which leaves the
    Krylov convergence as in float32), with a bfloat16 transposed copy of A when A is at most
    ``cache_bytes / 2`` (then both products have A as the left operand, the faster form).

    Otherwise, in float32: a row-major float32 copy of A_L is kept when it is at most
    ``cache_bytes`` (for A_L = A^T the transpose is made in the stored dtype first, then converted:
    briefly one more copy of A as stored); otherwise every call converts blocks of the long side
    again. The product is fused block by block, A_L^T A_L Q = sum_b X_b^T (X_b Q), so each block
    is read once per call while it is in cache (about 20% faster than two whole products on a
    2-core Xeon)."""
    device = view.matrix.device
    a = view.matrix
    if bf16 is None:
        bf16 = a.dtype == torch.bfloat16 and bf16_products_are_accurate(device)
    if bf16:
        a = a.to(torch.bfloat16)
        if not a.is_contiguous():
            a = a.contiguous()
        along = a.T if view.transposed else a          # A_L, a transposed view when A_L = A^T
        if a.numel() * 2 <= cache_bytes // 2:
            other = a.T.contiguous()                     # bfloat16 copy of A^T
            along, across = (other, a) if view.transposed else (a, other)   # A_L and A_L^T, row-major
            return lambda qt: bf16_product(across, bf16_product(along, qt.T.contiguous())).T
        if view.transposed:                              # A_L^T = a row-major: (Q^T A_L^T) then A_L^T W
            return lambda qt: bf16_product(a, bf16_product(a, qt, left=False).T.contiguous()).T
        return lambda qt: bf16_product(a, bf16_product(a, qt.T.contiguous()).T.contiguous(), left=False)
    cached = None
    if view.long * view.short * 4 <= cache_bytes:
        if view.transposed:
            cached = view.long_side.contiguous().to(torch.float32)  # transpose in the stored dtype: fast
        else:
            cached = view.matrix.to(torch.float32, memory_format=torch.contiguous_format)
    rows = max(1, fused_bytes // (4 * max(1, view.short)))

    def apply(qt: torch.Tensor) -> torch.Tensor:
        zt = torch.zeros(qt.shape[0], view.short, dtype=torch.float32, device=device)
        q = qt.T
        for start in range(0, view.long, rows):
            x = cached[start:start + rows] if cached is not None else view.long_side[start:start + rows].to(torch.float32)
            zt.addmm_((x @ q).T, x)
        return zt

    return apply


def krylov_spectral_norm(matrix: torch.Tensor, *, block_size: int = KRYLOV_BLOCK, max_steps: int = MAX_STEPS,
                         rtol: float = SPECTRAL_RTOL, seed: int = 0, cache_bytes: int = CACHE_BYTES,
                         block_bytes: int = BLOCK_BYTES) -> KrylovResult:
    """Largest singular value of ``matrix`` (m, n) by block Lanczos in float32, certified in float64.

    Method: block Lanczos on G = A_L^T A_L (the Gram matrix of the short side, never formed; see
    :class:`LongSideBlocks`) from a seeded Gaussian start block of ``block_size`` columns, with full
    reorthogonalisation (classical Gram-Schmidt twice), all in float32 with A's float32 copy (see
    :func:`_gram_operator`). The projections give T = V^T G V and the block recurrence
    G V = V T + Q_next B E^T, so after every step the Ritz values theta_i of T and the residual of
    the top-c Ritz cluster, ||B Y_last[:, :c]||_2, cost no pass over A. They estimate the bound below
    for every c up to the block size; the c with the smallest estimate is certified in float64 once
    the estimate is below ``CERTIFY_AT * rtol`` (and again, later, if the certificate fails).

    Certificate (float64, one pass over A, :func:`_float64_pass`): the top c + 1 Ritz vectors are
    orthonormalised (QR), and the Rayleigh-Ritz values theta_i of X^T G X and the residual
    R = G X Y - X Y Theta of the top c are computed from the float64 A. theta_1 <= lambda_1 =
    ||A||_2^2 always (Cauchy interlacing; float64 rounding ~1e-15), so ``sigma`` = sqrt(theta_1)
    never overestimates. Above it, the Kato-Temple / Knyazev bound for a Ritz cluster,
    lambda_1 - theta_1 <= ||R||_2^2 / (theta_c - lambda_{c+1}), with the larger of the two
    estimates of lambda_{c+1} (float64 theta_{c+1}, float32 Ritz value c + 1) in its place, gives
    the relative bound on sigma, ``bound = ||R||_2^2 / (theta_c - lambda_{c+1}) / (2 theta_1)``
    (capped by ||R||_2 / theta_1). It is a guarantee when that estimate of lambda_{c+1} is
    converged, and assumes that the random start block is not orthogonal to the top singular vector
    (probability 0 for a Gaussian start). Iteration stops when ``bound <= rtol`` or after
    ``max_steps`` (``converged`` says which).

    Cost: about 2 float32 passes over A per block step (random Gaussian matrices, whose top
    singular values cluster at the Marchenko-Pastur edge, need ~20 steps of 32 columns; trained
    weights far fewer) plus one float64 pass per certificate.

    Returns:
        :class:`KrylovResult`.
    """
    result, _ = _krylov(LongSideBlocks(matrix, block_bytes), block_size=block_size, max_steps=max_steps,
                        rtol=rtol, seed=seed, cache_bytes=cache_bytes, stats=False)
    return result


def _krylov(view: LongSideBlocks, *, block_size: int, max_steps: int, rtol: float, seed: int,
            cache_bytes: int, stats: bool) -> tuple[KrylovResult, _Float64Pass | None]:
    """:func:`krylov_spectral_norm` on ``view``; with ``stats`` the first certificate's pass also
    returns the squared row/column norms (else ``None`` is returned with them)."""
    short = view.short
    device = view.matrix.device
    p = max(1, min(block_size, short // 2))
    if 2 * p > short:  # no room for a second block: caller should use the exact Gram path
        return KrylovResult(0.0, math.inf, 0, False), None
    apply = _gram_operator(view, cache_bytes)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    nblocks = min(max_steps, short // p - 1) + 1     # basis of at most nblocks * p < short columns
    capacity = p * min(nblocks, 24)                  # grown by doubling: most matrices need fewer
    basis = torch.empty(capacity, short, dtype=torch.float32, device=device)   # rows: V^T
    t = torch.zeros(capacity, capacity, dtype=ACCUMULATE, device=device)       # V^T G V
    q0, _ = torch.linalg.qr(torch.randn(short, p, generator=gen, dtype=torch.float32).to(device))
    basis[:p] = q0.T
    trigger, history, next_check = CERTIFY_AT * rtol, [], 0
    sums, certifications = None, 0
    result = KrylovResult(0.0, math.inf, 0, False)
    for j in range(nblocks):
        k = (j + 1) * p
        zt = apply(basis[j * p:k])                   # (G Q_j)^T: (p, short)
        if not bool(torch.isfinite(zt).all()):       # NaN/inf in A, or G Q_j overflows float32 (||A||_2 > ~1e19)
            return KrylovResult(math.nan, math.inf, 0, False, finite=False), None
        v = basis[:k]
        c1 = zt @ v.T
        zt -= c1 @ v
        c2 = zt @ v.T
        zt -= c2 @ v
        coeffs = (c1 + c2).to(ACCUMULATE)            # V^T G Q_j: block column j of T
        t[:k, j * p:k] = coeffs.T
        t[j * p:k, :j * p] = coeffs[:, :j * p]
        diag = t[j * p:k, j * p:k]
        t[j * p:k, j * p:k] = (diag + diag.T) / 2
        last = j == nblocks - 1
        q_next = _orthonormal_block(zt, v, gen)     # (p, short)
        b = (q_next @ zt.T).to(ACCUMULATE)           # G Q_j = V C + Q_next B
        if not bool(torch.isfinite(coeffs).all() and torch.isfinite(b).all()):   # G overflows float32
            return KrylovResult(math.nan, math.inf, 0, False, finite=False), None
        if last or j >= next_check:
            theta, bound, c, evecs = _estimate(t[:k, :k], b, p)
            history.append((j, bound))
            if k >= 2 and (bound <= trigger or last):   # k = 1: nothing beyond the cluster to certify against
                certified, pass_ = _certify(view, basis[:k], theta, evecs, c, stats=stats and sums is None)
                certifications += 1
                if pass_ is not None:
                    sums = pass_
                result = KrylovResult(certified.sigma, certified.bound, j + 1, certified.bound <= rtol,
                                      certifications=certifications)
                if result.converged or last:
                    return result, sums
                trigger *= 0.5 * min(1.0, bound / certified.bound)  # the estimate was optimistic
            elif last:
                return result, sums
            next_check = _next_check(j, k, history, trigger)
        if k + p > basis.shape[0]:
            grown = min(2 * basis.shape[0], p * nblocks)
            basis = torch.cat([basis, basis.new_empty(grown - basis.shape[0], short)])
            wider = t.new_zeros(grown, grown)
            wider[:k, :k] = t[:k, :k]
            t = wider
        basis[k:k + p] = q_next
        t[k:k + p, j * p:k] = b
        t[j * p:k, k:k + p] = b.T
    return result, sums


def _next_check(j: int, k: int, history: list[tuple[int, float]], trigger: float) -> int:
    """Block step of the next float32 estimate (each costs an eigen solve of T, k x k): the first
    two after steps 3 and 4, then predicted from the last two estimates' rate of decrease (which
    only grows: Krylov convergence accelerates), at most 4 steps on; 2 steps on while the estimate
    does not decrease."""
    if len(history) < 2:
        return max(j + 1, 3)
    (j0, b0), (j1, b1) = history[-2], history[-1]
    if not (b1 > trigger and 0 < b1 < b0 and j1 > j0):
        return j + 2
    rate = math.log(b0 / b1) / (j1 - j0)             # per step
    needed = math.log(b1 / trigger) / rate
    return j + max(1, min(4, int(0.8 * needed)))


def _estimate(t: torch.Tensor, b: torch.Tensor, p: int) -> tuple[torch.Tensor, float, int, torch.Tensor]:
    """Ritz values (descending), the smallest estimated bound over clusters c = 1..p, its c, and the
    Ritz vectors (descending) of T (k, k), from the residual coefficients B Y_last (no pass over A)."""
    theta, y = torch.linalg.eigh(t)
    theta, y = theta.flip(0), y.flip(1)
    top = float(theta[0])
    cmax = min(p, theta.numel() - 1)
    if top <= 0.0 or cmax < 1:  # cmax 0: a single Ritz value (block of 1 at step 0), no gap to bound with
        return theta, math.inf, 1, y
    coefficients = b @ y[-p:, :cmax]                 # residual of Ritz pair i: Q_next B y_i[last block]
    m = coefficients.T @ coefficients                # ||R_c||_2^2 = lambda_max of its leading c x c block
    leading = torch.zeros(cmax, cmax, cmax, dtype=m.dtype, device=m.device)
    for c in range(1, cmax + 1):
        leading[c - 1, :c, :c] = m[:c, :c]
    res2 = torch.linalg.eigvalsh(leading)[:, -1].clamp_min(0.0).tolist()
    gaps = (theta[:cmax] - theta[1:cmax + 1]).tolist()
    best, best_c = math.inf, 1
    for c in range(1, cmax + 1):
        if gaps[c - 1] <= 0.0:
            continue
        bound = min(res2[c - 1] / gaps[c - 1], math.sqrt(res2[c - 1])) / (2 * top)
        if bound < best:
            best, best_c = bound, c
    return theta, best, best_c, y


def _certify(view: LongSideBlocks, basis: torch.Tensor, ritz: torch.Tensor, y: torch.Tensor, c: int, *,
             stats: bool) -> tuple[KrylovResult, _Float64Pass | None]:
    """Float64 Rayleigh-Ritz and residual bound of :func:`krylov_spectral_norm` on the top-c Ritz
    cluster of the float32 basis (rows of ``basis``, Ritz vectors ``y`` of T, values ``ritz``)."""
    x = basis.T.to(ACCUMULATE) @ y[:, :c + 1].to(basis.device)   # top c vectors and the next one
    x, _ = torch.linalg.qr(x)
    done = _float64_pass(view, stats=stats, vectors=x)
    theta, w = torch.linalg.eigh(done.image_gram)            # (c+1, c+1) Rayleigh-Ritz in float64
    theta, w = theta.flip(0), w.flip(1)
    residual = done.gram_times @ w[:, :c] - (x @ w[:, :c]) * theta[:c]
    res = float(torch.linalg.matrix_norm(residual, ord=2))
    theta1 = float(theta[0])
    if theta1 <= 0.0:
        return KrylovResult(0.0, 0.0 if res == 0.0 else math.inf, 0, res == 0.0), done if stats else None
    gap = float(theta[c - 1]) - max(float(theta[c]), float(ritz[c]))
    bound = math.inf if gap <= 0 else res * res / gap / (2 * theta1)
    bound = min(bound, res / theta1)  # some eigenvalue lies within ||R|| of theta_1 (no gap needed)
    return KrylovResult(math.sqrt(theta1), bound, 0, bound <= SPECTRAL_RTOL), done if stats else None


def _orthonormal_block(zt: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Orthonormal rows (p, short) spanning the part of the rows of ``zt`` orthogonal to the
    orthonormal rows ``v`` (``zt`` already projected twice). Rows that cancelled completely (the
    Krylov space is invariant: e.g. a low-rank matrix) are replaced by random directions, so the
    basis stays orthonormal and Rayleigh-Ritz stays valid; QR, then once more against ``v``."""
    z = zt.T
    norms = torch.linalg.vector_norm(z, dim=0, dtype=ACCUMULATE)  # float32 squares overflow above ~1e19
    lost = norms <= 1e-6 * norms.max().clamp_min(torch.finfo(ACCUMULATE).tiny)
    if bool(lost.any()):
        z = z.clone()
        fresh = torch.randn(z.shape[0], int(lost.sum()), generator=gen, dtype=torch.float32).to(z)
        for _ in range(2):
            fresh = fresh - v.T @ (v @ fresh)
        z[:, lost] = fresh
    q, _ = torch.linalg.qr(z)
    q = q - v.T @ (v @ q)
    q, _ = torch.linalg.qr(q)
    return q.T.contiguous()


def matrix_stats(matrix: torch.Tensor, *, exact: bool = False, rtol: float = SPECTRAL_RTOL,
                 exact_below: int = EXACT_BELOW, block_bytes: int = BLOCK_BYTES,
                 cache_bytes: int = CACHE_BYTES, seed: int = 0) -> MatrixStats:
    """Frobenius norm, spectral norm, and row/column l2 norms of ``matrix`` (m, n), any dtype, without a
    whole-matrix float64 copy (blocks of the long side; see :class:`LongSideBlocks`).

    ``exact=True`` or a short side <= ``exact_below``: the spectral norm is sqrt(lambda_max) of the
    float64 Gram matrix of the short side (accumulated over blocks, as :func:`blocked_gram`) by
    ``eigvalsh`` (relative error ~1e-15, as :func:`spectral_norm`), in the same pass as the row and
    column norms. Otherwise :func:`krylov_spectral_norm` (relative error bound ``rtol``, reported in
    ``spectral_error_bound``), whose first float64 certificate pass also gives the row and column
    norms; when it cannot certify ``rtol`` the exact path is used (``method="gram-fallback"``).
    Row/column norms and the Frobenius norm are float64 sums of squares in every case.

    A matrix with a NaN or an infinity gets ``finite=False`` and NaN norms (its row/column norms
    are still returned); nothing raises. Finite entries too large to square in float64 (above ~1e154)
    are measured on the matrix scaled by a power of two (one more pass); a norm above the float64
    range (~1.8e308) is then ``inf``.
    """
    view = LongSideBlocks(matrix, block_bytes)
    if min(matrix.shape) == 0:
        empty = torch.zeros(0, dtype=ACCUMULATE, device=matrix.device)
        rows = torch.zeros(matrix.shape[0], dtype=ACCUMULATE, device=matrix.device) if matrix.shape[0] else empty
        cols = torch.zeros(matrix.shape[1], dtype=ACCUMULATE, device=matrix.device) if matrix.shape[1] else empty
        return MatrixStats(0.0, 0.0, rows, cols, "gram", 0.0, 0)
    sums, method = None, "gram"
    if not exact and view.short > exact_below:
        fast, sums = _krylov(view, block_size=KRYLOV_BLOCK, max_steps=MAX_STEPS, rtol=rtol, seed=seed, cache_bytes=cache_bytes,
                             stats=True)
        if fast.finite and fast.converged and sums is not None:
            return _stats(view, sums, fast.sigma, "krylov", fast.bound, fast.iterations)
        method = "gram-fallback" if fast.finite else "gram"
    done = _float64_pass(view, stats=sums is None, gram=True)
    sums = done if sums is None else sums
    scale = 1.0
    if not bool(torch.isfinite(sums.long_sq.sum())):
        if not all_finite(matrix):  # a NaN or an infinity
            return _stats(view, sums, math.nan, method, 0.0, 0, finite=False)
        # finite entries whose float64 squares overflow (above ~1e154: float64 input only): the same
        # pass over 2^-e A with the largest |entry| scaled into [0.5, 1), every norm scaled back
        peak = max(float(view.long_side[s:s + view.block].abs().max()) for s in range(0, view.long, view.block))
        scale = 2.0 ** -math.frexp(peak)[1]
        done = sums = _float64_pass(view, stats=True, gram=True, scale=scale)
    lam = torch.linalg.eigvalsh(done.gram)[-1]
    return _stats(view, sums, float(lam.clamp_min(0.0).sqrt()) / scale, method, 0.0, 0, scale)


def _stats(view: LongSideBlocks, sums: _Float64Pass, spectral: float, method: str, bound: float,
           iterations: int, scale: float = 1.0, finite: bool = True) -> MatrixStats:
    """:class:`MatrixStats` from the squared row/column norms of a float64 pass (over ``scale * A``);
    ``finite=False``: A has a NaN or an infinity, and the norms are NaN."""
    long_norms, short_norms = sums.long_sq.sqrt() / scale, sums.short_sq.sqrt() / scale
    rows, cols = (short_norms, long_norms) if view.transposed else (long_norms, short_norms)
    frob = float(sums.long_sq.sum().sqrt()) / scale if finite else math.nan
    return MatrixStats(frob, spectral if finite else math.nan, rows, cols, method, bound, iterations, finite)


def stats_record(stats: MatrixStats) -> dict[str, float]:
    """The per-matrix numbers of ``norms weights`` from :class:`MatrixStats` (as :func:`matrix_norm_record`)."""
    return {"frobenius_norm": stats.frobenius_norm, "spectral_norm": stats.spectral_norm,
            **vector_stats(stats.column_norms, "column_norm"), **vector_stats(stats.row_norms, "row_norm")}


def stable_rank(frobenius_norm, spectral_norm):
    """Stable rank ||A||_F^2 / ||A||_2^2 of matrices from their already measured norms.

    The factor by which the QRAM block encoding (alpha = ||A||_F) exceeds the optimal one
    (alpha = ||A||_2) is its square root (Guo et al., arXiv 2502.01146, ch. 5.3). Dimensionless,
    in [1, rank(A)].

    Args:
        frobenius_norm, spectral_norm: floats, numpy arrays or pandas Series of the same shape
            (float64, the matrix's units).

    Returns:
        The same type and shape, float64; NaN where the spectral norm is 0 or not finite.
    """
    import numpy as np

    f = np.asarray(frobenius_norm, dtype=np.float64)
    s = np.asarray(spectral_norm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.isfinite(s) & (s > 0), (f / np.where(s > 0, s, 1.0)) ** 2, np.nan)
    if hasattr(spectral_norm, "index"):
        import pandas as pd

        return pd.Series(out, index=spectral_norm.index, dtype="float64")
    return out if out.ndim else float(out)
