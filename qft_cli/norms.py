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
