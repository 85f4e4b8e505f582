"""Training engine: metrics against scikit-learn, best-model restoration, resume, result tables, a real run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import recording_factory

from qft_cli.train import normalization as qn
from qft_cli.train.modeling_qft import QftConfig, build_model
from qft_cli.train.training import (
    ResultsRecorder,
    TrainingConfig,
    classification_metrics,
    train_variant,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


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
    pytest.importorskip("sklearn", reason="scikit-learn is the independent reference")
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
        # the power-iteration vectors are then set to the exact singular vectors (set_exact_spectral_norms)
        if not key.endswith(("._u", "._v")):
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
    from qft_cli.runs.rundir import Run

    config = TrainingConfig(learning_rate=1e-3, num_epochs=2, early_stopping=0, batch_size=16, device="cpu", seed=7)
    data = _datasets()
    with Run("train", ["test"], {}, out=tmp_path) as run:
        recorder = ResultsRecorder(run)
        model = _model("spectral")
        result = train_variant(model, data, config, "spectral", output_dir=run.path / "ck", num_labels=2,
                               data_collator=_collator(), recorder=recorder)
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    assert list(metrics.columns) == ["variant", "seed", "epoch", "step", "split", "loss", "accuracy", "f1",
                                     "learning_rate", "samples_per_second"]
    assert set(metrics["seed"]) == {7} and metrics["seed"].dtype == np.int64
    # predictions.parquet: the restored best model's argmax on each test sample, in test-split order
    preds = pd.read_parquet(run.path / "predictions.parquet")
    assert list(preds.columns) == ["variant", "seed", "sample_index", "label", "prediction", "num_labels"]
    assert preds["sample_index"].tolist() == list(range(len(data["test"])))
    assert preds["label"].tolist() == data["test"]["labels"]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["test"]["input_ids"]),
                       attention_mask=torch.tensor(data["test"]["attention_mask"])).logits
    assert preds["prediction"].tolist() == logits.argmax(-1).tolist()
    test_row = metrics[metrics.split == "test"].iloc[0]
    assert test_row["accuracy"] == pytest.approx(float((preds["label"] == preds["prediction"]).mean()))
    assert metrics["split"].tolist() == ["train", "validation", "train", "validation", "test"]
    assert metrics["step"].dtype == np.int64 and metrics["loss"].dtype == np.float64
    norms = pd.read_parquet(run.path / "norms_during_training.parquet")
    assert list(norms.columns) == ["variant", "seed", "epoch", "step", "parameter", "layer", "matrix", "spectral_norm",
                                   "frobenius_norm"]
    assert sorted(norms["epoch"].unique()) == [0.0, 1.0, 2.0]
    assert set(norms["matrix"]) == {"q", "k", "v", "o", "ffn_up", "ffn_down"}
    # the recorded norms are those of the effective matrices training used at the best step: the
    # restored best model then gets its exact sigma_max (set_exact_spectral_norms), i.e. each matrix
    # is the recorded one divided by its recorded spectral norm; recomputed independently
    best_step = int(result.best_checkpoint.rsplit("-", 1)[1])
    last = norms[norms.step == best_step].set_index("matrix")
    assert len(last) == 6
    for m in qn.effective_matrices(model):
        w = m.weight.double()
        recorded = last.loc[m.matrix]
        assert float(torch.linalg.matrix_norm(w, "fro")) == pytest.approx(
            recorded["frobenius_norm"] / recorded["spectral_norm"], rel=2e-6)
        assert float(torch.linalg.matrix_norm(w, 2)) == pytest.approx(1.0, abs=1e-6)
        # one power-iteration step per training step lags behind fast-moving tiny random weights
        # (3 steps here), so only a loose bound; convergence itself is tested in test_normalization
        assert abs(recorded["spectral_norm"] - 1) < 0.2, (m.matrix, recorded["spectral_norm"])


# ----------------------------------------------------------------------------- option checks

@pytest.mark.parametrize("kwargs, match", [
    (dict(eval_strategy="no"), "needs evaluation"),
    (dict(lr_scheduler_type="cosin"), "lr-scheduler-type"),
    (dict(warmup_ratio=1.5), "warmup-ratio"),
    (dict(learning_rate=0), "learning-rate"),
    (dict(learning_rate=float("inf")), "learning-rate"),
    (dict(weight_decay=float("nan")), "weight-decay"),
    (dict(num_epochs=float("inf")), "num-epochs"),
    (dict(seed=-1), "--seed"),  # numpy/torch seeds: ValueError mid-run before
    (dict(seed=2 ** 32), "--seed"),
])
def test_training_config_rejects(kwargs, match):
    from qft_cli.system.errors import QftInputError

    with pytest.raises(QftInputError, match=match):
        TrainingConfig(**kwargs).validate()


def test_learned_gammas_recorded_and_bounded(tmp_path):
    from qft_cli.runs.rundir import Run

    config = TrainingConfig(learning_rate=5e-2, num_epochs=2, early_stopping=0, batch_size=16, device="cpu")
    with Run("train", ["test"], {}, out=tmp_path) as run:
        model = _model()
        qn.apply_normalization(model, "frobenius", max_gamma=1.0)
        train_variant(model, _datasets(), config, "frobenius_subnormalised", output_dir=run.path / "ck",
                      num_labels=2, data_collator=_collator(), recorder=ResultsRecorder(run))
    g = pd.read_parquet(run.path / "gammas.parquet")
    assert list(g.columns) == ["variant", "seed", "epoch", "step", "parameter", "layer", "matrix", "gamma"]
    assert sorted(g["epoch"].unique()) == [0.0, 1.0, 2.0]
    assert (g[g.epoch == 0]["gamma"] == 0.5).all()  # sigmoid(0) * max_gamma
    assert (g["gamma"] < 1.0).all() and g[g.epoch == 2]["gamma"].ne(0.5).any()  # learnt, bounded
    norms = pd.read_parquet(run.path / "norms_during_training.parquet").merge(g, on=["epoch", "step", "parameter", "matrix", "layer", "variant"])
    # effective Frobenius norm = gamma exactly
    assert np.allclose(norms["frobenius_norm"], norms["gamma"], rtol=1e-6)


def test_gamma_logits_get_no_weight_decay(tmp_path):
    """Decay on g would drag gamma towards max_gamma / 2 regardless of the data."""
    from qft_cli.train.training import trainer_class, training_arguments

    model = _model()
    qn.apply_normalization(model, "frobenius", max_gamma=1.0)
    args = training_arguments(TrainingConfig(device="cpu", weight_decay=0.5, eval_strategy="no", early_stopping=0),
                              tmp_path, 10)
    trainer = trainer_class()(model=model, args=args)
    decayed = trainer.get_decay_parameter_names(model)
    gamma_names = [n for n, _ in model.named_parameters() if n.endswith(".g")]
    assert gamma_names and not set(gamma_names) & set(decayed)
    assert any(n.endswith("original") for n in decayed)  # the weights themselves still decay
    optimizer = trainer.create_optimizer()
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    params = dict(model.named_parameters())
    assert all(decay_of[id(params[n])] == 0.0 for n in gamma_names)


def test_cpu_runs_without_mixed_precision(tmp_path):
    from qft_cli.train.training import training_arguments

    args = training_arguments(TrainingConfig(device="cpu"), tmp_path, 100)
    assert not args.fp16 and not args.bf16 and args.metric_for_best_model == "f1" and args.load_best_model_at_end
    assert args.lr_scheduler_type == "cosine" or str(args.lr_scheduler_type).endswith("COSINE")


def test_hub_unreachable_is_one_line(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from qft_cli.data.tasks import load_task
    from qft_cli.system.errors import QftInputError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import time: patch the constants as well
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(QftInputError, match="--data-dir") as err:
        load_task("gue", task="prom_core_notata")
    assert "\n" not in str(err.value)


def test_stock_gpt2_with_fused_conv1d_normalised_trains_and_checkpoint_reloads(tmp_path):
    """The engine with a stock transformers model (what ``qft finetune`` does): GPT-2's fused Conv1D
    ``c_attn`` spectral-normalised block by block survives Trainer checkpoints."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from qft_cli.models.names import build_tiny_model

    def fresh():
        model = build_tiny_model("tiny-gpt2", AutoModelForSequenceClassification, num_labels=2, pad_token_id=0)
        qn.apply_normalization(model, "spectral", targets="attention")
        return model

    model = fresh()
    config = TrainingConfig(learning_rate=1e-3, num_epochs=2, early_stopping=0, batch_size=16, device="cpu")
    result = train_variant(model, _datasets(vocab=200), config, "spectral", output_dir=tmp_path / "ck", num_labels=2,
                           data_collator=_collator())
    assert not math.isnan(result.test["accuracy"])
    state = load_file(f"{result.best_checkpoint}/model.safetensors")
    assert any(k.endswith("c_attn.parametrizations.weight.original") for k in state)
    again = fresh()
    missing, unexpected = again.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if "parametrizations" in k or "spectral" in k], (missing, unexpected)
    qn.set_exact_spectral_norms(again)  # what train_variant does after training
    ids = torch.randint(5, 200, (2, 9))
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    blocks = [m for m in qn.effective_matrices(model) if m.parameter.endswith("c_attn.weight")]
    assert [b.matrix for b in blocks] == ["q", "k", "v"] * 2 and all(b.weight.shape == (64, 64) for b in blocks)


# ----------------------------------------------------------------------------- --norm all

def test_norm_all_variants_see_identical_data_order_and_initial_weights(tmp_path, monkeypatch):
    """The comparison is only fair if every variant starts from the same weights and sees the same batches;
    with --seeds, per seed (and another seed gives other weights and another order)."""
    import csv
    import random

    import qft_cli.train.modeling_qft as mq
    from qft_cli.runs.rundir import Run
    from qft_cli.train.training import ExperimentOptions, run_experiment

    rng = random.Random(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, size in (("train", 40), ("dev", 8), ("test", 8)):
        with open(data / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sequence", "label"])
            for i in range(size):
                w.writerow(["".join(rng.choice("ACGT") for _ in range(12 + i % 5)), i % 2])
    seen, initial = [], []
    monkeypatch.setattr(mq, "build_model", recording_factory(mq.build_model, seen, initial))
    training = TrainingConfig(learning_rate=1e-3, num_epochs=2, early_stopping=0, batch_size=8, device="cpu")
    options = ExperimentOptions(dataset="gue", data_dir=str(data), tokenizer="char", max_length=32, norm="all",
                                d_model=16, num_heads=2, d_ff=16, seeds=[3, 4], training=training)
    with Run("train", ["test"], {}, out=tmp_path / "runs") as run:
        result = run_experiment(options, run)
    assert [(r.variant, r.seed) for r in result.results] == [
        ("vanilla", 3), ("spectral", 3), ("frobenius", 3), ("vanilla", 4), ("spectral", 4), ("frobenius", 4)]
    assert len(seen) == 6 and len(seen[0]) == 10  # 40 / 8 = 5 steps per epoch, 2 epochs
    for first in (0, 3):  # per seed: identical batches and initial weights for every variant
        for batches, weights in zip(seen[first + 1:first + 3], initial[first + 1:first + 3]):
            assert len(batches) == len(seen[first])
            for a, b in zip(seen[first], batches):
                assert torch.equal(a, b)
            assert weights.keys() == initial[first].keys()
            for k in weights:
                assert torch.equal(weights[k], initial[first][k]), k
    assert not all(torch.equal(a, b) for a, b in zip(seen[0][:5], seen[0][5:]))  # reshuffled each epoch
    # another seed: other initial weights and another data order, but the same training samples
    assert not all(torch.equal(initial[0][k], initial[3][k]) for k in initial[0])
    assert not all(torch.equal(a, b) for a, b in zip(seen[0], seen[3]))
    assert sum(len(b) for b in seen[0][:5]) == sum(len(b) for b in seen[3][:5]) == 40  # one epoch each
    metrics = pd.read_parquet(run.path / "metrics.parquet")
    assert set(zip(metrics.variant, metrics.seed)) == {(v, s) for v in ("vanilla", "spectral", "frobenius")
                                                       for s in (3, 4)} | {("baseline_kmer", 3)}  # once per split seed
    for v in ("vanilla", "spectral", "frobenius"):
        for s in (3, 4):
            assert (run.path / "best" / v / f"seed-{s}" / "config.json").is_file()
    summary = pd.read_parquet(run.path / "test_summary.parquet")
    assert list(summary.variant.unique()) == ["vanilla", "spectral", "frobenius", "baseline_kmer"]
    trained = summary[summary.variant != "baseline_kmer"]
    assert set(trained.num_seeds) == {2} and set(trained.interval) == {"t over seeds"}


def test_resume_before_the_first_checkpoint_records_no_duplicate_rows(tmp_path):
    from transformers import TrainerCallback

    class StopEarly(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:  # before the first checkpoint (end of epoch 1 = step 3)
                raise KeyboardInterrupt

    config = TrainingConfig(learning_rate=1e-2, num_epochs=2, early_stopping=0, batch_size=16, device="cpu")
    data = _datasets()
    recorder = ResultsRecorder()
    with pytest.raises(KeyboardInterrupt):
        train_variant(_model("frobenius"), data, config, "frobenius", output_dir=tmp_path / "cut", num_labels=2,
                      data_collator=_collator(), callbacks=[StopEarly()], recorder=recorder)
    assert not list((tmp_path / "cut").glob("checkpoint-*"))
    train_variant(_model("frobenius"), data, config, "frobenius", output_dir=tmp_path / "cut", num_labels=2,
                  data_collator=_collator(), resume=True, recorder=recorder)
    norms = pd.DataFrame(recorder.tables["norms_during_training"])
    assert not norms.duplicated(["step", "parameter", "matrix"]).any()
    assert sorted(norms["step"].unique()) == [0, 3, 6]
    metrics = pd.DataFrame(recorder.tables["metrics"])
    assert not metrics.duplicated(["step", "split"]).any()


def test_matrix_norm_rows_use_one_thread_and_report_progress(monkeypatch):
    """Small matrices are measured on one torch thread (two stall on a busy machine: issue 18), the
    thread count is restored after, and each matrix is a progress step; norms against float64 torch."""
    from qft_cli.measure import norms
    from qft_cli.train.training import matrix_norm_rows

    seen, calls = [], []
    real = norms.spectral_norm

    def spy(w, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(w, *args, **kwargs)

    monkeypatch.setattr(norms, "spectral_norm", spy)
    model = _model("spectral")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows = matrix_norm_rows(model, progress=lambda d, i, n: calls.append((d, i, n)))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(rows) == 6 and seen == [1] * 6  # q, k, v, o, ffn_up, ffn_down of one block
    assert calls[0] == ("effective norms", 0, 6) and calls[-1] == ("effective norms", 6, 6) and len(calls) == 7
    for row, m in zip(rows, qn.effective_matrices(model)):
        assert row["spectral_norm"] == pytest.approx(float(torch.linalg.matrix_norm(m.weight.double(), ord=2)), rel=1e-9)


def test_finished_spectral_model_has_effective_norms_at_most_one(tmp_path):
    """A short spectral training (one power-iteration step per step lags the weights) ends with every
    effective matrix of the model, and of the saved best model, at spectral norm <= 1 + 1e-6
    (float64 torch.linalg.matrix_norm(ord=2)); the recorded rows show the lagging norms training used."""
    config = TrainingConfig(learning_rate=5e-2, num_epochs=2, early_stopping=0, batch_size=16, device="cpu")
    model = _model("spectral", dropout=0.0)
    recorder = ResultsRecorder()
    train_variant(model, _datasets(), config, "spectral", output_dir=tmp_path / "ck", num_labels=2,
                  data_collator=_collator(), recorder=recorder, best_model_dir=tmp_path / "best")
    norms = [float(torch.linalg.matrix_norm(m.weight.double(), ord=2)) for m in qn.effective_matrices(model)]
    assert len(norms) == 6 and max(norms) <= 1 + 1e-6 and min(norms) >= 1 - 1e-6
    reloaded = _model(dropout=0.0)
    qn.apply_normalization(reloaded, "spectral")
    from safetensors.torch import load_file

    reloaded.load_state_dict(load_file(str(tmp_path / "best" / "model.safetensors")))
    for m in qn.effective_matrices(reloaded):
        assert float(torch.linalg.matrix_norm(m.weight.double(), ord=2)) <= 1 + 1e-6
    recorded = recorder.frame("norms_during_training")
    assert recorded["spectral_norm"].max() > 1 + 1e-6  # what the lag gave during training


def test_cpu_training_estimate_from_the_first_steps(tmp_path):
    """On a CPU one TrainingEstimate comes after steps 2..4: the step count of the whole training
    (max_steps or epochs x steps per epoch) and steps x mean step time; none for a shorter run."""
    from qft_cli.cli.common import estimate_line
    from qft_cli.train.training import ESTIMATE_STEPS, TrainingEstimate

    seen = []
    config = TrainingConfig(learning_rate=1e-2, num_epochs=3, early_stopping=0, batch_size=8, device="cpu")
    train_variant(_model(), _datasets(), config, "vanilla", output_dir=tmp_path / "a", num_labels=2,
                  data_collator=_collator(), on_estimate=seen.append)
    (estimate,) = seen
    assert isinstance(estimate, TrainingEstimate) and estimate.steps == 18  # 3 epochs x 48 / 8
    assert estimate.timed_steps == ESTIMATE_STEPS and estimate.device == "cpu" and not estimate.max_steps_given
    assert estimate.seconds_per_step > 0
    assert estimate.estimated_seconds == pytest.approx(18 * estimate.seconds_per_step)
    seen.clear()
    short = TrainingConfig(learning_rate=1e-2, max_steps=ESTIMATE_STEPS, early_stopping=0, batch_size=8, device="cpu")
    train_variant(_model(), _datasets(), short, "vanilla", output_dir=tmp_path / "b", num_labels=2,
                  data_collator=_collator(), on_estimate=seen.append)
    assert seen == []
    days = TrainingEstimate("spectral", 42, 66_400, 14.75, 66_400 * 14.75, 3, "cpu", False)
    assert estimate_line(days) == ("spectral (seed 42): 66,400 steps, about 11.3 days on the CPU (14.75 s/step over "
                                   "3 steps; evaluation extra, early stopping may end it sooner); for a quick run "
                                   "pass --max-steps 100 and/or --max-train-samples 2000")
    assert "--max-steps" not in estimate_line(TrainingEstimate("vanilla", 0, 30, 0.1, 3.0, 3, "cpu", True))


def test_experiment_options_are_checked_once_and_again_after_a_change(monkeypatch):
    """The CLI checks the options before the run directory exists and run_experiment checks them
    for every other caller: the second call on unchanged options runs no check; a change is checked."""
    from qft_cli.data import tasks
    from qft_cli.system.errors import QftInputError
    from qft_cli.train.training import ExperimentOptions

    calls = []
    check = tasks.validate_dataset_name
    monkeypatch.setattr(tasks, "validate_dataset_name", lambda *a: calls.append(a) or check(*a))
    options = ExperimentOptions(dataset="gue", task="prom_core_tata", tokenizer="char", seeds=[3, 1])
    assert options.validate() is options and options.validate() is options
    assert len(calls) == 1 and options.training.seed == 3
    options.dropout = 1.5
    with pytest.raises(QftInputError, match="--dropout 1.5"):
        options.validate()
    options.dropout, options.seeds = 0.1, [2, 2]
    with pytest.raises(QftInputError, match="repeats a seed"):
        options.validate()


# ----------------------------------------------------------------------------- a full disk (issue 21, item 1)

def _fill_disk_at(monkeypatch, step: int, error=None):
    """Make the Trainer's optimizer write of checkpoint ``step`` fail as a full disk would, after
    the model file of that checkpoint was written (a half-written checkpoint)."""
    import errno

    from transformers import Trainer

    real = Trainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == step:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\0" * 100)  # cut off here
            raise error or OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.pt"))
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save)


@pytest.mark.parametrize("error", [None, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576")])
def test_disk_full_inside_a_checkpoint_keeps_the_last_complete_one(tmp_path, monkeypatch, error):
    """A checkpoint cut off by a full disk is removed (it never becomes the latest), the error is an
    OSError ENOSPC (torch's bare RuntimeError too, when the filesystem has no space left), and resume
    from the last complete checkpoint, once space is back, reproduces the uninterrupted run."""
    import errno
    import shutil

    from qft_cli.train import training

    config = TrainingConfig(learning_rate=1e-2, num_epochs=4, early_stopping=0, batch_size=16, device="cpu",
                            warmup_ratio=0.1, save_total_limit=0)
    data = _datasets()
    full_model = _model("frobenius")
    full = train_variant(full_model, data, config, "frobenius", output_dir=tmp_path / "full", num_labels=2,
                         data_collator=_collator())
    with monkeypatch.context() as patch:
        _fill_disk_at(patch, 6, error)
        if error is not None:  # torch.save says nothing about the disk: the free space decides
            patch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 20, 10 << 20, 0))
        recorder = ResultsRecorder()
        with pytest.raises(OSError) as err:
            train_variant(_model("frobenius"), data, config, "frobenius", output_dir=tmp_path / "cut", num_labels=2,
                          data_collator=_collator(), recorder=recorder)
    assert err.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["checkpoint-3"]
    assert training.last_complete_checkpoint(tmp_path / "cut").endswith("checkpoint-3")
    resumed_model = _model("frobenius", seed=1)
    resumed = train_variant(resumed_model, data, config, "frobenius", output_dir=tmp_path / "cut", num_labels=2,
                            data_collator=_collator(), resume=True, recorder=recorder)
    assert resumed.steps == full.steps == 12
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_resume_skips_a_checkpoint_without_trainer_state(tmp_path):
    """A checkpoint cut by kill -9 (no trainer_state.json, which the Trainer writes last) is not the
    one resume uses."""
    from qft_cli.train import training

    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "model.safetensors").write_bytes(b"")
    (tmp_path / "checkpoint-x").mkdir()
    assert training.last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")
    assert training.last_complete_checkpoint(tmp_path / "none") is None
