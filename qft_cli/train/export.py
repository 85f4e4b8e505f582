"""``--export DIR``: a fine-tuned model with its normalisation folded into plain weights.

Normalised matrices live behind ``torch.nn.utils.parametrize`` (``W = f(W_raw, gamma)``). Export
computes every parametrized tensor once in eval mode (spectral norm: the stored power-iteration
vectors, no new iteration), stores the result as an ordinary parameter, and writes the model
with ``save_pretrained`` as safetensors. The exported directory has no trace of qft's
parametrizations, so the forward pass of the reloaded model is the forward pass of the
normalised model, bit for bit up to the order of floating-point operations.

What "stock transformers loads it" means per model family:

* a model of a class that ships with ``transformers`` (BERT, MiniLM, RoBERTa, GPT-2, ...):
  ``AutoModelForSequenceClassification.from_pretrained(DIR)``; nothing else needed.
* qft's native DNABERT-2: no ``transformers`` class has its architecture (ALiBi + gated FFN +
  post-norm). The published checkpoint's own remote code is broken with current ``transformers``
  and Triton, so qft writes its own model file (:mod:`qft_cli.models.modeling_dnabert2`, which imports
  only ``torch`` and ``transformers``) into DIR as ``modeling_qft_dnabert2.py`` with an
  ``auto_map`` in ``config.json``. Parameter names are the published DNABERT-2 names. Load with
  ``AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)``: the code
  that runs is the file in DIR, which the user can read; qft need not be installed.
* qft's own single-layer transformer (``qft train``, :mod:`qft_cli.train.modeling_qft`): its code
  imports qft, so the export is a plain ``save_pretrained`` directory (normalisation folded) that
  ``transformers`` loads once ``qft_cli.train.modeling_qft`` is imported (it registers the Auto classes).
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from qft_cli.system.errors import QftInputError

REMOTE_CODE_FILE = "modeling_qft_dnabert2.py"

#: auto class name -> class name in :mod:`qft_cli.models.modeling_dnabert2`
_DNABERT2_AUTO_MAP = {
    "AutoConfig": "DnaBert2Config",
    "AutoModel": "DnaBert2Model",
    "AutoModelForSequenceClassification": "DnaBert2ForSequenceClassification",
    "AutoModelForTokenClassification": "DnaBert2ForTokenClassification",
}


def fold_parametrizations(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode in which every parametrized tensor is replaced by its
    current value (``remove_parametrizations(..., leave_parametrized=True)``). Learnable scales
    (gammas) and power-iteration buffers live inside the parametrizations and disappear with them.
    The input model is not changed."""
    was_training = model.training
    model.eval()
    try:
        folded = copy.deepcopy(model)
    finally:
        model.train(was_training)
    folded.eval()
    _own_parametrized_classes(folded)
    from qft_cli.train.normalization import fold_normalization

    fold_normalization(folded)  # qft's normalisation, and its settings in config.qft_normalization
    with torch.no_grad():
        for module in list(folded.modules()):  # any other parametrization
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    for module in folded.modules():
        assert not parametrize.is_parametrized(module)
    return folded


def _own_parametrized_classes(copy_of_model: nn.Module) -> None:
    """Give every parametrized module of a deep copy a class of its own.

    ``torch.nn.utils.parametrize`` injects one ``Parametrized<Class>`` per module and puts the
    parametrized tensor on that class as a property; ``copy.deepcopy`` shares the class, and
    ``remove_parametrizations`` deletes the property from it, so folding the copy would take
    ``weight`` away from the original (its forward then fails)."""
    for module in copy_of_model.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _is_dnabert2(model: nn.Module) -> bool:
    from qft_cli.models.modeling_dnabert2 import DnaBert2PreTrainedModel

    return isinstance(model, DnaBert2PreTrainedModel)


def _self_contained(module_file: str) -> bool:
    text = Path(module_file).read_text()
    return not re.search(r"^\s*(?:from|import)\s+qft_cli\b", text, flags=re.M)


def export_model(model: nn.Module, directory: Path, tokenizer=None) -> Path:
    """Write ``model`` with its normalisation folded (see module docstring) to ``directory``.

    Args:
        model: a ``transformers`` ``PreTrainedModel`` (optionally parametrized); not changed.
        directory: created if needed; existing files of the same names are overwritten.
        tokenizer: saved alongside when given (so ``AutoTokenizer.from_pretrained(DIR)`` works).

    Returns:
        ``directory``.

    Raises:
        QftInputError: ``directory`` is a file, or the model is not a ``transformers`` model.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise QftInputError(f"--export {directory} is a file: pass a directory")
    if not hasattr(model, "save_pretrained"):
        raise QftInputError(f"cannot export a {type(model).__name__}: it is not a transformers model")
    folded = fold_parametrizations(model).to(torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    if _is_dnabert2(folded):
        from qft_cli.models import modeling_dnabert2

        shutil.copyfile(inspect.getfile(modeling_dnabert2), directory / REMOTE_CODE_FILE)
        stem = REMOTE_CODE_FILE[:-3]
        folded.config.auto_map = {auto: f"{stem}.{cls}" for auto, cls in _DNABERT2_AUTO_MAP.items()}
    elif type(folded).__module__.startswith("qft_cli.") and _self_contained(inspect.getfile(type(folded))):
        source = inspect.getfile(type(folded))
        name = Path(source).name
        shutil.copyfile(source, directory / name)
        folded.config.auto_map = {"AutoConfig": f"{name[:-3]}.{type(folded.config).__name__}",
                                  "AutoModel": f"{name[:-3]}.{type(folded).__name__}"}
    folded.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def needs_remote_code(directory: Path) -> bool:
    """True when an exported directory carries its own model code (load with
    ``trust_remote_code=True``)."""
    import json

    config = json.loads((Path(directory) / "config.json").read_text())
    return bool(config.get("auto_map"))


def exported_logits(directory: Path, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                    auto_class_name: str = "AutoModelForSequenceClassification") -> torch.Tensor:
    """Logits of an exported model loaded with stock ``transformers`` (``trust_remote_code`` only
    where :func:`needs_remote_code`), for checks; float32, eval mode."""
    import transformers

    auto_class = getattr(transformers, auto_class_name)
    model = auto_class.from_pretrained(str(directory), trust_remote_code=needs_remote_code(directory)).eval()
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
