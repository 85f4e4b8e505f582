"""Quantum query count against classical operation count of one transformer layer (``qft cost``).

The formula is Theorem 5.1 of the authors' tutorial chapter (Guo, Yu, Rebentrost et al., arXiv
2502.01146, ch. 5.2 "Fault-tolerant Quantum Transformer"; the single-layer transformer of Guo et
al., "Quantum Transformer: Accelerating model inference via quantum linear algebra", arXiv
2402.16714, Sect. IV.6, which the chapter summarises):

    For a single-layer, single-head transformer with embedding dimension d and an input sequence
    S of length l = 2^N, under Assumption 5.2.1 (block encodings of W_q, W_k, W_v with one factor
    alpha_w, of M_1, M_2 with alpha_m, of S with alpha_s), an epsilon-accurate circuit for the
    state proportional to sum_k Transformer(S, j)_k |k> uses
    O~(d N^2 alpha_s alpha_w log^2(1/epsilon)) input block encodings.

Ch. 5.3 compares it with the classical single-layer inference cost O(l d + d^2) (naive matrix
multiplication) and, with alpha_s = O(sqrt(l)) and alpha_w = O(sqrt(d)) from the numerical
study, states O~(d^{3/2} sqrt(l)). alpha >= ||A||_2 for every block encoding; the QRAM data
structure gives one with alpha <= ||A||_F (ch. 5.3). alpha_m does **not** appear in Theorem 5.1's
count; qft reports it beside the count but, following the source, does not multiply it in.

This module is pure: tables in, tables out (no printing, no files). Reading run directories and
pairing them by weight hashes is here too (:func:`load_cost_inputs`), through ``qft_cli.runs``.
See docs/cost.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from qft_cli.measure.norms import fit_power_law
from qft_cli.runs.rundir import RUN_JSON, read_run_json
from qft_cli.system.errors import QftInputError

#: Largest sequence length of the default grid and of the crossover search (2^20 tokens).
MAX_LENGTH = 2 ** 20
#: Sequence lengths of the printed ratios.
SUMMARY_LENGTHS = (512, 4096, 32768)
#: ``norm`` label -> (column in norms tables, block encoding it stands for).
NORMS = {"spectral": ("spectral_norm", "optimal block encoding, alpha = ||A||_2"),
         "frobenius": ("frobenius_norm", "QRAM data structure, alpha = ||A||_F")}
ATTENTION_MATRICES = ("q", "k", "v")
FFN_MATRICES = ("ffn_gate", "ffn_up", "ffn_down")

COST_COLUMNS = ["model", "model_alias", "model_format", "dataset", "layer", "norm", "num_tokens", "num_qubits",
                "hidden_size", "epsilon", "constant", "num_samples_at_length", "alpha_s_measured", "alpha_s_fit",
                "alpha_s_fit_low", "alpha_s_fit_high", "alpha_s_exponent", "alpha_s_exponent_ci_low",
                "alpha_s_exponent_ci_high", "alpha_w", "alpha_m", "alpha_w_over_sqrt_d", "quantum_queries",
                "quantum_queries_low", "quantum_queries_high", "quantum_queries_measured", "classical_operations",
                "ratio", "ratio_low", "ratio_high", "ratio_measured", "extrapolated"]
CROSSOVER_COLUMNS = ["model", "model_alias", "model_format", "dataset", "norm", "layer", "hidden_size", "num_layers",
                     "alpha_w", "alpha_m", "alpha_w_over_sqrt_d", "alpha_s_exponent", "alpha_s_exponent_ci_low",
                     "alpha_s_exponent_ci_high", "crossover_length", "crossover_length_low", "crossover_length_high",
                     "max_length", "worst_layer", "ratio_at_512", "ratio_at_4096", "ratio_at_32768", "ratio_at_max_length",
                     "epsilon", "constant"]


# ----------------------------------------------------------------------------- the formulas

def num_qubits(num_tokens) -> np.ndarray:
    """N of Theorem 5.1 (arXiv 2502.01146): l = 2^N, other lengths padded to the next power of two
    (ch. 5.2: "padding techniques can be applied"), so N = ceil(log2 l), at least 1.

    Args:
        num_tokens: int or array of sequence lengths l >= 1.

    Returns:
        int64 array (or int) of N.
    """
    lengths = np.asarray(num_tokens, dtype=np.int64)
    if np.any(lengths < 1):
        raise QftInputError("sequence lengths must be >= 1 token")
    # exact for integers below 2^53: the bit length of l - 1 is frexp's exponent (0 for l = 1)
    n = np.maximum(1, np.frexp((lengths - 1).astype(np.float64))[1]).astype(np.int64)
    return n if n.ndim else int(n)


def quantum_queries(hidden_size: int, num_tokens, alpha_s, alpha_w, epsilon: float, constant: float = 1.0):
    """Input block encodings used by one layer: ``constant * d * N^2 * alpha_s * alpha_w * ln(1/eps)^2``.

    Theorem 5.1 of arXiv 2502.01146 (ch. 5.2; arXiv 2402.16714 Sect. IV.6): O~(d N^2 alpha_s
    alpha_w log^2(1/epsilon)). The O~ hides a constant and polylogarithmic factors that the source
    does not give: ``constant`` stands for them (default 1); the base of the logarithm is part of
    it (qft uses the natural logarithm).

    Args:
        hidden_size: d, the embedding dimension.
        num_tokens: l (int or array); N = :func:`num_qubits` (l).
        alpha_s, alpha_w: block-encoding factors of S and of W_q, W_k, W_v (floats or arrays,
            hidden-state units and weight units; their product is dimensionless in the count).
        epsilon: accuracy of the output state, 0 < epsilon < 1.
        constant: the hidden constant of the O~.

    Returns:
        float64 array (or float): a number of queries.

    Raises:
        QftInputError: epsilon not in (0, 1), d < 1, constant <= 0.
    """
    check_parameters(epsilon, constant)
    if hidden_size < 1:
        raise QftInputError(f"hidden size d must be >= 1, got {hidden_size}")
    n = np.asarray(num_qubits(num_tokens), dtype=np.float64)
    out = constant * hidden_size * n ** 2 * np.asarray(alpha_s, dtype=np.float64) * np.asarray(
        alpha_w, dtype=np.float64) * math.log(1.0 / epsilon) ** 2
    return out if np.ndim(out) else float(out)


def classical_operations(hidden_size: int, num_tokens):
    """Classical single-layer inference cost ``l d + d^2`` (arXiv 2502.01146 ch. 5.3: "the runtime
    of classical single-layer transformer inference is O(l d + d^2)", naive matrix multiplication),
    with constant 1.

    Args:
        hidden_size: d. num_tokens: l (int or array).

    Returns:
        float64 array (or float) of operations.
    """
    lengths = np.asarray(num_tokens, dtype=np.float64)
    out = lengths * hidden_size + float(hidden_size) ** 2
    return out if np.ndim(out) else float(out)


def worst_case_queries(hidden_size: int, num_tokens, constant: float = 1.0):
    """The worst-case count of arXiv 2502.01146 ch. 5.3, O~(d^{3/2} sqrt(l)) (alpha_s = O(sqrt l),
    alpha_w = O(sqrt d), N^2 and log^2(1/eps) inside the O~): ``constant * d^1.5 * sqrt(l)``."""
    out = constant * float(hidden_size) ** 1.5 * np.sqrt(np.asarray(num_tokens, dtype=np.float64))
    return out if np.ndim(out) else float(out)


def check_parameters(epsilon: float, constant: float) -> None:
    """Raise :class:`QftInputError` unless 0 < epsilon < 1 and constant > 0 (both finite)."""
    if not (math.isfinite(epsilon) and 0.0 < epsilon < 1.0):
        raise QftInputError(f"--epsilon must lie in (0, 1), got {epsilon}")
    if not (math.isfinite(constant) and constant > 0.0):
        raise QftInputError(f"--constant must be a positive number, got {constant}")


@dataclass(frozen=True)
class AlphaFit:
    """alpha_s(l) = coefficient * l^exponent with the 95% interval of the exponent.

    The interval of alpha_s at l turns the exponent about ``pivot`` (the geometric mean token
    count of the fitted samples, where a least-squares line is best determined):
    alpha(l) * (l / pivot)^(b_ci - b). The intercept's own uncertainty is not included.
    """

    exponent: float
    exponent_ci_low: float
    exponent_ci_high: float
    coefficient: float
    pivot: float
    num_tokens_min: int
    num_tokens_max: int

    def law(self, which: int) -> tuple[float, float]:
        """(coefficient, exponent) of the fit (0), the low (1) or high (2) bound: both bounds are
        power laws, c pivot^(b - b_ci) l^b_ci."""
        b = (self.exponent, self.exponent_ci_low, self.exponent_ci_high)[which]
        return self.coefficient * self.pivot ** (self.exponent - b), b

    def at(self, num_tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fit, low, high) of alpha_s at the lengths ``num_tokens`` (float64 arrays)."""
        length = np.asarray(num_tokens, dtype=np.float64)
        fit = self.coefficient * length ** self.exponent
        a = fit * (length / self.pivot) ** (self.exponent_ci_low - self.exponent)
        b = fit * (length / self.pivot) ** (self.exponent_ci_high - self.exponent)
        return fit, np.minimum(a, b), np.maximum(a, b)


def fit_alpha(num_tokens, norms, fit_row: Optional[dict] = None) -> AlphaFit:
    """The power law of alpha_s against l from the measured samples.

    Args:
        num_tokens, norms: the samples of one (model, dataset, layer, norm) (1-D, finite positive
            ones are used, as :func:`qft_cli.measure.norms.fit_power_law`).
        fit_row: the matching row of ``fits.parquet`` (``exponent``, ``exponent_ci_low/high``,
            ``coefficient``) when the run wrote one; its numbers are used (they are the same
            least-squares fit), the samples give the pivot.

    Raises:
        QftInputError: fewer than 3 usable samples or a single token count (no exponent interval).
    """
    x = np.asarray(num_tokens, dtype=np.float64)
    y = np.asarray(norms, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    fit = fit_power_law(x[keep], y[keep])
    if fit_row is not None and np.isfinite(fit_row.get("exponent", np.nan)):
        b, lo, hi, c = (float(fit_row[k]) for k in ("exponent", "exponent_ci_low", "exponent_ci_high", "coefficient"))
    else:
        b, lo, hi, c = fit.exponent, fit.exponent_ci_low, fit.exponent_ci_high, fit.coefficient
    if not all(np.isfinite(v) for v in (b, lo, hi, c)):
        raise QftInputError("alpha_s needs a power-law fit with an interval: measure at least 3 samples of "
                            "different token counts (e.g. `qft norms inputs MODEL --dataset random --max-tokens 256`)")
    return AlphaFit(b, lo, hi, c, float(np.exp(np.log(x[keep]).mean())), int(x[keep].min()), int(x[keep].max()))


def crossover_length(hidden_size: int, alpha_w: float, coefficient: float, exponent: float, epsilon: float,
                     constant: float = 1.0, max_length: int = MAX_LENGTH) -> Optional[int]:
    """The crossover length l*: the smallest integer l such that the quantum query count
    (:func:`quantum_queries` with alpha_s = coefficient * l^exponent) is at most the classical
    operation count for every length from l to ``max_length``.

    Exact over the integers without visiting each: within one block of equal N
    (2^(N-1) < l <= 2^N) the ratio is proportional to l^b / (l + d), whose derivative has the sign
    of b d - (1 - b) l, so it rises and then falls (or only rises, b >= 1): the last length of the
    block where it exceeds 1 is the block's end or is found by bisection on the falling part.

    Returns:
        l* (int), or None when the quantum count exceeds the classical one at ``max_length``
        ("none below 2^20").
    """
    check_parameters(epsilon, constant)
    d = float(hidden_size)
    k = constant * d * alpha_w * coefficient * math.log(1.0 / epsilon) ** 2

    def above(n: int, length: int) -> bool:
        return k * n * n * length ** exponent > length * d + d * d

    last_bad = 0
    top = max(1, int(max_length - 1).bit_length())
    for n in range(1, top + 1):
        lo, hi = (1 if n == 1 else 2 ** (n - 1) + 1), min(2 ** n, max_length)
        if lo > hi:
            break
        if above(n, hi):
            last_bad = hi
            continue
        peak = hi if exponent >= 1 else (exponent * d / (1 - exponent) if exponent > 0 else 0.0)
        candidates = {min(max(lo, int(math.floor(peak))), hi), min(max(lo, int(math.ceil(peak))), hi)}
        start = next((p for p in sorted(candidates, reverse=True) if above(n, p)), None)
        if start is None:
            continue
        good = hi  # invariant: above(start), not above(good), falling in between
        while good - start > 1:
            mid = (start + good) // 2
            if above(n, mid):
                start = mid
            else:
                good = mid
        last_bad = max(last_bad, start)
    if last_bad >= max_length:
        return None
    return last_bad + 1


# ----------------------------------------------------------------------------- factors from tables

def weight_factors(weights: pd.DataFrame, norm: str) -> pd.DataFrame:
    """alpha_w and alpha_m per block from a ``norms_weights`` table.

    alpha_w = max over W_q, W_k, W_v of the block (Assumption 5.2.1 of arXiv 2502.01146: one
    factor alpha_w for the three block encodings, so it must cover the largest; grouped-query k, v
    as the model stores them); alpha_m = max over the FFN matrices (``ffn_gate``, ``ffn_up``,
    ``ffn_down``). ``part`` (encoder/decoder) is pooled.

    Args:
        weights: rows of one model (columns ``layer``, ``matrix``, ``d_in``, the norm columns).
        norm: ``spectral`` or ``frobenius``.

    Returns:
        DataFrame with ``layer`` (block, >= 1), ``hidden_size`` (d = d_in of W_q), ``alpha_w``,
        ``alpha_m`` (NaN where the block has no FFN matrix).

    Raises:
        QftInputError: a block misses one of q, k, v.
    """
    column = NORMS[norm][0]
    rows = []
    blocks = weights[weights["layer"] >= 1]
    for layer, g in blocks.groupby("layer", sort=True):
        have = set(g["matrix"])
        if not set(ATTENTION_MATRICES) <= have:
            raise QftInputError(f"block {layer} of the norms weights run lacks "
                                f"{', '.join(sorted(set(ATTENTION_MATRICES) - have))}: re-run `qft norms weights`")
        att = g[g["matrix"].isin(ATTENTION_MATRICES)]
        ffn = g[g["matrix"].isin(FFN_MATRICES)]
        rows.append({"layer": int(layer), "hidden_size": int(att[att["matrix"] == "q"]["d_in"].iloc[0]),
                     "alpha_w": float(att[column].max()),
                     "alpha_m": float(ffn[column].max()) if len(ffn) else math.nan})
    return pd.DataFrame(rows, columns=["layer", "hidden_size", "alpha_w", "alpha_m"])


def parse_lengths(spec: Optional[str], measured: Iterable[int], max_length: int = MAX_LENGTH) -> list[int]:
    """``--lengths``: None = the measured lengths plus the powers of two up to ``max_length``;
    otherwise a comma list of ints (``512,4096``) and/or ``measured``/``pow2``.

    Raises:
        QftInputError: a length that is not an integer in [1, max_length].
    """
    items = ["measured", "pow2"] if spec is None else [s.strip() for s in spec.split(",") if s.strip()]
    out: set[int] = set()
    for item in items:
        if item == "measured":
            out.update(int(v) for v in measured)
        elif item == "pow2":
            out.update(2 ** k for k in range(0, int(math.log2(max_length)) + 1))
        else:
            try:
                value = int(item)
            except ValueError:
                raise QftInputError(f"--lengths: {item!r} is not a token count; give e.g. 512,4096 or measured,pow2") from None
            if not 1 <= value <= max_length:
                raise QftInputError(f"--lengths: {value} is outside 1..{max_length}")
            out.add(value)
    if not out:
        raise QftInputError("--lengths is empty; give e.g. 512,4096 or measured,pow2")
    return sorted(out)


def cost_table(inputs: pd.DataFrame, weights: pd.DataFrame, *, epsilon: float = 1e-2, constant: float = 1.0,
               lengths: Optional[str] = None, fits: Optional[pd.DataFrame] = None,
               max_length: int = MAX_LENGTH) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quantum query count, classical operation count and their ratio for one model.

    Block b (weights ``layer`` b) takes as alpha_s the norm of its input S, the hidden states of
    ``norms inputs`` layer b - 1 (layer 0 = embedding output = input of block 1). Blocks without
    a measured input are left out.

    Args:
        inputs: ``norms_inputs`` rows of one model (one or more datasets).
        weights: ``norms_weights`` rows of the same model.
        epsilon, constant: as :func:`quantum_queries`. lengths: as :func:`parse_lengths`.
        fits: the inputs run's ``fits.parquet`` (optional; its ``hidden_states`` rows are used).

    Returns:
        (cost, crossover): DataFrames with :data:`COST_COLUMNS` (one row per dataset, block,
        norm and length) and :data:`CROSSOVER_COLUMNS` (one row per dataset, norm and block;
        ``worst_layer`` marks the block with the largest l*, which decides the model's).

    Raises:
        QftInputError: no block has a measured input; a fit without an interval.
    """
    check_parameters(epsilon, constant)
    ok = inputs[inputs["finite"].astype(bool)] if "finite" in inputs.columns else inputs
    labels = {k: str(inputs[k].iloc[0]) if k in inputs.columns and len(inputs) else ""
              for k in ("model", "model_alias", "model_format")}
    cost_rows, cross_rows = [], []
    for norm, (column, _) in NORMS.items():
        factors = weight_factors(weights, norm)
        num_layers = int(len(factors))
        for dataset, d_rows in ok.groupby("dataset", sort=True):
            grid = np.asarray(parse_lengths(lengths, d_rows["num_tokens"].unique(), max_length), dtype=np.int64)
            block_rows = []
            for f in factors.itertuples(index=False):
                s = d_rows[d_rows["layer"] == f.layer - 1]
                if s.empty:
                    continue
                fit_row = None
                if fits is not None and len(fits):
                    m = fits[(fits["dataset"] == dataset) & (fits["layer"] == f.layer - 1) & (fits["norm"] == norm)]
                    if "quantity" in m.columns:
                        m = m[m["quantity"] == "hidden_states"]
                    if "model_alias" in m.columns:
                        m = m[m["model_alias"] == labels["model_alias"]]
                    fit_row = m.iloc[0].to_dict() if len(m) else None
                afit = fit_alpha(s["num_tokens"], s[column], fit_row)
                measured = s.groupby("num_tokens")[column].agg(["median", "size"])
                d = int(f.hidden_size)
                a_fit, a_lo, a_hi = afit.at(grid)
                a_meas = measured["median"].reindex(grid).to_numpy(dtype=np.float64)
                n_meas = measured["size"].reindex(grid).fillna(0).to_numpy(dtype=np.int64)
                classical = classical_operations(d, grid)
                q = quantum_queries(d, grid, a_fit, f.alpha_w, epsilon, constant)
                q_lo = quantum_queries(d, grid, a_lo, f.alpha_w, epsilon, constant)
                q_hi = quantum_queries(d, grid, a_hi, f.alpha_w, epsilon, constant)
                q_meas = quantum_queries(d, grid, a_meas, f.alpha_w, epsilon, constant)
                cost_rows.append(pd.DataFrame({
                    **labels, "dataset": dataset, "layer": f.layer, "norm": norm, "num_tokens": grid,
                    "num_qubits": num_qubits(grid), "hidden_size": d, "epsilon": epsilon, "constant": constant,
                    "num_samples_at_length": n_meas, "alpha_s_measured": a_meas, "alpha_s_fit": a_fit,
                    "alpha_s_fit_low": a_lo, "alpha_s_fit_high": a_hi, "alpha_s_exponent": afit.exponent,
                    "alpha_s_exponent_ci_low": afit.exponent_ci_low, "alpha_s_exponent_ci_high": afit.exponent_ci_high,
                    "alpha_w": f.alpha_w, "alpha_m": f.alpha_m, "alpha_w_over_sqrt_d": f.alpha_w / math.sqrt(d),
                    "quantum_queries": q, "quantum_queries_low": q_lo, "quantum_queries_high": q_hi,
                    "quantum_queries_measured": q_meas, "classical_operations": classical,
                    "ratio": q / classical, "ratio_low": q_lo / classical, "ratio_high": q_hi / classical,
                    "ratio_measured": q_meas / classical,
                    "extrapolated": (grid < afit.num_tokens_min) | (grid > afit.num_tokens_max)}))
                star = {}
                for key, pick in (("crossover_length", 0), ("crossover_length_low", 1), ("crossover_length_high", 2)):
                    star[key] = crossover_length(d, f.alpha_w, *afit.law(pick), epsilon, constant, max_length)
                at = {f"ratio_at_{n}": float(quantum_queries(d, n, afit.at(n)[0], f.alpha_w, epsilon, constant)
                                             / classical_operations(d, n)) for n in SUMMARY_LENGTHS}
                at["ratio_at_max_length"] = float(quantum_queries(d, max_length, afit.at(max_length)[0], f.alpha_w,
                                                                  epsilon, constant) / classical_operations(d, max_length))
                block_rows.append({**labels, "dataset": dataset, "norm": norm, "layer": f.layer, "hidden_size": d,
                                   "num_layers": num_layers, "alpha_w": f.alpha_w, "alpha_m": f.alpha_m,
                                   "alpha_w_over_sqrt_d": f.alpha_w / math.sqrt(d),
                                   "alpha_s_exponent": afit.exponent,
                                   "alpha_s_exponent_ci_low": afit.exponent_ci_low,
                                   "alpha_s_exponent_ci_high": afit.exponent_ci_high,
                                   **{k: (math.nan if v is None else float(v)) for k, v in star.items()},
                                   "max_length": max_length, "worst_layer": False, **at,
                                   "epsilon": epsilon, "constant": constant})
            if block_rows:
                # the largest l*; among blocks without one, the largest ratio at max_length
                worst = max(range(len(block_rows)), key=lambda i: (_order(block_rows[i]["crossover_length"]),
                                                                   block_rows[i]["ratio_at_max_length"]))
                block_rows[worst]["worst_layer"] = True
                cross_rows.extend(block_rows)
    if not cost_rows:
        raise QftInputError(f"model {labels['model_alias']!r}: no block has a measured input S; run `qft norms inputs "
                            f"{labels['model_alias']} --layers all` (block b needs layer b-1)")
    cost = pd.concat(cost_rows, ignore_index=True)[COST_COLUMNS]
    cost = cost.astype({"layer": "int64", "num_tokens": "int64", "num_qubits": "int64", "hidden_size": "int64",
                        "num_samples_at_length": "int64", "extrapolated": "bool"})
    cross = pd.DataFrame(cross_rows, columns=CROSSOVER_COLUMNS).astype(
        {"layer": "int64", "hidden_size": "int64", "num_layers": "int64", "max_length": "int64", "worst_layer": "bool"})
    return cost, cross


def _order(length: float) -> float:
    """Sort key of a crossover length: NaN (none below the maximum) is the largest."""
    return math.inf if not np.isfinite(length) else float(length)


def format_crossover(length: float, max_length: int = MAX_LENGTH) -> str:
    """``l*`` as printed: an integer, or ``none below 2^20``."""
    if not np.isfinite(length):
        return f"none below 2^{int(math.log2(max_length))}"
    return f"{int(length)}"


# ----------------------------------------------------------------------------- run directories

@dataclass
class RunInput:
    """One run directory given to ``qft cost``.

    Attributes:
        path: the directory. meta: its run.json. command: ``norms inputs``, ``norms weights``,
        ``norms attention``, ``train`` or ``finetune``. tables: parquet tables by name.
        identities: model name (as given) -> weight identity (:func:`model_identity`).
    """

    path: Path
    meta: dict[str, Any]
    command: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    identities: dict[str, tuple] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.path.name


def model_identity(entry: dict[str, Any]) -> tuple:
    """What identifies a model's weights in a ``model_files`` entry (qft_cli.runs.provenance): the
    sorted SHA-256s of its weight files; a tiny model (built from a fixed seed, no files) by its
    kind and name; a hub model without cached files by its revision.

    Raises:
        QftInputError: a non-tiny entry that names neither files nor a revision.
    """
    digests = tuple(sorted(f["sha256"] for f in entry.get("files") or [] if f.get("sha256")))
    if digests:
        return ("sha256",) + digests
    if entry.get("kind") == "tiny":
        return ("tiny", entry.get("model"))
    if entry.get("revision"):
        return ("revision", entry.get("model"), entry["revision"])
    raise QftInputError(f"run.json names no weight hashes for model {entry.get('model')!r}; re-run the norms "
                        "command with this qft (it records model_files)")


TABLES = {"norms inputs": ("norms_inputs", "fits"), "norms weights": ("norms_weights",),
          "norms attention": ("norms_attention",), "train": ("test_summary", "norms_during_training"),
          "finetune": ("test_summary", "norms_during_training")}


def read_cost_run(path: Path) -> RunInput:
    """Read one run directory for ``qft cost``: run.json, the tables its command writes.

    Raises:
        QftInputError: no run.json, a command ``qft cost`` does not read, a run that did not
            complete, a missing or unreadable table.
    """
    path = Path(path)
    if not (path / RUN_JSON).is_file():
        raise QftInputError(f"{path} has no {RUN_JSON}: give run directories of `qft norms` or `qft train`")
    try:
        meta = read_run_json(path)
    except ValueError as err:
        raise QftInputError(f"{path / RUN_JSON} is not valid JSON ({err})") from None
    command = meta.get("command")
    if command not in TABLES:
        raise QftInputError(f"{path}: command {command!r} is not read by `qft cost`; give norms inputs/weights/"
                            "attention, train or finetune runs")
    if meta.get("status") != "completed":
        raise QftInputError(f"{path}: run status is {meta.get('status')!r}, not completed; finish or re-run it")
    tables = {}
    for name in TABLES[command]:
        file = path / f"{name}.parquet"
        if not file.is_file():
            if name in ("fits", "norms_during_training"):
                continue
            raise QftInputError(f"{path} lacks {name}.parquet; re-run `qft {command}`")
        try:
            tables[name] = pd.read_parquet(file)
        except Exception as err:  # corrupt file: one line
            raise QftInputError(f"{file} cannot be read ({type(err).__name__}); re-run `qft {command}`") from None
    identities = {}
    if command.startswith("norms"):
        for entry in meta.get("model_files") or []:
            identities[str(entry.get("model"))] = model_identity(entry)
        if not identities:
            raise QftInputError(f"{path}: run.json has no model_files; re-run `qft {command}` with this qft")
    return RunInput(path, meta, command, tables, identities)


@dataclass
class ModelRuns:
    """The runs of one model (one weight identity), paired by hashes."""

    name: str
    identity: tuple
    inputs: list[RunInput] = field(default_factory=list)
    weights: Optional[RunInput] = None
    attention: list[RunInput] = field(default_factory=list)


def pair_runs(runs: Sequence[RunInput]) -> list[ModelRuns]:
    """Pair ``norms inputs`` and ``norms weights`` runs by model weight identity.

    Raises:
        QftInputError: one model name with two different weight identities; a model with inputs
            but no weights run (or the other way round); two weights runs of the same model
            that disagree.
    """
    by_name: dict[str, tuple] = {}
    models: dict[tuple, ModelRuns] = {}
    for run in runs:
        if not run.command.startswith("norms"):
            continue
        for name, identity in run.identities.items():
            if name in by_name and by_name[name] != identity:
                raise QftInputError(f"two runs name different weights {name!r} ({run.path}); give runs of one "
                                    "model per name (rename a local copy or pass fewer runs)")
            by_name[name] = identity
            entry = models.setdefault(identity, ModelRuns(name, identity))
            if run.command == "norms inputs":
                entry.inputs.append(run)
            elif run.command == "norms weights":
                if entry.weights is None:
                    entry.weights = run
            else:
                entry.attention.append(run)
    for entry in models.values():
        if entry.weights is None and entry.inputs:
            raise QftInputError(f"model {entry.name!r} has norms inputs but no norms weights run with the same "
                                f"weight hashes; add one: qft norms weights {entry.name}")
        if entry.weights is not None and not entry.inputs:
            raise QftInputError(f"model {entry.name!r} has a norms weights run but no norms inputs run with the same "
                                f"weight hashes; add one: qft norms inputs {entry.name} --layers all")
    return [m for m in models.values() if m.weights is not None]


def _rows_of(table: pd.DataFrame, name: str) -> pd.DataFrame:
    column = "model_alias" if "model_alias" in table.columns else "model"
    return table[table[column].astype(str) == name]


def model_cost(entry: ModelRuns, *, epsilon: float, constant: float, lengths: Optional[str],
               max_length: int = MAX_LENGTH) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`cost_table` of one paired model (its inputs runs concatenated; each aliased name of
    the same weights as written in its own run)."""
    weights = entry.weights
    names_w = [n for n, i in weights.identities.items() if i == entry.identity]
    w = pd.concat([_rows_of(weights.tables["norms_weights"], n) for n in names_w], ignore_index=True)
    w = w[w["model_alias"].astype(str) == names_w[0]] if "model_alias" in w.columns else w
    inputs, fits = [], []
    for run in entry.inputs:
        for n, i in run.identities.items():
            if i != entry.identity:
                continue
            rows = _rows_of(run.tables["norms_inputs"], n).copy()
            rows["model_alias"] = entry.name
            inputs.append(rows)
            if "fits" in run.tables:
                f = _rows_of(run.tables["fits"], n).copy()
                f["model_alias"] = entry.name
                fits.append(f)
    s = pd.concat(inputs, ignore_index=True)
    return cost_table(s, w, epsilon=epsilon, constant=constant, lengths=lengths,
                      fits=pd.concat(fits, ignore_index=True) if fits else None, max_length=max_length)


# ----------------------------------------------------------------------------- trained variants

TRAINED_COLUMNS = ["run_id", "variant", "num_seeds", "layer", "alpha_w_spectral", "alpha_w_frobenius",
                   "cost_reduction_spectral", "cost_reduction_frobenius", "metric", "mean_value", "ci_low", "ci_high"]


def trained_cost(run: RunInput) -> pd.DataFrame:
    """Accuracy against the cost reduction of each normalised variant of a train/finetune run.

    alpha_w of a trained model is read from ``norms_during_training.parquet`` (the effective,
    parametrised matrices as the forward pass uses them, :func:`qft_cli.train.normalization.effective_matrices`),
    last recorded step of each (variant, seed): max over q, k, v per block, then the block with the
    largest (the worst block decides), averaged over seeds. ``cost_reduction_<norm>`` = alpha_w of
    ``vanilla`` / alpha_w of the variant: the factor by which Theorem 5.1's count shrinks at equal
    alpha_s (the trained model's own alpha_s is not measured here). Accuracy: ``test_summary``
    (``mean_value``, 95% interval over seeds).

    Raises:
        QftInputError: the run lacks norms_during_training.parquet, or it lacks q, k or v of a variant.
    """
    if "norms_during_training" not in run.tables:
        raise QftInputError(f"{run.path} has no norms_during_training.parquet; re-run `qft {run.command}`")
    norms = run.tables["norms_during_training"]
    norms = norms[norms["matrix"].isin(ATTENTION_MATRICES)]
    if "seed" not in norms.columns:
        norms = norms.assign(seed=0)
    rows = []
    for (variant, seed), g in norms.groupby(["variant", "seed"], sort=True):
        last = g[g["step"] == g["step"].max()]
        have = set(last["matrix"])
        if not set(ATTENTION_MATRICES) <= have:
            raise QftInputError(f"{run.path}: norms_during_training of variant {variant!r} lacks "
                                f"{', '.join(sorted(set(ATTENTION_MATRICES) - have))}; train with --targets q,k,v")
        per_layer = last.groupby("layer")[["spectral_norm", "frobenius_norm"]].max()
        worst = per_layer.max()
        rows.append({"variant": variant, "seed": seed, "layer": int(per_layer["spectral_norm"].idxmax()),
                     "alpha_w_spectral": float(worst["spectral_norm"]),
                     "alpha_w_frobenius": float(worst["frobenius_norm"])})
    per_seed = pd.DataFrame(rows)
    if per_seed.empty:
        raise QftInputError(f"{run.path}: norms_during_training holds no q, k, v norms")
    agg = per_seed.groupby("variant").agg(num_seeds=("seed", "nunique"), layer=("layer", "max"),
                                          alpha_w_spectral=("alpha_w_spectral", "mean"),
                                          alpha_w_frobenius=("alpha_w_frobenius", "mean")).reset_index()
    base = agg[agg["variant"] == "vanilla"]
    for norm in ("spectral", "frobenius"):
        ref = float(base[f"alpha_w_{norm}"].iloc[0]) if len(base) else math.nan
        agg[f"cost_reduction_{norm}"] = ref / agg[f"alpha_w_{norm}"]
    summary = run.tables["test_summary"]
    summary = summary.rename(columns={"mean": "mean_value"})
    acc = summary[summary["metric"] == "accuracy"][["variant", "metric", "mean_value", "ci_low", "ci_high"]]
    out = agg.merge(acc, on="variant", how="left")
    out.insert(0, "run_id", run.run_id)
    return out[TRAINED_COLUMNS].astype({"num_seeds": "int64", "layer": "int64"})


# ----------------------------------------------------------------------------- the command

@dataclass
class CostResult:
    """What ``qft cost`` wrote: the run directory, ``cost``, ``crossover`` and ``trained_cost``
    tables (the latter empty without train/finetune runs), and notices."""

    run_dir: Path
    cost: pd.DataFrame
    crossover: pd.DataFrame
    trained: pd.DataFrame
    notices: list[str] = field(default_factory=list)


def check_cost_inputs(run_dirs: Sequence[Path], *, epsilon: float = 1e-2, constant: float = 1.0,
                      lengths: Optional[str] = None, max_length: int = MAX_LENGTH
                      ) -> tuple[list[RunInput], list[ModelRuns], list[RunInput]]:
    """Validate the options of ``qft cost``, read and pair its run directories.

    Returns:
        (every run read, the paired models, the train/finetune runs).

    Raises:
        QftInputError: a bad option, no run, an unreadable run, a missing pair (:func:`pair_runs`).
    """
    check_parameters(epsilon, constant)
    if max_length < 2 or max_length & (max_length - 1) or max_length > 2 ** 60:
        raise QftInputError(f"--max-length must be a power of two in 2..2^60, got {max_length}")
    if lengths is not None:
        parse_lengths(lengths, [], max_length)
    if not run_dirs:
        raise QftInputError("give at least one run directory")
    runs = [read_cost_run(p) for p in run_dirs]
    models = pair_runs(runs)
    trained_runs = [r for r in runs if r.command in ("train", "finetune")]
    if not models and not trained_runs:
        raise QftInputError("no norms inputs + norms weights pair and no train/finetune run among the run directories")
    return runs, models, trained_runs


def run_cost(run_dirs: Sequence[Path], *, epsilon: float = 1e-2, constant: float = 1.0, lengths: Optional[str] = None,
             out: Path = Path("runs"), progress=None, max_length: int = MAX_LENGTH) -> CostResult:
    """``qft cost``: read and pair the runs, evaluate Theorem 5.1 per model, block, norm and length,
    write ``cost.parquet``, ``crossover.parquet`` (and ``trained_cost.parquet`` for train/finetune
    runs) into a new run directory whose run.json names every input run by id and by the SHA-256 of
    its run.json (``input_runs``).

    Raises:
        QftInputError: see :func:`read_cost_run`, :func:`pair_runs`, :func:`cost_table`; no run given.
    """
    from qft_cli.runs.files import sha256_file
    from qft_cli.runs.rundir import Run
    from qft_cli.system.progress import report

    runs, models, trained_runs = check_cost_inputs(run_dirs, epsilon=epsilon, constant=constant, lengths=lengths,
                                                   max_length=max_length)
    notices = []
    if any(r.command == "norms attention" for r in runs):
        notices.append("norms attention runs are paired but not used: Theorem 5.1 counts queries to the block "
                       "encodings of S and W only")
    costs, crosses, trained = [], [], []
    for i, entry in enumerate(models):
        cost, cross = model_cost(entry, epsilon=epsilon, constant=constant, lengths=lengths, max_length=max_length)
        costs.append(cost)
        crosses.append(cross)
        report(progress, "cost", i + 1, len(models))
    for run in trained_runs:
        trained.append(trained_cost(run))
    cost = pd.concat(costs, ignore_index=True) if costs else pd.DataFrame(columns=COST_COLUMNS)
    cross = pd.concat(crosses, ignore_index=True) if crosses else pd.DataFrame(columns=CROSSOVER_COLUMNS)
    trained_table = pd.concat(trained, ignore_index=True) if trained else pd.DataFrame(columns=TRAINED_COLUMNS)
    input_runs = [{"run_id": r.run_id, "path": str(r.path.resolve()), "command": r.command,
                   "run_json_sha256": sha256_file(r.path / RUN_JSON)} for r in runs]
    names = [m.name for m in models] or [r.run_id for r in trained_runs]
    options = {"run_dirs": [str(p) for p in run_dirs], "epsilon": epsilon, "constant": constant, "lengths": lengths,
               "max_length": max_length, "out": str(out)}
    with Run("cost", names, options, out=Path(out)) as run:
        run.update(input_runs=input_runs,
                   formula="Theorem 5.1, arXiv 2502.01146 ch. 5.2: constant * d * N^2 * alpha_s * alpha_w * "
                           "ln(1/epsilon)^2, N = ceil(log2 l); classical l d + d^2 (ch. 5.3)",
                   constant_note=f"hidden constant of the O~ = {constant} (--constant)")
        if costs:
            run.write_table("cost", cost)
            run.write_table("crossover", cross)
        if trained:
            run.write_table("trained_cost", trained_table)
    return CostResult(run.path, cost, cross, trained_table, notices)
