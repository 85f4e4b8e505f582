"""Training engine: metrics against scikit-learn, best-model restoration, resume, result tables, a real run."""

from __future__ import annotations

import math

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
