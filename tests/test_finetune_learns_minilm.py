"""``qft finetune`` learns on a slice of real GUE data offline (prom_core_notata, the embedded all-MiniLM-L6-v2, its last block Frobenius-normalised).
Kept in its own file: the run takes most of a minute on one shared CPU core.

Only block 6 is normalised here: MiniLM's attention and FFN matrices have Frobenius norms of 17 to
55, so normalising all of them to 1 shrinks every sub-layer's output 17-55 fold against the
residual stream; the research recovers from that over up to 200 epochs, which a CPU test cannot
afford. tiny-bert (random init, norms near 1) covers the all-matrices case."""

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
@pytest.mark.minilm
def test_minilm_learns_gue_with_frobenius(tmp_path, gue_core, minilm_source):
    out = tmp_path / "runs"
    result = _run(["minilm", "--dataset", "gue", "--data-dir", str(gue_core), "--norm", "frobenius", "--layers", "6",
                   "--max-train-samples", "384", "--max-eval-samples", "200", "--num-epochs", "2",
                   "--batch-size", "16", "--learning-rate", "1e-4", "--warmup-ratio", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    meta = json.loads((_run_dir(out) / "run.json").read_text())
    assert meta["results"]["frobenius"]["test"]["accuracy"] > 0.65
