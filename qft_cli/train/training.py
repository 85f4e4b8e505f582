"""Training engine: Hugging Face ``Trainer`` with early stopping, best-model restoration, per-epoch
metrics and effective norms, resume, and only-rank-0 writes. Reused by ``qft train`` and ``qft finetune``.

Entry points:

* :func:`train_variant` trains one model (one variant: ``vanilla``, ``spectral``, ...) on given
  tokenized datasets and returns its test metrics. Anything with a ``PreTrainedModel`` interface
  works (the qft transformer, a stock BERT with normalised layers, ...).
* :func:`run_experiment` is the ``qft train`` experiment: load data, build tokenizer and model,
  and train the requested variants on identical data order and seed into one run directory.

Engine choices (documented once, here):

* evaluation and checkpoints every epoch (every ``min(max_steps, steps per epoch)`` steps with
  ``max_steps``); early stopping on validation F1 with patience ``early_stopping`` evaluations
  (transformers ``EarlyStoppingCallback``); ``load_best_model_at_end``: the weights of the best
  checkpoint are *loaded from disk* into the model, so they are a copy, not live tensors;
* linear warmup over ``warmup_ratio`` of the steps, then the ``lr_scheduler_type`` schedule
  (cosine by default), AdamW with decoupled ``weight_decay``;
* mixed precision (bf16 where supported, else fp16) only on CUDA; float32 elsewhere;
* checkpoints in ``<run>/checkpoints/<variant>/``; the best model in ``<run>/best/<variant>/``
  (``save_pretrained`` format, with the tokenizer);
* metrics: accuracy and F1 (binary F1 of class 1 for two classes, macro F1 over the classes present
  in labels or predictions otherwise; for token classification, token accuracy over labelled
  sub-tokens). The train row of an epoch has the mean training loss, the learning rate at the end
  of the epoch and samples/s; its accuracy and F1 are NaN (the train split is not re-evaluated).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report

METRICS_TABLE = "metrics"
NORMS_TABLE = "norms_during_training"
GAMMAS_TABLE = "gammas"
PREDICTIONS_TABLE = "predictions"
TEST_SUMMARY_TABLE = "test_summary"
MAX_SEED = 2 ** 32 - 1
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")


# ----------------------------------------------------------------------------- configuration

@dataclass
class TrainingConfig:
    """Optimisation settings (the research's ``qft train`` defaults).

    Attributes:
        learning_rate: peak AdamW learning rate.
        num_epochs: training epochs (upper bound with early stopping).
        early_stopping: patience in evaluations without a better validation F1; 0 disables.
        weight_decay: AdamW decoupled weight decay.
        lr_scheduler_type: transformers scheduler name (``cosine``, ``linear``, ...).
        warmup_ratio: fraction of the training steps of linear warmup, in [0, 1).
        batch_size: training batch per device; ``eval_batch_size`` defaults to it.
        seed: seed of model init, data order and dropout (identical for every variant).
        max_steps: stop after this many optimiser steps (overrides ``num_epochs``).
        eval_strategy: ``epoch`` or ``no`` (no validation, no early stopping, last model kept).
        mixed_precision: ``auto`` (bf16/fp16 on CUDA, none elsewhere), ``no``, ``fp16``, ``bf16``.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    learning_rate: float = 8e-4
    num_epochs: float = 100
    early_stopping: int = 10
    weight_decay: float = 0.01
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    batch_size: int = 32
    eval_batch_size: Optional[int] = None
    seed: int = 42
    max_steps: Optional[int] = None
    eval_strategy: str = "epoch"
    mixed_precision: str = "auto"
    device: str = "auto"
    save_total_limit: int = 2
    dataloader_num_workers: int = 0

    def validate(self) -> "TrainingConfig":
        """Check every field; returns ``self``.

        Raises:
            QftInputError: a value out of range, an unknown scheduler, or contradicting options
                (early stopping without evaluation, mixed precision without CUDA).
        """
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise QftInputError(f"--learning-rate {self.learning_rate} must be positive")
        if not (self.num_epochs > 0 and math.isfinite(self.num_epochs)):
            raise QftInputError(f"--num-epochs {self.num_epochs} must be positive")
        if self.early_stopping < 0:
            raise QftInputError(f"--early-stopping {self.early_stopping} must be 0 (off) or a patience >= 1")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise QftInputError(f"--weight-decay {self.weight_decay} must be >= 0")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise QftInputError(f"unknown --lr-scheduler-type '{self.lr_scheduler_type}': use one of {', '.join(SCHEDULERS[:6])}")
        if not 0 <= self.warmup_ratio < 1:
            raise QftInputError(f"--warmup-ratio {self.warmup_ratio} must lie in [0, 1)")
        if self.batch_size < 1 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise QftInputError("--batch-size must be at least 1")
        if not 0 <= self.seed < 2 ** 32:
            raise QftInputError(f"--seed {self.seed} must lie in 0..{2 ** 32 - 1} (numpy and Trainer seeds)")
        if self.max_steps is not None and self.max_steps < 1:
            raise QftInputError(f"--max-steps {self.max_steps} must be at least 1")
        if self.eval_strategy not in ("epoch", "no"):
            raise QftInputError(f"unknown --eval-strategy '{self.eval_strategy}': use epoch or no")
        if self.eval_strategy == "no" and self.early_stopping > 0:
            raise QftInputError(f"--early-stopping {self.early_stopping} needs evaluation but --eval-strategy is no: "
                                "pass --early-stopping 0 or --eval-strategy epoch")
        if self.mixed_precision not in MIXED_PRECISION:
            raise QftInputError(f"unknown --mixed-precision '{self.mixed_precision}': use {', '.join(MIXED_PRECISION)}")
        if self.mixed_precision in ("fp16", "bf16") and not torch.cuda.is_available():
            raise QftInputError(f"--mixed-precision {self.mixed_precision} needs a CUDA GPU: use auto or no on this machine")
        from qft_cli.system.device import resolve_device

        resolve_device(self.device)
        return self


# ----------------------------------------------------------------------------- metrics

def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy and F1 of integer predictions against labels (entries with label -100 ignored).

    Args:
        predictions, labels: int arrays of the same shape (any shape; flattened).
        num_labels: 2 -> binary F1 of class 1; otherwise macro F1 over the classes that occur in
            labels or predictions (scikit-learn's ``average="macro"`` convention). A class with no
            true and no predicted positive has F1 0 in the binary case.

    Returns:
        ``{"accuracy": float, "f1": float}``; both NaN when no label is kept.
    """
    y_pred = np.asarray(predictions).reshape(-1)
    y_true = np.asarray(labels).reshape(-1)
    keep = y_true != -100
    y_pred, y_true = y_pred[keep].astype(np.int64), y_true[keep].astype(np.int64)
    if y_true.size == 0:
        return {"accuracy": float("nan"), "f1": float("nan")}
    accuracy = float((y_pred == y_true).mean())
    size = int(max(num_labels, y_true.max() + 1, y_pred.max() + 1))
    confusion = np.bincount(y_true * size + y_pred, minlength=size * size).reshape(size, size)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    denom = predicted + actual
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if num_labels == 2:
        return {"accuracy": accuracy, "f1": float(f1[1])}
    present = (predicted + actual) > 0
    return {"accuracy": accuracy, "f1": float(f1[present].mean())}


def _argmax_logits(logits, labels):
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def metrics_function(num_labels: int) -> Callable:
    """``compute_metrics`` for ``Trainer``: accuracy and F1 of :func:`classification_metrics`."""

    def compute(eval_pred) -> dict[str, float]:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
        return classification_metrics(predictions, labels, num_labels)

    return compute


# ----------------------------------------------------------------------------- recording

#: Matrices with at most this many entries are measured with one torch thread (see :func:`matrix_norm_rows`).
ONE_THREAD_MAX_ENTRIES = 4096 * 4096


def matrix_norm_rows(model: torch.nn.Module, targets: Sequence[str] = ("attention", "ffn"),
                     progress: Optional[ProgressFn] = None,
                     progress_label: str = "effective norms") -> list[dict[str, Any]]:
    """Spectral and Frobenius norm (float64, :mod:`qft_cli.measure.norms`) of every tracked matrix.

    A normalised model reports its effective (normalised) matrices; a vanilla model the plain
    matrices of ``targets`` (roles or matrix names), so variants can be compared. When every
    matrix has at most :data:`ONE_THREAD_MAX_ENTRIES` entries they are measured with one torch
    thread (:func:`qft_cli.measure.weights.one_thread_each`): small ``eigvalsh`` calls gain nothing
    from a second thread and stall when another process keeps a core busy (issue 18: the 36 MiniLM
    matrices took 177.5 s on 2 threads, 0.76 s on 1; ``benchmarks/bench_threads_load.py``).

    Args:
        progress: called as ``progress(progress_label, matrices done, matrices)``.

    Returns:
        dicts with ``parameter``, ``layer``, ``matrix``, ``spectral_norm``, ``frobenius_norm``.
    """
    from contextlib import nullcontext

    from qft_cli.measure.norms import frobenius_norm, spectral_norm
    from qft_cli.measure.weights import one_thread_each
    from qft_cli.models.layout import classify_model
    from qft_cli.train.normalization import effective_matrices, parse_targets

    mats = [(m.parameter, m.layer, m.matrix, m.weight) for m in effective_matrices(model)]
    if not mats:
        words = set(parse_targets(targets))
        params = dict(model.named_parameters())
        for spec in classify_model(model):
            if spec.role == "embedding" or not (spec.role in words or spec.matrix in words):
                continue
            mats.append((spec.parameter, spec.layer, spec.matrix, spec.extract(params[spec.parameter].detach())))
    small = all(w.numel() <= ONE_THREAD_MAX_ENTRIES for *_, w in mats)
    rows = []
    with one_thread_each() if small else nullcontext():
        for p, layer, m, w in mats:
            report(progress, progress_label, len(rows), len(mats))
            rows.append({"parameter": p, "layer": int(layer), "matrix": m, "spectral_norm": float(spectral_norm(w)),
                         "frobenius_norm": float(frobenius_norm(w))})
    report(progress, progress_label, len(rows), len(mats))
    return rows


class ResultsRecorder:
    """Rows of ``metrics``, ``norms_during_training``, ``gammas`` and ``predictions`` for every
    variant and seed of a run, rewritten atomically into the run directory after each addition
    (main process only). Every row has ``variant`` and ``seed``.

    Args:
        run: a :class:`qft_cli.runs.rundir.Run` (or ``None``: keep rows in memory only).
        default_seed: the ``seed`` given to rows read from an older run directory without the column.
    """

    def __init__(self, run=None, default_seed: int = 42):
        self.run = run
        self.tables: dict[str, list[dict[str, Any]]] = {METRICS_TABLE: [], NORMS_TABLE: [], GAMMAS_TABLE: [],
                                                        PREDICTIONS_TABLE: []}
        if run is not None and run.path is not None:
            for name in self.tables:
                path = Path(run.path) / f"{name}.parquet"
                if path.exists():
                    rows = pd.read_parquet(path).to_dict("records")
                    for row in rows:
                        if row.get("seed") is None or row.get("seed") != row.get("seed"):
                            row["seed"] = default_seed
                    self.tables[name] = rows

    def add(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Append rows to ``table`` and rewrite it."""
        self.tables[table].extend(rows)
        self.write(table)

    def write(self, table: str) -> None:
        if self.run is not None and self.tables[table]:
            self.run.write_table(table, self.frame(table))

    def frame(self, table: str) -> pd.DataFrame:
        """The table as a DataFrame (columns in the documented order)."""
        df = pd.DataFrame(self.tables[table])
        for col in ("epoch", "loss", "accuracy", "f1", "learning_rate", "samples_per_second", "spectral_norm",
                    "frobenius_norm", "gamma"):
            if col in df:
                df[col] = df[col].astype("float64")
        for col in ("step", "layer", "seed", "sample_index", "label", "prediction", "num_labels"):
            if col in df:
                df[col] = df[col].astype("int64")
        return df

    def forget_after(self, variant: str, step: int, seed: Optional[int] = None) -> None:
        """Drop rows of ``variant`` (and ``seed``, when given) recorded after optimiser step
        ``step``, and its test predictions (before a resume)."""

        def mine(r: dict[str, Any]) -> bool:
            return r["variant"] == variant and (seed is None or int(r["seed"]) == seed)

        for name, rows in self.tables.items():
            if name == PREDICTIONS_TABLE:
                self.tables[name] = [r for r in rows if not mine(r)]
            else:
                self.tables[name] = [r for r in rows if not (mine(r) and int(r["step"]) > step)]
            self.write(name)

    def test_row(self, variant: str, seed: Optional[int] = None) -> Optional[dict[str, Any]]:
        """The recorded test metrics of ``variant`` (with ``seed``, when given), if it finished."""
        rows = [r for r in self.tables[METRICS_TABLE] if r["variant"] == variant and r["split"] == "test"
                and (seed is None or int(r["seed"]) == seed)]
        return rows[-1] if rows else None


def _recorder_callback_class():
    from transformers import TrainerCallback

    class RecorderCallback(TrainerCallback):
        """Records per-epoch train/validation/test metrics, effective norms and gammas."""

        def __init__(self, recorder: ResultsRecorder, variant: str, targets: Sequence[str], num_train: int,
                     progress: Optional[ProgressFn], seed: int = 42):
            self.recorder, self.variant, self.targets, self.seed = recorder, variant, targets, seed
            self.num_train, self.progress = num_train, progress
            self.epoch_start = time.perf_counter()
            self.step_at_epoch_start = 0
            self.batch_per_step = 1
            self.progress_label = f"train {variant}"

        def _main(self, state) -> bool:
            return state.is_world_process_zero

        def _record_matrices(self, model, state) -> None:
            from qft_cli.train.normalization import gammas

            base = {"variant": self.variant, "seed": self.seed, "epoch": float(state.epoch or 0.0),
                    "step": int(state.global_step)}
            rows = matrix_norm_rows(model, self.targets, self.progress, f"{self.progress_label}: effective norms")
            self.recorder.add(NORMS_TABLE, [{**base, **row} for row in rows])
            rows = gammas(model)
            if rows:
                self.recorder.add(GAMMAS_TABLE, [{**base, **row} for row in rows])

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.batch_per_step = args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps
            if self._main(state) and state.global_step == 0 and model is not None:
                self._record_matrices(model, state)
            self.epoch_start = time.perf_counter()
            self.step_at_epoch_start = state.global_step

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.epoch_start = time.perf_counter()
            self.step_at_epoch_start = state.global_step

        def on_step_end(self, args, state, control, **kwargs):
            if self._main(state):
                report(self.progress, self.progress_label, state.global_step, state.max_steps)

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            if not self._main(state) or not logs:
                return
            base = {"variant": self.variant, "seed": self.seed, "epoch": float(logs.get("epoch", state.epoch or 0.0)),
                    "step": int(state.global_step)}
            rows = []
            if "loss" in logs:
                elapsed = time.perf_counter() - self.epoch_start
                samples = (state.global_step - self.step_at_epoch_start) * self.batch_per_step
                samples = min(samples, self.num_train) if state.global_step > self.step_at_epoch_start else samples
                rows.append({**base, "split": "train", "loss": logs["loss"], "accuracy": math.nan, "f1": math.nan,
                             "learning_rate": logs.get("learning_rate", math.nan),
                             "samples_per_second": samples / elapsed if elapsed > 0 else math.nan})
                self.epoch_start = time.perf_counter()
                self.step_at_epoch_start = state.global_step
                if model is not None:
                    self._record_matrices(model, state)
            for prefix, split in (("eval", "validation"), ("test", "test")):
                if f"{prefix}_loss" in logs:
                    rows.append({**base, "split": split, "loss": logs[f"{prefix}_loss"],
                                 "accuracy": logs.get(f"{prefix}_accuracy", math.nan),
                                 "f1": logs.get(f"{prefix}_f1", math.nan), "learning_rate": math.nan,
                                 "samples_per_second": logs.get(f"{prefix}_samples_per_second", math.nan)})
            if rows:
                self.recorder.add(METRICS_TABLE, rows)

    return RecorderCallback


# ----------------------------------------------------------------------------- time estimate

#: Optimiser steps timed for the estimate of :class:`TrainingEstimate` (after one warm-up step).
ESTIMATE_STEPS = 3


@dataclass(frozen=True)
class TrainingEstimate:
    """How long one variant's training will take, from timing its first steps.

    Attributes:
        variant, seed: what is being trained.
        steps: optimiser steps of the whole training (``max_steps`` or epochs x steps per epoch;
            early stopping may end it sooner).
        seconds_per_step: mean wall time of steps 2..1+``timed_steps`` (step 1 warms up), seconds.
        estimated_seconds: ``steps * seconds_per_step``: training steps only (evaluation excluded).
        timed_steps: how many steps were timed.
        device: ``cpu``, ``cuda``, ...
        max_steps_given: whether ``--max-steps`` set ``steps``.
    """

    variant: str
    seed: int
    steps: int
    seconds_per_step: float
    estimated_seconds: float
    timed_steps: int
    device: str
    max_steps_given: bool


def _estimate_callback_class():
    from transformers import TrainerCallback

    class EstimateCallback(TrainerCallback):
        """Times optimiser steps 2..1+``ESTIMATE_STEPS`` and passes one :class:`TrainingEstimate`
        to ``on_estimate`` (main process only; not when the training is shorter than that)."""

        def __init__(self, on_estimate, variant: str, seed: int, device: str, max_steps_given: bool):
            self.on_estimate, self.variant, self.seed = on_estimate, variant, seed
            self.device, self.max_steps_given = device, max_steps_given
            self.start_step, self.start, self.done = None, 0.0, False

        def on_step_end(self, args, state, control, **kwargs):
            if self.done or not state.is_world_process_zero:
                return
            if self.start_step is None:
                self.start_step, self.start = state.global_step, time.perf_counter()
                if state.max_steps <= self.start_step + ESTIMATE_STEPS:
                    self.done = True
                return
            timed = state.global_step - self.start_step
            if timed >= ESTIMATE_STEPS:
                per_step = (time.perf_counter() - self.start) / timed
                self.done = True
                self.on_estimate(TrainingEstimate(self.variant, self.seed, int(state.max_steps), per_step,
                                                  per_step * state.max_steps, timed, self.device,
                                                  self.max_steps_given))

    return EstimateCallback


# ----------------------------------------------------------------------------- one variant

@dataclass
class VariantResult:
    """Outcome of :func:`train_variant`.

    Attributes:
        variant: name in result tables.
        test: ``{"loss", "accuracy", "f1"}`` of the best (restored) model on the test split.
        best_checkpoint: the Trainer checkpoint the best model came from (``None`` without evaluation).
        best_model_dir: where the best model was saved (``save_pretrained`` format), or ``None``.
        epochs: epochs trained (fractional with ``max_steps``).
        steps: optimiser steps trained.
        seed: the seed of init, data order and dropout of this training.
    """

    variant: str
    test: dict[str, float]
    best_checkpoint: Optional[str] = None
    best_model_dir: Optional[str] = None
    epochs: float = 0.0
    steps: int = 0
    seed: int = 42


def _precision_flags(config: TrainingConfig, device: torch.device) -> dict[str, bool]:
    if device.type != "cuda" or config.mixed_precision == "no":
        return {"bf16": False, "fp16": False}
    if config.mixed_precision == "auto":
        bf16 = torch.cuda.is_bf16_supported()
        return {"bf16": bf16, "fp16": not bf16}
    return {"bf16": config.mixed_precision == "bf16", "fp16": config.mixed_precision == "fp16"}


def training_arguments(config: TrainingConfig, output_dir: Path, num_train: int):
    """The ``transformers.TrainingArguments`` of :class:`TrainingConfig` (see module docstring)."""
    from transformers import TrainingArguments

    from qft_cli.system.device import resolve_device

    device = resolve_device(config.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, math.ceil(num_train / (config.batch_size * world)))
    evaluate = config.eval_strategy != "no"
    kwargs: dict[str, Any] = {}
    if config.max_steps is not None and config.max_steps < steps_per_epoch:
        every = config.max_steps
        strategy = {"eval_strategy": "steps" if evaluate else "no", "save_strategy": "steps",
                    "logging_strategy": "steps", "eval_steps": every, "save_steps": every, "logging_steps": every}
    else:
        strategy = {"eval_strategy": "epoch" if evaluate else "no", "save_strategy": "epoch", "logging_strategy": "epoch"}
    if device.type == "cpu" and world > 1:
        kwargs["ddp_backend"] = "gloo"
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size or config.batch_size,
        num_train_epochs=float(config.num_epochs),
        max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the training steps
        seed=config.seed,
        data_seed=config.seed,
        load_best_model_at_end=evaluate,
        metric_for_best_model="f1" if evaluate else None,
        greater_is_better=True,
        save_total_limit=config.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
        dataloader_num_workers=config.dataloader_num_workers,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        **_precision_flags(config, device),
        **strategy,
        **kwargs,
    )


def train_variant(model, datasets: Mapping[str, Any], config: TrainingConfig, variant: str, *, output_dir: Path,
                  num_labels: int, recorder: Optional[ResultsRecorder] = None, data_collator=None, tokenizer=None,
                  targets: Sequence[str] = ("attention", "ffn"), resume: bool = False,
                  compute_metrics: Optional[Callable] = None, callbacks: Sequence[Any] = (),
                  best_model_dir: Optional[Path] = None, progress: Optional[ProgressFn] = None,
                  progress_label: Optional[str] = None,
                  on_estimate: Optional[Callable[[TrainingEstimate], None]] = None,
                  fold_best: bool = False) -> VariantResult:
    """Train one model with the Hugging Face ``Trainer`` and evaluate the best model on test.

    Args:
        model: a ``PreTrainedModel`` returning ``loss`` and ``logits`` (normalised or not).
        datasets: ``{"train", "validation", "test"}`` -> ``datasets.Dataset`` with ``input_ids``,
            ``attention_mask``, ``labels`` (``validation`` may be absent with ``eval_strategy="no"``).
        config: a validated :class:`TrainingConfig`.
        variant: name in the result tables (``vanilla``, ``spectral``, ``frobenius_subnormalised``...).
        output_dir: Trainer checkpoint directory of this variant.
        num_labels: number of classes (2 -> binary F1).
        recorder: receives per-epoch metrics, norms and gammas (``None``: a private one).
        data_collator: pads batches (default: ``DataCollatorWithPadding(tokenizer)``).
        tokenizer: saved with checkpoints and the best model.
        targets: matrices tracked for a vanilla model in ``norms_during_training``.
        resume: continue from the last complete checkpoint in ``output_dir``
            (:func:`last_complete_checkpoint`; starts fresh when none).
        compute_metrics: override of the metric function (tests script validation scores with it).
        callbacks: extra ``TrainerCallback``s.
        best_model_dir: where to ``save_pretrained`` the best model (main process only).
        fold_best: save the best model with its normalisation folded into plain weights
            (:func:`qft_cli.train.export.export_model`), so that stock ``transformers`` loads it as
            exactly that model; the Trainer's checkpoints keep the parametrised state (``resume``).
        progress: called as ``progress(progress_label, step, max_steps)``.
        progress_label: default ``train <variant>``.
        on_estimate: on a CPU, called once with the :class:`TrainingEstimate` from timing the first
            steps (so the caller can say how long the training will take).

    After training, every spectral normalisation is made exact
    (:func:`qft_cli.train.normalization.set_exact_spectral_norms`): the test scores, the saved best
    model and an export use effective matrices of spectral norm 1 (to float32 rounding), while the
    rows of ``norms_during_training`` show the norms training used (one power-iteration step per
    step lags the weights: up to about 1.05).

    The rows recorded carry ``seed`` = ``config.seed``. For sequence classification the test
    predictions of the best model go into the recorder's ``predictions`` table (``variant, seed,
    sample, label, prediction, num_labels``; ``sample`` = row of the test split), for bootstrap
    intervals (:mod:`qft_cli.train.stats`).

    Returns:
        :class:`VariantResult` with the test loss, accuracy and F1 (NaN without a test split).

    Raises:
        QftInputError: ``validation`` missing while evaluation is on, or empty training data.
    """
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    evaluate = config.eval_strategy != "no"
    if evaluate and "validation" not in datasets:
        raise QftInputError("evaluation is on but there is no validation split: pass --eval-strategy no "
                            "and --early-stopping 0, or add a validation file")
    if len(datasets["train"]) == 0:
        raise QftInputError("the training split is empty: check --data-dir / --max-train-samples")
    recorder = recorder if recorder is not None else ResultsRecorder()
    output_dir = Path(output_dir)
    args = training_arguments(config, output_dir, len(datasets["train"]))
    recorder_cb = _recorder_callback_class()(recorder, variant, targets, len(datasets["train"]), progress, config.seed)
    if progress_label:
        recorder_cb.progress_label = progress_label
    cbs = [recorder_cb, *callbacks]
    from qft_cli.system.device import resolve_device

    device_type = resolve_device(config.device).type
    if on_estimate is not None and device_type == "cpu":
        cbs.append(_estimate_callback_class()(on_estimate, variant, int(config.seed), device_type,
                                              config.max_steps is not None))
    if evaluate and config.early_stopping > 0:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping))
    trainer = trainer_class()(
        model=model, args=args, train_dataset=datasets["train"],
        eval_dataset=datasets.get("validation") if evaluate else None,
        data_collator=data_collator or DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_metrics=compute_metrics or metrics_function(num_labels),
        preprocess_logits_for_metrics=_argmax_logits, callbacks=cbs)
    trainer.remove_callback(PrinterCallback)  # library code never prints; metrics go to the recorder
    checkpoint = None
    if resume:
        checkpoint = last_complete_checkpoint(output_dir)
        # rows logged after the checkpoint are recorded again; without one the variant starts over
        recorder.forget_after(variant, int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else -1, config.seed)
    trainer.train(resume_from_checkpoint=checkpoint)
    from qft_cli.train.normalization import set_exact_spectral_norms

    set_exact_spectral_norms(trainer.model)  # the power iteration lags: exact sigma_max for test and export
    test = {"loss": math.nan, "accuracy": math.nan, "f1": math.nan}
    trainer.remove_callback(EarlyStoppingCallback)  # the test evaluation is not a validation score
    if "test" in datasets:
        # predict (not evaluate) keeps the predictions; log() records the test row as evaluate would
        out = trainer.predict(datasets["test"], metric_key_prefix="test")
        trainer.log(dict(out.metrics))
        test = {k: float(out.metrics.get(f"test_{k}", math.nan)) for k in test}
        predictions = np.asarray(out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions)
        labels = np.asarray(out.label_ids)
        if trainer.is_world_process_zero() and labels.ndim == 1 and predictions.shape == labels.shape:
            recorder.add(PREDICTIONS_TABLE, [
                {"variant": variant, "seed": int(config.seed), "sample_index": i, "label": int(y), "prediction": int(p),
                 "num_labels": int(num_labels)} for i, (y, p) in enumerate(zip(labels, predictions))])
    saved = None
    if best_model_dir is not None:
        if fold_best:
            from qft_cli.train.export import export_model

            export_model(trainer.model, Path(best_model_dir), tokenizer=tokenizer)
        else:
            trainer.save_model(str(best_model_dir))
        saved = str(best_model_dir)
    return VariantResult(variant, test, trainer.state.best_model_checkpoint, saved, float(trainer.state.epoch or 0.0),
                         int(trainer.state.global_step), int(config.seed))


def trainer_class():
    """The Hugging Face ``Trainer`` with one change: the logits ``g`` of learnable scales
    (``gamma = max_gamma * sigmoid(g)``, :mod:`qft_cli.train.normalization`) get no weight decay.

    Decay on ``g`` would pull it towards 0, i.e. gamma towards ``max_gamma / 2``, whatever the
    data says; biases and LayerNorm weights are excluded by the Trainer already.
    """
    from transformers import Trainer

    class QftTrainer(Trainer):
        def get_decay_parameter_names(self, model) -> list[str]:
            return [n for n in super().get_decay_parameter_names(model) if not is_gamma_logit(n)]

        def _save_checkpoint(self, model, trial):
            # a checkpoint that fails half-way (a full disk) is removed, so that the last complete
            # one stays the latest and --resume continues from it (see save_checkpoint_or_remove)
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            save_checkpoint_or_remove(folder, lambda: super(QftTrainer, self)._save_checkpoint(model, trial))

    return QftTrainer


#: Below this many free bytes on the checkpoint's filesystem, a failed checkpoint write counts as a
#: full disk (torch.save then raises a bare RuntimeError such as "unexpected pos ...").
FULL_DISK_FREE_BYTES = 16 << 20

#: The file the Trainer writes last into a checkpoint: a checkpoint without it is incomplete.
TRAINER_STATE_FILE = "trainer_state.json"


def save_checkpoint_or_remove(folder: Path, save: Callable[[], None]) -> None:
    """Run ``save`` (the Trainer's checkpoint write into ``folder``); if it raises, remove the
    half-written ``folder`` (when it did not exist before) and re-raise. A failure on a filesystem
    with less than :data:`FULL_DISK_FREE_BYTES` free is raised as ``OSError(ENOSPC)`` chained to the
    original error, so that the CLI reports a full disk in one line.

    Raises:
        OSError: ENOSPC (see above); anything else ``save`` raised, unchanged.
    """
    import errno
    import shutil

    from qft_cli.runs.files import disk_full_error

    existed = folder.exists()
    try:
        save()
    except BaseException as err:
        full = disk_full_error(err) is not None
        if not full and not isinstance(err, KeyboardInterrupt):
            try:
                full = shutil.disk_usage(folder.parent).free < FULL_DISK_FREE_BYTES
            except OSError:
                pass
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        if full and disk_full_error(err) is None:
            raise OSError(errno.ENOSPC, f"No space left on device while writing checkpoint "
                                        f"({type(err).__name__}: {err})", str(folder)) from err
        raise


def last_complete_checkpoint(output_dir: Path) -> Optional[str]:
    """The highest-numbered ``checkpoint-N`` in ``output_dir`` that holds ``trainer_state.json``
    (written last: a checkpoint cut by a kill or a full disk lacks it), or ``None``."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    steps = []
    for child in output_dir.iterdir():
        name = child.name
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and name.rsplit("-", 1)[1].isdigit():
            if (child / TRAINER_STATE_FILE).is_file():
                steps.append((int(name.rsplit("-", 1)[1]), str(child)))
    return max(steps)[1] if steps else None


def is_gamma_logit(parameter_name: str) -> bool:
    """True for the learnable-scale logits of a normalisation parametrization."""
    return ".parametrizations." in parameter_name and parameter_name.endswith(".g")


# ----------------------------------------------------------------------------- the experiment

@dataclass
class ExperimentOptions:
    """Everything ``qft train`` needs besides the run directory (see ``qft train --help``)."""

    dataset: str = "genomic-bench"
    task: Optional[str] = None
    data_dir: Optional[str] = None
    tokenizer: str = "auto"
    max_length: int = 512
    norm: str = "all"
    targets: str = "attention,ffn"
    max_gamma: Optional[float] = None
    d_model: int = 768
    num_heads: int = 12
    d_ff: int = 3072
    num_layers: int = 1
    dropout: float = 0.1
    embedding_from: Optional[str] = None
    freeze_embedding: bool = False
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    trust_remote_code: bool = False
    subnormalised: bool = False
    seeds: Optional[list[int]] = None
    num_labels: Optional[int] = None
    class_files: Optional[list[str]] = None
    split_sizes: Optional[list[float]] = None
    baseline: str = "auto"
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def variants(self) -> list[tuple[str, Optional[str], Optional[float]]]:
        """``(variant name, method, max_gamma)`` in training order, vanilla first
        (:func:`qft_cli.train.normalization.norm_variants`)."""
        from qft_cli.train.normalization import norm_variants

        return norm_variants(self.norm, max_gamma=self.max_gamma, subnormalised=self.subnormalised)

    def seed_list(self) -> list[int]:
        """The seeds to run (``seeds``, else ``[training.seed]``)."""
        return list(self.seeds) if self.seeds else [self.training.seed]

    def validate(self) -> "ExperimentOptions":
        """Check the options before any heavy work.

        The checks run once: called again on options that have not changed since (the CLI checks
        them before the run directory exists, :func:`run_experiment` for every other caller), it
        returns at once.

        Raises:
            QftInputError: unknown dataset/task/norm/targets, contradicting options.
        """
        if self.__dict__.get("_checked") == to_jsonable(self):
            return self
        from qft_cli.data.tasks import validate_dataset_name, validate_tokenizer_spec
        from qft_cli.train.normalization import parse_targets

        self.dataset, self.task = validate_dataset_name(self.dataset, self.task)
        validate_tokenizer_spec(self.dataset, self.tokenizer, self.embedding_from)
        self.variants()
        qft_matrices = ("attention", "ffn", "q", "k", "v", "o", "ffn_up", "ffn_down")
        for word in parse_targets(self.targets):
            if word not in qft_matrices:
                raise QftInputError(f"--targets {word}: the qft transformer has no such matrix; use attention, ffn "
                                    "or q,k,v,o,ffn_up,ffn_down")
        self.training.validate()
        self.seeds = check_gamma_and_seeds(self.max_gamma, self.seeds)
        if self.seeds:
            self.training.seed = self.seeds[0]
        if self.freeze_embedding and not self.embedding_from:
            raise QftInputError("--freeze-embedding freezes a pretrained embedding but no --embedding-from was given")
        if self.embedding_from and self.tokenizer not in ("auto", ""):
            own = self.embedding_from == "dnabert" and self.tokenizer == "dnabert2"
            if not own:
                raise QftInputError(f"--tokenizer {self.tokenizer} contradicts --embedding-from {self.embedding_from}: "
                                    "the embedding rows are that model's token ids; drop --tokenizer")
        if not 0 <= self.dropout < 1:
            raise QftInputError(f"--dropout {self.dropout} must lie in [0, 1)")
        from qft_cli.data.fasta import parse_class_files, parse_split_sizes
        from qft_cli.train.baseline import check_baseline

        if self.class_files:
            parse_class_files(self.class_files, Path(self.data_dir) if self.data_dir else None)
        if self.split_sizes is not None:
            self.split_sizes = list(parse_split_sizes(self.split_sizes))
        self.baseline = check_baseline(self.baseline)
        self._checked = to_jsonable(self)
        return self


def check_gamma_and_seeds(max_gamma: Optional[float], seeds: Optional[Sequence[int]]) -> Optional[list[int]]:
    """The checks ``qft train`` (:meth:`ExperimentOptions.validate`) and ``qft finetune``
    (``FinetuneSettings``) share: ``--max-gamma`` positive and finite, and the seeds
    (:func:`check_seeds`).

    Returns:
        The seeds as ints; ``seeds`` itself when empty or ``None``.

    Raises:
        QftInputError: a bad ``max_gamma`` or seed list.
    """
    if max_gamma is not None and not (max_gamma > 0 and math.isfinite(max_gamma)):
        raise QftInputError(f"--max-gamma {max_gamma} must be a positive number (1 = sub-normalised)")
    return check_seeds(seeds) if seeds else seeds


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Validate a list of seeds (distinct, each in 0..2^32-1); returns it as ints.

    Raises:
        QftInputError: empty, repeated or out-of-range seeds.
    """
    values = [int(s) for s in seeds]
    if not values:
        raise QftInputError("--seeds is empty: pass a list like 0,1,2")
    if len(set(values)) != len(values):
        raise QftInputError(f"--seeds {','.join(map(str, values))} repeats a seed: list each seed once")
    for value in values:
        if not 0 <= value <= MAX_SEED:
            raise QftInputError(f"--seeds: seed {value} must lie in 0..{MAX_SEED} (numpy and Trainer seeds)")
    return values


def parse_seeds(text: Optional[str], seed: Optional[int], default: int = 42) -> tuple[int, Optional[list[int]]]:
    """``--seed N`` / ``--seeds 0,1,2`` (mutually exclusive) -> ``(first seed, seed list or None)``.

    Raises:
        QftInputError: both given, a word that is not an integer, or a bad list (:func:`check_seeds`).
    """
    if text is None:
        return (default if seed is None else seed), None
    if seed is not None:
        raise QftInputError("--seed and --seeds are exclusive: pass --seed N for one seed or --seeds 0,1,2 for several")
    words = text.split(",")
    if len(words) > 1 and any(not w.strip() for w in words):
        raise QftInputError(f"--seeds '{text}' has an empty entry: use e.g. 0,1,2")
    try:
        values = [int(w) for w in words if w.strip()]
    except ValueError:
        raise QftInputError(f"--seeds '{text}' is not a list of integers: use e.g. 0,1,2") from None
    values = check_seeds(values)
    return values[0], values


def seed_subdir(root: Path, variant: str, seed: int, several: bool) -> Path:
    """``root/<variant>`` for a one-seed run, ``root/<variant>/seed-<seed>`` with several seeds."""
    return Path(root) / variant / f"seed-{seed}" if several else Path(root) / variant


def train_seeds_and_variants(run, recorder: "ResultsRecorder", *, seeds: Sequence[int],
                             variants: Sequence[tuple[str, Optional[str], Optional[float]]], config: TrainingConfig,
                             build: Callable[[int, str, Optional[str], Optional[float]], Any],
                             record: Callable[[list[VariantResult], Any], None], datasets: Mapping[str, Any],
                             num_labels: int, data_collator, tokenizer, targets: str, resume: bool = False,
                             progress: Optional[ProgressFn] = None,
                             on_estimate: Optional[Callable[["TrainingEstimate"], None]] = None,
                             notes: Sequence[str] = (),
                             on_notes: Optional[Callable[[list[str]], None]] = None,
                             fold_best: bool = False) -> list[VariantResult]:
    """The seed x variant loop of ``qft train`` and ``qft finetune``: for each seed (in order), each
    variant (in order, vanilla first) is trained by :func:`train_variant` with ``config.seed`` = that
    seed, so that every variant of a seed starts from the same weights (``build`` seeds them) and sees
    the same data order.

    Args:
        run: the entered :class:`qft_cli.runs.rundir.Run`; checkpoints go to
            ``<run>/checkpoints/<variant>[/seed-<s>]``, best models to ``<run>/best/<variant>[/seed-<s>]``
            (:func:`seed_subdir`; the seed level only with several seeds).
        seeds: the seeds (``seed_list()`` of the options).
        variants: ``(variant name, method or None, max_gamma or None)``
            (:func:`qft_cli.train.normalization.norm_variants`).
        config: the validated training settings; each training gets a copy with ``seed`` replaced.
        build: ``build(seed, variant, method, max_gamma)`` -> the model to train, normalised as the
            variant says.
        record: ``record(results, model)`` after each (variant, seed), in loop order: ``results`` so
            far, the last one just done; ``model`` is ``None`` for a pair skipped by ``resume`` (its
            result is read from its test row in the recorder's ``metrics``: test loss/accuracy/F1,
            epochs, steps, the best-model directory).
        datasets, num_labels, data_collator, tokenizer: as :func:`train_variant`.
        targets: ``--targets`` (comma-separated), the matrices tracked in ``norms_during_training``.
        resume: skip pairs with a test row; continue the interrupted one from its last checkpoint.
        on_estimate: passed to :func:`train_variant` (a CPU time estimate per training).
        notes, on_notes: ``on_notes(notes)`` once, after the first model is built (so that every check
            of model, layers and lengths has passed: bad input stays one line) and before it trains.
        fold_best: passed to :func:`train_variant` (``qft finetune``: ``best/`` loads in stock transformers).

    Returns:
        One :class:`VariantResult` per (seed, variant), seed-major.
    """
    from dataclasses import replace

    run_dir = Path(run.path)
    several = len(seeds) > 1
    results = []
    for seed, (variant, method, max_gamma) in ((s, v) for s in seeds for v in variants):
        best_dir = seed_subdir(run_dir / "best", variant, seed, several)
        done = recorder.test_row(variant, seed) if resume else None
        if done is not None:
            result = VariantResult(variant, {k: float(done[k]) for k in ("loss", "accuracy", "f1")},
                                   best_model_dir=str(best_dir), epochs=float(done["epoch"]),
                                   steps=int(done["step"]), seed=seed)
            results.append(result)
            record(results, None)
            continue
        model = build(seed, variant, method, max_gamma)
        if notes and on_notes is not None:
            on_notes(list(notes))
            notes = ()
        result = train_variant(model, datasets, replace(config, seed=seed), variant,
                               output_dir=seed_subdir(run_dir / "checkpoints", variant, seed, several),
                               num_labels=num_labels, recorder=recorder, data_collator=data_collator,
                               tokenizer=tokenizer, targets=targets.split(","), resume=resume,
                               best_model_dir=best_dir if run.is_main_process else None, progress=progress,
                               progress_label=f"train {variant}" + (f" seed {seed}" if several else ""),
                               on_estimate=on_estimate, fold_best=fold_best)
        results.append(result)
        record(results, model)
        del model  # before the next one is built
    return results


def record_baseline(run, recorder: "ResultsRecorder", data, choice: str, split_seed: int) -> Optional[dict[str, Any]]:
    """Fit the task's baseline (:func:`qft_cli.train.baseline.fit_baseline`) once per split seed on
    the same train/validation/test splits the models use, and record it: ``metrics`` rows
    (``split`` validation and test, ``epoch`` 0, ``step`` 0, ``loss`` NaN), ``predictions`` rows
    (sequence classification only, the same test rows as the models') and ``run.json``
    ``baseline`` (variant, k, validation and test scores, validation scores per k, split seed).
    Call it once per run, outside the seed x variant loop. A resumed run refits it (deterministic:
    lbfgs on the same data) for ``run.json`` and keeps the rows it already has.

    Args:
        data: the :class:`qft_cli.data.tasks.TaskData` after subsampling.
        choice: ``auto`` (fit) or ``none`` (skip).
        split_seed: the seed the splits and subsets were drawn with (the ``seed`` of its rows).

    Returns:
        The ``run.json`` ``baseline`` record, or ``None`` when skipped.
    """
    from qft_cli.train.baseline import fit_baseline

    if choice == "none":
        return None
    fitted = fit_baseline(data.kind, data.splits, data.num_labels)
    record = {**fitted.record(), "split_seed": int(split_seed)}
    run.update(baseline=record)
    if recorder.test_row(fitted.variant, int(split_seed)) is not None:  # a resumed run recorded it
        return record
    base = {"variant": fitted.variant, "seed": int(split_seed), "epoch": 0.0, "step": 0, "loss": math.nan,
            "learning_rate": math.nan, "samples_per_second": math.nan}
    recorder.add(METRICS_TABLE, [{**base, "split": split, **scores}
                                 for split, scores in (("validation", fitted.validation), ("test", fitted.test))])
    if data.kind == "sequence_classification":
        recorder.add(PREDICTIONS_TABLE, [
            {"variant": fitted.variant, "seed": int(split_seed), "sample_index": i, "label": int(y),
             "prediction": int(p), "num_labels": int(data.num_labels)}
            for i, (y, p) in enumerate(zip(fitted.test_labels, fitted.test_predictions))])
    return record


def write_test_summary(run, recorder: "ResultsRecorder", *, dataset: Optional[str], task: Optional[str],
                       num_labels: Optional[int] = None) -> pd.DataFrame:
    """Build ``test_summary.parquet`` from the recorder's metrics and predictions
    (:func:`qft_cli.train.stats.test_summary`; the k of a k-mer baseline from ``run.json``
    ``baseline``) and write it into ``run`` (main process only).

    Returns:
        The summary (empty without test rows).
    """
    from qft_cli.train import stats

    metrics = recorder.frame(METRICS_TABLE) if recorder.tables[METRICS_TABLE] else pd.DataFrame()
    predictions = recorder.frame(PREDICTIONS_TABLE) if recorder.tables[PREDICTIONS_TABLE] else None
    meta = getattr(run, "meta", None) or {}
    baseline = meta.get("baseline") if isinstance(meta.get("baseline"), dict) else {}
    summary = stats.test_summary(metrics, predictions, dataset=dataset, task=task, num_labels=num_labels,
                                 baseline_k=baseline.get("k"))
    if run is not None and getattr(run, "path", None) is not None and not summary.empty:
        run.write_table(TEST_SUMMARY_TABLE, summary)
    return summary


def to_jsonable(options: ExperimentOptions) -> dict[str, Any]:
    """The options as a flat dict for ``run.json`` (training settings included)."""
    out = asdict(options)
    out.update(out.pop("training"))
    return out


def from_jsonable(values: Mapping[str, Any]) -> ExperimentOptions:
    """Inverse of :func:`to_jsonable` (unknown keys ignored): used by ``--resume``."""
    train_fields = set(TrainingConfig.__dataclass_fields__)
    exp_fields = set(ExperimentOptions.__dataclass_fields__) - {"training"}
    training = TrainingConfig(**{k: v for k, v in values.items() if k in train_fields})
    return ExperimentOptions(**{k: v for k, v in values.items() if k in exp_fields}, training=training)


def mean_epochs(results: Sequence[Any]) -> dict[str, float]:
    """``variant -> mean epochs trained over its seeds`` of :class:`VariantResult`-like objects
    (attributes or keys ``variant`` and ``epochs``)."""
    out: dict[str, list[float]] = {}
    for r in results:
        variant = r["variant"] if isinstance(r, Mapping) else r.variant
        epochs = r["epochs"] if isinstance(r, Mapping) else r.epochs
        out.setdefault(variant, []).append(float(epochs))
    return {v: float(np.mean(e)) for v, e in out.items()}


@dataclass
class ExperimentResult:
    """Test metrics of every variant and seed (seed-major order, vanilla first per seed), the
    ``test_summary`` table (:func:`qft_cli.train.stats.test_summary`) and data facts (``task``: the task
    actually read)."""

    results: list[VariantResult]
    sizes: dict[str, int]
    vocab_size: int
    notes: list[str]
    test_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    task: Optional[str] = None

    def epochs(self) -> dict[str, float]:
        """Mean epochs trained per variant (over its seeds)."""
        return mean_epochs(self.results)

    def summary(self) -> list[dict[str, Any]]:
        """Rows ``variant, accuracy, f1, accuracy_diff, f1_diff, epochs``: means over seeds and the
        mean paired difference to vanilla (NaN without vanilla), from :attr:`test_summary`."""
        return summary_rows(self.test_summary, self.epochs())


def summary_rows(test_summary: pd.DataFrame, epochs: Mapping[str, float]) -> list[dict[str, Any]]:
    """Wide rows of a :func:`qft_cli.train.stats.test_summary` table (one per variant; see
    :meth:`ExperimentResult.summary`)."""
    rows = []
    if test_summary is None or test_summary.empty:
        return rows
    for variant, g in test_summary.groupby("variant", sort=False):
        by = g.set_index("metric")
        diff = {m: (0.0 if variant == "vanilla" and "vanilla" in set(test_summary["variant"])
                    else float(by.loc[m, "diff_to_vanilla"])) for m in ("accuracy", "f1")}
        rows.append({"variant": variant, "accuracy": float(by.loc["accuracy", "mean_value"]), "f1": float(by.loc["f1", "mean_value"]),
                     "accuracy_diff": diff["accuracy"], "f1_diff": diff["f1"],
                     "epochs": float(epochs.get(variant, math.nan))})
    return rows


def run_experiment(options: ExperimentOptions, run, *, resume: bool = False,
                   progress: Optional[ProgressFn] = None,
                   on_estimate: Optional[Callable[[TrainingEstimate], None]] = None,
                   on_notes: Optional[Callable[[list[str]], None]] = None) -> ExperimentResult:
    """Train every variant of ``options`` once per seed into ``run`` (a :class:`qft_cli.runs.rundir.Run` that is entered).

    For each seed (``options.seed_list()``, in order) every variant starts from the same initial
    weights (model seed = that seed; the normalisation is applied on top) and sees the same data
    order (Trainer ``seed``/``data_seed``). The train/validation/test subsets
    (``max_*_samples``) are drawn once, with the first seed, so every seed is scored on the same
    test samples. With several seeds, checkpoints and best models go to ``<variant>/seed-<s>/``.
    With ``resume``, finished (variant, seed) pairs (a test row in ``metrics.parquet``) are
    skipped and the interrupted one continues from its last checkpoint. Ends by writing
    ``test_summary.parquet`` (:func:`write_test_summary`). ``on_notes`` receives the data notes
    (which task was read, how validation was split) before training, ``on_estimate`` each
    variant's :class:`TrainingEstimate` on a CPU (see :func:`train_variant`).

    Raises:
        QftInputError: bad options or data (see :meth:`ExperimentOptions.validate`,
            :func:`qft_cli.data.tasks.load_task`).
    """
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    from qft_cli.data.tasks import build_tokenizer, encode, load_task, subsample
    from qft_cli.train.modeling_qft import QftConfig, build_model, pretrained_embedding
    from qft_cli.train.normalization import apply_normalization

    options.validate()
    cfg = options.training
    run_dir = Path(run.path)
    from qft_cli.data.fasta import parse_class_files

    class_files = parse_class_files(options.class_files, Path(options.data_dir) if options.data_dir else None) \
        if options.class_files else None
    data = load_task(options.dataset, task=options.task, data_dir=options.data_dir, seed=cfg.seed,
                     class_files=class_files, split_sizes=tuple(options.split_sizes) if options.split_sizes else None,
                     num_labels=options.num_labels)
    subsample(data, "train", options.max_train_samples, cfg.seed)
    for split in ("validation", "test"):
        if split in data.splits:
            subsample(data, split, options.max_eval_samples, cfg.seed)
    tokenizer = build_tokenizer(options.tokenizer, data, text_model=options.embedding_from,
                                save_dir=run_dir if run.is_main_process else None,
                                trust_remote_code=options.trust_remote_code)
    encoded = encode(data, tokenizer, options.max_length)
    embedding = None
    vocab_size = len(tokenizer)
    if options.embedding_from:
        embedding = pretrained_embedding(options.embedding_from, options.trust_remote_code)
        if vocab_size > embedding.shape[0]:
            raise QftInputError(f"the tokenizer has {vocab_size} tokens but the {options.embedding_from} embedding "
                                f"only {embedding.shape[0]} rows: use that model's own tokenizer")
        vocab_size = embedding.shape[0]
    if data.kind == "token_classification":
        collator = DataCollatorForTokenClassification(tokenizer)
    else:
        collator = DataCollatorWithPadding(tokenizer)
    from qft_cli.models.names import resolve_model
    from qft_cli.runs.provenance import (
        check_resumed_data,
        file_records,
        model_files_for,
    )
    from qft_cli.system.device import resolve_device

    data_files = file_records(data.files)
    check_resumed_data(run.meta, data_files)

    model_files = ([model_files_for(resolve_model(options.embedding_from), progress=progress)]
                   if options.embedding_from else [])
    run.update(world_size=int(os.environ.get("WORLD_SIZE", "1")), device=str(resolve_device(cfg.device)),
               data={**data.record(), "location": data.source}, data_files=data_files,
               model_files=model_files, tokenizer_size=len(tokenizer), vocab_size=vocab_size)
    recorder = ResultsRecorder(run, default_seed=cfg.seed)
    record_baseline(run, recorder, data, options.baseline, cfg.seed)
    several = len(options.seed_list()) > 1

    def build(seed: int, variant: str, method: Optional[str], max_gamma: Optional[float]):
        config = QftConfig(vocab_size=vocab_size, d_model=options.d_model, num_heads=options.num_heads,
                           d_ff=options.d_ff, num_layers=options.num_layers, dropout=options.dropout,
                           attention_dropout=options.dropout, task=data.kind, num_labels=data.num_labels,
                           pad_token_id=tokenizer.pad_token_id or 0,
                           id2label=dict(enumerate(data.label_names)),
                           label2id={n: i for i, n in enumerate(data.label_names)})
        model = build_model(config, embedding=embedding, freeze_embedding=options.freeze_embedding, seed=seed)
        if method is not None:
            apply_normalization(model, method, targets=options.targets, max_gamma=max_gamma)
        return model

    def record(results: list[VariantResult], model) -> None:
        if model is None:  # resumed: nothing new to record
            return
        if several:
            run.update(best_models={f"{r.variant}/seed-{r.seed}": r.best_model_dir for r in results})
        else:
            run.update(best_models={r.variant: r.best_model_dir for r in results})

    results = train_seeds_and_variants(run, recorder, seeds=options.seed_list(), variants=options.variants(),
                                       config=cfg, build=build, record=record, datasets=encoded,
                                       num_labels=data.num_labels, data_collator=collator, tokenizer=tokenizer,
                                       targets=options.targets, resume=resume, progress=progress,
                                       on_estimate=on_estimate, notes=data.notes, on_notes=on_notes)
    summary = write_test_summary(run, recorder, dataset=data.dataset, task=data.task, num_labels=data.num_labels)
    return ExperimentResult(results, data.sizes(), vocab_size, data.notes, summary, task=data.task)


def open_run(options: ExperimentOptions, *, out: Path, argv: list[str], resume_dir: Optional[Path] = None):
    """The :class:`qft_cli.runs.rundir.Run` of an experiment, agreed by every process under torchrun.

    Rank 0 creates the directory (or reuses ``resume_dir``); the path is broadcast to the other
    ranks, which never write. Returns the Run (not yet entered).

    Raises:
        QftInputError: ``resume_dir`` is not a qft train run directory.
    """
    from qft_cli.runs.rundir import RUN_JSON, Run

    world = int(os.environ.get("WORLD_SIZE", "1"))
    is_main = int(os.environ.get("RANK", "0")) == 0
    if resume_dir is not None and not (Path(resume_dir) / RUN_JSON).is_file():
        raise QftInputError(f"--resume {resume_dir} is not a run directory (no run.json): pass the directory "
                            "of the interrupted qft train run")
    model_name = options.embedding_from or f"qft-{options.num_layers}layer-d{options.d_model}"
    run = Run("train", [model_name], to_jsonable(options), out=Path(out), argv=argv, is_main_process=is_main)
    if resume_dir is not None:
        from qft_cli.runs.provenance import resume_meta

        run.path = Path(resume_dir)
        run.meta = resume_meta(resume_dir)
    elif is_main:
        run.create()
    if world > 1:
        from accelerate import PartialState
        from accelerate.utils import broadcast_object_list

        PartialState(cpu=not torch.cuda.is_available())
        box = [str(run.path) if is_main else None]
        broadcast_object_list(box, from_process=0)
        run.path = Path(box[0])
    return run
