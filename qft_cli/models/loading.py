"""Loading model weights: one module for every command, with one strict-key check.

* The streaming reader (:class:`TensorStore`, :func:`open_weights`, used by ``norms weights``)
  reads named tensors one at a time from safetensors shards or ``pytorch_model*.bin`` files
  (``torch.load(mmap=True, weights_only=True)``), so peak memory stays near the largest single
  tensor; tiny models (built in memory) are read from their parameters.
* :func:`load_model` (``norms inputs``, ``finetune``, ``train --embedding-from``) loads a whole
  model: ``from_pretrained(output_loading_info=True)``, qft's native DNABERT-2
  (:func:`load_dnabert2`), or a tiny model.
* :func:`check_keys` is the one strict-key check of both: a weight the architecture expects but the
  checkpoint lacks, or a checkpoint tensor the architecture does not use, is a
  :class:`~qft_cli.system.errors.QftInputError` naming the keys, except the cases listed in
  :data:`LOADING_EXCEPTIONS`.

Dispatch is on :attr:`qft_cli.models.names.ModelSource.kind` (``tiny``, ``minilm``, ``hub``, ``local``,
``gguf``). GGUF files (llama.cpp) are streamed through :func:`qft_cli.models.gguf.open_gguf` (one
tensor dequantised to float32 at a time, under Hugging Face parameter names); :func:`load_model`
loads the safetensors copy transformers' ``gguf_file=`` loader converts once
(:func:`qft_cli.models.gguf.converted_dir`).

Every store records the storage type of each tensor (:attr:`TensorStore.quant_types`): the ggml
quantisation type for GGUF (``Q4_1``, ``Q8_0``, ``F16``, ``F32``, ...), else the stored dtype in
safetensors' spelling (``F32``, ``F16``, ``BF16``, ...).
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from qft_cli.models import names as _models
from qft_cli.models.names import ModelSource, build_tiny_model
from qft_cli.runs.files import checkpoint_files, read_json_file
from qft_cli.system.errors import QftInputError, first_line


@dataclass
class TensorStore:
    """Read access to named tensors without loading a whole model.

    Attributes:
        shapes: parameter name -> shape, in checkpoint order.
        config: the model's ``config.json`` as a dict (may be empty).
        read: function name -> tensor (on CPU, stored dtype; float32 for dequantised GGUF tensors).
        quant_types: name -> storage type (see module docstring); a name may be absent.
    """

    shapes: dict[str, tuple[int, ...]]
    config: dict
    read: Callable[[str], torch.Tensor]
    _stack: ExitStack = field(default_factory=ExitStack)
    quant_types: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        self._stack.close()


#: torch dtype -> the dtype names of the safetensors header (F32, BF16, ...), used as ``quant_type``.
_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL"}


def dtype_name(dtype: torch.dtype) -> str:
    """The safetensors spelling of a torch dtype (``torch.float32`` -> ``F32``)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _store_from_module(module: torch.nn.Module) -> TensorStore:
    params = dict(module.named_parameters())
    config = module.config.to_dict() if hasattr(module, "config") else {}
    return TensorStore({n: tuple(p.shape) for n, p in params.items()}, config, lambda n: params[n].detach(),
                       quant_types={n: dtype_name(p.dtype) for n, p in params.items()})


def _store_from_gguf(path: Path) -> TensorStore:
    from qft_cli.models.gguf import open_gguf

    tensors = open_gguf(path)
    stack = ExitStack()
    stack.callback(tensors.close)
    return TensorStore(tensors.shapes, tensors.config, tensors.read, stack, quant_types=tensors.quant_types)


def _damaged(path: Path, err: BaseException) -> QftInputError:
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:  # torch.load(weights_only=True) stopped at an object that is not tensor data
        return QftInputError(f"weights file {path} holds pickled Python objects, not only tensors (it would call "
                             f"{refused.group(1)}; torch.load(weights_only=True) refused it, nothing ran): "
                             "it is not a state dict; use a safetensors file or a checkpoint you trust")
    first = first_line(re.sub(r"\x1b\[[0-9;]*m", "", text))  # without terminal colour codes
    return QftInputError(f"could not read weights file {path} ({type(err).__name__}: {first}): "
                         "the file is damaged or not a checkpoint; download it again")


def _store_from_dir(directory: Path) -> TensorStore:
    from safetensors import safe_open

    config_path = directory / "config.json"
    config = read_json_file(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise QftInputError(f"{config_path} holds a JSON {type(config).__name__}, not a config object: "
                            "download or write it again")
    stack = ExitStack()
    files = checkpoint_files(directory)
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, str] = {}
    where: dict[str, object] = {}
    if not files:
        raise QftInputError(f"no *.safetensors or pytorch_model*.bin weights in {directory}: "
                            "pass a Hugging Face model directory")
    if files[0].suffix == ".safetensors":
        for f in files:
            try:
                handle = stack.enter_context(safe_open(str(f), framework="pt"))
            except Exception as err:  # SafetensorError: truncated download, not a safetensors file
                stack.close()
                raise _damaged(f, err) from None
            for name in handle.keys():
                tensor_slice = handle.get_slice(name)
                shapes[name] = tuple(tensor_slice.get_shape())
                types[name] = tensor_slice.get_dtype()
                where[name] = handle
        return TensorStore(shapes, config, lambda n: where[n].get_tensor(n), stack, quant_types=types)
    for f in files:
        try:
            try:
                state = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:  # legacy (pre-zip) format cannot be memory-mapped: read it whole
                if "mmap" not in str(err):
                    raise
                state = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, not a checkpoint, or pickled objects beyond tensors
            raise _damaged(f, err) from None
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            what = (f"a {type(state).__name__}" if not isinstance(state, dict) else
                    "a dict with entries that are not (name, tensor) pairs")
            raise QftInputError(f"weights file {f} holds {what}, not a state dict (parameter name -> tensor): "
                                "the file is not a model checkpoint; download it again")
        for name, tensor in state.items():
            shapes[name] = tuple(tensor.shape)
            types[name] = dtype_name(tensor.dtype)
            where[name] = state
    return TensorStore(shapes, config, lambda n: where[n][n], stack, quant_types=types)


def open_weights(source: ModelSource) -> TensorStore:
    """Open the weights of ``source`` for streaming.

    Hub models: only ``*.json`` and ``model*.safetensors`` files are fetched (any ``*.safetensors``
    when there is no ``model*`` file, ``pytorch_model*.bin`` when there is no safetensors file);
    see :func:`checkpoint_files` for the files that are read. GGUF files: see
    :func:`qft_cli.models.gguf.open_gguf`.

    Raises:
        QftInputError: the hub is unreachable and the files are not cached; no weight files.
    """
    if source.kind == "tiny":
        return _store_from_module(build_tiny_model(source.location))
    if source.kind == "gguf":
        return _store_from_gguf(Path(source.location))
    if source.kind == "hub":
        directory = _models.hub_snapshot(source, ["*.json", "model*.safetensors"])  # not consolidated.* copies
        if not list(directory.glob("*.safetensors")):
            directory = _models.hub_snapshot(source, ["*.json", "*.safetensors"])
        if not list(directory.glob("*.safetensors")):
            directory = _models.hub_snapshot(source, ["*.json", "pytorch_model*.bin"])
        return _store_from_dir(directory)
    return _store_from_dir(Path(source.location))


# ----------------------------------------------------------------------------- the strict-key rule

#: The only legitimate differences between a checkpoint and the architecture it is loaded into
#: (every other missing, unexpected or wrongly shaped key is a :class:`QftInputError`):
#:
#: * ``tied``: a parameter the checkpoint lacks because it is tied to another one (an output
#:   embedding tied to the input embedding, the model's ``all_tied_weights_keys``); not reported;
#: * ``buffer``: a checkpoint tensor that names a buffer of the model (non-persistent buffers such
#:   as ``embeddings.position_ids`` that older checkpoints saved); not reported;
#: * ``unused``: a checkpoint tensor of a head outside the loaded architecture (the masked-LM head
#:   ``cls.*`` or ``lm_head.*`` when the bare model or a classifier is loaded); dropped, listed in
#:   :attr:`LoadReport.unused`;
#: * ``new``: a parameter of the loaded model's own head (``classifier.*``, ``score.*``, any child
#:   of the task model outside its base model) or of a pooler (``*.pooler.*``), absent from the
#:   checkpoint or of another shape (a head fine-tuned on another number of labels): initialised
#:   from the seed and reported as new (:attr:`LoadReport.new`; ``finetune`` prints a line and
#:   writes ``new_parameters`` to ``run.json``). Where ``allow_new`` is false (a qft checkpoint
#:   that must be complete) it is an error too.
LOADING_EXCEPTIONS = ("tied", "buffer", "unused", "new")


@dataclass
class LoadReport:
    """What :func:`check_keys` let through.

    Attributes:
        new: parameters initialised fresh (the task head, a pooler), sorted.
        unused: checkpoint tensors of another task's head that the model does not use, sorted.
    """

    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _short_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{len(names)} ({shown}{', ...' if len(names) > limit else ''})"


def _base_model(model: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """(prefix, base model): the bare transformer inside a task model, or the model itself."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = getattr(model, prefix, None) if prefix else None
    if isinstance(base, torch.nn.Module) and base is not model:
        return prefix, base
    return prefix, model


def key_status(model: torch.nn.Module, key: str, problem: str) -> str:
    """Where a key that does not match falls under :data:`LOADING_EXCEPTIONS`.

    Args:
        model: the model being loaded (a bare model or a task model with a head).
        key: a parameter/tensor name, with or without the base model's prefix (``bert.``).
        problem: ``missing`` (the model expects it, the checkpoint lacks it), ``unexpected`` (in
            the checkpoint, not in the model) or ``mismatched`` (shapes differ).

    Returns:
        ``tied``, ``buffer``, ``unused``, ``new`` or ``error``.
    """
    prefix, base = _base_model(model)
    parts = key.split(".")
    stripped = parts[1:] if prefix and parts[0] == prefix else parts
    if problem == "missing" and key in (getattr(model, "all_tied_weights_keys", None) or {}):
        return "tied"
    if problem == "unexpected":
        buffers = {n for n, _ in model.named_buffers()} | {n for n, _ in base.named_buffers()}
        if key in buffers or ".".join(stripped) in buffers:
            return "buffer"
    base_children = {n for n, _ in base.named_children()}
    head_children = {n for n, _ in model.named_children()} - {prefix} if base is not model else set()
    in_base = (parts[0] == prefix and base is not model) or (stripped[0] in base_children and parts[0] not in head_children)
    if problem == "unexpected":
        return "error" if in_base or parts[0] in head_children else "unused"
    if "pooler" in stripped or (not in_base and parts[0] in head_children):
        return "new"
    return "error"


def check_keys(model: torch.nn.Module, *, missing, unexpected, mismatched=(), name: str,
               allow_new: bool = True) -> LoadReport:
    """The one strict-key check of every loader (:data:`LOADING_EXCEPTIONS`).

    Args:
        missing: parameter names the model expects and the checkpoint lacks.
        unexpected: checkpoint tensor names the model does not have.
        mismatched: names (or ``(name, shape_in_checkpoint, shape_in_model)`` tuples, as
            transformers' ``mismatched_keys``) whose shapes differ.
        name: the model as the user named it (for the message).
        allow_new: whether a missing head/pooler is new (``True``) or an error.

    Returns:
        :class:`LoadReport` of the new and unused keys.

    Raises:
        QftInputError: any other key, naming the first few of each kind and their count.
    """
    report = LoadReport()
    errors: dict[str, list[str]] = {"missing": [], "unexpected": [], "mismatched": []}
    for problem, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        for key in keys:
            label = key
            if isinstance(key, (tuple, list)):
                key, label = key[0], f"{key[0]} {tuple(key[1])} != {tuple(key[2])}"
            status = key_status(model, key, problem)
            if status == "new" and allow_new:
                report.new.append(key)
            elif status == "unused":
                report.unused.append(key)
            elif status in ("error", "new"):
                errors[problem].append(label)
    if any(errors.values()):
        parts = [f"{what} {_short_list(sorted(keys))}" for what, keys in
                 (("missing from the checkpoint:", errors["missing"]),
                  ("unexpected in the checkpoint:", errors["unexpected"]),
                  ("of another shape:", errors["mismatched"])) if keys]
        raise QftInputError(f"checkpoint of {name} does not match its architecture {type(model).__name__}: "
                            + "; ".join(parts) + ": fix or re-download the checkpoint (a renamed or missing "
                            "weight would be initialised at random)")
    report.new.sort()
    report.unused.sort()
    return report


# ----------------------------------------------------------------------------- whole models

def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``directory`` (safetensors shards or ``pytorch_model*.bin``
    read with ``weights_only=True``), on CPU, through the reader of :func:`open_weights`.

    Raises:
        QftInputError: no weight files; a damaged file.
    """
    store = _store_from_dir(Path(directory))
    try:
        return {name: store.read(name) for name in store.shapes}
    finally:
        store.close()


def check_checkpoint(directory: Path) -> None:
    """Check the files of a local checkpoint before ``from_pretrained`` reads them: ``config.json``
    is a JSON object, every weight file of :func:`checkpoint_files` opens (safetensors header and
    size; ``.bin`` through ``torch.load(mmap=True, weights_only=True)``: its payload never runs) and a
    ``.bin`` holds a state dict. No tensor data is read beyond the headers.

    Raises:
        QftInputError: one line naming the damaged file and what is wrong with it.
    """
    _store_from_dir(Path(directory)).close()


def model_directory(source: ModelSource, allow_patterns: list[str]) -> Path:
    """The directory of a local/minilm model, or the hub files matching ``allow_patterns``."""
    if source.kind == "hub":
        return Path(_models.hub_snapshot(source, allow_patterns))
    return Path(source.location)


def attach_report(model: torch.nn.Module, report: LoadReport) -> torch.nn.Module:
    """Keep ``report`` on ``model`` as ``model.qft_load_report`` (read with :func:`load_report`)."""
    object.__setattr__(model, "qft_load_report", report)
    return model


def load_report(model: torch.nn.Module) -> LoadReport:
    """The :class:`LoadReport` of a model loaded by :func:`load_model` (empty for others)."""
    return getattr(model, "qft_load_report", None) or LoadReport()


def load_dnabert2(path_or_hub_id, num_labels: Optional[int] = None, task: str = "sequence", *,
                  dtype: torch.dtype = torch.float32, seed: int = 0, name: Optional[str] = None,
                  **config_overrides):
    """Load a DNABERT-2 checkpoint into qft's native classes (no remote code).

    Args:
        path_or_hub_id: a directory with ``config.json`` (the published one, or a qft save) and
            ``model.safetensors`` or ``pytorch_model.bin`` (MaskedLM or SequenceClassification key
            names), a hub id such as :data:`qft_cli.models.dnabert2.HUB_ID`, or the resolved
            :class:`~qft_cli.models.names.ModelSource` of either (``local`` or ``hub``).
        num_labels: size of the classification head; ``None`` keeps the checkpoint's.
        task: ``sequence``, ``token`` or ``base`` (encoder + pooler, no head).
        dtype: parameter dtype.
        seed: seed of the initialisation of the new parameters (pooler, classifier).
        name: the model as the user named it (for messages).
        config_overrides: config attributes to set (e.g. ``hidden_dropout_prob=0.0``).

    Returns:
        The model in eval mode, with its :class:`LoadReport` (:func:`load_report`).

    Raises:
        QftInputError: not a DNABERT-2 config; no weights; any key outside
            :data:`LOADING_EXCEPTIONS` (:func:`check_keys`); hub unreachable.
    """
    from qft_cli.models import dnabert2

    if task not in dnabert2.TASKS:
        raise QftInputError(f"unknown DNABERT-2 task '{task}': use one of {', '.join(dnabert2.TASKS)}")
    if isinstance(path_or_hub_id, ModelSource):
        source = path_or_hub_id
    else:
        path = Path(str(path_or_hub_id)).expanduser()
        source = (ModelSource(str(path_or_hub_id), "local", str(path)) if path.is_dir()
                  else ModelSource(str(path_or_hub_id), "hub", str(path_or_hub_id)))
    directory = model_directory(source, ["config.json", "*.safetensors", "pytorch_model.bin"])
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise QftInputError(f"{directory} has no config.json: pass a DNABERT-2 model directory")
    raw = read_json_file(config_path)
    if not isinstance(raw, dict) or not dnabert2.is_dnabert2_config(raw):
        raise QftInputError(f"{directory} is not a DNABERT-2 model (config.json has neither model_type "
                            f"'{dnabert2.MODEL_TYPE}' nor DNABERT-2's auto_map/alibi_starting_size)")
    overrides = dict(config_overrides)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    config = dnabert2.config_from_published(raw, **overrides)
    state_dict = dnabert2.map_names(read_state_dict(directory), task)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = dnabert2.TASKS[task](config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state_dict.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    report = check_keys(model, missing=missing, unexpected=unexpected, mismatched=mismatched,
                        name=name or source.name)
    # a classifier of another size (fine-tuned on other labels) is new, not loaded
    loadable = {k: v for k, v in state_dict.items() if k in expected and tuple(v.shape) == tuple(expected[k].shape)}
    model.load_state_dict(loadable, strict=False)
    return attach_report(model.to(dtype=dtype).eval(), report)


def load_model(source: ModelSource, *, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None,
               device_map: Optional[str] = None, trust_remote_code: bool = False, auto_class=None,
               seed: Optional[int] = None, allow_new: bool = True, **kwargs):
    """Load the model of ``source`` in eval mode, with the strict-key check (:func:`check_keys`).

    Args:
        dtype: parameter dtype.
        device: where to put it (ignored with ``device_map``).
        device_map: ``"auto"`` shards a large model across available GPUs/CPU (accelerate).
        trust_remote_code: run the model repository's own code (only when the user asks).
        auto_class: transformers Auto class (default ``AutoModel``: the bare model, no head).
        seed: seed of the new parameters (a classification head); ``None`` leaves the global RNG.
        allow_new: whether missing head/pooler parameters are new (see :data:`LOADING_EXCEPTIONS`).
        kwargs: passed to ``from_pretrained`` / set on the tiny config (e.g. ``num_labels``).

    Returns:
        The model; :func:`load_report` gives its new and unused parameters.

    Raises:
        QftInputError: hub not reachable, gated or unknown model; a checkpoint that does not match
            its architecture; remote code needing a package that is not installed.
    """
    from transformers import AutoModel

    from qft_cli.models.dnabert2 import is_dnabert2_source, task_of_auto_class

    auto_class = auto_class or AutoModel
    if source.kind in ("local", "minilm"):
        check_checkpoint(Path(source.location))
    if source.kind == "tiny":
        model = build_tiny_model(source.location, auto_class, **kwargs).to(dtype=dtype)
    elif not trust_remote_code and is_dnabert2_source(source.location, source.kind):
        options = {k: v for k, v in kwargs.items() if k not in ("ignore_mismatched_sizes",)}
        num_labels = options.pop("num_labels", None)
        model = load_dnabert2(source, num_labels=num_labels, task=task_of_auto_class(auto_class),
                              dtype=dtype, seed=0 if seed is None else seed, name=source.name, **options)
    else:
        load_kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True, **kwargs)
        if device_map:
            load_kwargs["device_map"] = device_map
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            location = source.location
            if source.kind == "gguf":  # transformers' gguf_file= conversion, cached (qft_cli.models.gguf)
                from qft_cli.models.gguf import converted_dir

                location = str(converted_dir(Path(source.location)))
            model, info = _models._hub_call(source, auto_class.from_pretrained, location, **load_kwargs)
        report = check_keys(model, missing=info.get("missing_keys", ()), unexpected=info.get("unexpected_keys", ()),
                            mismatched=info.get("mismatched_keys", ()), name=source.name, allow_new=allow_new)
        attach_report(model, report)
    if device is not None and not device_map:
        model = model.to(device)
    return model.eval()
