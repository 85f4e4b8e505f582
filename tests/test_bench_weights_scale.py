"""benchmarks/bench_weights_scale.py: the WeightWatcher comparison (issue 9).

WeightWatcher is not a qft dependency: the test that runs it skips where it is not installed; the
matching and square-root logic is tested on its own with rows of WeightWatcher's form.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_weights_scale as bench  # noqa: E402

MINI = dict(hidden=64, intermediate=96, layers=1, heads=4, kv_heads=2, vocab=200)


def test_weightwatcher_spectral_norms_takes_square_roots_and_matches_by_name_and_shape():
    shapes = {"model.embed_tokens.weight": (200, 64), "model.layers.0.self_attn.k_proj.weight": (32, 64),
              "model.norm.weight": (64,), "lm_head.weight": (200, 64)}
    rows = [
        {"longname": "model.embed_tokens", "N": 200, "M": 64, "spectral_norm": 2.25, "sv_max": 1.5},
        {"longname": "model.layers.0.self_attn.k_proj", "N": 64, "M": 32, "spectral_norm": 0.49, "sv_max": 0.7},
        {"longname": "lm_head", "N": 200, "M": 32, "spectral_norm": 4.0, "sv_max": 2.0},  # wrong shape
        {"longname": "model.norm", "N": 64, "M": 1, "spectral_norm": 1.0, "sv_max": 1.0},  # 1-D tensor
        {"longname": "not.in.checkpoint", "N": 8, "M": 8, "spectral_norm": 1.0, "sv_max": 1.0},
    ]
    norms, unmatched, squared_check = bench.weightwatcher_spectral_norms(rows, shapes)
    assert norms == pytest.approx({"model.embed_tokens.weight": 1.5, "model.layers.0.self_attn.k_proj.weight": 0.7},
                                  rel=1e-15)
    assert unmatched == ["lm_head", "model.norm", "not.in.checkpoint"]
    assert squared_check < 1e-15
    # a spectral_norm column that were not squared is caught by the check against sv_max
    _, _, bad = bench.weightwatcher_spectral_norms(
        [{"longname": "model.embed_tokens", "N": 200, "M": 64, "spectral_norm": 1.5, "sv_max": 1.5}], shapes)
    assert bad == pytest.approx(1.0 - math.sqrt(1.5) / 1.5, rel=1e-12) and bad > 0.1


def test_weightwatcher_run_skipped_with_one_line_when_not_installed(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name, *a: None)
    assert bench.weightwatcher_run(tmp_path, threads=1) is None
    assert capsys.readouterr().out.strip() == \
        "WeightWatcher: not installed, comparison skipped (pip install weightwatcher)"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("weightwatcher") is None,
                    reason="weightwatcher not installed (optional, benchmark only: pip install weightwatcher)")
def test_weightwatcher_square_roots_equal_float64_svd(monkeypatch, tmp_path):
    monkeypatch.setitem(bench.SHAPES, "mini", MINI)
    directory = tmp_path / "ckpt"
    bench.write_checkpoint(directory, "mini", shard_gb=0.00005)  # several shards + index
    assert len(list(directory.glob("*.safetensors"))) > 1
    ww = bench.weightwatcher_run(directory, threads=1)
    assert ww is not None
    shapes = dict(bench.tensor_shapes(MINI))
    norms, unmatched, squared_check = bench.weightwatcher_spectral_norms(ww["rows"], shapes)
    assert unmatched == [] and squared_check < 1e-12
    matrices = dict(bench.matrices(directory))
    assert set(norms) == set(matrices)  # every 2-D tensor, embedding and LM head included
    for name, w in matrices.items():
        reference = float(torch.linalg.matrix_norm(w.double(), ord=2))
        assert abs(norms[name] - reference) / reference < 1e-12, name
