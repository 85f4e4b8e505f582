"""``qft finetune``: fine-tune a pretrained transformer with normalised weight matrices.

The research fine-tunes pretrained models (DNABERT-2 with every attention and FFN matrix
Frobenius-normalised, optionally with a learnable scale bounded by 1, "sub-normalised"; its own
trained single-layer models with one part spectral-normalised) and compares test accuracy and F1
with the vanilla model on the same data and seed.

Flow (one direction): resolve the model (alias, hub id, local directory, ``qft train`` run
directory -> its best checkpoint) -> load it with a classification head sized from the dataset ->
normalise the chosen matrices (:func:`qft_cli.normalization.apply_normalization`) -> train with
the Hugging Face Trainer (early stopping on validation F1, best model restored) -> evaluate on
the test split -> tables (``metrics``, ``norms_during_training``, ``gammas``) -> optional export
with the normalisation folded (:mod:`qft_cli.export`).

Library functions never print; long loops report through :data:`qft_cli.progress.ProgressFn`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch

from qft_cli.errors import QftInputError
from qft_cli.models import ModelSource
from qft_cli.normalization import (apply_normalization, effective_matrices, fold_normalization, gammas,
                                   parse_layers, parse_method, parse_targets, variant_name)
from qft_cli.progress import ProgressFn, report

NORM_CHOICES = ("none", "spectral", "frobenius", "all")
TINY_DNABERT = "tiny-dnabert"
#: Directory names recognised as the best checkpoint inside a ``qft train`` run directory.
BEST_CHECKPOINT_NAMES = ("best", "best_model", "best-model", "best_checkpoint", "best-checkpoint")


# ----------------------------------------------------------------------------- settings

@dataclass
class FinetuneSettings:
    """Options of one ``qft finetune`` run; the defaults are the research's settings.

    Attributes:
        norm: ``none``, ``spectral``, ``frobenius`` or ``all`` (vanilla, normalised with
            ``all_method`` and sub-normalised with ``max_gamma`` or 1, on the same data and seed).
        targets: ``attention``, ``ffn``, ``attention,ffn`` or matrix names.
        layers: ``all``, ``1,3`` or ``1-4`` (1-indexed transformer blocks).
        max_gamma: learnable scale ``gamma = max_gamma * sigmoid(g)``; effective norm <= max_gamma.
        all_method: the normalisation of ``--norm all``.
        learning_rate, num_epochs, early_stopping (patience in epochs, 0 = off), weight_decay,
        lr_scheduler_type, warmup_ratio, batch_size, eval_batch_size, seed: as in the research.
        max_length: token limit (default: the tokenizer's, at most 512).
        max_steps: stop after this many optimiser steps (overrides ``num_epochs``).
        max_train_samples, max_eval_samples: seeded subsets for quick runs.
    """

    norm: str = "none"
    targets: str = "attention,ffn"
    layers: str = "all"
    max_gamma: Optional[float] = None
    all_method: str = "frobenius"
    learning_rate: float = 2e-4
    num_epochs: int = 200
    early_stopping: int = 25
    weight_decay: float = 0.01
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 42
    max_length: Optional[int] = None
    max_steps: Optional[int] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None

    def __post_init__(self) -> None:
        if self.norm not in NORM_CHOICES:
            raise QftInputError(f"unknown --norm '{self.norm}': use one of {', '.join(NORM_CHOICES)}")
        if self.all_method not in ("spectral", "frobenius"):
            raise QftInputError(f"--all-method '{self.all_method}' must be spectral or frobenius")
        parse_targets(self.targets)
        if self.max_gamma is not None and not (self.max_gamma > 0 and math.isfinite(self.max_gamma)):
            raise QftInputError(f"--max-gamma {self.max_gamma} must be a positive number (1 = sub-normalised)")
        if self.max_gamma is not None and self.norm == "none":
            raise QftInputError("--max-gamma scales normalised matrices: use it with --norm spectral, frobenius or all")
        if not self.learning_rate > 0:
            raise QftInputError(f"--learning-rate {self.learning_rate} must be positive")
        if self.num_epochs < 1:
            raise QftInputError(f"--num-epochs {self.num_epochs} must be at least 1")
        if self.early_stopping < 0:
            raise QftInputError(f"--early-stopping {self.early_stopping} must be >= 0 (0 = off)")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise QftInputError("--batch-size and --eval-batch-size must be at least 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise QftInputError(f"--warmup-ratio {self.warmup_ratio} must lie in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise QftInputError(f"--max-steps {self.max_steps} must be at least 1")
        if self.max_length is not None and self.max_length < 2:
            raise QftInputError(f"--max-length {self.max_length} must be at least 2")

    def variants(self) -> list[tuple[str, Optional[str], Optional[float]]]:
        """``(variant name, method or None, max_gamma or None)`` of each model to train, in order."""
        if self.norm == "all":
            gamma = self.max_gamma if self.max_gamma is not None else 1.0
            return [("vanilla", None, None), (variant_name(self.all_method), self.all_method, None),
                    (variant_name(self.all_method, gamma), self.all_method, gamma)]
        method = parse_method(self.norm)
        return [(variant_name(method, self.max_gamma), method, self.max_gamma)]


# ----------------------------------------------------------------------------- model resolution

def find_best_checkpoint(run_dir: Path) -> Path:
    """The best checkpoint of a ``qft train`` run directory: a directory named like
    :data:`BEST_CHECKPOINT_NAMES` (searched up to two levels down) that holds ``config.json``.
    With several (one per variant), the vanilla one is taken.

    Raises:
        QftInputError: no best checkpoint, or several and none of them vanilla.
    """
    run_dir = Path(run_dir)
    found = sorted({p.parent for pattern in ("config.json", "*/config.json", "*/*/config.json")
                    for p in run_dir.glob(pattern) if p.parent.name in BEST_CHECKPOINT_NAMES})
    if not found:
        raise QftInputError(f"run directory {run_dir} has no best checkpoint (a 'best' directory with config.json): "
                            "was the run completed? pass a run directory of a finished `qft train`")
    if len(found) == 1:
        return found[0]
    vanilla = [p for p in found if "vanilla" in p.relative_to(run_dir).parts]
    if len(vanilla) == 1:
        return vanilla[0]
    raise QftInputError(f"run directory {run_dir} has several best checkpoints "
                        f"({', '.join(str(p.relative_to(run_dir)) for p in found)}): pass one of them as MODEL")


def resolve_finetune_model(name: str) -> ModelSource:
    """Resolve MODEL: ``tiny-dnabert``; a ``qft train`` run directory (has ``run.json``) -> its
    best checkpoint as a local model; else :func:`qft_cli.models.resolve_model`.

    Raises:
        QftInputError: unknown alias, or a run directory without a checkpoint.
    """
    from qft_cli.models import resolve_model

    if name == TINY_DNABERT:
        return ModelSource(name, "tiny", TINY_DNABERT)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "run.json").is_file():
        return ModelSource(name, "local", str(find_best_checkpoint(path).resolve()))
    return resolve_model(name)


def _local_config(source: ModelSource) -> Optional[dict]:
    if source.kind != "local":
        return None
    path = Path(source.location) / "config.json"
    if not path.is_file():
        raise QftInputError(f"{source.location} has no config.json: pass a Hugging Face model directory")
    return json.loads(path.read_text())


def _load_normalised_checkpoint(directory: Path, config_dict: dict, num_labels: int, dtype: torch.dtype):
    """A checkpoint saved with normalisation parametrizations (``config.qft_normalization``):
    rebuild the architecture, re-apply the normalisation, load the state dict strictly, fold."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from qft_cli.dnabert2 import read_checkpoint

    config = AutoConfig.from_pretrained(str(directory))
    settings = dict(config_dict["qft_normalization"])
    model = AutoModelForSequenceClassification.from_config(config)
    apply_normalization(model, settings.pop("method"), **settings)
    state = read_checkpoint(directory)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise QftInputError(f"checkpoint {directory} does not match its architecture: missing "
                            f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
    fold_normalization(model)
    if config.num_labels != num_labels:
        raise QftInputError(f"checkpoint {directory} classifies {config.num_labels} labels, the dataset has "
                            f"{num_labels}: fine-tune its base model instead")
    return model.to(dtype=dtype)


def load_classifier(source: ModelSource, num_labels: int, *, seed: int = 42, dtype: torch.dtype = torch.float32,
                    trust_remote_code: bool = False):
    """Load ``source`` with a sequence-classification head of ``num_labels`` outputs (new heads are
    initialised from ``seed``, so every variant of a run starts from the same weights).

    Raises:
        QftInputError: the model has no sequence-classification architecture in ``transformers``
            (or qft's native DNABERT-2), hub failures, mismatched checkpoints.
    """
    from transformers import AutoModelForSequenceClassification

    from qft_cli.dnabert2 import build_tiny_dnabert, is_dnabert2_source
    from qft_cli.models import load_config, load_model

    torch.manual_seed(seed)
    if source.kind == "tiny" and source.location == TINY_DNABERT:
        return build_tiny_dnabert("sequence", seed=seed, num_labels=num_labels).to(dtype=dtype)
    config_dict = _local_config(source)
    if config_dict is not None and "qft_normalization" in config_dict:
        return _load_normalised_checkpoint(Path(source.location), config_dict, num_labels, dtype)
    if not trust_remote_code and not is_dnabert2_source(source.location, source.kind):
        config = load_config(source)
        mapping = AutoModelForSequenceClassification._model_mapping
        if type(config) not in mapping:
            raise QftInputError(f"model {source.name} ({type(config).__name__}) has no sequence-classification "
                                "architecture in transformers: pick an encoder or decoder language model")
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if source.kind == "local" and not is_dnabert2_source(source.location, source.kind):
        kwargs["ignore_mismatched_sizes"] = True
    return load_model(source, dtype=dtype, trust_remote_code=trust_remote_code,
                      auto_class=AutoModelForSequenceClassification, **kwargs)


def load_finetune_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """The model's own tokenizer (``tiny-dnabert``: tiny-bert's byte-level tokenizer); a pad token
    is added from the end-of-sequence token when missing.

    Raises:
        QftInputError: no tokenizer files (pass ``--tokenizer``), hub failures.
    """
    from qft_cli.models import load_tokenizer, tiny_tokenizer

    if source.kind == "tiny" and source.location == TINY_DNABERT:
        return tiny_tokenizer(with_bert_specials=True)
    try:
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, QftInputError):
            raise
        raise QftInputError(f"no tokenizer found for {source.name}: pass --tokenizer with a model whose "
                            "tokenizer to use") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise QftInputError(f"tokenizer of {source.name} has neither a pad nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------- metrics

def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 of ``argmax(logits)`` against integer ``labels``.

    F1 is binary (positive class 1) for two classes, macro-averaged over the classes present in
    ``labels`` or predictions otherwise (the convention of ``docs/results.md``).

    Args:
        logits: (n, num_classes) float; labels: (n,) int.
    """
    pred = np.asarray(logits).argmax(axis=-1)
    labels = np.asarray(labels)
    accuracy = float((pred == labels).mean()) if len(labels) else float("nan")

    def f1_of(cls: int) -> float:
        tp = float(((pred == cls) & (labels == cls)).sum())
        fp = float(((pred == cls) & (labels != cls)).sum())
        fn = float(((pred != cls) & (labels == cls)).sum())
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    num_classes = np.asarray(logits).shape[-1]
    if num_classes == 2:
        f1 = f1_of(1)
    else:
        classes = sorted(set(labels.tolist()) | set(pred.tolist()))
        f1 = float(np.mean([f1_of(c) for c in classes]))
    return {"accuracy": accuracy, "f1": f1}


# ----------------------------------------------------------------------------- data

class _Encoded(torch.utils.data.Dataset):
    def __init__(self, encodings: dict[str, list], labels: list[int]):
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encodings.items()}
        item["labels"] = int(self.labels[i])
        return item


def encode_split(tokenizer, df: pd.DataFrame, max_length: int) -> _Encoded:
    """Tokenise the ``sequence`` column (truncated to ``max_length`` tokens) with its ``label``."""
    enc = tokenizer(df["sequence"].tolist(), truncation=True, max_length=max_length)
    keep = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    return _Encoded(keep, df["label"].astype(int).tolist())


def _max_length(tokenizer, requested: Optional[int]) -> int:
    if requested is not None:
        return requested
    limit = getattr(tokenizer, "model_max_length", 512) or 512
    return int(min(limit, 512))


# ----------------------------------------------------------------------------- training

@dataclass
class VariantResult:
    """Outcome of training one variant: test metrics and the per-epoch tables' rows."""

    variant: str
    test: dict[str, float]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    norms: list[dict[str, Any]] = field(default_factory=list)
    gammas: list[dict[str, Any]] = field(default_factory=list)
    normalised: list[str] = field(default_factory=list)
    best_checkpoint: Optional[str] = None
    export_dir: Optional[str] = None


@torch.no_grad()
def norm_rows(model, variant: str, epoch: float, step: int) -> tuple[list[dict], list[dict]]:
    """Effective spectral and Frobenius norms (float64) of every normalised matrix, and the learned
    scales, as rows of ``norms_during_training`` and ``gammas``."""
    norms = []
    for em in effective_matrices(model):
        w = em.weight.double()
        norms.append({"variant": variant, "epoch": float(epoch), "step": int(step), "parameter": em.parameter,
                      "layer": int(em.layer), "matrix": em.matrix,
                      "spectral_norm": float(torch.linalg.matrix_norm(w, ord=2)),
                      "frobenius_norm": float(torch.linalg.matrix_norm(w, ord="fro"))})
    scales = [{"variant": variant, "epoch": float(epoch), "step": int(step), **row} for row in gammas(model)]
    return norms, scales


def _callbacks(variant: str, result: VariantResult, total_epochs: int, progress: Optional[ProgressFn]):
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        """Norms and gammas at the start and after every epoch; progress per epoch."""

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and not result.norms:
                norms, scales = norm_rows(model, variant, 0.0, 0)
                result.norms += norms
                result.gammas += scales

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                norms, scales = norm_rows(model, variant, state.epoch or 0.0, state.global_step)
                result.norms += norms
                result.gammas += scales
            report(progress, variant, int(round(state.epoch or 0)), total_epochs)

    return [Recorder()]


def _metric_rows(variant: str, log_history: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for entry in log_history:
        epoch, step = float(entry.get("epoch", 0.0)), int(entry.get("step", 0))
        if "eval_loss" in entry:
            rows.append({"variant": variant, "epoch": epoch, "step": step, "split": "validation",
                         "loss": entry["eval_loss"], "accuracy": entry.get("eval_accuracy"), "f1": entry.get("eval_f1"),
                         "learning_rate": None, "samples_per_second": entry.get("eval_samples_per_second")})
        elif "loss" in entry:
            rows.append({"variant": variant, "epoch": epoch, "step": step, "split": "train", "loss": entry["loss"],
                         "accuracy": None, "f1": None, "learning_rate": entry.get("learning_rate"),
                         "samples_per_second": None})
        elif "train_samples_per_second" in entry:
            rows.append({"variant": variant, "epoch": epoch, "step": step, "split": "train",
                         "loss": entry.get("train_loss"), "accuracy": None, "f1": None, "learning_rate": None,
                         "samples_per_second": entry["train_samples_per_second"]})
    return rows


def train_variant(model, tokenizer, datasets: dict[str, torch.utils.data.Dataset], settings: FinetuneSettings,
                  variant: str, method: Optional[str], max_gamma: Optional[float], work_dir: Path, *,
                  device: torch.device, resume: bool = False, progress: Optional[ProgressFn] = None) -> VariantResult:
    """Normalise ``model`` (when ``method``), train it with the Hugging Face Trainer and evaluate it.

    Early stopping on validation F1 with patience ``settings.early_stopping`` epochs; the best
    epoch's weights are restored at the end (Trainer's ``load_best_model_at_end``, which loads the
    saved checkpoint: a real copy, not live tensors); the test split is evaluated with them.
    Checkpoints go to ``work_dir/checkpoints``; the best model to ``work_dir/best``.

    Raises:
        QftInputError: targets/layers that select nothing or a layer beyond the depth.
    """
    from transformers import (DataCollatorWithPadding, EarlyStoppingCallback, PrinterCallback, Trainer,
                              TrainingArguments)

    result = VariantResult(variant, test={})
    if method is not None:
        specs = apply_normalization(model, method, targets=settings.targets, layers=settings.layers,
                                    max_gamma=max_gamma)
        result.normalised = sorted({f"{s.parameter}:{s.matrix}" for s in specs})
    model.to(device)
    use_cuda = device.type == "cuda"
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(work_dir / "checkpoints"), learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_epochs, max_steps=settings.max_steps or -1,
        weight_decay=settings.weight_decay, lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_ratio, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.eval_batch_size, eval_strategy="epoch", save_strategy="epoch",
        logging_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="f1",
        greater_is_better=True, save_total_limit=2, seed=settings.seed, data_seed=settings.seed,
        report_to="none", disable_tqdm=True, use_cpu=not use_cuda and device.type == "cpu",
        bf16=bf16, fp16=use_cuda and not bf16, dataloader_num_workers=0, remove_unused_columns=False)
    callbacks = _callbacks(variant, result, settings.num_epochs, progress)
    if settings.early_stopping > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping))
    trainer = Trainer(model=model, args=args, train_dataset=datasets["train"], eval_dataset=datasets["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=lambda p: classification_metrics(p.predictions, p.label_ids),
                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # library functions never print
    has_checkpoint = resume and any((work_dir / "checkpoints").glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if has_checkpoint else None)
    result.metrics = _metric_rows(variant, trainer.state.log_history)
    trainer.remove_callback(EarlyStoppingCallback)  # the test split must not drive early stopping
    start = time.perf_counter()
    test = trainer.evaluate(datasets["test"], metric_key_prefix="test")
    elapsed = time.perf_counter() - start
    result.test = {"loss": float(test["test_loss"]), "accuracy": float(test["test_accuracy"]),
                   "f1": float(test["test_f1"])}
    result.metrics.append({"variant": variant, "epoch": float(trainer.state.epoch or 0.0),
                           "step": int(trainer.state.global_step), "split": "test", "loss": result.test["loss"],
                           "accuracy": result.test["accuracy"], "f1": result.test["f1"], "learning_rate": None,
                           "samples_per_second": len(datasets["test"]) / elapsed if elapsed > 0 else None})
    if trainer.is_world_process_zero():
        best = work_dir / "best"
        trainer.save_model(str(best))
        tokenizer.save_pretrained(str(best))
        result.best_checkpoint = str(best)
    return result


def check_layers(model, settings: FinetuneSettings) -> None:
    """Validate ``settings.layers`` against the depth of ``model`` before any training.

    Raises:
        QftInputError: a layer beyond the depth or a malformed list.
    """
    from qft_cli.layout import classify_model

    depth = max((s.layer for s in classify_model(model)), default=0)
    parse_layers(settings.layers, depth)


def finetune(model_name: str, *, dataset: str, settings: FinetuneSettings, run_dir: Path,
             data_dir: Optional[Path] = None, task: Optional[str] = None, tokenizer_name: Optional[str] = None,
             device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
             trust_remote_code: bool = False, export_dir: Optional[Path] = None, resume: bool = False,
             is_main_process: bool = True, progress: Optional[ProgressFn] = None,
             on_tables: Optional[Callable[[dict[str, pd.DataFrame]], None]] = None) -> dict[str, Any]:
    """Run every variant of ``settings`` on the same data and seed.

    Args:
        model_name: alias, hub id, local directory, ``qft train`` run directory or ``tiny-dnabert``.
        dataset: ``gue``, ``genomic-bench`` or ``csv`` (with ``data_dir``).
        run_dir: where checkpoints (``<variant>/checkpoints``) and best models (``<variant>/best``) go.
        export_dir: write each variant, normalisation folded, for stock ``transformers``
            (``export_dir`` itself for one variant, ``export_dir/<variant>`` for several).
        on_tables: called after each variant with the tables so far (the CLI writes them).

    Returns:
        ``{"variants": [VariantResult as dict, ...], "tables": {name: DataFrame}, "model_id": str,
        "data": str, "num_labels": int}``.

    Raises:
        QftInputError: bad model, data, layers, targets or gamma.
    """
    from qft_cli._finetune_data import load_splits  # interim until the train branch's datasets land
    from qft_cli.export import export_model
    from qft_cli.models import resolve_model

    source = resolve_finetune_model(model_name)
    splits = load_splits(dataset, data_dir=data_dir, task=task, seed=settings.seed,
                         max_train_samples=settings.max_train_samples, max_eval_samples=settings.max_eval_samples)
    tok_source = resolve_finetune_model(tokenizer_name) if tokenizer_name else source
    tokenizer = load_finetune_tokenizer(tok_source, trust_remote_code=trust_remote_code)
    max_length = _max_length(tokenizer, settings.max_length)
    encoded = {split: encode_split(tokenizer, df, max_length) for split, df in splits.frames().items()}

    results: list[VariantResult] = []
    tables: dict[str, pd.DataFrame] = {}
    variants = settings.variants()
    for variant, method, max_gamma in variants:
        model = load_classifier(source, splits.num_labels, seed=settings.seed, dtype=dtype,
                                trust_remote_code=trust_remote_code)
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if settings.norm != "none":
            check_layers(model, settings)  # before any training: a bad --layers fails at once
        result = train_variant(model, tokenizer, encoded, settings, variant, method, max_gamma, run_dir / variant,
                               device=device, resume=resume, progress=progress)
        if export_dir is not None and is_main_process:
            target = Path(export_dir) if len(variants) == 1 else Path(export_dir) / variant
            export_model(model, target, tokenizer=tokenizer)
            result.export_dir = str(target)
        results.append(result)
        tables = {
            "metrics": pd.DataFrame([r for res in results for r in res.metrics]),
            "norms_during_training": pd.DataFrame([r for res in results for r in res.norms],
                                                  columns=["variant", "epoch", "step", "parameter", "layer",
                                                           "matrix", "spectral_norm", "frobenius_norm"]),
            "gammas": pd.DataFrame([r for res in results for r in res.gammas],
                                   columns=["variant", "epoch", "step", "parameter", "layer", "matrix", "gamma"]),
        }
        if on_tables is not None:
            on_tables(tables)
        del model
    return {"variants": [asdict(r) for r in results], "tables": tables, "model_id": source.model_id,
            "data": splits.source, "num_labels": splits.num_labels, "max_length": max_length}


def summary_rows(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: test accuracy and F1, and their differences to vanilla (``None`` without one)."""
    vanilla = next((v["test"] for v in variants if v["variant"] == "vanilla"), None)
    rows = []
    for v in variants:
        row = {"variant": v["variant"], "accuracy": v["test"]["accuracy"], "f1": v["test"]["f1"],
               "accuracy_diff": None, "f1_diff": None}
        if vanilla is not None and v["variant"] != "vanilla":
            row["accuracy_diff"] = v["test"]["accuracy"] - vanilla["accuracy"]
            row["f1_diff"] = v["test"]["f1"] - vanilla["f1"]
        rows.append(row)
    return rows


def is_main_process() -> bool:
    """Rank 0 (or no distributed launch): the process that writes results."""
    return int(os.environ.get("RANK", "0")) == 0
