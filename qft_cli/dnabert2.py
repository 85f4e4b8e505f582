"""Loading DNABERT-2 natively: the published checkpoint into qft's own model classes.

The model code lives in :mod:`qft_cli.modeling_dnabert2` (torch + transformers only). This module
finds the checkpoint (local directory or Hugging Face Hub), recognises a DNABERT-2 config, maps
parameter names and refuses any mismatch: a missing or unexpected key is a
:class:`~qft_cli.errors.QftInputError` listing them, never a silent random initialisation.

Expected differences that are *not* errors:

* the published checkpoint (``BertForMaskedLM``) carries the masked-LM head ``cls.predictions.*``,
  which classification does not use (dropped);
* it has no pooler and no classifier; ``bert.pooler.*`` and ``classifier.*`` are new heads,
  initialised from the seed like Hugging Face does for a fine-tuning head.

A checkpoint that does carry a pooler/classifier (a fine-tuned or exported model) loads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from qft_cli.errors import QftInputError
from qft_cli.modeling_dnabert2 import (MODEL_TYPE, DnaBert2Config, DnaBert2ForSequenceClassification,
                                       DnaBert2ForTokenClassification, DnaBert2Model, alibi_bias,
                                       alibi_head_slopes)

__all__ = ["HUB_ID", "DnaBert2Config", "DnaBert2Model", "DnaBert2ForSequenceClassification",
           "DnaBert2ForTokenClassification", "alibi_head_slopes", "alibi_bias", "is_dnabert2_config",
           "config_from_published", "load_dnabert2", "read_checkpoint", "tiny_dnabert_config",
           "build_tiny_dnabert", "save_published_style_checkpoint", "TASKS"]

#: Hub id of the published model.
HUB_ID = "zhihan1996/DNABERT-2-117M"

#: task -> model class (``base`` = encoder with pooler, no head).
TASKS = {"base": DnaBert2Model, "sequence": DnaBert2ForSequenceClassification,
         "token": DnaBert2ForTokenClassification}

#: Checkpoint prefixes that are dropped on purpose (the masked-LM head of the published model).
DROPPED_PREFIXES = ("cls.",)
#: Prefixes of heads that may be absent from a checkpoint (new, seeded initialisation).
NEW_HEAD_PREFIXES = ("bert.pooler.", "classifier.", "pooler.")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
                "layer_norm_eps", "initializer_range", "classifier_dropout", "alibi_starting_size", "pad_token_id")


def _register_auto_classes() -> None:
    from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    try:
        AutoConfig.register(MODEL_TYPE, DnaBert2Config)
        AutoModel.register(DnaBert2Config, DnaBert2Model)
        AutoModelForSequenceClassification.register(DnaBert2Config, DnaBert2ForSequenceClassification)
        AutoModelForTokenClassification.register(DnaBert2Config, DnaBert2ForTokenClassification)
    except ValueError:  # already registered
        pass


_register_auto_classes()


def is_dnabert2_config(config: dict) -> bool:
    """True for a DNABERT-2 ``config.json`` (as a dict): qft's own ``model_type``, or the published
    one, whose ``auto_map`` points to ``bert_layers`` (MosaicBERT code) or that has
    ``alibi_starting_size``."""
    if config.get("model_type") == MODEL_TYPE:
        return True
    auto_map = config.get("auto_map") or {}
    if any("bert_layers" in str(v) for v in auto_map.values()):
        return True
    return "alibi_starting_size" in config and config.get("model_type") in (None, "bert")


def config_from_published(config: dict, **overrides) -> DnaBert2Config:
    """A :class:`DnaBert2Config` from the published ``config.json`` dict (keys it does not know,
    such as ``auto_map``, are dropped) plus ``overrides`` (e.g. ``num_labels=2``)."""
    kwargs = {k: config[k] for k in _CONFIG_KEYS if k in config and config[k] is not None}
    if config.get("id2label") and "num_labels" not in overrides:
        kwargs["id2label"] = {int(k): v for k, v in config["id2label"].items()}
    kwargs.update(overrides)
    return DnaBert2Config(**kwargs)


def read_checkpoint(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of ``model.safetensors`` or ``pytorch_model.bin`` in ``directory`` (CPU).

    ``pytorch_model.bin`` is read with ``torch.load(weights_only=True)``: tensors only, no code.

    Raises:
        QftInputError: neither file exists.
    """
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path), device="cpu")
            return torch.load(path, map_location="cpu", weights_only=True)
    raise QftInputError(f"no DNABERT-2 weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def _map_names(state_dict: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Published names -> names of the ``task`` model: drop ``cls.*``; add the ``bert.`` prefix to a
    bare encoder checkpoint; strip it for the ``base`` model."""
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name.startswith(DROPPED_PREFIXES):
            continue
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        if task == "base":
            if not name.startswith("bert."):
                continue  # a classifier head is not part of the encoder
            name = name[len("bert."):]
        mapped[name] = tensor
    return mapped


def _short_list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _resolve_directory(path_or_hub_id: str) -> Path:
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    from qft_cli.models import ModelSource, hub_snapshot

    source = ModelSource(path_or_hub_id, "hub", path_or_hub_id)
    return hub_snapshot(source, ["config.json", "*.safetensors", "pytorch_model.bin"])


def load_dnabert2(path_or_hub_id: str | Path, num_labels: Optional[int] = None, task: str = "sequence", *,
                  dtype: torch.dtype = torch.float32, seed: int = 0, **config_overrides):
    """Load a DNABERT-2 checkpoint into qft's native classes (no remote code).

    Args:
        path_or_hub_id: a directory with ``config.json`` and ``model.safetensors`` or
            ``pytorch_model.bin`` (published layout or a qft save), or a hub id such as
            :data:`HUB_ID` (downloaded or taken from the Hugging Face cache).
        num_labels: size of the classification head (``sequence``/``token``); ``None`` keeps the
            checkpoint's.
        task: ``sequence``, ``token`` or ``base`` (encoder + pooler, no head).
        dtype: parameter dtype.
        seed: seed of the initialisation of the new heads (pooler, classifier).
        config_overrides: config attributes to set (e.g. ``hidden_dropout_prob=0.0``).

    Returns:
        The model in eval mode.

    Raises:
        QftInputError: not a DNABERT-2 config; no weights; any missing (outside the new heads) or
            unexpected parameter, or a shape mismatch, listed by name; hub unreachable.
    """
    if task not in TASKS:
        raise QftInputError(f"unknown DNABERT-2 task '{task}': use one of {', '.join(TASKS)}")
    directory = _resolve_directory(str(path_or_hub_id))
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise QftInputError(f"{directory} has no config.json: pass a DNABERT-2 model directory")
    raw = json.loads(config_path.read_text())
    if not is_dnabert2_config(raw):
        raise QftInputError(f"{directory} is not a DNABERT-2 model (config.json has neither model_type "
                            f"'{MODEL_TYPE}' nor DNABERT-2's auto_map/alibi_starting_size)")
    overrides = dict(config_overrides)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    config = config_from_published(raw, **overrides)
    state_dict = _map_names(read_checkpoint(directory), task)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TASKS[task](config)
    expected = model.state_dict()
    new_heads = NEW_HEAD_PREFIXES
    missing = sorted(k for k in expected if k not in state_dict and not k.startswith(new_heads))
    unexpected = sorted(k for k in state_dict if k not in expected)
    wrong_shape = sorted(f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                         if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
                         and not (k.startswith(new_heads) and k.startswith("classifier.")))
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short_list(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches: {_short_list(wrong_shape)}")
        raise QftInputError(f"checkpoint {path_or_hub_id} does not match DNABERT-2's parameter names; "
                            + "; ".join(parts))
    # A classifier of another size (a checkpoint fine-tuned on other labels) is replaced, not loaded.
    loadable = {k: v for k, v in state_dict.items() if tuple(v.shape) == tuple(expected[k].shape)}
    model.load_state_dict(loadable, strict=False)
    return model.to(dtype=dtype).eval()


# ----------------------------------------------------------------------------- tiny model for tests

#: Tiny shapes: hidden 64, 2 layers, 4 heads, intermediate 128 (vocabulary 261 = tiny-bert's byte tokenizer).
TINY_DNABERT = dict(vocab_size=261, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0)


def tiny_dnabert_config(**overrides) -> DnaBert2Config:
    """Config of ``tiny-dnabert`` (:data:`TINY_DNABERT` plus ``overrides``)."""
    return DnaBert2Config(**{**TINY_DNABERT, **overrides})


def build_tiny_dnabert(task: str = "sequence", seed: int = 0, **overrides):
    """A random DNABERT-2 with tiny shapes and DNABERT-2's parameter names, from ``seed``
    (deterministic), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TASKS[task](tiny_dnabert_config(**overrides))
    return model.eval()


def save_published_style_checkpoint(directory: Path, seed: int = 0, safetensors: bool = False, **overrides) -> Path:
    """Write a random tiny checkpoint laid out like the hub's ``zhihan1996/DNABERT-2-117M``:
    ``config.json`` with ``model_type`` ``bert``, ``architectures`` ``BertForMaskedLM``, an
    ``auto_map`` to ``bert_layers``; weights named ``bert.*`` without a pooler plus the masked-LM
    head ``cls.predictions.*`` (``pytorch_model.bin`` by default, as published). For tests."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_dnabert_config(**overrides)
    encoder = build_tiny_dnabert("base", seed=seed, **overrides)
    tensors = {f"bert.{k}": v.clone() for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    d, vocab = config.hidden_size, config.vocab_size
    gen = torch.Generator().manual_seed(seed + 1)
    tensors.update({
        "cls.predictions.transform.dense.weight": torch.randn(d, d, generator=gen) * 0.02,
        "cls.predictions.transform.dense.bias": torch.zeros(d),
        "cls.predictions.transform.LayerNorm.weight": torch.ones(d),
        "cls.predictions.transform.LayerNorm.bias": torch.zeros(d),
        "cls.predictions.decoder.weight": tensors["bert.embeddings.word_embeddings.weight"].clone(),
        "cls.predictions.decoder.bias": torch.zeros(vocab),
    })
    published = {k: getattr(config, k) for k in _CONFIG_KEYS}
    published.update({
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "max_position_embeddings": 512,
        "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel",
                     "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
                     "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification"},
    })
    (directory / "config.json").write_text(json.dumps(published, indent=2))
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    else:
        torch.save(tensors, directory / "pytorch_model.bin")
    return directory


# ----------------------------------------------------------------------------- hook for models.load_model

def is_dnabert2_source(location: str, kind: str) -> bool:
    """True when a resolved model source is DNABERT-2: the hub id :data:`HUB_ID`, or a local
    directory whose ``config.json`` is a DNABERT-2 config (:func:`is_dnabert2_config`)."""
    if kind == "hub":
        return location == HUB_ID
    if kind == "local":
        path = Path(location) / "config.json"
        try:
            return path.is_file() and is_dnabert2_config(json.loads(path.read_text()))
        except (OSError, ValueError):
            return False
    return False


def task_of_auto_class(auto_class) -> str:
    """``base``/``sequence``/``token`` for ``AutoModel`` (or ``None``),
    ``AutoModelForSequenceClassification``, ``AutoModelForTokenClassification``.

    Raises:
        QftInputError: any other head (e.g. masked LM): not implemented natively.
    """
    name = getattr(auto_class, "__name__", "AutoModel") if auto_class is not None else "AutoModel"
    tasks = {"AutoModel": "base", "AutoModelForSequenceClassification": "sequence",
             "AutoModelForTokenClassification": "token"}
    if name not in tasks:
        raise QftInputError(f"qft's native DNABERT-2 has no {name} head: use sequence or token classification, "
                            "or pass --trust-remote-code to run the hub's own code")
    return tasks[name]


def load_native_if_dnabert2(source, auto_class=None, dtype: torch.dtype = torch.float32, **kwargs):
    """The native DNABERT-2 model for ``source`` (a :class:`qft_cli.models.ModelSource`), or
    ``None`` when it is not DNABERT-2. ``kwargs``: ``num_labels`` and config overrides, as for
    ``from_pretrained``."""
    if not is_dnabert2_source(source.location, source.kind):
        return None
    kwargs = dict(kwargs)
    num_labels = kwargs.pop("num_labels", None)
    kwargs = {k: v for k, v in kwargs.items() if k in _CONFIG_KEYS or k in ("id2label", "label2id")}
    return load_dnabert2(source.location, num_labels=num_labels, task=task_of_auto_class(auto_class),
                         dtype=dtype, **kwargs)
