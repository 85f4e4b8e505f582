"""Where the attention and FFN matrices of a transformer live, and how they are oriented.

This module is the one place that decides the conventions of qft:

* **Orientation.** Every weight matrix ``W`` is reported with shape ``(d_out, d_in)``: the map
  ``x -> W x`` of ``nn.Linear``. GPT-2 and OpenAI-GPT store their projections in ``Conv1D``
  modules with the transpose ``(d_in, d_out)``; those are transposed here and nowhere else.
  The token embedding keeps ``nn.Embedding``'s shape ``(vocab_size, d)``: one row per token.
* **Layer numbering.** ``layer = 0`` is the embedding (for hidden states: the embedding output),
  ``layer = l`` (1-indexed) is transformer block ``l`` (the module at index ``l - 1``). The
  hidden-state matrix ``S_l`` is the output of the block whose weights carry ``layer = l``.
* **Matrix names.** ``q``, ``k``, ``v``, ``o`` (attention output), ``ffn_up`` (a.k.a. fc_in,
  intermediate, c_fc, fc1), ``ffn_gate`` (gated FFNs), ``ffn_down`` (fc_out, output, fc2), and
  ``cross_q``/``cross_k``/``cross_v``/``cross_o`` for encoder-decoder cross-attention, and
  ``embedding``. ``part`` is ``encoder``/``decoder`` for encoder-decoder models, else ``""``.
* **Fused projections** are split into their blocks: GPT-2 ``c_attn`` (Conv1D, split along its
  output dimension into q, k, v; in cross-attention it holds k, v and q is ``q_attn``), DNABERT-2 ``Wqkv`` and ``nn.MultiheadAttention``'s
  ``in_proj_weight`` (Linear, three equal chunks of rows), Phi-3 style ``qkv_proj`` (chunks of
  sizes ``n_heads*head_dim, n_kv*head_dim, n_kv*head_dim``: grouped-query attention keeps its real
  shapes), GPT-NeoX ``query_key_value`` (rows interleaved per head), and DNABERT-2's gated FFN
  ``gated_layers`` (first half = gate, second half = up).

Classification works on parameter *names* (and shapes), so the same rules serve a model in
memory and tensors streamed one at a time from safetensors shards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block)\.(\d+)\.(.+)$")

# (regex on the part after "<container>.<index>.", matrix name, transposed Conv1D?, fused split)
_RULES: list[tuple[re.Pattern, str, bool, Optional[str]]] = [
    (re.compile(r"^attn\.c_attn\.weight$"), "qkv", True, "thirds"),
    (re.compile(r"^crossattention\.c_attn\.weight$"), "kv", True, "kv_halves"),  # q is q_attn
    (re.compile(r"^crossattention\.q_attn\.weight$"), "cross_q", True, None),
    (re.compile(r"^crossattention\.c_proj\.weight$"), "cross_o", True, None),
    (re.compile(r"^attn\.c_proj\.weight$"), "o", True, None),
    (re.compile(r"^mlp\.c_fc\.weight$"), "ffn_up", True, None),
    (re.compile(r"^mlp\.c_proj\.weight$"), "ffn_down", True, None),
    (re.compile(r"^attention\.self\.Wqkv\.weight$"), "qkv", False, "thirds"),
    (re.compile(r"(?:^|\.)in_proj_weight$"), "qkv", False, "thirds"),
    (re.compile(r"(?:^|\.)qkv_proj\.weight$"), "qkv", False, "gqa"),
    (re.compile(r"(?:^|\.)query_key_value\.weight$"), "qkv", False, "neox"),
    (re.compile(r"^mlp\.gated_layers\.weight$"), "gate_up", False, "halves"),
    (re.compile(r"^mlp\.wo\.weight$"), "ffn_down", False, None),
    (re.compile(r"^encoder_attn\.q_proj\.weight$"), "cross_q", False, None),
    (re.compile(r"^encoder_attn\.k_proj\.weight$"), "cross_k", False, None),
    (re.compile(r"^encoder_attn\.v_proj\.weight$"), "cross_v", False, None),
    (re.compile(r"^encoder_attn\.out_proj\.weight$"), "cross_o", False, None),
    (re.compile(r"(?:^|\.)(?:query|q_proj|q_lin)\.weight$"), "q", False, None),
    (re.compile(r"(?:^|\.)(?:key|k_proj|k_lin)\.weight$"), "k", False, None),
    (re.compile(r"(?:^|\.)(?:value|v_proj|v_lin)\.weight$"), "v", False, None),
    (re.compile(r"^attention\.output\.dense\.weight$"), "o", False, None),
    (re.compile(r"(?:^|\.)(?:o_proj|out_proj|out_lin)\.weight$"), "o", False, None),
    (re.compile(r"^(?:attention|self_attn|attn)\.dense\.weight$"), "o", False, None),
    (re.compile(r"(?:^|\.)(?:gate_proj)\.weight$"), "ffn_gate", False, None),
    (re.compile(r"^intermediate\.dense\.weight$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)(?:up_proj|fc1|lin1|linear1|fc_in|dense_h_to_4h)\.weight$"), "ffn_up", False, None),
    (re.compile(r"^output\.dense\.weight$"), "ffn_down", False, None),
    (re.compile(r"(?:^|\.)(?:down_proj|fc2|lin2|linear2|fc_out|dense_4h_to_h)\.weight$"), "ffn_down", False, None),
]

_EMBEDDING_RE = re.compile(
    r"(?:^|\.)(?:word_embeddings|wte|embed_tokens|tokens_embed|shared|embed_in|token_embedding)\.weight$")

ATTENTION_MATRICES = ("q", "k", "v", "o", "cross_q", "cross_k", "cross_v", "cross_o")
FFN_MATRICES = ("ffn_up", "ffn_gate", "ffn_down")
MATRIX_ORDER = ("embedding", "q", "k", "v", "o", "cross_q", "cross_k", "cross_v", "cross_o",
                "ffn_gate", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class MatrixSpec:
    """One logical weight matrix inside a model's parameters.

    Attributes:
        parameter: full parameter name in the state dict (e.g. ``h.0.attn.c_attn.weight``).
        part: ``encoder``/``decoder`` for encoder-decoder models, else ``""``.
        layer: 0 for the embedding, ``l`` (1-indexed) for block ``l``.
        matrix: name from :data:`MATRIX_ORDER`.
        transposed: the parameter is stored ``(d_in, d_out)`` (``Conv1D``).
        rows: for a block of a fused parameter, the row indices (of the oriented ``(d_out, d_in)``
            matrix) that belong to this block; ``None`` for a whole parameter.
    """

    parameter: str
    part: str
    layer: int
    matrix: str
    transposed: bool = False
    rows: Optional[tuple[int, int, int]] = None  # (start, stop, step) or None

    @property
    def module_path(self) -> str:
        """Dotted path of the module that owns the parameter."""
        return self.parameter.rsplit(".", 1)[0]

    @property
    def role(self) -> str:
        """``attention``, ``ffn`` or ``embedding``."""
        if self.matrix in ATTENTION_MATRICES:
            return "attention"
        if self.matrix in FFN_MATRICES:
            return "ffn"
        return "embedding"

    def row_index(self, d_out: int) -> torch.Tensor | slice:
        """Rows of the oriented matrix (``d_out`` rows in all) that form this block."""
        if self.rows is None:
            return slice(None)
        start, stop, step = self.rows
        if step == 1:
            return slice(start, stop)
        return _neox_rows(start, stop, step, d_out)

    def extract(self, tensor: torch.Tensor) -> torch.Tensor:
        """The oriented ``(d_out, d_in)`` matrix of this spec from the raw stored parameter."""
        w = tensor.mT if self.transposed else tensor
        return w[self.row_index(w.shape[0])]


def _neox_rows(part: int, num_heads: int, head_dim: int, d_out: int) -> torch.Tensor:
    # GPT-NeoX query_key_value rows are laid out (num_heads, 3, head_dim).
    idx = torch.arange(d_out).view(num_heads, 3, head_dim)
    return idx[:, part, :].reshape(-1)


def _config_get(config: Any, *names: str, default=None):
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def _split_fused(name: str, part: str, layer: int, base: str, transposed: bool, split: str,
                 d_out: int, config: Any) -> list[MatrixSpec]:
    if split == "halves":
        half = d_out // 2
        return [MatrixSpec(name, part, layer, "ffn_gate", transposed, (0, half, 1)),
                MatrixSpec(name, part, layer, "ffn_up", transposed, (half, d_out, 1))]
    if split == "kv_halves":  # GPT-2 cross-attention c_attn: k | v (q has its own q_attn)
        half = d_out // 2
        return [MatrixSpec(name, part, layer, "cross_k", transposed, (0, half, 1)),
                MatrixSpec(name, part, layer, "cross_v", transposed, (half, d_out, 1))]
    prefix = "cross_" if base == "qkv" and "crossattention" in name else ""
    parts = [prefix + m for m in ("q", "k", "v")]
    if split == "thirds":
        if d_out % 3:
            raise ValueError(f"fused parameter {name} has {d_out} output rows, not divisible by 3")
        size = d_out // 3
        return [MatrixSpec(name, part, layer, p, transposed, (i * size, (i + 1) * size, 1))
                for i, p in enumerate(parts)]
    num_heads = _config_get(config, "num_attention_heads", "n_head")
    if split == "gqa":
        num_kv = _config_get(config, "num_key_value_heads", default=num_heads)
        head_dim = _config_get(config, "head_dim", default=None) or d_out // (num_heads + 2 * num_kv)
        q_size, kv_size = num_heads * head_dim, num_kv * head_dim
        bounds = [(0, q_size), (q_size, q_size + kv_size), (q_size + kv_size, q_size + 2 * kv_size)]
        return [MatrixSpec(name, part, layer, p, transposed, (a, b, 1)) for p, (a, b) in zip(parts, bounds)]
    if split == "neox":
        head_dim = d_out // (3 * num_heads)
        return [MatrixSpec(name, part, layer, p, transposed, (i, num_heads, head_dim)) for i, p in enumerate(parts)]
    raise ValueError(split)


def classify(names_and_shapes: Iterable[tuple[str, tuple[int, ...]]], config: Any = None) -> list[MatrixSpec]:
    """Find the embedding and every attention/FFN matrix among parameter names.

    Args:
        names_and_shapes: ``(parameter name, shape)`` pairs, e.g. from ``model.named_parameters()``
            or from the keys of safetensors shards.
        config: the model config (object or dict); needed only for Phi-3/NeoX fused QKV splits.

    Returns:
        Specs sorted by (part, layer, matrix order). The token embedding appears once (tied or
        shared copies are skipped); LM heads are never listed.
    """
    specs: list[MatrixSpec] = []
    embedding_seen = False
    for name, shape in names_and_shapes:
        if len(shape) != 2:
            continue
        if not embedding_seen and _EMBEDDING_RE.search(name) and "position" not in name:
            specs.append(MatrixSpec(name, "", 0, "embedding"))
            embedding_seen = True
            continue
        m = _LAYER_RE.search(name)
        if not m:
            continue
        layer = int(m.group(1)) + 1
        rest = m.group(2)
        part = "decoder" if re.search(r"(?:^|\.)decoder\.", name) else (
            "encoder" if re.search(r"(?:^|\.)encoder\.", name) else "")
        for pattern, matrix, transposed, split in _RULES:
            if pattern.search(rest):
                d_out = shape[1] if transposed else shape[0]
                if split:
                    specs.extend(_split_fused(name, part, layer, matrix, transposed, split, d_out, config))
                else:
                    specs.append(MatrixSpec(name, part, layer, matrix, transposed))
                break
    parts = {s.part for s in specs if s.matrix != "embedding"}
    if "decoder" not in parts:  # encoder-only or decoder-only: no part label
        specs = [MatrixSpec(s.parameter, "", s.layer, s.matrix, s.transposed, s.rows) for s in specs]
    order = {m: i for i, m in enumerate(MATRIX_ORDER)}
    specs.sort(key=lambda s: (s.part != "" and s.part != "encoder", s.part, s.layer, order.get(s.matrix, 99)))
    return specs


def classify_model(model: torch.nn.Module) -> list[MatrixSpec]:
    """:func:`classify` for a model in memory (names from ``named_parameters``, so tied copies are
    seen once)."""
    return classify(((n, tuple(p.shape)) for n, p in model.named_parameters()), getattr(model, "config", None))


def module_types(model: torch.nn.Module, limit: int = 12) -> list[str]:
    """Distinct module class names in ``model`` (for error messages), at most ``limit``."""
    seen: list[str] = []
    for module in model.modules():
        name = type(module).__name__
        if name not in seen:
            seen.append(name)
    return seen[:limit]


def head_dim(config: Any) -> Optional[int]:
    """Per-head dimension from a config (``head_dim``, else hidden size / number of heads), or None."""
    explicit = _config_get(config, "head_dim", "attention_head_size")
    if explicit:
        return int(explicit)
    hidden = _config_get(config, "hidden_size", "n_embd", "d_model", "dim")
    heads = _config_get(config, "num_attention_heads", "n_head", "encoder_attention_heads", "n_heads")
    if hidden and heads and hidden % heads == 0:
        return int(hidden // heads)
    return None


def split_heads(matrix_name: str, w: torch.Tensor, dim: Optional[int]) -> Optional[torch.Tensor]:
    """Per-head blocks of an oriented attention matrix, stacked as (heads, rows, cols).

    q, k, v (and cross_*): head h owns rows ``h*dim:(h+1)*dim`` of ``(n_heads*dim, d)`` (for GQA,
    k and v have ``n_kv_heads`` blocks). o: head h owns *columns* ``h*dim:(h+1)*dim`` of
    ``(d, n_heads*dim)``. Returns None for other matrices or when ``dim`` does not divide the shape.
    """
    if dim is None or matrix_name not in ATTENTION_MATRICES:
        return None
    if matrix_name.endswith("o"):
        if w.shape[1] % dim:
            return None
        return w.reshape(w.shape[0], w.shape[1] // dim, dim).permute(1, 0, 2)
    if w.shape[0] % dim:
        return None
    return w.reshape(w.shape[0] // dim, dim, w.shape[1])
