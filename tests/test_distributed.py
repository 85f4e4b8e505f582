"""The same ``qft train`` command under ``torchrun`` with 2 CPU processes (gloo): one run directory,
written by rank 0 only."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

LAUNCHER = '''
import typer
try:
    from qft_cli.cli.app import main
except ModuleNotFoundError:  # a branch without the other sub-commands
    from qft_cli.cli.train import train_command
    app = typer.Typer()
    @app.callback()
    def root() -> None:
        """qft"""
    app.command("train")(train_command)
    main = app
main()
'''


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo_run_writes_once(tmp_path):
    rng = random.Random(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 64), ("dev", 16), ("test", 16)):
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sequence", "label"])
            for i in range(n):
                w.writerow(["".join(rng.choice("ACGT") for _ in range(20)) + ("GGGG" if i % 2 else "AAAA"), i % 2])
    launcher = tmp_path / "launch_qft.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           str(launcher), "train", "--dataset", "gue", "--task", "prom_core_notata", "--tokenizer", "char",
           "--d-model", "16", "--num-heads", "2", "--d-ff", "32", "--batch-size", "8", "--device", "cpu", "--quiet",
           "--data-dir", str(data), "--out", str(out), "--max-steps", "4", "--early-stopping", "0", "--norm", "spectral"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(out.iterdir())
    assert len(runs) == 1  # both ranks agreed on one directory
    meta = json.loads((runs[0] / "run.json").read_text())
    assert meta["status"] == "completed" and meta["world_size"] == 2
    metrics = pd.read_parquet(runs[0] / "metrics.parquet")
    assert set(metrics.variant) == {"spectral", "baseline_kmer"}
    metrics = metrics[metrics.variant == "spectral"]  # the baseline is fitted once, outside training
    assert (metrics.split == "test").sum() == 1  # written once, by rank 0
    assert metrics["step"].max() == 4  # 64 samples / (8 per device x 2 processes) = 4 steps per epoch
    assert proc.stdout.count("qft train:") == 1  # one table, from rank 0
    # test predictions gathered from both ranks: each test sample once, in order, matching the test row
    preds = pd.read_parquet(runs[0] / "predictions.parquet")
    assert (preds[preds.variant == "baseline_kmer"].label.tolist()
            == preds[preds.variant == "spectral"].label.tolist())  # the baseline: the same test rows
    preds = preds[preds.variant == "spectral"]
    test = pd.read_csv(data / "test.csv")
    assert preds["sample_index"].tolist() == list(range(len(test)))
    assert preds["label"].tolist() == test["label"].tolist()
    test_row = metrics[metrics.split == "test"].iloc[0]
    assert test_row["accuracy"] == pytest.approx(float((preds.label == preds.prediction).mean()))
