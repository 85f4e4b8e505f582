"""The report's "Attention factors" section (issue 11) on fake norms_attention tables with the
SCHEMAS columns, the per-head qk/ov heatmaps, and every chart of the page at 50 layers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import (
    _run_json,
    chromium_binary,
    figure_titled,
    make_inputs_run,
    make_weights_run,
    plotly_figures,
    render_dom,
)
from test_report_training import make_seeded_run

from qft_cli.report import (
    attention_fits,
    build_report_html,
    load_runs,
    median_ratios,
    write_report,
)
from qft_cli.runs.files import write_parquet_atomic

COLUMNS = ["model", "model_alias", "dataset", "sample_index", "layer", "head_index", "kv_head_index", "num_tokens", "head_dim",
           "x_spectral_norm", "x_frobenius_norm", "q_spectral_norm", "q_frobenius_norm", "k_spectral_norm",
           "k_frobenius_norm", "v_spectral_norm", "v_frobenius_norm", "logits_unmasked_spectral_norm",
           "logits_unmasked_frobenius_norm", "q_spectral_bound", "q_bound_ratio", "k_spectral_bound", "k_bound_ratio",
           "v_spectral_bound", "v_bound_ratio", "logits_unmasked_qk_bound", "logits_unmasked_qk_bound_ratio",
           "logits_unmasked_weight_bound", "logits_unmasked_weight_bound_ratio", "finite"]


def attention_table(model: str = "minilm", num_layers: int = 3, num_heads: int = 4, num_samples: int = 40,
                    rotary: bool = False, seed: int = 0) -> pd.DataFrame:
    """Norms with exact power laws: ||Q_h||_2 = 2 (1 + 0.1 h) N^0.5 (so the max over heads is
    2 (1 + 0.1 (H-1)) N^0.5), ||K_h||_2 ~ N^0.25, ||V_h||_2 ~ N^0.75, ||L_h||_2 ~ N^0.6; ratios drawn
    at random in (0, 1], the weight bound NaN for rotary models."""
    rng = np.random.default_rng(seed)
    rows = []
    for sample in range(num_samples):
        n = int(rng.integers(4, 300))
        for layer in range(1, num_layers + 1):
            for head in range(num_heads):
                f = 1 + 0.1 * head
                q, k, v, lg = 2 * f * n ** 0.5, 3 * f * n ** 0.25, f * n ** 0.75, 0.5 * f * n ** 0.6
                r = {"model": f"hub/{model}", "model_alias": model, "dataset": "mmlu", "sample_index": sample, "layer": layer,
                     "head_index": head, "kv_head_index": head // 2, "num_tokens": n, "head_dim": 8,
                     "x_spectral_norm": 10.0 * n ** 0.5, "x_frobenius_norm": 20.0 * n ** 0.5,
                     "q_spectral_norm": q, "q_frobenius_norm": 1.5 * q, "k_spectral_norm": k,
                     "k_frobenius_norm": 1.5 * k, "v_spectral_norm": v, "v_frobenius_norm": 1.5 * v,
                     "logits_unmasked_spectral_norm": lg, "logits_unmasked_frobenius_norm": 1.5 * lg, "finite": True}
                for name, measured in (("q", q), ("k", k), ("v", v)):
                    ratio = float(rng.uniform(0.01, 1.0))
                    r[f"{name}_spectral_bound"], r[f"{name}_bound_ratio"] = measured / ratio, ratio
                ratio = float(rng.uniform(1e-3, 1.0))
                r["logits_unmasked_qk_bound"], r["logits_unmasked_qk_bound_ratio"] = lg / ratio, ratio
                ratio = math.nan if rotary else float(rng.uniform(1e-4, 1.0))
                r["logits_unmasked_weight_bound"], r["logits_unmasked_weight_bound_ratio"] = lg / ratio, ratio
                rows.append(r)
    return pd.DataFrame(rows, columns=COLUMNS)


def make_attention_run(root: Path, name: str = "20261201-000100-norms-attention-minilm", **kwargs) -> Path:
    run_dir = root / name
    _run_json(run_dir, "norms attention", [kwargs.get("model", "minilm")], {"dataset": "mmlu", "device": "cpu",
                                                                           "dtype": "float32"})
    write_parquet_atomic(attention_table(**kwargs), run_dir / "norms_attention.parquet")
    return run_dir


def test_exponents_fitted_on_the_max_over_heads(tmp_path):
    runs = load_runs([make_attention_run(tmp_path, num_heads=4)])
    fits = attention_fits(runs)
    assert set(fits["quantity"]) == {"q", "k", "v", "logits_unmasked"} and (fits["fit_source"] != "fits.parquet").all()
    exponents = {"q": 0.5, "k": 0.25, "v": 0.75, "logits_unmasked": 0.6}
    for quantity, b in exponents.items():
        f = fits[(fits["quantity"] == quantity)]
        assert len(f) == 3 * 2  # layers x norms
        np.testing.assert_allclose(f["exponent"], b, atol=1e-10)
    q = fits[(fits["quantity"] == "q") & (fits["norm"] == "spectral")]
    np.testing.assert_allclose(q["coefficient"], 2 * 1.3, rtol=1e-10)  # the head with the largest factor
    np.testing.assert_allclose(fits[(fits["quantity"] == "q") & (fits["norm"] == "frobenius")]["coefficient"],
                               1.5 * 2 * 1.3, rtol=1e-10)


def test_fits_parquet_of_the_run_is_used(tmp_path):
    run_dir = make_attention_run(tmp_path)
    fits = attention_fits(load_runs([run_dir])).drop(columns=["run", "fit_source", "label"])
    fits["exponent"] = 0.4242
    hidden = fits[fits["quantity"] == "q"].assign(quantity="hidden_states", exponent=9.0)  # another command's rows
    write_parquet_atomic(pd.concat([fits, hidden]), run_dir / "fits.parquet")
    read = attention_fits(load_runs([run_dir]))
    assert (read["exponent"] == 0.4242).all() and (read["fit_source"] == "fits.parquet").all()
    assert set(read["quantity"]) == {"q", "k", "v", "logits_unmasked"}


def test_median_ratio_heatmaps_against_numpy(tmp_path):
    table = attention_table(num_layers=3, num_heads=4)
    table.loc[5, "finite"] = False
    table.loc[5, "q_bound_ratio"] = 1e-9  # a non-finite row must not count
    run_dir = tmp_path / "20261201-000100-norms-attention-minilm"
    _run_json(run_dir, "norms attention", ["minilm"], {"dataset": "mmlu"})
    write_parquet_atomic(table, run_dir / "norms_attention.parquet")
    page, _ = build_report_html(load_runs([run_dir]))
    heat = figure_titled(page, "median measured / bound per layer and head")
    panels = [t for t in heat["data"] if t["type"] == "heatmap"]
    assert len(panels) == 5  # q, k, v, logits QK bound, logits weight bound
    ok = table[table["finite"]]
    for panel, column in zip(panels, ["q_bound_ratio", "k_bound_ratio", "v_bound_ratio",
                                      "logits_unmasked_qk_bound_ratio", "logits_unmasked_weight_bound_ratio"]):
        expected = np.array([[np.median(ok[(ok["layer"] == l) & (ok["head_index"] == h)][column]) for h in range(4)]
                             for l in (1, 2, 3)])
        np.testing.assert_allclose(np.array(panel["customdata"], dtype=float), expected, rtol=1e-12)
        np.testing.assert_allclose(np.array(panel["z"], dtype=float), np.log10(expected), rtol=1e-12)
    per_layer = median_ratios(ok, ("layer",))
    assert per_layer.loc[0, "q_bound_ratio"] == pytest.approx(np.median(ok[ok["layer"] == 1]["q_bound_ratio"]))
    assert "Attention factors" in page and 'href="#attention"' in page


def test_rotary_model_has_no_weight_bound_panel(tmp_path):
    page, _ = build_report_html(load_runs([make_attention_run(tmp_path, rotary=True)]))
    heat = figure_titled(page, "median measured / bound per layer and head")
    assert len([t for t in heat["data"] if t["type"] == "heatmap"]) == 4


def test_qk_and_ov_heads_get_their_own_heatmap(tmp_path):
    run_dir = make_weights_run(tmp_path, "m", num_layers=2)
    heads = pd.read_parquet(run_dir / "norms_heads.parquet")
    extra = [{"model": "hub/m", "model_alias": "m", "part": "", "layer": layer, "matrix": matrix, "head_index": h,
              "spectral_norm": 10.0 * layer + h, "frobenius_norm": 20.0 * layer + h}
             for layer in (1, 2) for matrix in ("qk", "ov") for h in range(4)]
    write_parquet_atomic(pd.concat([heads, pd.DataFrame(extra)], ignore_index=True), run_dir / "norms_heads.parquet")
    page, _ = build_report_html(load_runs([run_dir]))
    fig = figure_titled(page, "per-head norms of W<sub>q,h</sub><sup>T</sup>W<sub>k,h</sub>")
    z = [np.array(t["z"], dtype=float) for t in fig["data"] if t["type"] == "heatmap"]
    np.testing.assert_allclose(z[0], [[10, 11, 12, 13], [20, 21, 22, 23]])
    plain = figure_titled(page, "per-head norms of the attention matrices")
    assert len([t for t in plain["data"] if t["type"] == "heatmap"]) == 4  # q, k, v, o: composites kept apart


# --------------------------------------------------------------------------------------------
# Every chart at 50 layers (a 7B model has 32, a 70B model 80)
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fifty_layer_report(tmp_path_factory) -> tuple[Path, int, str]:
    root = tmp_path_factory.mktemp("fifty")
    make_weights_run(root, "big", num_layers=50, d=16, vocab=200, name="20261201-000000-norms-weights-big")
    make_attention_run(root, model="big", num_layers=50, num_heads=8, num_samples=30)
    make_seeded_run(root, num_layers=50, epochs=4)
    make_inputs_run(root, models=("big",))
    out = root / "report.html"
    result = write_report([root], out)
    return out, result.num_figures, out.read_text()


def test_every_chart_at_50_layers(fifty_layer_report):
    path, num_figures, page = fifty_layer_report
    figures = plotly_figures(page)
    assert len(figures) == num_figures
    for fig in figures:
        layout = fig["layout"]
        legend_items = [t for t in fig["data"] if t.get("showlegend", True) is not False and t.get("name")
                        and t.get("visible", True) is True]  # a menu's hidden choices are not in the legend
        assert len(legend_items) <= 12, (layout.get("title"), len(legend_items))  # layers never in a legend
        assert layout["height"] <= 2600, layout.get("title")
    spectral = figure_titled(page, "Spectral norm ‖W‖<sub>2</sub> over training")
    colors = {t["line"]["color"] for t in spectral["data"] if t.get("name", "").startswith("layer")}
    assert len(colors) == 50  # one sequential colour per layer, none repeated
    bar = [t for t in spectral["data"] if t.get("marker", {}).get("showscale")]
    assert len(bar) == 1 and bar[0]["marker"]["cmin"] == 1 and bar[0]["marker"]["cmax"] == 50
    heat = figure_titled(page, "median measured / bound per layer and head")
    assert len(heat["data"][0]["y"]) == 50
    assert path.stat().st_size < 15_000_000


@pytest.mark.browser
@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary (apt-get install chromium)")
def test_fifty_layer_page_renders_in_chromium(fifty_layer_report, tmp_path):
    import re

    path, num_figures, _ = fifty_layer_report
    dom, log = render_dom(path, tmp_path)
    match = re.search(r'<html[^>]*data-js-errors="([^"]*)"', dom)
    assert match is None, f"JavaScript errors: {match.group(1) if match else ''}"
    assert len(re.findall(r'class="[^"]*\bjs-plotly-plot\b', dom)) == num_figures
