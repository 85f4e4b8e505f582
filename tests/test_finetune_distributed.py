"""``qft finetune`` under ``torchrun --nproc_per_node 2`` (gloo on CPU): one run directory,
written by rank 0 only, with the same results as any run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

_APP = """
import sys, torch, typer
from qft_cli.cli.finetune import finetune_command
torch.set_num_threads(1)
app = typer.Typer()
app.command("finetune")(finetune_command)
@app.command("version")
def version():
    pass
app(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_write_one_run(tmp_path, shared_data):
    data = tmp_path / "data"
    data.mkdir()
    source = shared_data / "gue" / "prom_core_notata"
    for split, n in (("train", 64), ("dev", 32), ("test", 32)):
        pd.read_csv(source / f"{split}.csv").head(n).to_csv(data / f"{split}.csv", index=False)
    script = tmp_path / "app.py"
    script.write_text(_APP)
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), "finetune", "tiny-bert", "--dataset", "gue", "--data-dir", str(data), "--norm", "frobenius",
           "--max-steps", "2", "--batch-size", "8", "--num-epochs", "1", "--out", str(out), "-q"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1
    meta = json.loads((runs[0] / "run.json").read_text())
    assert meta["status"] == "completed" and "frobenius" in meta["results"]
    metrics = pd.read_parquet(runs[0] / "metrics.parquet")
    assert set(metrics.variant) == {"frobenius", "baseline_kmer"}
    assert (metrics[metrics.variant == "frobenius"].split == "test").sum() == 1
    assert proc.stdout.count("test split") == 1  # only rank 0 prints the table
