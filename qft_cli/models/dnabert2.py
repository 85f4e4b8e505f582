"""DNABERT-2 natively: recognising the published checkpoint and mapping it to qft's own classes.

The model code lives in :mod:`qft_cli.models.modeling_dnabert2` (torch + transformers only). This module
recognises a DNABERT-2 config (also the published one, which has no ``model_type``, no
``architectures`` and no ``pad_token_id``), builds the config and maps parameter names. Loading a
checkpoint (directory or hub, the strict-key check) is :func:`qft_cli.models.loading.load_dnabert2`,
with the rules of :data:`qft_cli.models.loading.LOADING_EXCEPTIONS`: the published masked-LM head
``cls.predictions.*`` is unused; a missing pooler/classifier is new, initialised from the seed.

This module imports nothing else of qft's loading (no cycle with :mod:`qft_cli.models.names`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from qft_cli.models.modeling_dnabert2 import (
    MODEL_TYPE,
    DnaBert2Config,
    DnaBert2ForSequenceClassification,
    DnaBert2ForTokenClassification,
    DnaBert2Model,
    alibi_bias,
    alibi_head_slopes,
)
from qft_cli.system.errors import QftInputError

__all__ = ["HUB_ID", "DnaBert2Config", "DnaBert2Model", "DnaBert2ForSequenceClassification",
           "DnaBert2ForTokenClassification", "alibi_head_slopes", "alibi_bias", "is_dnabert2_config",
           "config_from_published", "map_names", "tiny_dnabert_config",
           "build_tiny_dnabert", "save_published_style_checkpoint", "TASKS", "is_dnabert2_source",
           "task_of_auto_class"]

#: Hub id of the published model.
HUB_ID = "zhihan1996/DNABERT-2-117M"

#: task -> model class (``base`` = encoder with pooler, no head).
TASKS = {"base": DnaBert2Model, "sequence": DnaBert2ForSequenceClassification,
         "token": DnaBert2ForTokenClassification}


_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "type_vocab_size",
                "layer_norm_eps", "initializer_range", "classifier_dropout", "alibi_starting_size", "pad_token_id")


def _register_auto_classes() -> None:
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

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


def map_names(state_dict: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """Published names -> names of the ``task`` model: add the ``bert.`` prefix to a bare encoder
    checkpoint; strip it for the ``base`` model. Other tensors (the masked-LM head ``cls.*``, a
    classifier for ``base``) keep their names: the strict-key check of
    :func:`qft_cli.models.loading.check_keys` reports them as unused."""
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        if task == "base" and name.startswith("bert."):
            name = name[len("bert."):]
        mapped[name] = tensor
    return mapped


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


def save_published_style_checkpoint(directory: Path, seed: int = 0, safetensors: bool = False, *,
                                    config_json: Optional[Path] = None, head: str = "masked_lm",
                                    **overrides) -> Path:
    """Write a random checkpoint laid out like the hub's ``zhihan1996/DNABERT-2-117M``. For tests.

    Args:
        config_json: the published ``config.json`` (e.g. ``shared/data/dnabert2/config.json``),
            copied byte for byte, the weights with its (full) sizes; with ``overrides`` (e.g.
            :data:`TINY_DNABERT`) those values replace the published ones and every other key
            stays as published. ``None``: a tiny config
            (:data:`TINY_DNABERT` plus ``overrides``) written like the published one: an
            ``auto_map`` to ``bert_layers``, no ``model_type``, no ``architectures``, no
            ``pad_token_id``.
        head: ``masked_lm`` (as published: ``bert.*`` without a pooler plus ``cls.predictions.*``)
            or ``sequence`` (SequenceClassification key names: ``bert.*`` with the pooler plus
            ``classifier.*``, 2 labels).
        safetensors: ``model.safetensors`` instead of ``pytorch_model.bin`` (as published).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if config_json is not None:
        text = Path(config_json).read_text()
        if overrides:  # same keys as published, other sizes (e.g. tiny ones for fast tests)
            raw = {**json.loads(text), **overrides}
            text = json.dumps(raw, indent=2)
        config = config_from_published(json.loads(text))
    else:
        config = tiny_dnabert_config(**overrides)
        published = {k: getattr(config, k) for k in _CONFIG_KEYS if k != "pad_token_id"}
        published.update({
            "_name_or_path": "zhihan1996/DNABERT-2-117M", "max_position_embeddings": 512,
            "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel",
                         "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
                         "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification"},
        })
        text = json.dumps(published, indent=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = DnaBert2Model(config)
    keep_pooler = head == "sequence"
    tensors = {f"bert.{k}": v.clone() for k, v in encoder.state_dict().items()
               if keep_pooler or not k.startswith("pooler.")}
    d, vocab = config.hidden_size, config.vocab_size
    gen = torch.Generator().manual_seed(seed + 1)
    if head == "masked_lm":
        tensors.update({
            "cls.predictions.transform.dense.weight": torch.randn(d, d, generator=gen) * 0.02,
            "cls.predictions.transform.dense.bias": torch.zeros(d),
            "cls.predictions.transform.LayerNorm.weight": torch.ones(d),
            "cls.predictions.transform.LayerNorm.bias": torch.zeros(d),
            "cls.predictions.decoder.weight": tensors["bert.embeddings.word_embeddings.weight"].clone(),
            "cls.predictions.decoder.bias": torch.zeros(vocab),
        })
    elif head == "sequence":
        tensors.update({"classifier.weight": torch.randn(2, d, generator=gen) * 0.02, "classifier.bias": torch.zeros(2)})
    else:
        raise ValueError(f"head must be masked_lm or sequence, got {head!r}")
    (directory / "config.json").write_text(text)
    if safetensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    else:
        torch.save(tensors, directory / "pytorch_model.bin")
    return directory


# ----------------------------------------------------------------------------- used by qft_cli.models.loading

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
