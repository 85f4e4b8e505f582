"""Real-data runs of the engine: GUE promoters (every variant learns), CoNLL POS, MiniLM embedding."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from qft_cli import normalization as qn
from qft_cli.training import ExperimentOptions, TrainingConfig, open_run, run_experiment


# ----------------------------------------------------------------------------- a real run

@pytest.mark.slow
def test_small_real_gue_run_learns_every_variant(tmp_path, shared_data, monkeypatch):
    """GUE prom_core_notata, 2,000 training sequences, d=64, offline 3-mer tokenizer, 4 epochs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        options = ExperimentOptions(
            dataset="gue", task="prom_core_notata", data_dir=str(shared_data / "gue"), tokenizer="kmer:3",
            max_length=32, norm="all", d_model=64, num_heads=4, d_ff=128, max_train_samples=2000,
            training=TrainingConfig(learning_rate=2e-3, num_epochs=4, early_stopping=0, batch_size=64,
                                    eval_batch_size=256, warmup_ratio=0.1, device="cpu"))
        run = open_run(options, out=tmp_path, argv=["qft", "train"])
        with run:
            result = run_experiment(options, run)
    finally:
        torch.set_num_threads(threads)
    summary = {r["variant"]: r for r in result.summary()}
    assert list(summary) == ["vanilla", "spectral", "frobenius"]
    for variant, row in summary.items():
        assert row["accuracy"] >= 0.70, (variant, row)
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    test = metrics[metrics.split == "test"].set_index("variant")
    for variant, row in summary.items():
        assert test.loc[variant, "accuracy"] == pytest.approx(row["accuracy"])
    assert (run.path / "dna_tokenizer" / "tokenizer.json").is_file()
    # every variant's best model reloads with identical outputs (normalisation re-applied from the config)
    from transformers import AutoModelForSequenceClassification

    for variant in summary:
        reloaded = AutoModelForSequenceClassification.from_pretrained(run.path / "best" / variant).eval()
        assert (qn.normalization_settings(reloaded) or {}).get("method") == (None if variant == "vanilla" else variant)
    assert math.isclose(summary["vanilla"]["accuracy_diff"], 0.0)


@pytest.mark.slow
def test_conll_pos_tagging_pipeline(tmp_path, shared_data, monkeypatch):
    """Token classification end to end on a slice of the shared CoNLL-2003 files (byte-level tokenizer)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = ExperimentOptions(
        dataset="conll2003", data_dir=str(shared_data / "conll2003"), tokenizer="tiny-bert", max_length=48,
        norm="spectral", d_model=32, num_heads=2, d_ff=64, max_train_samples=300,
        training=TrainingConfig(learning_rate=3e-3, num_epochs=1, max_steps=10, early_stopping=0, batch_size=32,
                                eval_batch_size=256, device="cpu"))
    run = open_run(options, out=tmp_path, argv=["qft", "train"])
    with run:
        result = run_experiment(options, run)
    (row,) = result.summary()
    assert row["variant"] == "spectral" and 0.0 < row["accuracy"] < 1.0 and 0.0 <= row["f1"] <= 1.0
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    assert set(metrics["split"]) == {"train", "validation", "test"}
    assert result.sizes == {"train": 300, "validation": 3250, "test": 3453}


def test_embedding_from_minilm_uses_its_tokenizer(tmp_path, shared_data, minilm_source, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    options = ExperimentOptions(
        dataset="gue", task="prom_core_notata", data_dir=str(shared_data / "gue"), max_length=40, norm="frobenius",
        d_model=384, num_heads=6, d_ff=64, embedding_from="minilm", freeze_embedding=True, max_train_samples=64,
        training=TrainingConfig(num_epochs=1, max_steps=2, early_stopping=0, batch_size=32, eval_strategy="no",
                                device="cpu"))
    run = open_run(options, out=tmp_path, argv=["qft", "train"])
    with run:
        result = run_experiment(options, run)
    assert result.vocab_size == 30522
    from transformers import AutoModelForSequenceClassification

    from qft_cli.modeling_qft import pretrained_embedding

    model = AutoModelForSequenceClassification.from_pretrained(run.path / "best" / "frobenius")
    # frozen: the trained model still holds MiniLM's embedding exactly
    assert torch.equal(model.get_input_embeddings().weight, pretrained_embedding("minilm"))
