"""``qft report``: run discovery, table numbers, escaping, CLI errors, and rendering in Chromium.

The run directories are synthetic but follow docs/results.md exactly (written with the
``qft_cli.runs.rundir`` helpers), one of every kind: norms inputs, norms weights, train, finetune, and a
failed run.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from qft_cli.cli.report import report_command
from qft_cli.report import (
    build_report_html,
    combined_table,
    find_run_dirs,
    input_alpha_summary,
    load_runs,
    power_law_table,
    weight_alpha_summary,
    write_report,
)
from qft_cli.runs.files import write_json_atomic, write_parquet_atomic
from qft_cli.system.errors import QftInputError

EVIL = "<script>alert(1)</script>"


# --------------------------------------------------------------------------------------------
# Synthetic run directories that follow docs/results.md
# --------------------------------------------------------------------------------------------

def _run_json(run_dir: Path, command: str, models: list[str], options: dict, status: str = "completed",
              **extra) -> None:
    run_dir.mkdir(parents=True)
    meta = {"command": command, "argv": ["qft", *command.split(), *models, "--out", str(run_dir.parent)],
            "models": models, "options": options,
            "versions": {"qft": "0.1.0", "python": "3.11.9", "torch": "2.13.0", "transformers": "4.57.0"},
            "start_time": "2026-11-29T20:00:00+00:00", "end_time": "2026-11-29T20:03:05+00:00", "status": status,
            **extra}
    write_json_atomic(run_dir / "run.json", meta)


def make_inputs_run(root: Path, name: str = "20261129-200000-norms-inputs-minilm",
                    models=("minilm", "tiny-gpt2"), exact: bool = False) -> Path:
    """norms_inputs with random (N = 1..256, one sample each) and mmlu (scattered N) datasets.

    With ``exact``, model ``exact`` has ||S||_F = 3 N^0.5 and ||S||_2 = 2 N^0.25 exactly.
    """
    run_dir = root / name
    _run_json(run_dir, "norms inputs", list(models), {"dataset": "random", "max_tokens": 256, "layers": "0,1",
                                                      "device": "cpu", "dtype": "float32", "seed": 0})
    rng = np.random.default_rng(0)
    rows = []
    for m_i, model in enumerate(models):
        for dataset, counts in (("random", np.arange(1, 257)), ("mmlu", rng.integers(8, 300, size=150))):
            for sample, n in enumerate(counts):
                for layer in (0, 1):
                    if exact and model == "exact":
                        fro, spec = 3.0 * n ** 0.5, 2.0 * n ** 0.25
                    else:
                        scale = (1 + m_i) * (1 + layer)
                        fro = scale * 3.0 * n ** 0.5 * np.exp(rng.normal(0, 0.05))
                        spec = scale * 2.0 * n ** 0.3 * np.exp(rng.normal(0, 0.05))
                    rows.append({"model": f"hub/{model}", "model_alias": model, "dataset": dataset,
                                 "sample_index": sample, "layer": layer, "num_tokens": int(n),
                                 "frobenius_norm": float(fro), "spectral_norm": float(spec),
                                 "max_row_norm": float(spec) * 0.9, "finite": True})
    write_parquet_atomic(pd.DataFrame(rows), run_dir / "norms_inputs.parquet")
    return run_dir


def make_weights_run(root: Path, model: str = "minilm", num_layers: int = 3, d: int = 32, vocab: int = 500,
                     name: str | None = None) -> Path:
    run_dir = root / (name or f"20261129-200100-norms-weights-{len(list(root.glob('*')))}")
    _run_json(run_dir, "norms weights", [model], {"device": "cpu", "dtype": "float32"})
    rng = np.random.default_rng(1)
    rows, vectors = [], []
    emb = rng.normal(size=(vocab, d))
    tok = np.linalg.norm(emb, axis=1)
    rows.append({"model": f"hub/{model}", "model_alias": model, "part": "", "layer": 0, "matrix": "embedding",
                 "parameter": "embeddings.word_embeddings.weight", "d_out": vocab, "d_in": d,
                 "frobenius_norm": float(np.linalg.norm(emb)), "spectral_norm": float(np.linalg.norm(emb, 2)),
                 "column_norm_mean": 1.0, "column_norm_var": 0.1, "column_norm_max": 2.0,
                 "row_norm_mean": float(tok.mean()), "row_norm_var": float(tok.var()), "row_norm_max": float(tok.max()),
                 "finite": True})
    vectors += [{"model": f"hub/{model}", "model_alias": model, "part": "", "layer": 0, "matrix": "embedding",
                 "kind": "token_norm", "vector_index": i, "value": float(v)} for i, v in enumerate(tok)]
    for layer in range(1, num_layers + 1):
        for matrix, (d_out, d_in) in (("q", (d, d)), ("k", (d // 2, d)), ("v", (d // 2, d)), ("o", (d, d)),
                                      ("ffn_up", (4 * d, d)), ("ffn_down", (d, 4 * d))):
            w = rng.normal(scale=0.1 * layer, size=(d_out, d_in))
            cols, rws = np.linalg.norm(w, axis=0), np.linalg.norm(w, axis=1)
            rows.append({"model": f"hub/{model}", "model_alias": model, "part": "", "layer": layer, "matrix": matrix,
                         "parameter": f"layer.{layer - 1}.{matrix}.weight", "d_out": d_out, "d_in": d_in,
                         "frobenius_norm": float(np.linalg.norm(w)), "spectral_norm": float(np.linalg.norm(w, 2)),
                         "column_norm_mean": float(cols.mean()), "column_norm_var": float(cols.var()),
                         "column_norm_max": float(cols.max()), "row_norm_mean": float(rws.mean()),
                         "row_norm_var": float(rws.var()), "row_norm_max": float(rws.max()), "finite": True})
            if matrix in ("q", "k", "v"):
                vectors += [{"model": f"hub/{model}", "model_alias": model, "part": "", "layer": layer,
                             "matrix": matrix, "kind": "column_norm", "vector_index": j, "value": float(c)}
                            for j, c in enumerate(cols)]
    write_parquet_atomic(pd.DataFrame(rows), run_dir / "norms_weights.parquet")
    write_parquet_atomic(pd.DataFrame(vectors), run_dir / "norm_vectors.parquet")
    heads = [{"model": f"hub/{model}", "model_alias": model, "part": "", "layer": layer, "matrix": matrix,
              "head_index": h, "spectral_norm": 0.3 * layer + 0.01 * h, "frobenius_norm": 0.6 * layer + 0.02 * h}
             for layer in range(1, num_layers + 1) for matrix, num_heads in (("q", 4), ("k", 2), ("v", 2), ("o", 4))
             for h in range(num_heads)]
    write_parquet_atomic(pd.DataFrame(heads), run_dir / "norms_heads.parquet")
    return run_dir


def make_train_run(root: Path, command: str = "train", name: str = "20261129-200200-train-qft",
                   variants=("vanilla", "spectral", "frobenius"), gammas: bool = False) -> Path:
    run_dir = root / name
    _run_json(run_dir, command, ["qft-transformer"], {"dataset": "synthetic-dna", "norm": "all", "seed": 42,
                                                      "device": "cpu", "dtype": "float32"}, device="cpu")
    rows, during, gam = [], [], []
    step = 0
    for v_i, variant in enumerate(variants):
        for epoch in range(1, 6):
            step = epoch * 10
            acc = 0.6 + 0.05 * epoch - 0.01 * v_i
            for split in ("train", "validation"):
                rows.append({"variant": variant, "epoch": float(epoch), "step": step, "split": split,
                             "loss": 1.0 / epoch, "accuracy": acc, "f1": acc - 0.02, "learning_rate": 1e-3 / epoch,
                             "samples_per_second": 100.0})
            if variant != "vanilla":
                for layer in (1,):
                    for matrix in ("q", "k", "v", "o", "ffn_up", "ffn_down"):
                        during.append({"variant": variant, "epoch": float(epoch), "step": step,
                                       "parameter": f"blocks.0.{matrix}.weight", "layer": layer, "matrix": matrix,
                                       "spectral_norm": 1.0 if variant.startswith("spectral") else 0.5 + 0.01 * epoch,
                                       "frobenius_norm": 1.0 if variant.startswith("frobenius") else 3.0})
                        if gammas:
                            gam.append({"variant": variant, "epoch": float(epoch), "step": step,
                                        "parameter": f"blocks.0.{matrix}.weight", "layer": layer, "matrix": matrix,
                                        "gamma": 1 / (1 + np.exp(-epoch / 3))})
        rows.append({"variant": variant, "epoch": 5.0, "step": step, "split": "test", "loss": 0.3,
                     "accuracy": 0.85 - 0.01 * v_i, "f1": 0.84 - 0.02 * v_i, "learning_rate": 0.0,
                     "samples_per_second": 200.0})
    write_parquet_atomic(pd.DataFrame(rows), run_dir / "metrics.parquet")
    if during:
        write_parquet_atomic(pd.DataFrame(during), run_dir / "norms_during_training.parquet")
    if gam:
        write_parquet_atomic(pd.DataFrame(gam), run_dir / "gammas.parquet")
    return run_dir


def make_failed_run(root: Path) -> Path:
    run_dir = root / "20261129-200300-norms-inputs-gpt2"
    _run_json(run_dir, "norms inputs", ["gpt2"], {"dataset": "mmlu"}, status="failed",
              error="RuntimeError: CUDA out of memory")
    return run_dir


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_inputs_run(root)
    make_weights_run(root, "minilm", num_layers=6)
    make_weights_run(root, "tiny-llama", num_layers=2)
    make_train_run(root)
    make_train_run(root, command="finetune", name="20261129-200400-finetune-bert",
                   variants=("vanilla", "spectral_subnormalised", "frobenius_subnormalised"), gammas=True)
    make_failed_run(root)
    return root


@pytest.fixture(scope="module")
def report_file(runs_root, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    result = write_report([runs_root], out)
    return out, result.num_figures


# --------------------------------------------------------------------------------------------
# Library
# --------------------------------------------------------------------------------------------

def test_discovery_mixed_kinds(runs_root):
    dirs = find_run_dirs([runs_root])
    assert len(dirs) == 6
    # a run directory itself, and its run.json, work too; duplicates are read once
    assert find_run_dirs([dirs[0], dirs[0] / "run.json"]) == [dirs[0]]
    runs = load_runs([runs_root])
    assert {r.command for r in runs} == {"norms inputs", "norms weights", "train", "finetune"}
    assert [r.status for r in runs].count("failed") == 1


def test_exact_power_law_exponent_is_one_half(tmp_path):
    run_dir = make_inputs_run(tmp_path, models=("exact",), exact=True)
    fits = power_law_table(combined_table(load_runs([run_dir]), "norms_inputs"))
    fro = fits[(fits["norm"] == "frobenius")]
    assert len(fro) == 4  # 2 datasets x 2 layers, apart
    assert set(fro["dataset"]) == {"random", "mmlu"}
    np.testing.assert_allclose(fro["exponent"], 0.5, atol=1e-12)
    np.testing.assert_allclose(fro["coefficient"], 3.0, rtol=1e-10)
    np.testing.assert_allclose(fits[fits["norm"] == "spectral"]["exponent"], 0.25, atol=1e-12)
    assert (fro["exponent_ci_low"] <= 0.5 + 1e-9).all() and (fro["exponent_ci_high"] >= 0.5 - 1e-9).all()
    # ... and the page's table carries the value
    page, _ = build_report_html(load_runs([run_dir]))
    fits_html = page[page.index('class="fits"'):]
    assert 'data-value="0.5' in fits_html.split("</table>")[0] or 'data-value="0.49999' in fits_html


def test_fits_parquet_is_read_and_older_runs_are_fitted_with_fit_table(tmp_path):
    from qft_cli.measure.fits import fit_table
    from qft_cli.report import hidden_state_fits

    old = make_inputs_run(tmp_path, name="20261129-200000-old", models=("exact",), exact=True)
    new = make_inputs_run(tmp_path, name="20261129-200001-new", models=("other",))
    table = pd.read_parquet(new / "norms_inputs.parquet")
    written = fit_table(table, ["model", "model_alias", "dataset", "layer"], quantity="hidden_states")
    written["exponent"] = 0.777  # a value no fit of this data gives: the report must show the file's numbers
    write_parquet_atomic(written, new / "fits.parquet")
    fits = hidden_state_fits(load_runs([tmp_path]))
    from_file = fits[fits["run"] == new.name]
    assert (from_file["exponent"] == 0.777).all() and (from_file["fit_source"] == "fits.parquet").all()
    fitted = fits[fits["run"] == old.name]
    assert (fitted["fit_source"] == "fitted by qft report").all() and len(fitted) == 8  # 2 datasets x 2 layers x 2 norms
    np.testing.assert_allclose(fitted[fitted["norm"] == "frobenius"]["exponent"], 0.5, atol=1e-12)
    page, _ = build_report_html(load_runs([tmp_path]))
    fits_html = page[page.index("inputs-fits"):]
    assert 'data-value="0.777"' in fits_html and "fitted here with the same function" in fits_html


def test_alpha_summaries(tmp_path):
    from qft_cli.measure.fits import fit_table
    from qft_cli.report import hidden_state_fits

    run_dir = make_inputs_run(tmp_path, models=("exact",), exact=True)
    s = input_alpha_summary(combined_table(load_runs([run_dir]), "norms_inputs"))
    r128 = s[(s["dataset"] == "random") & (s["num_tokens"] == 128)].iloc[0]
    assert r128["source"].startswith("measured")
    assert r128["frobenius_norm"] == pytest.approx(3 * 128 ** 0.5)
    r512 = s[(s["dataset"] == "random") & (s["num_tokens"] == 512)].iloc[0]
    assert "fit" in r512["source"] and "extrapolated" in r512["source"]
    assert r512["frobenius_norm"] == pytest.approx(3 * 512 ** 0.5, rel=1e-9)
    # the run's own fits.parquet (the one the fit table shows) sets the extrapolation, not a refit
    table = pd.read_parquet(run_dir / "norms_inputs.parquet")
    written = fit_table(table, ["model", "model_alias", "dataset", "layer"], quantity="hidden_states")
    written["exponent"], written["coefficient"] = 0.777, 2.0
    write_parquet_atomic(written, run_dir / "fits.parquet")
    runs = load_runs([run_dir])
    own = input_alpha_summary(combined_table(runs, "norms_inputs"), fits=hidden_state_fits(runs))
    o512 = own[(own["dataset"] == "random") & (own["num_tokens"] == 512)].iloc[0]
    assert o512["frobenius_norm"] == pytest.approx(2.0 * 512 ** 0.777, rel=1e-12)
    measured = s["source"].str.startswith("measured")
    assert measured.any() and own[measured]["frobenius_norm"].tolist() == s[measured]["frobenius_norm"].tolist()
    page, _ = build_report_html(runs)
    assert f'data-value="{float(o512["frobenius_norm"])!r}"' in page[page.index("alpha-s"):]  # the α_S table

    wdir = make_weights_run(tmp_path, "m", num_layers=3)
    w = weight_alpha_summary(combined_table(load_runs([wdir]), "norms_weights"))
    q = w[w["matrix"] == "q"].iloc[0]
    assert q["max_spectral_layer"] == 3 and q["num_layers"] == 3  # scale grows with the layer


def test_report_page_content(report_file, runs_root):
    path, num_figures = report_file
    text = path.read_text()
    assert text.count("<script type=\"text/javascript\">/**") <= 1
    assert text.count("Plotly.newPlot") == num_figures >= 10
    from plotly.offline import get_plotlyjs

    assert text.count(get_plotlyjs()[:200]) == 1, "plotly.js must be embedded exactly once"
    assert "cdn.plot.ly" not in text.split("</head>")[1]
    assert path.stat().st_size < 8_000_000
    for needle in ("Contents", 'href="#inputs"', 'href="#weights"', 'href="#training"', 'href="#factors"',
                   'href="#runs"', "dashed line ∝ √N", "CUDA out of memory", "Synthetic data", "Δ F1 vs vanilla"):
        assert needle in text, needle
    assert not list(path.parent.glob(".report.html.*")), "no temporary file left behind"


def test_model_name_with_html_is_escaped(tmp_path):
    make_weights_run(tmp_path / "runs", EVIL, num_layers=1, name="20261129-200500-norms-weights-evil")
    make_inputs_run(tmp_path / "runs", models=(EVIL,))
    out = tmp_path / "r.html"
    write_report([tmp_path / "runs"], out)
    text = out.read_text()
    assert EVIL not in text
    assert "alert(1)</script>" not in text
    assert html.escape(EVIL) in text  # the escaped name is shown in the tables


def test_empty_and_foreign_directories(tmp_path):
    (tmp_path / "empty").mkdir()
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "sub" / "run.json").write_text(json.dumps({"name": "not qft"}))
    (foreign / "notes.txt").write_text("hello")
    for p in (tmp_path / "empty", foreign, tmp_path / "missing", foreign / "notes.txt"):
        with pytest.raises(QftInputError):
            load_runs([p])


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)  # keep typer in multi-command mode, as under the root app
    return app


def test_cli_writes_report(runs_root, tmp_path):
    out = tmp_path / "sub" / "page.html"
    res = CliRunner().invoke(_app(), ["report", str(runs_root), "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "report:" in res.output and "charts" in res.output


@pytest.mark.parametrize("kind", ["empty", "foreign", "missing"])
def test_cli_bad_paths_one_line_exit_2(tmp_path, kind):
    path = tmp_path / kind
    if kind != "missing":
        path.mkdir()
    if kind == "foreign":
        (path / "data.csv").write_text("a,b\n1,2\n")
    res = CliRunner().invoke(_app(), ["report", str(path), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------------------------
# Headless Chromium
# --------------------------------------------------------------------------------------------

def chromium_binary() -> str | None:
    """Path of a headless-capable Chromium, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CATCH_ERRORS = ("<script>window.__qftErrors=[];function __qftErr(m){window.__qftErrors.push(String(m));"
                 "document.documentElement.setAttribute('data-js-errors',window.__qftErrors.join(' | '));}"
                 "window.alert=function(m){__qftErr('alert('+m+') was called')};"
                 "window.addEventListener('error',function(e){__qftErr(e.message)});"
                 "window.addEventListener('unhandledrejection',function(e){__qftErr(e.reason)});</script>")


def render_dom(html_path: Path, tmp_path: Path) -> tuple[str, str]:
    """Load ``html_path`` in headless Chromium with an error catcher; return (DOM after scripts, stderr)."""
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("<head>", "<head>" + _CATCH_ERRORS, 1))
    cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--enable-logging=stderr", "--v=0", "--window-size=1400,4000",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--dump-dom",
           probe.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


@pytest.mark.browser
@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_chromium(report_file, tmp_path):
    path, num_figures = report_file
    dom, log = render_dom(path, tmp_path)
    match = re.search(r'<html[^>]*data-js-errors="([^"]*)"', dom)
    assert match is None, f"JavaScript errors: {match.group(1) if match else ''}"
    assert "Uncaught" not in log, log[-2000:]
    drawn = len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom))
    assert drawn == num_figures, f"{drawn} of {num_figures} charts drawn"
    assert len(re.findall(r'class="main-svg"', dom)) >= num_figures
    # every chart has axes with tick labels (something was drawn, not an empty frame)
    assert dom.count('class="xtick"') >= num_figures


@pytest.mark.browser
@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_with_html_in_model_name_runs_no_script(tmp_path):
    make_weights_run(tmp_path / "runs", EVIL, num_layers=1, name="20261129-200500-norms-weights-evil")
    make_inputs_run(tmp_path / "runs", models=(EVIL,))
    result = write_report([tmp_path / "runs"], tmp_path / "r.html")
    dom, _ = render_dom(result.path, tmp_path)
    assert 'data-js-errors' not in dom.split(">", 2)[1], "a script ran or failed"
    assert len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)) == result.num_figures


def test_large_inputs_are_thinned_and_page_stays_small(tmp_path):
    run_dir = tmp_path / "20261129-200600-norms-inputs-big"
    _run_json(run_dir, "norms inputs", ["big"], {"dataset": "mmlu"})
    rng = np.random.default_rng(0)
    n = rng.integers(1, 512, size=40_000)
    frames = [pd.DataFrame({"model": "big", "model_alias": "big", "dataset": "mmlu", "sample_index": np.arange(n.size),
                            "layer": layer, "num_tokens": n, "frobenius_norm": 3.0 * n ** 0.5,
                            "spectral_norm": 2.0 * n ** 0.3, "max_row_norm": 1.0, "finite": True})
              for layer in (0, 1, 2, 3)]
    write_parquet_atomic(pd.concat(frames, ignore_index=True), run_dir / "norms_inputs.parquet")
    result = write_report([run_dir], tmp_path / "r.html")
    text = result.path.read_text()
    assert "thinned to 1500 points" in text
    assert result.size_bytes < 6_000_000
    fits = power_law_table(combined_table(load_runs([run_dir]), "norms_inputs"))
    assert (fits["num_points"] == 40_000).all()  # fits use every sample, not the thinned ones


def test_damaged_table_is_listed_not_fatal(tmp_path):
    run_dir = make_weights_run(tmp_path, "m", num_layers=1)
    (run_dir / "norm_vectors.parquet").write_bytes(b"not parquet")
    runs = load_runs([run_dir])
    assert "norms_weights" in runs[0].tables and "norm_vectors" not in runs[0].tables
    page, _ = build_report_html(runs)
    assert "norm_vectors.parquet unreadable" in page


def test_root_app_registers_report_and_demo():
    try:
        from qft_cli.cli.app import app
    except ModuleNotFoundError as err:  # the root app needs every sub-command module of the project
        pytest.skip(f"root app not importable in this build: {err}")
    res = CliRunner().invoke(app, ["report", "--help"])
    assert res.exit_code == 0 and "--output" in res.output
    res = CliRunner().invoke(app, ["demo", "--help"])
    assert res.exit_code == 0 and "--out" in res.output


# --------------------------------------------------------------------------------------------
# Reading the charts back out of a page (for tests of the drawn numbers)
# --------------------------------------------------------------------------------------------

def _decode(value):
    """plotly >= 6 writes numpy arrays as {"dtype", "bdata"(, "shape")}: back to lists."""
    import base64

    if isinstance(value, dict) and "bdata" in value and "dtype" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            arr = arr.reshape([int(s) for s in str(value["shape"]).split(",")])
        return arr.tolist()
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def plotly_figures(page: str) -> list[dict]:
    """Every ``Plotly.newPlot`` call of a report page as ``{"id", "data", "layout"}`` (arrays decoded)."""
    decoder = json.JSONDecoder()
    out = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"(fig\d+)",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        rest = page[end:].lstrip().lstrip(",").lstrip()
        layout, _ = decoder.raw_decode(rest)
        out.append({"id": match.group(1), "data": _decode(data), "layout": _decode(layout)})
    return out


def figure_titled(page: str, text: str) -> dict:
    """The one chart whose title contains ``text``."""
    found = [f for f in plotly_figures(page) if text in str(f["layout"].get("title", {}).get("text", ""))]
    assert len(found) == 1, f"{len(found)} charts titled like {text!r}"
    return found[0]


def _with_provenance(run_dir: Path, task: str, sha: str, weights_sha: str = "e" * 64) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    meta["options"]["dataset"], meta["options"]["task"] = "gue", None
    meta["data"] = {"dataset": "gue", "task": task, "source": "local", "hub_id": None, "config": None, "split": None,
                    "revision": None}
    meta["data_files"] = [{"path": f"/data/{task}/train.csv", "size_bytes": 10, "sha256": sha}]
    meta["model_files"] = [{"model": "minilm", "kind": "minilm", "revision": None,
                            "files": [{"path": "/m/model.safetensors", "size_bytes": 5, "sha256": weights_sha}]}]
    write_json_atomic(run_dir / "run.json", meta)


def test_report_shows_provenance_and_warns_on_different_data_under_one_name(tmp_path):
    """Issue 12: per run the data (the task actually read) and the weights, short hashes with the full
    ones in a tooltip; a warning when two compared runs used different files under one name."""
    a = make_train_run(tmp_path, name="20261129-200200-train-a")
    b = make_train_run(tmp_path, name="20261129-200210-train-b")
    _with_provenance(a, "prom_core_tata", "a" * 64)
    _with_provenance(b, "prom_core_tata", "b" * 64)
    page, _ = build_report_html(load_runs([tmp_path]))
    assert "gue / prom_core_tata" in page and "prom_300_notata" not in page  # headings: the task read
    for full in ("a" * 64, "e" * 64):  # short hashes shown, full ones in the tooltip and the file table
        assert f"sha256 {full}" in page and f"<code>{full[:10]}</code>" in page and f"<code>{full}</code>" in page
    warning = page.split("Different data under one name", 1)[1].split("</div>", 1)[0]
    assert "gue/prom_core_tata" in warning and "20261129-200200-train-a" in warning
    _with_provenance(b, "prom_core_tata", "a" * 64)  # the same bytes: no warning
    page, _ = build_report_html(load_runs([tmp_path]))
    assert "Different data under one name" not in page
    _with_provenance(b, "prom_300_notata", "b" * 64)  # other names: no warning either
    page, _ = build_report_html(load_runs([tmp_path]))
    assert "Different data under one name" not in page and "gue / prom_300_notata" in page
