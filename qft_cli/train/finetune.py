"""``qft finetune``: fine-tune a pretrained transformer with normalised weight matrices.

The research fine-tunes pretrained models (DNABERT-2 with every attention and FFN matrix
Frobenius-normalised, optionally with a learnable scale bounded by 1, "sub-normalised"; its own
trained single-layer models with one part spectral-normalised) and compares test accuracy and F1
with the vanilla model on the same data and seed.

Flow (one direction): resolve the model (alias, hub id, local directory, ``qft train`` run
directory -> its best checkpoint) -> load the task (:mod:`qft_cli.data.tasks`) and the model's own
tokenizer -> load the model with a sequence- or token-classification head sized from the dataset
-> normalise the chosen matrices (:func:`qft_cli.train.normalization.apply_normalization`) -> train with
the engine of ``qft train`` (:func:`qft_cli.train.training.train_variant`: early stopping on validation
F1, best model restored, per-epoch ``metrics``/``norms_during_training``/``gammas``, resume,
rank-0 writes) -> optional export with the normalisation folded (:mod:`qft_cli.train.export`).

Run-directory layout (as ``qft train``): ``checkpoints/<variant>/`` (Trainer checkpoints),
``best/<variant>/`` (the best model with its normalisation folded into plain weights, as
``--export`` writes it: stock ``transformers`` loads it as exactly the normalised model in eval
mode; plus the tokenizer). The Trainer's checkpoints keep the parametrised state for ``--resume``.

Library functions never print; long loops report through :data:`qft_cli.system.progress.ProgressFn`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from qft_cli.models.names import ModelSource
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn
from qft_cli.train.normalization import (
    BlockNormalization,
    apply_normalization,
    fold_normalization,
    norm_variants,
    parse_layers,
    parse_targets,
)

TINY_DNABERT = "tiny-dnabert"
#: Directory names recognised as (the parent of) the best checkpoint inside a ``qft train`` run.
BEST_CHECKPOINT_NAMES = ("best", "best_model", "best-model", "best_checkpoint", "best-checkpoint")
BEST_CHECKPOINT_NAMES_SET = set(BEST_CHECKPOINT_NAMES)
#: ``--tokenizer`` values that build a DNA tokenizer (:func:`qft_cli.data.tasks.build_tokenizer`).
_DNA_TOKENIZER_RE = re.compile(r"^(?:dnabert2|char|kmer:\d+|bpe:\d+)$")


# ----------------------------------------------------------------------------- settings

@dataclass
class FinetuneSettings:
    """Options of one ``qft finetune`` run; the defaults are the research's fine-tuning settings.

    Attributes:
        norm: ``all`` (vanilla, spectral, frobenius, as ``qft train``), ``none``/``vanilla``,
            ``spectral``, ``frobenius`` or a list like ``vanilla,frobenius``
            (:func:`qft_cli.train.normalization.norm_variants`); same data and seed for every variant.
        targets: ``attention``, ``ffn``, ``attention,ffn`` or matrix names.
        layers: ``all``, ``1,3`` or ``1-4`` (1-indexed transformer blocks).
        max_gamma: learnable scale ``gamma = max_gamma * sigmoid(g)``; effective norm <= max_gamma.
        subnormalised: also run each normalised variant with a learnable scale bounded by
            ``max_gamma`` (default 1): the research's ``frobenius_subnormalised``.
        learning_rate, num_epochs, early_stopping (patience in epochs, 0 = off), weight_decay,
        lr_scheduler_type, warmup_ratio, batch_size, eval_batch_size, seed: as in the research.
        seeds: several seeds (each variant runs once per seed); ``seed`` is then the first.
        max_length: token limit (default: the tokenizer's, at most 512).
        max_steps: stop after this many optimiser steps (overrides ``num_epochs``).
        max_train_samples, max_eval_samples: seeded subsets for quick runs.
        mixed_precision: ``auto`` (bf16/fp16 on CUDA only), ``no``, ``fp16``, ``bf16``.
        num_labels: classes of a DNA task (default: the task's own, :func:`qft_cli.data.tasks.task_num_labels`).
        class_files: ``--class-file LABEL=PATH`` values (FASTA, :mod:`qft_cli.data.fasta`).
        split_sizes: ``(train, validation, test)`` fractions of the split of unsplit FASTA.
        baseline: ``auto`` (k-mer logistic regression / most frequent tag, :mod:`qft_cli.train.baseline`) or ``none``.
    """

    norm: str = "all"
    targets: str = "attention,ffn"
    layers: str = "all"
    max_gamma: Optional[float] = None
    subnormalised: bool = False
    learning_rate: float = 2e-4
    num_epochs: float = 200
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
    mixed_precision: str = "auto"
    seeds: Optional[list[int]] = None
    num_labels: Optional[int] = None
    class_files: Optional[list[str]] = None
    split_sizes: Optional[list[float]] = None
    baseline: str = "auto"

    def __post_init__(self) -> None:
        from qft_cli.data.fasta import parse_split_sizes
        from qft_cli.train.baseline import check_baseline
        from qft_cli.train.training import check_gamma_and_seeds

        parse_targets(self.targets)
        self.seeds = check_gamma_and_seeds(self.max_gamma, self.seeds)
        self.variants()
        if self.seeds:
            self.seed = self.seeds[0]
        if self.max_length is not None and self.max_length < 4:
            raise QftInputError(f"--max-length {self.max_length} is too short: use at least 4 tokens")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise QftInputError(f"--{name.replace('_', '-')} {value} must be at least 1")
        if self.split_sizes is not None:
            self.split_sizes = list(parse_split_sizes(self.split_sizes))
        self.baseline = check_baseline(self.baseline)
        self.training_config().validate()

    def training_config(self, device: str = "cpu"):
        """The :class:`qft_cli.train.training.TrainingConfig` of these settings on ``device``."""
        from qft_cli.train.training import TrainingConfig

        return TrainingConfig(learning_rate=self.learning_rate, num_epochs=self.num_epochs,
                              early_stopping=self.early_stopping, weight_decay=self.weight_decay,
                              lr_scheduler_type=self.lr_scheduler_type, warmup_ratio=self.warmup_ratio,
                              batch_size=self.batch_size, eval_batch_size=self.eval_batch_size, seed=self.seed,
                              max_steps=self.max_steps, mixed_precision=self.mixed_precision, device=device)

    def variants(self) -> list[tuple[str, Optional[str], Optional[float]]]:
        """``(variant name, method or None, max_gamma or None)`` of each model to train, in order
        (:func:`qft_cli.train.normalization.norm_variants`)."""
        return norm_variants(self.norm, max_gamma=self.max_gamma, subnormalised=self.subnormalised)

    def seed_list(self) -> list[int]:
        """The seeds to run (``seeds``, else ``[seed]``)."""
        return list(self.seeds) if self.seeds else [self.seed]


# ----------------------------------------------------------------------------- model resolution

def find_best_checkpoint(run_dir: Path) -> Path:
    """The best checkpoint of a ``qft train`` run directory: a directory with ``config.json`` named
    like :data:`BEST_CHECKPOINT_NAMES` or inside one (``best/<variant>/``, the layout of
    :mod:`qft_cli.train.training`), up to three levels down. With several, the vanilla one is taken.

    Raises:
        QftInputError: no best checkpoint, or several and none of them vanilla.
    """
    run_dir = Path(run_dir)
    found = sorted({p.parent for pattern in ("config.json", "*/config.json", "*/*/config.json", "*/*/*/config.json")
                    for p in run_dir.glob(pattern)
                    if BEST_CHECKPOINT_NAMES_SET & {p.parent.name, p.parent.parent.name, p.parent.parent.parent.name}})
    if not found:
        raise QftInputError(f"run directory {run_dir} has no best checkpoint (best/<variant>/config.json): "
                            "was the run completed? pass the run directory of a finished `qft train`")
    if len(found) == 1:
        return found[0]
    vanilla = [p for p in found if "vanilla" in p.relative_to(run_dir).parts]
    if len(vanilla) == 1:
        return vanilla[0]
    raise QftInputError(f"run directory {run_dir} has several best checkpoints "
                        f"({', '.join(str(p.relative_to(run_dir)) for p in found)}): pass one of them as MODEL")


def resolve_finetune_model(name: str) -> ModelSource:
    """Resolve MODEL: ``tiny-dnabert``; a ``qft train`` run directory (has ``run.json``) -> its
    best checkpoint as a local model; else :func:`qft_cli.models.names.resolve_model`.

    Raises:
        QftInputError: unknown alias, or a run directory without a checkpoint.
    """
    from qft_cli.models.names import resolve_model

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


def _auto_class(kind: str):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    return AutoModelForTokenClassification if kind == "token_classification" else AutoModelForSequenceClassification


def _load_normalised_checkpoint(directory: Path, config_dict: dict, num_labels: int, kind: str, dtype: torch.dtype):
    """A checkpoint saved with normalisation parametrizations (``config.qft_normalization``):
    rebuild the architecture, re-apply the normalisation (qft's own models do that themselves),
    load the state dict strictly, fold the normalisation into plain weights."""
    from transformers import AutoConfig

    from qft_cli.models.loading import check_keys, read_state_dict

    config = AutoConfig.from_pretrained(str(directory))
    if config.num_labels != num_labels:
        raise QftInputError(f"checkpoint {directory} has a head of {config.num_labels} labels but the dataset has "
                            f"{num_labels}: fine-tune a checkpoint trained on the same labels")
    model = _auto_class(kind).from_config(config)
    if not any(isinstance(m, BlockNormalization) for m in model.modules()):
        settings = dict(config_dict["qft_normalization"])
        apply_normalization(model, settings.pop("method"), **settings)
    result = model.load_state_dict(read_state_dict(directory), strict=False)
    check_keys(model, missing=result.missing_keys, unexpected=result.unexpected_keys, name=str(directory),
               allow_new=False)  # a qft checkpoint carries its head: nothing may be new
    fold_normalization(model)
    return model.to(dtype=dtype)


def load_classifier(source: ModelSource, num_labels: int, *, kind: str = "sequence_classification", seed: int = 42,
                    dtype: torch.dtype = torch.float32, trust_remote_code: bool = False):
    """Load ``source`` with a sequence- or token-classification head of ``num_labels`` outputs.
    New heads are initialised from ``seed``, so every variant of a run starts from the same weights;
    they are listed by :func:`qft_cli.models.loading.load_report` (``new``). Every other key must match
    (:func:`qft_cli.models.loading.check_keys`). A normalised checkpoint (``config.qft_normalization``) is
    rebuilt and its normalisation folded.

    Args:
        kind: ``sequence_classification`` or ``token_classification`` (:class:`qft_cli.data.tasks.TaskData`).

    Raises:
        QftInputError: no such classification architecture in ``transformers`` (or in qft's native
            DNABERT-2 / qft transformer), hub failures, mismatched checkpoints.
    """
    import qft_cli.train.modeling_qft  # noqa: F401  (registers qft train's model with the Auto classes)
    from qft_cli.models.dnabert2 import build_tiny_dnabert, is_dnabert2_source
    from qft_cli.models.loading import load_model
    from qft_cli.models.names import load_config

    auto_class = _auto_class(kind)
    head = "token" if kind == "token_classification" else "sequence"
    torch.manual_seed(seed)
    if source.kind == "tiny" and source.location == TINY_DNABERT:
        return build_tiny_dnabert(head, seed=seed, num_labels=num_labels).to(dtype=dtype)
    config_dict = _local_config(source)
    if config_dict is not None and config_dict.get("qft_normalization"):  # null in a vanilla qft model
        return _load_normalised_checkpoint(Path(source.location), config_dict, num_labels, kind, dtype)
    dnabert2 = is_dnabert2_source(source.location, source.kind)  # reads config.json: once
    if not trust_remote_code and not dnabert2:
        config = load_config(source)
        if type(config) not in auto_class._model_mapping:
            raise QftInputError(f"model {source.name} ({type(config).__name__}) has no {head}-classification "
                                "architecture in transformers: pick an encoder or decoder language model")
    kwargs: dict[str, Any] = {"num_labels": num_labels}
    if source.kind == "local" and not dnabert2:
        kwargs["ignore_mismatched_sizes"] = True
    return load_model(source, dtype=dtype, trust_remote_code=trust_remote_code, auto_class=auto_class, seed=seed,
                      **kwargs)


def load_finetune_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """The model's own tokenizer (``tiny-dnabert``: tiny-bert's byte-level tokenizer); a pad token
    is added from the end-of-sequence token when missing.

    Raises:
        QftInputError: no tokenizer files (pass ``--tokenizer``), hub failures.
    """
    from qft_cli.models.names import load_tokenizer, tiny_tokenizer

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


def _tokenizer_for(source: ModelSource, tokenizer_name: Optional[str], data, save_dir: Optional[Path],
                   trust_remote_code: bool):
    from qft_cli.data.tasks import build_tokenizer

    if tokenizer_name and _DNA_TOKENIZER_RE.match(tokenizer_name.strip().lower()):
        if data.kind != "sequence_classification":
            raise QftInputError(f"--tokenizer {tokenizer_name} is a DNA tokenizer but {data.dataset} is a text task")
        return build_tokenizer(tokenizer_name, data, save_dir=save_dir, trust_remote_code=trust_remote_code)
    if tokenizer_name and Path(tokenizer_name).expanduser().is_file():  # a tokenizer.json
        from qft_cli.data.tasks import load_tokenizer_path

        tokenizer = load_tokenizer_path(Path(tokenizer_name))
        if tokenizer.pad_token is None:
            raise QftInputError(f"--tokenizer {tokenizer_name} has no pad token ([PAD]): pass a tokenizer with one")
        return tokenizer
    tok_source = resolve_finetune_model(tokenizer_name) if tokenizer_name else source
    tokenizer = load_finetune_tokenizer(tok_source, trust_remote_code=trust_remote_code)
    if data.kind == "token_classification" and not getattr(tokenizer, "is_fast", False):
        raise QftInputError(f"the tokenizer of {tok_source.name} is not a fast tokenizer: POS labels need word ids")
    return tokenizer


def check_layers(model, settings: FinetuneSettings) -> None:
    """Validate ``settings.layers`` against the depth of ``model`` before any training.

    Raises:
        QftInputError: a layer beyond the depth, a malformed list, or no matrix of ``settings.targets`` in
            those layers.
    """
    from qft_cli.models.layout import classify_model
    from qft_cli.train.normalization import _select

    depth = max((s.layer for s in classify_model(model)), default=0)
    layers = parse_layers(settings.layers, depth)
    if not _select(model, parse_targets(settings.targets), layers):
        raise QftInputError(f"no {settings.targets} matrix found in {type(model).__name__} for layers "
                            f"{settings.layers}: check --targets and --layers")


def _check_positions(model, max_length: int, name: str) -> None:
    """Learned position embeddings hold at most ``max_position_embeddings`` tokens (RoBERTa-style
    models start at ``pad_token_id + 1``); ALiBi/rotary models have no such limit."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return
    if not any(("position" in n and "embed" in n) or n.endswith("wpe.weight") for n, _ in model.named_parameters()):
        return
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
        limit -= (config.pad_token_id or 0) + 1
    if max_length > limit:
        raise QftInputError(f"--max-length {max_length} exceeds the {limit} positions of {name}: pass --max-length {limit} "
                            "or less")


def _check_vocabulary(model, tokenizer, name: str) -> None:
    embedding = model.get_input_embeddings()
    if embedding is not None and len(tokenizer) > embedding.num_embeddings:
        raise QftInputError(f"the tokenizer has {len(tokenizer)} tokens but {name}'s embedding only "
                            f"{embedding.num_embeddings} rows: use the model's own tokenizer")


# ----------------------------------------------------------------------------- the experiment

@dataclass
class FinetuneResult:
    """Test metrics of every variant and facts of the run.

    Attributes:
        variants: per variant and seed ``{"variant", "seed", "test": {loss, accuracy, f1},
            "best_model_dir", "export_dir", "normalised": ["<parameter>:<matrix>", ...], "epochs", "steps"}``.
        test_summary: :func:`qft_cli.train.stats.test_summary` of the run (``test_summary.parquet``).
        new_parameters: parameters not in the checkpoint, initialised from the seed (the new
            classification head; :data:`qft_cli.models.loading.LOADING_EXCEPTIONS`), also in ``run.json``.
    """

    model_id: str
    data_source: str
    num_labels: int
    kind: str
    max_length: int
    sizes: dict[str, int]
    variants: list[dict[str, Any]] = field(default_factory=list)
    task: Optional[str] = None
    test_summary: Any = None
    new_parameters: list[str] = field(default_factory=list)

    def epochs(self) -> dict[str, float]:
        """Mean epochs trained per variant (over its seeds)."""
        from qft_cli.train.training import mean_epochs

        return mean_epochs(self.variants)


def finetune(model_name: str, *, dataset: str, settings: FinetuneSettings, run, data_dir: Optional[Path] = None,
             task: Optional[str] = None, tokenizer_name: Optional[str] = None, device: str = "auto",
             dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, export_dir: Optional[Path] = None,
             resume: bool = False, progress: Optional[ProgressFn] = None, on_estimate: Optional[Callable] = None,
             on_notes: Optional[Callable[[list[str]], None]] = None) -> FinetuneResult:
    """Fine-tune every variant of ``settings`` once per seed, on the same data, into ``run``.

    Per seed every variant starts from the same weights (new heads seeded) and sees the same data
    order; the data subsets are drawn once with the first seed. With several seeds, checkpoints,
    best models and exports go to ``<variant>/seed-<s>/``. Ends by writing ``test_summary.parquet``.

    Args:
        model_name: alias, hub id, local directory, ``qft train`` run directory or ``tiny-dnabert``.
        dataset: ``genomic-bench``, ``gue`` or ``conll2003`` (:mod:`qft_cli.data.tasks`).
        run: an entered :class:`qft_cli.runs.rundir.Run`; tables and checkpoints go into ``run.path``.
        device: ``auto``, ``cpu`` or ``cuda`` (the Trainer places the model).
        export_dir: write each variant with the normalisation folded, for stock ``transformers``
            (``export_dir`` for one variant and seed, ``export_dir/<variant>[/seed-<s>]`` for several).
        resume: skip (variant, seed) pairs with a test row in ``metrics.parquet``; continue the
            interrupted one from its last checkpoint.
        on_estimate: on a CPU, called with each variant's
            :class:`qft_cli.train.training.TrainingEstimate` (from timing its first steps).
        on_notes: called once before training with the data notes (e.g. which GUE task was read).

    Raises:
        QftInputError: bad model, data, tokenizer, layers, targets or gamma.
    """
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    from qft_cli.data.tasks import encode, load_task, subsample
    from qft_cli.models.loading import load_report
    from qft_cli.system.device import resolve_device
    from qft_cli.train.export import export_model
    from qft_cli.train.training import (
        METRICS_TABLE,
        ResultsRecorder,
        record_baseline,
        train_seeds_and_variants,
        write_test_summary,
    )

    run_dir = Path(run.path)
    if export_dir is not None and Path(export_dir).exists() and not Path(export_dir).is_dir():
        raise QftInputError(f"--export {export_dir} is a file: pass a directory")  # before training, not after
    source = resolve_finetune_model(model_name)
    from qft_cli.data.fasta import parse_class_files

    class_files = parse_class_files(settings.class_files, Path(data_dir) if data_dir else None) \
        if settings.class_files else None
    data = load_task(dataset, task=task, data_dir=data_dir, seed=settings.seed, class_files=class_files,
                     split_sizes=tuple(settings.split_sizes) if settings.split_sizes else None,
                     num_labels=settings.num_labels)
    subsample(data, "train", settings.max_train_samples, settings.seed)
    for split in ("validation", "test"):
        if split in data.splits:
            subsample(data, split, settings.max_eval_samples, settings.seed)
    tokenizer = _tokenizer_for(source, tokenizer_name, data, run_dir if run.is_main_process else None,
                               trust_remote_code)
    max_length = settings.max_length or int(min(getattr(tokenizer, "model_max_length", 512) or 512, 512))
    encoded = encode(data, tokenizer, max_length)
    collator = (DataCollatorForTokenClassification(tokenizer) if data.kind == "token_classification"
                else DataCollatorWithPadding(tokenizer))
    cfg = settings.training_config(device)  # its values were checked when settings was made; now its device
    resolve_device(cfg.device)
    recorder = ResultsRecorder(run, default_seed=settings.seed)
    result = FinetuneResult(source.model_id, data.source, data.num_labels, data.kind, max_length, data.sizes(),
                            task=data.task)
    from qft_cli.runs.provenance import (
        check_resumed_data,
        file_records,
        model_files_for,
    )

    data_files = file_records(data.files)
    check_resumed_data(run.meta, data_files)
    run.update(data={**data.record(), "location": data.source}, data_files=data_files)
    record_baseline(run, recorder, data, settings.baseline, settings.seed)
    model_files_recorded = False
    variants = settings.variants()
    several = len(settings.seed_list()) > 1
    normalised: dict[tuple[int, str], list[str]] = {}  # (seed, variant) -> "<parameter>:<matrix>" normalised

    def build(seed: int, variant: str, method: Optional[str], max_gamma: Optional[float]):
        nonlocal model_files_recorded
        model = load_classifier(source, data.num_labels, kind=data.kind, seed=seed, dtype=dtype,
                                trust_remote_code=trust_remote_code)
        if not model_files_recorded:  # the weights every variant starts from
            run.update(model_files=[model_files_for(source, model, progress)])
            model_files_recorded = True
        new_parameters = load_report(model).new
        if new_parameters != result.new_parameters:
            result.new_parameters = new_parameters
            run.update(new_parameters=new_parameters)
        model.config.id2label = dict(enumerate(data.label_names))
        model.config.label2id = {n: i for i, n in enumerate(data.label_names)}
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        _check_vocabulary(model, tokenizer, source.name)
        _check_positions(model, max_length, source.name)
        if any(m is not None for _, m, _ in variants):
            check_layers(model, settings)  # before any training (vanilla included): bad --layers/--targets fail at once
        if method is not None:
            specs = apply_normalization(model, method, targets=settings.targets, layers=settings.layers,
                                        max_gamma=max_gamma)
            normalised[(seed, variant)] = [f"{s.parameter}:{s.matrix}" for s in specs]
        return model

    def record(trained_so_far, model) -> None:
        trained = trained_so_far[-1]
        variant, seed = trained.variant, trained.seed
        exported = None
        if model is not None and export_dir is not None and run.is_main_process:
            target = Path(export_dir) if len(variants) == 1 and not several else Path(export_dir) / variant
            exported = str(export_model(model, target / f"seed-{seed}" if several else target, tokenizer=tokenizer))
        result.variants.append({"variant": variant, "seed": seed, "test": trained.test,
                                "best_model_dir": trained.best_model_dir, "export_dir": exported,
                                "normalised": normalised.get((seed, variant), []), "epochs": trained.epochs,
                                "steps": trained.steps})
        if model is None:  # resumed: nothing new for run.json
            return
        run.update(results={(f"{v['variant']}/seed-{v['seed']}" if several else v["variant"]):
                            {k: v[k] for k in ("test", "best_model_dir", "export_dir", "normalised")}
                            for v in result.variants})

    train_seeds_and_variants(run, recorder, seeds=settings.seed_list(), variants=variants, config=cfg, build=build,
                             record=record, datasets=encoded, num_labels=data.num_labels, data_collator=collator,
                             tokenizer=tokenizer, targets=settings.targets, resume=resume, progress=progress,
                             on_estimate=on_estimate, notes=data.notes, on_notes=on_notes, fold_best=True)
    recorder.write(METRICS_TABLE)
    result.test_summary = write_test_summary(run, recorder, dataset=data.dataset, task=data.task,
                                             num_labels=data.num_labels)
    return result
