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
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block|blk)\.(\d+)\.(.+)$")
#: ALBERT: one layer (or a few) in ``albert_layer_groups.G.albert_layers.I``, run by every block
_ALBERT_RE = re.compile(r"(?:^|\.)albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.(.+)$")
#: which expert a block tensor belongs to: ``experts.N.`` (routed), ``shared_expert(s).`` or GGUF ``_shexp``
_EXPERT_RE = re.compile(r"(?:^|\.)experts\.(\d+)\.")
_SHARED_RE = re.compile(r"(?:^|\.)shared_experts?(?:\.|_gate)|_shexp\.")

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
    (re.compile(r"(?:^|\.)query_key_value\.weight$"), "qkv", False, "neox"),  # Falcon: see _split_fused
    (re.compile(r"^mlp\.gated_layers\.weight$"), "gate_up", False, "halves"),
    # mixture of experts: 3-D expert tensors (transformers >= 5 in memory; GGUF ``*_exps``), one per expert
    (re.compile(r"(?:^|\.)experts\.gate_up_proj(?:\.weight)?$"), "gate_up", False, "halves"),
    (re.compile(r"(?:^|\.)experts\.down_proj(?:\.weight)?$"), "ffn_down", False, None),
    (re.compile(r"(?:^|\.)experts\.up_proj(?:\.weight)?$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)ffn_gate_exps\.weight$"), "ffn_gate", False, None),
    (re.compile(r"(?:^|\.)ffn_up_exps\.weight$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)ffn_down_exps\.weight$"), "ffn_down", False, None),
    (re.compile(r"(?:^|\.)ffn_gate_shexp\.weight$"), "ffn_gate", False, None),
    (re.compile(r"(?:^|\.)ffn_up_shexp\.weight$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)ffn_down_shexp\.weight$"), "ffn_down", False, None),
    (re.compile(r"(?:^|\.)ffn_gate_inp(?:_shexp)?\.weight$"), "router", False, None),
    (re.compile(r"(?:^|\.)(?:mlp|block_sparse_moe|moe|feed_forward)\.(?:gate|router)\.weight$"), "router", False, None),
    (re.compile(r"(?:^|\.)shared_expert_gate\.weight$"), "router", False, None),
    (re.compile(r"(?:^|\.)gate_up_proj\.weight$"), "gate_up", False, "halves"),  # Phi-3: gate | up
    (re.compile(r"(?:^|\.)w1\.weight$"), "ffn_gate", False, None),  # Mixtral experts (Llama's w1/w3/w2)
    (re.compile(r"(?:^|\.)w3\.weight$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)w2\.weight$"), "ffn_down", False, None),
    # DeepSeek multi-head latent attention: the stored low-rank factors (effective q, k, v: _mla_specs)
    (re.compile(r"(?:^|\.)q_a_proj\.weight$"), "q_a", False, None),
    (re.compile(r"(?:^|\.)q_b_proj\.weight$"), "q_b", False, None),
    (re.compile(r"(?:^|\.)kv_a_proj_with_mqa\.weight$"), "kv_a", False, None),
    (re.compile(r"(?:^|\.)kv_b_proj\.weight$"), "kv_b", False, None),
    # T5 (v1.0, v1.1, Flan-T5, mT5): SelfAttention, EncDecAttention, DenseReluDense wi | wi_0, wi_1, wo
    *[(re.compile(rf"(?:^|\.)SelfAttention\.{m}\.weight$"), m, False, None) for m in "qkvo"],
    *[(re.compile(rf"(?:^|\.)EncDecAttention\.{m}\.weight$"), f"cross_{m}", False, None) for m in "qkvo"],
    (re.compile(r"(?:^|\.)DenseReluDense\.(?:wi|wi_1)\.weight$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)DenseReluDense\.wi_0\.weight$"), "ffn_gate", False, None),
    (re.compile(r"(?:^|\.)DenseReluDense\.wo\.weight$"), "ffn_down", False, None),
    (re.compile(r"^mlp\.wo\.weight$"), "ffn_down", False, None),
    (re.compile(r"^encoder_attn\.q_proj\.weight$"), "cross_q", False, None),
    (re.compile(r"^encoder_attn\.k_proj\.weight$"), "cross_k", False, None),
    (re.compile(r"^encoder_attn\.v_proj\.weight$"), "cross_v", False, None),
    (re.compile(r"^encoder_attn\.out_proj\.weight$"), "cross_o", False, None),
    (re.compile(r"(?:^|\.)(?:query|q_proj|q_lin|query_proj)\.weight$"), "q", False, None),
    (re.compile(r"(?:^|\.)(?:key|k_proj|k_lin|key_proj)\.weight$"), "k", False, None),
    (re.compile(r"(?:^|\.)(?:value|v_proj|v_lin|value_proj)\.weight$"), "v", False, None),
    (re.compile(r"^attention\.output\.dense\.weight$"), "o", False, None),
    (re.compile(r"(?:^|\.)(?:o_proj|out_proj|out_lin)\.weight$"), "o", False, None),
    (re.compile(r"^(?:attention|self_attn|attn|self_attention)\.dense\.weight$"), "o", False, None),
    (re.compile(r"(?:^|\.)(?:gate_proj)\.weight$"), "ffn_gate", False, None),
    (re.compile(r"^intermediate\.dense\.weight$"), "ffn_up", False, None),
    (re.compile(r"(?:^|\.)(?:up_proj|fc1|lin1|linear1|fc_in|dense_h_to_4h)\.weight$"), "ffn_up", False, None),
    (re.compile(r"^ffn\.weight$"), "ffn_up", False, None),  # ALBERT
    (re.compile(r"^ffn_output\.weight$"), "ffn_down", False, None),
    (re.compile(r"^output\.dense\.weight$"), "ffn_down", False, None),
    (re.compile(r"(?:^|\.)(?:down_proj|fc2|lin2|linear2|fc_out|dense_4h_to_h)\.weight$"), "ffn_down", False, None),
]

#: 2-D tensors inside a block that qft knows and does not measure (the one list; docs/conventions.md):
#: T5's relative-position bias table (``relative_attention_bias``, buckets x heads: an additive
#: logit bias, not a linear map of the hidden states).
BLOCK_EXCEPTIONS_RE = re.compile(r"(?:^|\.)relative_attention_bias\.weight$")

#: Projections of the embedding outside the blocks (ELECTRA ``embeddings_project``, ALBERT
#: ``embedding_hidden_mapping_in``: embedding size -> hidden size), measured at layer 0.
_EMBEDDING_PROJECTION_RE = re.compile(r"(?:^|\.)(?:embeddings_project|embedding_hidden_mapping_in)\.weight$")

_EMBEDDING_RE = re.compile(
    r"(?:^|\.)(?:word_embeddings|wte|embed_tokens|tokens_embed|shared|embed_in|token_embedding)\.weight$")

ATTENTION_MATRICES = ("q", "k", "v", "o", "cross_q", "cross_k", "cross_v", "cross_o")
#: the stored low-rank factors of DeepSeek's multi-head latent attention (role ``attention``)
LATENT_MATRICES = ("q_a", "q_b", "kv_a", "kv_b")
FFN_MATRICES = ("ffn_up", "ffn_gate", "ffn_down", "router")
MATRIX_ORDER = ("embedding", "embedding_projection", "q_a", "q_b", "kv_a", "kv_b", "q", "k", "v", "o",
                "cross_q", "cross_k", "cross_v", "cross_o", "router", "ffn_gate", "ffn_up", "ffn_down")
#: ``expert`` of a shared expert (Qwen2-MoE ``shared_expert``, DeepSeek ``shared_experts``); routed
#: experts are ``"0"``, ``"1"``, ...; dense matrices ``""``
SHARED_EXPERT = "shared"


@dataclass(frozen=True)
class MatrixSpec:
    """One logical weight matrix inside a model's parameters.

    Attributes:
        parameter: full parameter name in the state dict (e.g. ``h.0.attn.c_attn.weight``); for a
            composite (``factors``) the factors' names joined by `` @ ``.
        part: ``encoder``/``decoder`` for encoder-decoder models, else ``""``.
        layer: 0 for the embedding, ``l`` (1-indexed) for block ``l``.
        matrix: name from :data:`MATRIX_ORDER`.
        transposed: the parameter is stored ``(d_in, d_out)`` (``Conv1D``).
        rows: for a block of a fused parameter, the row indices (of the oriented ``(d_out, d_in)``
            matrix) that belong to this block: ``(start, stop, 1)``, GPT-NeoX ``(part, heads,
            head_dim)`` or Falcon ``("falcon", part, kv_heads, queries_per_kv, head_dim)``;
            ``None`` for a whole parameter.
        expert: ``""`` for a dense matrix, ``"0"``, ``"1"``, ... for a routed expert of a mixture of
            experts, :data:`SHARED_EXPERT` for a shared expert.
        index: for a 3-D parameter (experts stacked as ``[num_experts, d_out, d_in]``), the expert
            index along its first dimension; ``None`` for a 2-D parameter.
        factors: for an effective matrix composed of stored ones (DeepSeek latent attention's
            q, k, v: :func:`latent_effective`), the parameters it is formed from; ``()`` otherwise.
    """

    parameter: str
    part: str
    layer: int
    matrix: str
    transposed: bool = False
    rows: Optional[tuple] = None
    expert: str = ""
    index: Optional[int] = None
    factors: tuple[str, ...] = ()

    @property
    def module_path(self) -> str:
        """Dotted path of the module that owns the parameter."""
        return self.parameter.rsplit(".", 1)[0]

    @property
    def role(self) -> str:
        """``attention``, ``ffn`` or ``embedding``."""
        if self.matrix in ATTENTION_MATRICES or self.matrix in LATENT_MATRICES:
            return "attention"
        if self.matrix in FFN_MATRICES:
            return "ffn"
        return "embedding"

    def row_index(self, d_out: int) -> torch.Tensor | slice:
        """Rows of the oriented matrix (``d_out`` rows in all) that form this block."""
        if self.rows is None:
            return slice(None)
        if self.rows[0] == "falcon":
            return _falcon_rows(*self.rows[1:], d_out)
        start, stop, step = self.rows
        if step == 1:
            return slice(start, stop)
        return _neox_rows(start, stop, step, d_out)

    def extract(self, tensor: torch.Tensor) -> torch.Tensor:
        """The oriented ``(d_out, d_in)`` matrix of this spec from the raw stored parameter (for a
        3-D expert tensor, the whole ``[num_experts, ...]`` tensor)."""
        if self.index is not None:
            tensor = tensor[self.index]
        w = tensor.mT if self.transposed else tensor
        return w[self.row_index(w.shape[0])]


def _neox_rows(part: int, num_heads: int, head_dim: int, d_out: int) -> torch.Tensor:
    # GPT-NeoX (and BLOOM, Falcon without new_decoder_architecture) query_key_value rows are laid
    # out (num_heads, 3, head_dim).
    idx = torch.arange(d_out).view(num_heads, 3, head_dim)
    return idx[:, part, :].reshape(-1)


def _falcon_rows(part: int, kv_heads: int, per_kv: int, head_dim: int, d_out: int) -> torch.Tensor:
    # Falcon new_decoder_architecture (FalconAttention._split_heads): rows (kv_heads, per_kv + 2,
    # head_dim): per key/value group its per_kv query heads, then its key head, then its value head.
    idx = torch.arange(d_out).view(kv_heads, per_kv + 2, head_dim)
    if part == 0:
        return idx[:, :per_kv].reshape(-1)
    return idx[:, per_kv + part - 1].reshape(-1)


def _config_get(config: Any, *names: str, default=None):
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return default


def _falcon_kv_heads(config: Any, num_heads: int) -> int:
    if _config_get(config, "new_decoder_architecture"):
        return int(_config_get(config, "num_kv_heads", default=num_heads))
    return 1 if _config_get(config, "multi_query") else num_heads


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
    if split == "neox" and _config_get(config, "model_type") == "falcon":
        hd = d_out // (num_heads + 2 * _falcon_kv_heads(config, num_heads))
        if _config_get(config, "new_decoder_architecture"):
            kv = _falcon_kv_heads(config, num_heads)
            return [MatrixSpec(name, part, layer, p, transposed, ("falcon", i, kv, num_heads // kv, hd))
                    for i, p in enumerate(parts)]
        if _config_get(config, "multi_query"):  # q of all heads, then one k and one v head
            q = num_heads * hd
            bounds = [(0, q), (q, q + hd), (q + hd, q + 2 * hd)]
            return [MatrixSpec(name, part, layer, p, transposed, (a, b, 1)) for p, (a, b) in zip(parts, bounds)]
    if split == "neox":
        head_dim = d_out // (3 * num_heads)
        return [MatrixSpec(name, part, layer, p, transposed, (i, num_heads, head_dim)) for i, p in enumerate(parts)]
    raise ValueError(split)


def _expert_of(rest: str) -> str:
    m = _EXPERT_RE.search(rest)
    if m:
        return m.group(1)
    return SHARED_EXPERT if _SHARED_RE.search(rest) else ""


def _expert_order(expert: str) -> tuple[int, int]:
    if expert == "":
        return (0, 0)
    if expert == SHARED_EXPERT:
        return (1, 0)
    return (2, int(expert))


def _block_of(name: str) -> Optional[tuple[int, str]]:
    """(layer, rest of the name) of a tensor inside a block, or None."""
    m = _ALBERT_RE.search(name)
    if m:  # ALBERT: group G (one layer per group in every released ALBERT) = layer G + 1
        return int(m.group(1)) + int(m.group(2)) + 1, m.group(3)
    m = _LAYER_RE.search(name)
    if m:
        return int(m.group(1)) + 1, m.group(2)
    return None


def in_block(name: str) -> bool:
    """Whether ``name`` is a tensor inside a transformer block (``layers.N.``, ``h.N.``, ALBERT's
    layer groups, GGUF ``blk.N.``)."""
    return _block_of(name) is not None


def _latent_specs(specs: list[MatrixSpec], names: set[str]) -> list[MatrixSpec]:
    # DeepSeek multi-head latent attention: the effective q (when q is low rank), k and v of each
    # block that stores kv_a_proj_with_mqa and kv_b_proj
    by_block: dict[tuple[str, int], dict[str, MatrixSpec]] = defaultdict(dict)
    for spec in specs:
        if spec.matrix in LATENT_MATRICES:
            by_block[(spec.part, spec.layer)][spec.matrix] = spec
    out = []
    for (part, layer), found in by_block.items():

        def gain(spec: MatrixSpec, norm: str) -> tuple[str, ...]:
            g = spec.parameter.rsplit(".", 2)[0] + f".{norm}.weight"
            return (g,) if g in names else ()

        if "q_a" in found and "q_b" in found:
            f = (found["q_b"].parameter, *gain(found["q_a"], "q_a_layernorm"), found["q_a"].parameter)
            out.append(MatrixSpec(" @ ".join(f), part, layer, "q", factors=f))
        if "kv_a" in found and "kv_b" in found:
            f = (found["kv_b"].parameter, *gain(found["kv_a"], "kv_a_layernorm"), found["kv_a"].parameter)
            for m in ("k", "v"):
                out.append(MatrixSpec(" @ ".join(f), part, layer, m, factors=f))
    return out


def latent_effective(spec: MatrixSpec, tensors: dict[str, torch.Tensor], config: Any) -> torch.Tensor:
    """The effective ``(d_out, d)`` matrix of DeepSeek multi-head latent attention (DeepSeek-V2,
    arXiv:2405.04434, sec. 2.1.2; transformers' ``DeepseekV3Attention``) that a composite ``spec``
    (``factors`` = up-projection, optional RMSNorm gain, down-projection) stands for.

    With latent c = W_a x, RMSNorm gain g and up-projection W_b, a query (or key/value) is
    W_b diag(g) W_a x / rms(W_a x): the linear map W_b diag(g) W_a up to the per-token scalar
    1 / rms, which is the matrix returned (float64):

    * ``q``: ``q_b diag(g_q) q_a``, shape ``(H * (d_nope + d_rope), d)``, heads in row blocks of
      ``qk_nope_head_dim + qk_rope_head_dim``;
    * ``k``: per head h its ``d_nope`` rows of ``kv_b diag(g_kv) kv_a[:r]`` then the ``d_rope``
      rows ``kv_a[r:]`` shared by every head (the MQA rotary key), shape ``(H * (d_nope + d_rope), d)``;
    * ``v``: per head h its ``v_head_dim`` rows of ``kv_b diag(g_kv) kv_a[:r]``, shape ``(H * d_v, d)``;

    ``r`` = ``kv_lora_rank``. ``tensors`` maps each factor's name to its stored tensor.
    """
    up, *mid, down = (tensors[n].to(torch.float64) for n in spec.factors)
    nope = int(_config_get(config, "qk_nope_head_dim"))
    rope = int(_config_get(config, "qk_rope_head_dim"))
    if spec.matrix == "q":
        return (up * mid[0] if mid else up) @ down
    rank = int(_config_get(config, "kv_lora_rank"))
    dv = int(_config_get(config, "v_head_dim"))
    latent = down[:rank]
    per_head = ((up * mid[0]) if mid else up) @ latent
    heads = per_head.shape[0] // (nope + dv)
    per_head = per_head.view(heads, nope + dv, -1)
    if spec.matrix == "v":
        return per_head[:, nope:].reshape(heads * dv, -1)
    rotary = down[rank:rank + rope].unsqueeze(0).expand(heads, rope, -1)
    return torch.cat([per_head[:, :nope], rotary], dim=1).reshape(heads * (nope + rope), -1)


def classify(names_and_shapes: Iterable[tuple[str, tuple[int, ...]]], config: Any = None) -> list[MatrixSpec]:
    """Find the embedding and every attention/FFN matrix among parameter names.

    Args:
        names_and_shapes: ``(parameter name, shape)`` pairs, e.g. from ``model.named_parameters()``
            or from the keys of safetensors shards.
        config: the model config (object or dict); needed for fused QKV splits (Phi-3, NeoX,
            Falcon) and DeepSeek latent attention.

    Returns:
        Specs sorted by (part, layer, matrix order, expert). The token embedding appears once (tied
        or shared copies are skipped); LM heads are never listed. Experts stored as one 3-D tensor
        give one spec per expert (``index``); DeepSeek latent attention gives its stored factors
        (``q_a``, ``q_b``, ``kv_a``, ``kv_b``) and the effective ``q``, ``k``, ``v``
        (:func:`latent_effective`).
    """
    specs: list[MatrixSpec] = []
    embedding_seen = False
    items = list(names_and_shapes)
    for name, shape in items:
        if len(shape) not in (2, 3):
            continue
        if len(shape) == 2 and not embedding_seen and _EMBEDDING_RE.search(name) and "position" not in name:
            specs.append(MatrixSpec(name, "", 0, "embedding"))
            embedding_seen = True
            continue
        if len(shape) == 2 and _EMBEDDING_PROJECTION_RE.search(name):
            specs.append(MatrixSpec(name, "", 0, "embedding_projection"))
            continue
        block = _block_of(name)
        if block is None:
            continue
        layer, rest = block
        part = "decoder" if re.search(r"(?:^|\.)decoder\.", name) else (
            "encoder" if re.search(r"(?:^|\.)encoder\.", name) else "")
        expert = _expert_of(rest)
        for pattern, matrix, transposed, split in _RULES:
            if pattern.search(rest):
                if len(shape) == 3:  # [num_experts, d_out, d_in]: one matrix per expert
                    if not re.search(r"(?:^|\.)experts\.|_exps\.", rest):
                        break
                    d_out = shape[2] if transposed else shape[1]
                    for e in range(shape[0]):
                        one = (_split_fused(name, part, layer, matrix, transposed, split, d_out, config) if split
                               else [MatrixSpec(name, part, layer, matrix, transposed)])
                        specs.extend(MatrixSpec(s.parameter, s.part, s.layer, s.matrix, s.transposed, s.rows,
                                                str(e), e) for s in one)
                    break
                d_out = shape[1] if transposed else shape[0]
                if split:
                    one = _split_fused(name, part, layer, matrix, transposed, split, d_out, config)
                else:
                    one = [MatrixSpec(name, part, layer, matrix, transposed)]
                specs.extend(MatrixSpec(s.parameter, s.part, s.layer, s.matrix, s.transposed, s.rows, expert)
                             for s in one)
                break
    specs += _latent_specs(specs, {n for n, _ in items})
    parts = {s.part for s in specs if s.matrix != "embedding"}
    if "decoder" not in parts:  # encoder-only or decoder-only: no part label
        specs = [MatrixSpec(s.parameter, "", s.layer, s.matrix, s.transposed, s.rows, s.expert, s.index, s.factors)
                 for s in specs]
    order = {m: i for i, m in enumerate(MATRIX_ORDER)}
    specs.sort(key=lambda s: (s.part != "" and s.part != "encoder", s.part, s.layer, _expert_order(s.expert),
                              order.get(s.matrix, 99)))
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
    """Per-head dimension from a config (``head_dim``, T5's ``d_kv``, else hidden size / number of
    heads), or None."""
    explicit = _config_get(config, "head_dim", "attention_head_size", "d_kv")
    if explicit:
        return int(explicit)
    hidden = _config_get(config, "hidden_size", "n_embd", "d_model", "dim")
    heads = _config_get(config, "num_attention_heads", "n_head", "encoder_attention_heads", "n_heads", "num_heads")
    if hidden and heads and hidden % heads == 0:
        return int(hidden // heads)
    return None


def matrix_head_dim(config: Any, matrix: str) -> Optional[int]:
    """Head width of the rows of ``q``/``k`` and of ``v``/``o`` (they differ in DeepSeek latent
    attention: ``qk_nope_head_dim + qk_rope_head_dim`` and ``v_head_dim``); :func:`head_dim` otherwise."""
    nope, rope, dv = (_config_get(config, n) for n in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    if nope is not None and rope is not None and dv is not None:
        return int(nope + rope) if matrix.removeprefix("cross_") in ("q", "k") else int(dv)
    return head_dim(config)


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
