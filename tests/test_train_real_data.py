"""Real-data runs of the engine: GUE promoters (every variant learns), CoNLL POS, MiniLM embedding."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from qft_cli.data import tasks
from qft_cli.train import normalization as qn
from qft_cli.train.training import (
    ExperimentOptions,
    TrainingConfig,
    open_run,
    run_experiment,
)


def _head_lines(src, dst, n_lines):
    """Copy the first ``n_lines`` lines of a real data file (a slice that keeps evaluation fast)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src) as f, open(dst, "w") as g:
        for i, line in enumerate(f):
            if i >= n_lines:
                break
            g.write(line)


# ----------------------------------------------------------------------------- a real run

@pytest.mark.slow
def test_small_real_gue_run_learns_every_variant(tmp_path, shared_data, monkeypatch):
    """GUE prom_core_notata, 2,000 training sequences, d=64, offline 3-mer tokenizer, 4 epochs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # full train and test files; the first 1,000 validation sequences (validation only picks the epoch)
    import shutil

    data = tmp_path / "gue"
    data.mkdir()
    for name in ("train", "test"):
        shutil.copy(shared_data / "gue" / "prom_core_notata" / f"{name}.csv", data / f"{name}.csv")
    _head_lines(shared_data / "gue" / "prom_core_notata" / "dev.csv", data / "dev.csv", 1001)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = ExperimentOptions(
            dataset="gue", task="prom_core_notata", data_dir=str(data), tokenizer="kmer:3",
            max_length=32, norm="all", d_model=64, num_heads=4, d_ff=128, max_train_samples=2000,
            training=TrainingConfig(learning_rate=2e-3, num_epochs=4, early_stopping=0, batch_size=64,
                                    eval_batch_size=256, warmup_ratio=0.1, device="cpu"))
        run = open_run(options, out=tmp_path, argv=["qft", "train"])
        with run:
            result = run_experiment(options, run)
    finally:
        torch.set_num_threads(threads)
    summary = {r["variant"]: r for r in result.summary()}
    assert list(summary) == ["vanilla", "spectral", "frobenius", "baseline_kmer"]
    for variant, row in summary.items():
        assert row["accuracy"] >= 0.70, (variant, row)
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    test = metrics[metrics.split == "test"].set_index("variant")
    for variant, row in summary.items():
        assert test.loc[variant, "accuracy"] == pytest.approx(row["accuracy"])
    assert (run.path / "dna_tokenizer" / "tokenizer.json").is_file()
    # every variant's best model reloads with identical outputs (normalisation re-applied from the config)
    from transformers import AutoModelForSequenceClassification

    for variant in ("vanilla", "spectral", "frobenius"):  # the baseline has no model directory
        reloaded = AutoModelForSequenceClassification.from_pretrained(run.path / "best" / variant).eval()
        assert (qn.normalization_settings(reloaded) or {}).get("method") == (None if variant == "vanilla" else variant)
    assert math.isclose(summary["vanilla"]["accuracy_diff"], 0.0)


@pytest.mark.slow
def test_conll_pos_tagging_pipeline(tmp_path, shared_data, monkeypatch):
    """Token classification end to end on a slice of the shared CoNLL-2003 files (byte-level tokenizer)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sliced = tmp_path / "conll"
    for name in ("train", "valid", "test"):
        _head_lines(shared_data / "conll2003" / f"{name}.txt", sliced / f"{name}.txt", 8000 if name == "train" else 3000)
    options = ExperimentOptions(
        dataset="conll2003", data_dir=str(sliced), tokenizer="tiny-bert", max_length=48,
        norm="spectral", d_model=32, num_heads=2, d_ff=64, max_train_samples=300,
        training=TrainingConfig(learning_rate=3e-3, num_epochs=1, max_steps=10, early_stopping=0, batch_size=32,
                                eval_batch_size=256, device="cpu"))
    run = open_run(options, out=tmp_path, argv=["qft", "train"])
    with run:
        result = run_experiment(options, run)
    row, baseline = result.summary()
    assert row["variant"] == "spectral" and 0.0 < row["accuracy"] < 1.0 and 0.0 <= row["f1"] <= 1.0
    assert baseline["variant"] == "baseline_majority_tag" and 0.0 < baseline["accuracy"] < 1.0
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    assert set(metrics["split"]) == {"train", "validation", "test"}
    sizes = {k: len(tasks.read_conll(sliced / f"{f}.txt")[0]) for k, f in
             (("validation", "valid"), ("test", "test"))}
    assert result.sizes == {"train": 300, **sizes}


def test_embedding_from_minilm_uses_its_tokenizer(tmp_path, shared_data, minilm_source, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sliced = tmp_path / "gue_slice"
    for name in ("train", "dev", "test"):
        _head_lines(shared_data / "gue" / "prom_core_notata" / f"{name}.csv", sliced / f"{name}.csv", 129)
    options = ExperimentOptions(
        dataset="gue", task="prom_core_notata", data_dir=str(sliced), max_length=40, norm="frobenius",
        d_model=384, num_heads=6, d_ff=64, embedding_from="minilm", freeze_embedding=True, max_train_samples=64,
        training=TrainingConfig(num_epochs=1, max_steps=2, early_stopping=0, batch_size=32, eval_strategy="no",
                                device="cpu"))
    run = open_run(options, out=tmp_path, argv=["qft", "train"])
    with run:
        result = run_experiment(options, run)
    assert result.vocab_size == 30522
    from transformers import AutoModelForSequenceClassification

    from qft_cli.train.modeling_qft import pretrained_embedding

    model = AutoModelForSequenceClassification.from_pretrained(run.path / "best" / "frobenius")
    # frozen: the trained model still holds MiniLM's embedding exactly
    assert torch.equal(model.get_input_embeddings().weight, pretrained_embedding("minilm"))
