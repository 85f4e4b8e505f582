"""Training engine: metrics against scikit-learn, best-model restoration, resume, result tables, a real run."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from qft_cli import normalization as qn
from qft_cli.modeling_qft import QftConfig, build_model
from qft_cli.training import (ExperimentOptions, ResultsRecorder, TrainingConfig, classification_metrics,
                              open_run, run_experiment, train_variant)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _datasets(n_train=48, n_eval=16, length=9, vocab=20, seed=0):
    """Random sequences; label 1 when token 7 occurs (learnable by attention)."""
    import datasets

    g = torch.Generator().manual_seed(seed)

    def make(n):
        ids = torch.randint(5, vocab, (n, length), generator=g)
        ids[:, 0] = 2  # [CLS]
        labels = (ids == 7).any(dim=1).long()
        return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * length] * n,
                                           "labels": labels.tolist()})

    return {"train": make(n_train), "validation": make(n_eval), "test": make(n_eval)}


def _model(method=None, seed=0, dropout=0.1):
    cfg = QftConfig(vocab_size=20, d_model=16, num_heads=2, d_ff=32, num_layers=1, num_labels=2, dropout=dropout,
                    attention_dropout=dropout)
    model = build_model(cfg, seed=seed)
    if method:
        qn.apply_normalization(model, method)
    return model


def _collator():
    from transformers import default_data_collator

    return default_data_collator


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- metrics

def test_classification_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    got = classification_metrics(y_pred, y_true, 2)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y_true, y_pred), abs=1e-12)
    # token classification: -100 ignored, macro over present classes (47 POS labels, only some occur)
    y_true = rng.integers(0, 10, (20, 12))
    y_pred = rng.integers(0, 12, (20, 12))
    y_true[:, -3:] = -100
    keep = y_true != -100
    got = classification_metrics(y_pred, y_true, 47)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true[keep], y_pred[keep]), abs=1e-12)
    assert got["f1"] == pytest.approx(f1_score(y_true[keep], y_pred[keep], average="macro"), abs=1e-12)


def test_binary_f1_hand_computed():
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 2/3
    got = classification_metrics(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0]), 2)
    assert got == {"accuracy": pytest.approx(0.6), "f1": pytest.approx(2 / 3)}


# ----------------------------------------------------------------------------- best model

class _Snapshots:
    def __init__(self):
        from transformers import TrainerCallback

        outer = self
        self.states = {}

        class Cb(TrainerCallback):
            def on_epoch_end(self, args, state, control, model=None, **kw):
                outer.states[round(state.epoch)] = _state(model)

        self.callback = Cb()


@pytest.mark.parametrize("method", [None, "spectral"])
def test_best_model_restored_from_scripted_scores(tmp_path, method):
    torch.manual_seed(0)
    scores = iter([0.5, 0.9, 0.6, 0.4, 0.3, 0.2])

    def scripted(_eval_pred):
        return {"accuracy": 0.0, "f1": next(scores)}

    model = _model(method)
    params_before = [id(p) for p in model.parameters()]
    snaps = _Snapshots()
    config = TrainingConfig(learning_rate=1e-2, num_epochs=10, early_stopping=2, batch_size=16, device="cpu")
    recorder = ResultsRecorder()
    result = train_variant(model, _datasets(), config, "v", output_dir=tmp_path / "ck", num_labels=2,
                           data_collator=_collator(), compute_metrics=scripted, callbacks=[snaps.callback],
                           recorder=recorder)
    assert result.epochs == 4  # stopped after two evaluations without improvement
    assert result.best_checkpoint.endswith("checkpoint-6")  # 48 samples / 16 = 3 steps per epoch
    final = model.state_dict()
    assert set(final) == set(snaps.states[2])
    for key, value in snaps.states[2].items():
        assert torch.equal(final[key], value), key
    assert any(not torch.equal(final[k], v) for k, v in snaps.states[4].items())
    # restored in place into the live parameters (a copy of the checkpoint, not new tensor objects)
    assert [id(p) for p in model.parameters()] == params_before
    val = pd.DataFrame(recorder.tables["metrics"]).query("split == 'validation'")
    assert val["f1"].tolist() == [0.5, 0.9, 0.6, 0.4]


# ----------------------------------------------------------------------------- resume

class _Interrupt:
    def __init__(self, at_step):
        from transformers import TrainerCallback

        class Cb(TrainerCallback):
            def on_save(self, args, state, control, **kw):
                if state.global_step == at_step:
                    raise KeyboardInterrupt

        self.callback = Cb()


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    config = TrainingConfig(learning_rate=1e-2, num_epochs=4, early_stopping=0, batch_size=16, device="cpu",
                            warmup_ratio=0.1)
    data = _datasets()
    full_model = _model("frobenius")
    full = train_variant(full_model, data, config, "frobenius", output_dir=tmp_path / "full", num_labels=2,
                         data_collator=_collator())

    recorder = ResultsRecorder()
    with pytest.raises(KeyboardInterrupt):
        train_variant(_model("frobenius"), data, config, "frobenius", output_dir=tmp_path / "cut", num_labels=2,
                      data_collator=_collator(), callbacks=[_Interrupt(6).callback], recorder=recorder)
    assert (tmp_path / "cut" / "checkpoint-6").is_dir()
    resumed_model = _model("frobenius", seed=1)  # different init: everything must come from the checkpoint
    resumed = train_variant(resumed_model, data, config, "frobenius", output_dir=tmp_path / "cut", num_labels=2,
                            data_collator=_collator(), resume=True, recorder=recorder)
    assert resumed.steps == full.steps == 12
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed.test["accuracy"] == pytest.approx(full.test["accuracy"])
    metrics = pd.DataFrame(recorder.tables["metrics"])
    val = metrics[metrics.split == "validation"]
    assert val["epoch"].tolist() == [1.0, 2.0, 3.0, 4.0]  # no duplicated epochs after the resume


# ----------------------------------------------------------------------------- tables

def test_recorder_writes_documented_schema(tmp_path):
    from qft_cli.runs import Run

    config = TrainingConfig(learning_rate=1e-3, num_epochs=2, early_stopping=0, batch_size=16, device="cpu")
    with Run("train", ["test"], {}, out=tmp_path) as run:
        recorder = ResultsRecorder(run)
        model = _model("spectral")
        result = train_variant(model, _datasets(), config, "spectral", output_dir=run.path / "ck", num_labels=2,
                               data_collator=_collator(), recorder=recorder)
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    assert list(metrics.columns) == ["variant", "epoch", "step", "split", "loss", "accuracy", "f1", "learning_rate",
                                     "samples_per_second"]
    assert metrics["split"].tolist() == ["train", "validation", "train", "validation", "test"]
    assert metrics["step"].dtype == np.int64 and metrics["loss"].dtype == np.float64
    norms = pd.read_parquet(run.path / "norms_during_training.parquet")
    assert list(norms.columns) == ["variant", "epoch", "step", "parameter", "layer", "matrix", "spectral_norm",
                                   "frobenius_norm"]
    assert sorted(norms["epoch"].unique()) == [0.0, 1.0, 2.0]
    assert set(norms["matrix"]) == {"q", "k", "v", "o", "ffn_up", "ffn_down"}
    # the recorded norms are those of the effective matrices (of the restored best model), recomputed independently
    best_step = int(result.best_checkpoint.rsplit("-", 1)[1])
    last = norms[norms.step == best_step].set_index("matrix")
    assert len(last) == 6
    for m in qn.effective_matrices(model):
        w = m.weight.double()
        assert last.loc[m.matrix, "frobenius_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w, "fro")), rel=1e-9)
        assert last.loc[m.matrix, "spectral_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w, 2)), rel=1e-9)
        # one power-iteration step per training step lags behind fast-moving tiny random weights
        # (3 steps here), so only a loose bound; convergence itself is tested in test_normalization
        assert abs(last.loc[m.matrix, "spectral_norm"] - 1) < 0.2, (m.matrix, last.loc[m.matrix, "spectral_norm"])


# ----------------------------------------------------------------------------- option checks

@pytest.mark.parametrize("kwargs, match", [
    (dict(eval_strategy="no"), "needs evaluation"),
    (dict(lr_scheduler_type="cosin"), "lr-scheduler-type"),
    (dict(warmup_ratio=1.5), "warmup-ratio"),
    (dict(learning_rate=0), "learning-rate"),
])
def test_training_config_rejects(kwargs, match):
    from qft_cli.errors import QftInputError

    with pytest.raises(QftInputError, match=match):
        TrainingConfig(**kwargs).validate()


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
