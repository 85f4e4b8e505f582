"""``qft finetune`` learns on a slice of real GUE data offline (prom_core_notata, tiny-bert from its seeded random init, all attention and FFN matrices Frobenius-normalised).
Kept in its own file: the run takes most of a minute on one shared CPU core."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_finetune import _run, _run_dir

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def gue_core(shared_data) -> Path:
    return shared_data / "gue" / "prom_core_notata"


@pytest.mark.slow
@pytest.mark.shared_data
def test_tiny_bert_learns_gue_with_frobenius(tmp_path, gue_core):
    out = tmp_path / "runs"
    result = _run(["tiny-bert", "--dataset", "gue", "--data-dir", str(gue_core), "--norm", "frobenius", "--max-train-samples", "2000",
                   "--max-eval-samples", "400", "--num-epochs", "4", "--batch-size", "32", "--learning-rate", "2e-3",
                   "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    meta = json.loads((_run_dir(out) / "run.json").read_text())
    assert meta["results"]["frobenius"]["test"]["accuracy"] > 0.65
