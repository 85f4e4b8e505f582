"""`qft cost`: Theorem 5.1 of arXiv 2502.01146 against a hand calculation on synthetic run directories,
the crossover length against its closed form, intervals, pairing by weight hashes, stable rank."""

from __future__ import annotations

import json
import math
import sys
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from qft_cli.cli.app import app
from qft_cli.measure.cost import (
    AlphaFit,
    classical_operations,
    cost_table,
    crossover_length,
    fit_alpha,
    num_qubits,
    quantum_queries,
    run_cost,
)
from qft_cli.measure.norms import stable_rank
from qft_cli.system.errors import QftInputError

D = 16
# block -> (matrix -> (spectral, frobenius)); q, k, v, FFN chosen so that the max is known
WEIGHTS = {1: {"q": (2.0, 5.0), "k": (3.0, 4.0), "v": (1.5, 6.0), "o": (9.0, 9.0), "ffn_up": (4.0, 7.0),
               "ffn_down": (2.5, 8.0)},
           2: {"q": (1.0, 2.0), "k": (1.2, 2.5), "v": (1.1, 3.0), "o": (7.0, 7.0), "ffn_up": (3.0, 4.0),
               "ffn_down": (5.0, 5.5)}}
ALPHA_W = {1: {"spectral": 3.0, "frobenius": 6.0}, 2: {"spectral": 1.2, "frobenius": 3.0}}
ALPHA_M = {1: {"spectral": 4.0, "frobenius": 8.0}, 2: {"spectral": 5.0, "frobenius": 5.5}}
# inputs layer -> norm -> (c, b): alpha_s = c l^b exactly
LAWS = {0: {"spectral": (2.0, 0.5), "frobenius": (3.0, 0.6)}, 1: {"spectral": (1.5, 0.4), "frobenius": (2.5, 0.55)}}
LENGTHS = [8, 16, 16, 16, 32, 64, 128]


def _write_run(path: Path, command: str, tables: dict, model: str, sha: str) -> Path:
    path.mkdir(parents=True)
    meta = {"command": command, "status": "completed", "models": [model],
            "model_files": [{"model": model, "kind": "local", "revision": None,
                             "files": [{"path": f"/x/{model}.safetensors", "size_bytes": 1, "sha256": sha}]}]}
    (path / "run.json").write_text(json.dumps(meta))
    for name, df in tables.items():
        df.to_parquet(path / f"{name}.parquet")
    return path


def _weights_table(model: str, scale: float = 1.0) -> pd.DataFrame:
    rows = [{"model": model, "model_alias": model, "model_format": "transformers", "part": "", "layer": 0,
             "matrix": "embedding", "d_out": 100, "d_in": D, "spectral_norm": 50.0, "frobenius_norm": 80.0}]
    for layer, mats in WEIGHTS.items():
        for matrix, (s, f) in mats.items():
            rows.append({"model": model, "model_alias": model, "model_format": "transformers", "part": "",
                         "layer": layer, "matrix": matrix, "d_out": D, "d_in": D, "spectral_norm": s * scale,
                         "frobenius_norm": f * scale})
    return pd.DataFrame(rows)


def _inputs_table(model: str, noise: float = 0.0, seed: int = 0, lengths=LENGTHS) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(lengths):
        for layer, laws in LAWS.items():
            row = {"model": model, "model_alias": model, "model_format": "transformers", "dataset": "random",
                   "sample_index": i, "layer": layer, "num_tokens": n, "finite": True}
            for norm, (c, b) in laws.items():
                row[f"{norm}_norm"] = c * n ** b * math.exp(noise * rng.standard_normal())
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def runs(tmp_path):
    w = _write_run(tmp_path / "w", "norms weights", {"norms_weights": _weights_table("m")}, "m", "aa" * 32)
    i = _write_run(tmp_path / "i", "norms inputs", {"norms_inputs": _inputs_table("m")}, "m", "aa" * 32)
    return tmp_path, w, i


def _hand(layer: int, norm: str, length: int, eps: float, constant: float = 1.0) -> tuple[float, float]:
    """Theorem 5.1 by hand: constant d N^2 alpha_s alpha_w ln(1/eps)^2 against l d + d^2."""
    c, b = LAWS[layer - 1][norm]
    n_qubits = math.ceil(math.log2(length)) if length > 1 else 1
    q = constant * D * n_qubits ** 2 * (c * length ** b) * ALPHA_W[layer][norm] * math.log(1 / eps) ** 2
    return q, length * D + D * D


@pytest.mark.parametrize("eps,constant", [(1e-2, 1.0), (1e-3, 1.0), (0.1, 2.5)])
def test_formula_against_a_hand_calculation(runs, eps, constant):
    tmp, w, i = runs
    result = run_cost([w, i], epsilon=eps, constant=constant, lengths="measured,100,1000,65536", out=tmp / "out")
    cost = pd.read_parquet(result.run_dir / "cost.parquet")
    assert set(cost["num_tokens"]) == {8, 16, 32, 64, 100, 128, 1000, 65536}
    for layer in (1, 2):
        for norm in ("spectral", "frobenius"):
            for length in (8, 16, 100, 1000, 65536):
                row = cost[(cost.layer == layer) & (cost.norm == norm) & (cost.num_tokens == length)].iloc[0]
                q, classical = _hand(layer, norm, length, eps, constant)
                assert row.alpha_w == ALPHA_W[layer][norm] and row.alpha_m == ALPHA_M[layer][norm]
                assert row.hidden_size == D and row.epsilon == eps and row.constant == constant
                assert row.quantum_queries == pytest.approx(q, rel=1e-9)
                assert row.classical_operations == classical
                assert row.ratio == pytest.approx(q / classical, rel=1e-9)
                # exact power law: the fit's interval has zero width
                assert row.ratio_low == pytest.approx(row.ratio, rel=1e-6)
                assert row.ratio_high == pytest.approx(row.ratio, rel=1e-6)
                assert row.alpha_w_over_sqrt_d == pytest.approx(ALPHA_W[layer][norm] / 4.0)
                assert row.extrapolated == (length > 128)
                if length in (8, 16):  # measured: the median of the samples at that length
                    assert row.num_samples_at_length == (3 if length == 16 else 1)
                    assert row.quantum_queries_measured == pytest.approx(q, rel=1e-9)
                else:
                    assert row.num_samples_at_length == 0 and math.isnan(row.alpha_s_measured)
    meta = json.loads((result.run_dir / "run.json").read_text())
    assert meta["command"] == "cost" and meta["status"] == "completed"
    assert {r["run_id"] for r in meta["input_runs"]} == {"w", "i"}
    assert all(len(r["run_json_sha256"]) == 64 for r in meta["input_runs"])
    assert meta["options"]["constant"] == constant


def test_measured_median_is_the_median(tmp_path):
    table = _inputs_table("m")
    at16 = table[(table.num_tokens == 16) & (table.layer == 0)].index
    table.loc[at16, "spectral_norm"] = [1.0, 7.0, 100.0]
    cost, _ = cost_table(table, _weights_table("m"), lengths="16")
    row = cost[(cost.layer == 1) & (cost.norm == "spectral")].iloc[0]
    assert row.alpha_s_measured == 7.0
    assert row.quantum_queries_measured == pytest.approx(D * 16 * 7.0 * 3.0 * math.log(100) ** 2)


def _closed_form_crossover(d, alpha_w, c, eps, constant, max_length):
    """l* for alpha_s = c sqrt(l): in block N (2^(N-1) < l <= 2^N) the ratio exceeds 1 exactly for
    sqrt(l) strictly between the roots of d x^2 - A_N x + d^2 = 0, A_N = constant d N^2 c alpha_w ln^2(1/eps)."""
    last_bad = 0
    for n in range(1, int(math.log2(max_length)) + 1):
        lo_block, hi_block = (1 if n == 1 else 2 ** (n - 1) + 1), 2 ** n
        a = constant * d * n * n * c * alpha_w * math.log(1 / eps) ** 2
        disc = a * a - 4 * d ** 3
        if disc <= 0:
            continue
        x_minus, x_plus = (a - math.sqrt(disc)) / (2 * d), (a + math.sqrt(disc)) / (2 * d)
        bad_hi = min(hi_block, math.ceil(x_plus ** 2) - 1)  # largest l with sqrt(l) < x_plus
        bad_lo = max(lo_block, math.floor(x_minus ** 2) + 1)
        if bad_hi >= bad_lo:
            last_bad = max(last_bad, bad_hi)
    if last_bad == max_length:
        return None
    return last_bad + 1


@pytest.mark.parametrize("d,alpha_w,c,eps", [(64, 0.3, 0.05, 0.1), (256, 1.0, 0.2, 0.01), (32, 2.0, 1.0, 0.01),
                                             (1024, 0.5, 0.01, 0.1)])
def test_crossover_against_the_closed_form(d, alpha_w, c, eps):
    star = crossover_length(d, alpha_w, c, 0.5, eps, 1.0)
    assert star == _closed_form_crossover(d, alpha_w, c, eps, 1.0, 2 ** 20)
    if star is not None:
        f = lambda l: quantum_queries(d, l, c * math.sqrt(l), alpha_w, eps) / classical_operations(d, l)
        assert f(star) <= 1.0 and (star == 1 or f(star - 1) > 1.0)


def _brute_force_crossover(d, alpha_w, c, b, eps, max_length):
    lengths = np.arange(1, max_length + 1)
    n = np.array([max(1, int(v - 1).bit_length()) for v in lengths], dtype=float)
    ratio = d * n ** 2 * c * lengths ** b * alpha_w * math.log(1 / eps) ** 2 / (lengths * d + d * d)
    bad = np.flatnonzero(ratio > 1)
    if bad.size == 0:
        return 1
    return None if bad[-1] == max_length - 1 else int(lengths[bad[-1] + 1])


@pytest.mark.parametrize("c,b", [(0.05, 0.3), (0.02, 0.7), (0.5, -0.2), (0.001, 1.0), (0.01, 0.0), (3.0, 0.5)])
def test_crossover_against_every_length(c, b):
    assert crossover_length(24, 0.8, c, b, 0.05, 1.0, 2 ** 14) == _brute_force_crossover(24, 0.8, c, b, 0.05, 2 ** 14)


def test_no_crossover_when_alpha_s_grows_linearly():
    assert crossover_length(16, 1.0, 1.0, 1.0, 0.1) is None


def test_crossover_interval_from_the_fit(runs):
    tmp, w, i = runs
    noisy = _write_run(tmp / "i2", "norms inputs", {"norms_inputs": _inputs_table("m", noise=0.3)}, "m", "aa" * 32)
    result = run_cost([w, noisy], lengths="512", out=tmp / "out")
    x = result.crossover
    inf = lambda s: s.fillna(math.inf)  # NaN: none below 2^20
    assert (inf(x["crossover_length_low"]) <= inf(x["crossover_length"])).all()
    assert (inf(x["crossover_length"]) <= inf(x["crossover_length_high"])).all()
    assert x["crossover_length_low"].notna().any()
    assert x["worst_layer"].sum() == 2  # one per norm (one dataset)


def test_intervals_widen_with_noisier_data():
    rng_lengths = list(np.repeat([8, 16, 32, 64, 128, 256], 5))
    widths = []
    for noise in (0.02, 0.1, 0.4):
        table = _inputs_table("m", noise=noise, seed=1, lengths=rng_lengths)
        s = table[table.layer == 0]
        fit = fit_alpha(s["num_tokens"], s["spectral_norm"])
        _, lo, hi = fit.at(np.array([2 ** 20]))
        cost, _ = cost_table(table, _weights_table("m"), lengths="65536")
        row = cost[(cost.layer == 1) & (cost.norm == "spectral")].iloc[0]
        widths.append((fit.exponent_ci_high - fit.exponent_ci_low, float(hi[0] / lo[0]),
                       row.ratio_high / row.ratio_low))
    for a, b in zip(widths, widths[1:]):
        assert all(y > x for x, y in zip(a, b))


def test_interval_turns_about_the_geometric_mean_length():
    fit = AlphaFit(0.5, 0.4, 0.6, 2.0, 100.0, 10, 1000)
    a, lo, hi = fit.at(np.array([100.0, 10000.0]))
    assert lo[0] == pytest.approx(a[0]) and hi[0] == pytest.approx(a[0])
    assert hi[1] == pytest.approx(a[1] * 100 ** 0.1) and lo[1] == pytest.approx(a[1] * 100 ** -0.1)


def test_fits_parquet_numbers_are_used_when_present(tmp_path):
    table = _inputs_table("m")
    fits = pd.DataFrame([{"model_alias": "m", "dataset": "random", "layer": 0, "quantity": "hidden_states",
                          "norm": "spectral", "exponent": 0.7, "exponent_ci_low": 0.6, "exponent_ci_high": 0.8,
                          "coefficient": 1.0}])
    cost, _ = cost_table(table, _weights_table("m"), lengths="64", fits=fits)
    row = cost[(cost.layer == 1) & (cost.norm == "spectral")].iloc[0]
    assert row.alpha_s_exponent == 0.7 and row.alpha_s_fit == pytest.approx(64 ** 0.7)


def test_num_qubits_pads_to_the_next_power_of_two():
    assert list(num_qubits([1, 2, 3, 4, 5, 512, 513, 2 ** 20])) == [1, 1, 2, 2, 3, 9, 10, 20]


def test_bad_parameters_are_one_line():
    with pytest.raises(QftInputError, match="epsilon"):
        quantum_queries(4, 8, 1.0, 1.0, 1.5)
    with pytest.raises(QftInputError, match="constant"):
        quantum_queries(4, 8, 1.0, 1.0, 0.1, constant=0)


def test_same_name_different_weights_is_refused(runs):
    tmp, w, i = runs
    other = _write_run(tmp / "i_other", "norms inputs", {"norms_inputs": _inputs_table("m")}, "m", "bb" * 32)
    with pytest.raises(QftInputError, match="different weights 'm'"):
        run_cost([w, i, other], out=tmp / "out")
    assert not (tmp / "out").exists()


def test_pairing_is_by_hash_not_by_name(runs):
    tmp, w, i = runs
    # inputs of the same weights under another name pair with the weights run
    alias = _write_run(tmp / "i_alias", "norms inputs", {"norms_inputs": _inputs_table("copy")}, "copy", "aa" * 32)
    result = run_cost([w, alias], lengths="64", out=tmp / "out")
    assert set(result.cost["model_alias"]) == {"m"}
    # inputs of other weights have no weights run: refused, naming the model
    lone = _write_run(tmp / "i_lone", "norms inputs", {"norms_inputs": _inputs_table("n")}, "n", "cc" * 32)
    with pytest.raises(QftInputError, match="'n' has norms inputs but no norms weights"):
        run_cost([w, i, lone], out=tmp / "out2")


def test_cli_missing_pair_is_one_line_exit_2(runs):
    tmp, w, _ = runs
    result = subprocess.run([sys.executable, "-m", "qft_cli", "cost", str(w), "--out", str(tmp / "o"), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model 'm' has a norms weights run but no norms inputs")


def test_cli_prints_the_crossover_table_and_the_constant(runs):
    tmp, w, i = runs
    result = CliRunner().invoke(app, ["cost", str(w), str(i), "--out", str(tmp / "o"), "--quiet", "--format", "csv",
                                      "--constant", "3"])
    assert result.exit_code == 0, result.output
    assert "constant of the O~ = 3" in result.output
    assert "l*" in result.output and "Q/C @4096" in result.output
    run_dir = next((tmp / "o").iterdir())
    cost = pd.read_parquet(run_dir / "cost.parquet")
    assert (cost["constant"] == 3.0).all()
    assert {2 ** k for k in range(21)} | set(LENGTHS) == set(cost["num_tokens"])


def test_trained_variants_cost_reduction(tmp_path):
    rows = []
    for variant, scale in (("vanilla", 4.0), ("spectral", 1.0)):
        for seed in (0, 1):
            for step in (0, 10):
                for matrix, norm in (("q", 1.0), ("k", 2.0), ("v", 0.5), ("o", 9.0)):
                    s = (scale if step == 10 else 100.0) * norm * (1 + 0.1 * seed)
                    rows.append({"variant": variant, "seed": seed, "epoch": step / 10, "step": step,
                                 "parameter": f"p.{matrix}", "layer": 1, "matrix": matrix,
                                 "spectral_norm": s, "frobenius_norm": 2 * s})
    summary = pd.DataFrame([{"dataset": "x", "task": "t", "variant": v, "metric": "accuracy", "num_seeds": 2,
                             "mean_value": a, "ci_low": a - 0.1, "ci_high": a + 0.1} for v, a in
                            (("vanilla", 0.8), ("spectral", 0.7))])
    run = tmp_path / "t"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"command": "train", "status": "completed"}))
    pd.DataFrame(rows).to_parquet(run / "norms_during_training.parquet")
    summary.to_parquet(run / "test_summary.parquet")
    result = run_cost([run], out=tmp_path / "out")
    t = result.trained.set_index("variant")
    # alpha_w = max over q, k, v (k, norm 2) at the last step, mean over seeds (1.0, 1.1)
    assert t.loc["vanilla", "alpha_w_spectral"] == pytest.approx(4.0 * 2 * 1.05)
    assert t.loc["spectral", "alpha_w_frobenius"] == pytest.approx(2 * 2 * 1.05)
    assert t.loc["spectral", "cost_reduction_spectral"] == pytest.approx(4.0)
    assert t.loc["spectral", "mean_value"] == 0.7 and t.loc["spectral", "ci_low"] == pytest.approx(0.6)
    assert (result.run_dir / "trained_cost.parquet").is_file()


def test_stable_rank_against_float64_singular_values():
    gen = torch.Generator().manual_seed(0)
    for shape in ((7, 5), (40, 13), (3, 30)):
        a = torch.randn(*shape, generator=gen, dtype=torch.float64)
        sv = torch.linalg.svdvals(a)
        got = stable_rank(torch.linalg.matrix_norm(a).item(), torch.linalg.matrix_norm(a, ord=2).item())
        assert got == pytest.approx(((sv ** 2).sum() / sv[0] ** 2).item(), rel=1e-12)
    rank_one = torch.outer(torch.arange(1.0, 5.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert stable_rank(torch.linalg.matrix_norm(rank_one).item(),
                       torch.linalg.matrix_norm(rank_one, ord=2).item()) == pytest.approx(1.0)
    assert math.isnan(stable_rank(0.0, 0.0))
    s = stable_rank(pd.Series([2.0, 3.0]), pd.Series([1.0, 0.0]))
    assert s.iloc[0] == 4.0 and math.isnan(s.iloc[1])


def test_report_quantum_cost_section(tmp_path):
    from qft_cli.report import write_report

    name = "m<script>"
    w = _write_run(tmp_path / "w", "norms weights", {"norms_weights": _weights_table(name, scale=0.002)}, name, "aa" * 32)
    i = _write_run(tmp_path / "i", "norms inputs", {"norms_inputs": _inputs_table(name)}, name, "aa" * 32)
    result = run_cost([w, i], out=tmp_path / "out")
    crossover = pd.read_parquet(result.run_dir / "crossover.parquet")
    star = crossover[crossover["worst_layer"] & (crossover["norm"] == "spectral")]["crossover_length"].iloc[0]
    assert pd.notna(star)
    report = write_report([result.run_dir], tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert 'id="quantum-cost"' in html and "Theorem 5.1" in html
    assert f"{int(star):,}" in html  # l* in the table
    assert "m&lt;script&gt;" in html and "m<script>" not in html
    assert report.num_figures >= 2  # one ratio chart per norm


def test_written_cost_tables_are_documented_and_shadow_nothing(runs, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_schemas", Path(__file__).with_name("test_schemas.py"))
    schemas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(schemas)
    _, w, i = runs
    t = tmp_path / "t"
    t.mkdir()
    (t / "run.json").write_text(json.dumps({"command": "train", "status": "completed"}))
    pd.DataFrame([{"variant": v, "seed": 0, "epoch": 1.0, "step": 1, "parameter": m, "layer": 1, "matrix": m,
                   "spectral_norm": 1.0, "frobenius_norm": 2.0} for v in ("vanilla", "spectral") for m in "qkv"]
                 ).to_parquet(t / "norms_during_training.parquet")
    pd.DataFrame([{"variant": v, "metric": "accuracy", "mean_value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
                  for v in ("vanilla", "spectral")]).to_parquet(t / "test_summary.parquet")
    result = run_cost([w, i, t], lengths="64", out=tmp_path / "out")
    docs = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    names = schemas._documented_names(docs)
    for table in ("cost", "crossover", "trained_cost"):
        df = pd.read_parquet(result.run_dir / f"{table}.parquet")
        assert not schemas._shadowing(df.columns), table
        assert not [c for c in df.columns if c not in names], table


def test_attention_runs_are_paired_and_said_unused(runs):
    tmp, w, i = runs
    a = _write_run(tmp / "a", "norms attention", {"norms_attention": pd.DataFrame({"model_alias": ["m"], "layer": [1]})},
                   "m", "aa" * 32)
    result = run_cost([w, i, a], lengths="64", out=tmp / "out")
    assert any("norms attention" in line for line in result.notices)
    other = _write_run(tmp / "a2", "norms attention", {"norms_attention": pd.DataFrame({"model_alias": ["m"]})},
                       "m", "dd" * 32)
    with pytest.raises(QftInputError, match="different weights"):
        run_cost([w, i, other], out=tmp / "out2")
