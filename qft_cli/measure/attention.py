"""Norms of the attention-level factors: queries, keys, values and logits per head (``qft norms attention``).

For one sample (N real tokens), block ``l`` and query head ``h`` (head width ``d_head``):

* X: the ``N x d`` input of the attention sub-layer (after the pre-LayerNorm in pre-LN models such
  as GPT-2 and Llama; the previous block's output in post-LN models such as BERT), captured by a
  forward pre-hook on the attention module.
* Q_h, K_h, V_h: ``N x d_head`` queries, keys and values *as they enter the dot product*: after
  rotary embeddings where the model has them; with grouped-query attention (GQA) key/value head
  ``h // (H / H_kv)`` is paired with query head ``h``, as ``repeat_kv`` does.
* L_h = s Q_h K_h^T: the unmasked logits, without additive biases (ALiBi, relative positions)
  and with the model's own logit scale s (:func:`logit_scale`: 1/sqrt(d_head) as in Vaswani et
  al. 2017, eq. 1, for most models; ``query_pre_attn_scalar^-1/2`` for Gemma 2 and 3). Below,
  "/ sqrt(d_head)" stands for "* s".

The N x N logits are never formed. With thin QR factorisations Q_h = U_q R_q and K_h = U_k R_k
(U with orthonormal columns, R of size ``min(N, d_head) x d_head``), Q_h K_h^T = U_q (R_q R_k^T) U_k^T,
so ||Q_h K_h^T||_2 = ||R_q R_k^T||_2 and ||Q_h K_h^T||_F = ||R_q R_k^T||_F (unitary invariance;
Golub & Van Loan, *Matrix Computations*, 4th ed., sec. 2.3 and 5.2): memory O(N d_head) and work
O(N d_head^2) per head. Padding rows are zero before the factorisation, and zero rows leave R^T R
(= Q^T Q) unchanged, so results do not depend on the batch. Everything is float64.

Capture: models that dispatch attention through transformers' ``AttentionInterface`` get a
registered recording attention function (``qft_record_<implementation>``) that sees query, key and
value and then delegates to the model's configured implementation (``sdpa``, ``eager``, ...), with
that implementation's mask function; qft's own DNABERT-2 (:mod:`qft_cli.models.modeling_dnabert2`) and
training model (:mod:`qft_cli.train.modeling_qft`) call their ``qkv_observer``. Other models raise
"not supported for this architecture".

Bounds (each row also carries measured / bound, <= 1 up to rounding):

* ||Q_h||_2 <= ||X||_2 ||W_q,h||_2 + sqrt(N) ||b_q,h||_2 (the same for K and V), because
  Q_h = X W_q,h^T + 1 b_q,h^T. With rotary embeddings each row of Q_h is rotated by its own
  position's angles, which can *raise* the spectral norm (rows (1, 0) at position 0 and (0, 1)
  rotated by -90 degrees at a later position: ||.||_2 goes from 1 to sqrt(2)), so for rotary
  models the q and k bound is the Frobenius route
  ||Q_h||_2 <= ||Q_h||_F = ||X W_q,h^T + 1 b^T||_F <= min(||X||_F ||W_q,h||_2, ||X||_2 ||W_q,h||_F) + sqrt(N) ||b_q,h||_2.
  Models that normalise queries/keys per head (``q_norm``/``k_norm``) get NaN q and k bounds.
* ||L_h||_2 <= ||Q_h||_2 ||K_h||_2 / sqrt(d_head) (submultiplicativity).
* ||L_h||_2 <= ||X||_2^2 ||W_q,h^T W_k,h||_2 / sqrt(d_head), for models without rotary
  embeddings, without (non-zero) q/k biases and without q/k normalisation (NaN otherwise), since
  then L_h = X (W_q,h^T W_k,h) X^T / sqrt(d_head).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from qft_cli.measure.inputs import (
    _batches,
    check_samples,
    find_blocks,
    forward_encoder,
    masked_norms,
    num_layers,
    padded_batches,
    parse_layers,
    repad,
    stop_after,
)
from qft_cli.measure.norms import ACCUMULATE, frobenius_norm, spectral_norm
from qft_cli.models.layout import classify, split_heads
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report

#: Columns of ``norms_attention.parquet`` (docs/results.md), after nothing: the label columns lead.
ATTENTION_COLUMNS = [
    "model", "model_alias", "model_format", "dataset", "sample_index", "layer", "head_index", "kv_head_index",
    "num_tokens", "head_dim",
    "x_spectral_norm", "x_frobenius_norm",
    "q_spectral_norm", "q_frobenius_norm", "k_spectral_norm", "k_frobenius_norm", "v_spectral_norm", "v_frobenius_norm",
    "logits_unmasked_spectral_norm", "logits_unmasked_frobenius_norm",
    "q_spectral_bound", "q_bound_ratio", "k_spectral_bound", "k_bound_ratio", "v_spectral_bound", "v_bound_ratio",
    "logits_unmasked_qk_bound", "logits_unmasked_qk_bound_ratio",
    "logits_unmasked_weight_bound", "logits_unmasked_weight_bound_ratio", "finite"]

#: Quantities fitted in ``fits.parquet`` by ``norms attention`` (column prefix = quantity label).
FIT_QUANTITIES = ("q", "k", "v", "logits_unmasked")

_QK_NORM_NAMES = ("q_norm", "k_norm", "q_layernorm", "k_layernorm", "query_layernorm", "key_layernorm")


# ----------------------------------------------------------------------------- pure maths

def r_factor(a: torch.Tensor) -> torch.Tensor:
    """R of the thin QR factorisation of ``a`` (..., n, p), in float64: shape (..., min(n, p), p),
    with R^T R = A^T A (so zero rows of ``a`` do not change it beyond rounding)."""
    a = a.to(ACCUMULATE)
    if a.device.type == "mps":  # no float64 on MPS
        a = a.cpu()
    return torch.linalg.qr(a, mode="r").R


def product_norms(a: torch.Tensor, b: torch.Tensor, *, factored: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral and Frobenius norms of ``a @ b.mT`` without forming it.

    Args:
        a: (..., n, p) and b: (..., m, p), any float dtype; or, with ``factored=True``, their R
            factors from :func:`r_factor`.

    Returns:
        ``(spectral, frobenius)`` float64 tensors of shape (...). With A = U_a R_a and B = U_b R_b
        (thin QR), A B^T = U_a (R_a R_b^T) U_b^T and both norms are unitarily invariant, so they
        are the norms of the small ``min(n,p) x min(m,p)`` matrix R_a R_b^T. Work O((n + m) p^2).
    """
    ra = a if factored else r_factor(a)
    rb = b if factored else r_factor(b)
    small = ra.to(ACCUMULATE) @ rb.to(ACCUMULATE).mT
    return spectral_norm(small), frobenius_norm(small)


def kv_heads_of(num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Key/value head of each query head under grouped-query attention: ``h // (H / H_kv)``
    (transformers' ``repeat_kv`` repeats each key/value head H / H_kv times in a row).

    Raises:
        QftInputError: ``num_kv_heads`` does not divide ``num_heads``.
    """
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise QftInputError(f"{num_heads} query heads cannot share {num_kv_heads} key/value heads: "
                            "this architecture is not supported")
    return torch.arange(num_heads) // (num_heads // num_kv_heads)


def head_grams(blocks: torch.Tensor, side: str, chunk_bytes: int = 8 * 2 ** 20) -> torch.Tensor:
    """Float64 Gram matrices of one side of every head block, a few heads at a time.

    Args:
        blocks: (H, r, c) head blocks, any float dtype (as :func:`qft_cli.models.layout.split_heads`).
        side: ``"rows"``: W W^T, shape (H, r, r) (the head dimension of q, k, v blocks);
            ``"columns"``: W^T W, shape (H, c, c) (that of o blocks).
        chunk_bytes: at most this many float64 bytes of blocks are converted at once.

    Either Gram has the squared singular values of W as its non-zero eigenvalues and ||W||_F^2 as
    its trace, so :func:`gram_norms` gives each head's norms from it.
    """
    if side not in ("rows", "columns"):
        raise ValueError(f"side must be 'rows' or 'columns', not {side!r}")
    heads, r, c = blocks.shape
    if side == "columns":  # sum over chunks of rows of every head at once: W^T W = sum_i w_i^T w_i
        grams = torch.zeros(heads, c, c, dtype=ACCUMULATE, device=blocks.device)
        step = max(1, chunk_bytes // max(1, heads * c * 8))
        for start in range(0, r, step):
            chunk = blocks[:, start:start + step].to(ACCUMULATE)
            grams.baddbmm_(chunk.mT, chunk)
        return grams
    step = max(1, chunk_bytes // max(1, r * c * 8))
    grams = []
    for start in range(0, heads, step):
        chunk = blocks[start:start + step].to(ACCUMULATE)
        grams.append(chunk @ chunk.mT)
        del chunk
    return torch.cat(grams)


def gram_norms(grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral and Frobenius norms (float64, shape (...)) of matrices W from a Gram matrix G of
    either side, (..., s, s): sqrt(lambda_max(G)) and sqrt(trace(G))."""
    lam = torch.linalg.eigvalsh(grams)[..., -1].clamp_min(0.0)
    return lam.sqrt(), grams.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0.0).sqrt()


def gram_product_norms(ga: torch.Tensor, gb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral and Frobenius norms of ``A @ B.mT`` from ``ga`` = A^T A and ``gb`` = B^T B
    (..., p, p), float64, without A or B.

    (A B^T)^T (A B^T) = B (A^T A) B^T has the non-zero eigenvalues of G_a G_b, which are those of
    S^T G_a S with G_b = S S^T (S = U Lambda^{1/2} from ``eigh``, valid for singular G_b); and
    ||A B^T||_F^2 = trace(G_a G_b) = sum(G_a * G_b) (both symmetric). Rounding: float64 Grams carry
    an absolute error ~1e-16 ||A||^2 ||B||^2 into sigma^2, a relative error far below 1e-10 unless
    ||A B^T||_2 is below 1e-4 ||A||_2 ||B||_2 (then :func:`product_norms` from R factors is better).
    """
    lam_b, u_b = torch.linalg.eigh(gb)
    s = u_b * lam_b.clamp_min(0.0).sqrt().unsqueeze(-2)
    top = torch.linalg.eigvalsh(s.mT @ ga @ s)[..., -1].clamp_min(0.0)
    frob = (ga * gb).sum(dim=(-2, -1)).clamp_min(0.0)
    return top.sqrt(), frob.sqrt()


def weight_composites(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor, *,
                      grams: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
    """Per-head norms of W_q,h^T W_k,h (the bilinear form of the logits) and W_o,h W_v,h (the
    value-output map), through head_dim x head_dim Gram matrices (:func:`gram_product_norms`).

    Args:
        wq: (H, d_head, d) query head blocks; wk, wv: (H_kv, d_head, d) key/value head blocks
            (GQA: H_kv divides H); wo: (H, d, d_head) output-projection head blocks (columns of W_o),
            as :func:`qft_cli.models.layout.split_heads` returns them (W oriented d_out x d_in).
        grams: the head-dimension Grams if already computed (keys ``q``, ``k``, ``v``: ``"rows"``,
            ``o``: ``"columns"`` of :func:`head_grams`); the blocks are not read then.

    Returns:
        float64 tensors of shape (H,): ``qk_spectral_norm``, ``qk_frobenius_norm``,
        ``ov_spectral_norm``, ``ov_frobenius_norm`` (query head h paired with key/value head
        ``h // (H / H_kv)``).

    Raises:
        QftInputError: head counts that do not pair.
    """
    g = dict(grams or {})
    for name, w, side in (("q", wq, "rows"), ("k", wk, "rows"), ("v", wv, "rows"), ("o", wo, "columns")):
        if name not in g:
            g[name] = head_grams(w, side)
    kv = kv_heads_of(g["q"].shape[0], g["k"].shape[0]).to(g["q"].device)
    if g["o"].shape[0] != g["q"].shape[0]:
        raise QftInputError(f"{g['o'].shape[0]} output-projection heads for {g['q'].shape[0]} query heads: "
                            "this architecture is not supported")
    qk = gram_product_norms(g["q"], g["k"][kv])  # A = W_q,h^T, B = W_k,h^T: A^T A = W_q,h W_q,h^T
    ov = gram_product_norms(g["o"], g["v"][kv])  # A = W_o,h, B = W_v,h^T
    return {"qk_spectral_norm": qk[0], "qk_frobenius_norm": qk[1],
            "ov_spectral_norm": ov[0], "ov_frobenius_norm": ov[1]}


def composite_head_rows(grams: dict[str, torch.Tensor]) -> Optional[pd.DataFrame]:
    """``norms_heads`` rows (matrix ``qk`` and ``ov``; head, spectral_norm, frobenius_norm) from the
    head-dimension Grams of one layer (keys ``q``, ``k``, ``v``, ``o``, as :func:`weight_composites`
    takes them); None unless all four are present."""
    if not all(m in grams for m in ("q", "k", "v", "o")):
        return None
    c = weight_composites(None, None, None, None, grams=grams)
    heads = c["qk_spectral_norm"].numel()
    return pd.DataFrame({"matrix": ["qk"] * heads + ["ov"] * heads, "head_index": list(range(heads)) * 2,
                         "spectral_norm": torch.cat([c["qk_spectral_norm"], c["ov_spectral_norm"]]).cpu().numpy(),
                         "frobenius_norm": torch.cat([c["qk_frobenius_norm"], c["ov_frobenius_norm"]]).cpu().numpy()})


# ----------------------------------------------------------------------------- weights of the bounds

@dataclass
class LayerWeights:
    """Per-head weight norms of one block (float64 on CPU) for the bounds.

    ``q_*`` have H entries, ``k_*``/``v_*`` H_kv entries; ``*_bias``: l2 norm of the head's bias
    (0 without bias); ``qk_spectral``: ||W_q,h^T W_k,h||_2 per query head; ``qk_bias``: a non-zero
    q or k bias exists.
    """

    q_spectral: torch.Tensor
    q_frobenius: torch.Tensor
    q_bias: torch.Tensor
    k_spectral: torch.Tensor
    k_frobenius: torch.Tensor
    k_bias: torch.Tensor
    v_spectral: torch.Tensor
    v_frobenius: torch.Tensor
    v_bias: torch.Tensor
    qk_spectral: torch.Tensor
    qk_bias: bool


def _weight_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    # "<module>.weight" -> module, for every module with a 2-D weight (parametrized weights
    # included: their effective weight is read through the module attribute)
    out = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            out[f"{name}.weight" if name else "weight"] = module
    return out


_LATENT_REFUSAL = ("multi-head latent attention (DeepSeek) puts an RMSNorm between X and Q, K, V, so the bounds "
                   "||X|| ||W|| do not apply: norms attention is not supported for this architecture (norms weights "
                   "measures its effective W_q, W_k, W_v)")


@torch.no_grad()
def layer_weights(model: torch.nn.Module, layers: Sequence[int], head_dim: int) -> dict[int, LayerWeights]:
    """Per-head norms of W_q, W_k, W_v and their biases, and ||W_q,h^T W_k,h||_2, of each block in
    ``layers`` (1..L), found by :func:`qft_cli.models.layout.classify`.

    Raises:
        QftInputError: a block without q, k and v matrices (names the block).
    """
    modules = _weight_modules(model)
    specs = classify(((n, tuple(m.weight.shape)) for n, m in modules.items()), getattr(model, "config", None))
    if any(spec.factors for spec in specs):
        raise QftInputError(_LATENT_REFUSAL)
    # the measured stack: the encoder of an encoder-decoder model, else the one stack (OPT names it "decoder")
    stack = ("", "encoder") if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else ("", "decoder")
    found: dict[tuple[int, str], tuple] = {}
    for spec in specs:
        if spec.part in stack and spec.matrix in ("q", "k", "v"):
            found.setdefault((spec.layer, spec.matrix), (spec, modules[spec.parameter]))
    out = {}
    for layer in layers:
        heads, biases = {}, {}
        for m in ("q", "k", "v"):
            if (layer, m) not in found:
                raise QftInputError(f"found no {m} projection of block {layer} among the model's weights: "
                                    "norms attention is not supported for this architecture")
            spec, module = found[(layer, m)]
            w = spec.extract(module.weight.detach()).to("cpu", ACCUMULATE)
            blocks = split_heads(m, w, head_dim)
            if blocks is None:
                raise QftInputError(f"the {m} projection of block {layer} ({tuple(w.shape)}) does not split into "
                                    f"heads of width {head_dim}: norms attention is not supported for this architecture")
            heads[m] = blocks
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                b = bias.detach().to("cpu", ACCUMULATE)[spec.row_index(bias.shape[0])]
                biases[m] = b.reshape(blocks.shape[0], head_dim)
            else:
                biases[m] = torch.zeros(blocks.shape[0], head_dim, dtype=ACCUMULATE)
        kv = kv_heads_of(heads["q"].shape[0], heads["k"].shape[0])
        qk_spec, _ = product_norms(heads["q"].mT, heads["k"].mT[kv])
        bn = {m: torch.linalg.vector_norm(biases[m], dim=-1) for m in biases}
        out[layer] = LayerWeights(
            spectral_norm(heads["q"]), frobenius_norm(heads["q"]), bn["q"],
            spectral_norm(heads["k"]), frobenius_norm(heads["k"]), bn["k"],
            spectral_norm(heads["v"]), frobenius_norm(heads["v"]), bn["v"],
            qk_spec, bool((bn["q"] > 0).any() or (bn["k"] > 0).any()))
    return out


def has_rotary(model: torch.nn.Module) -> bool:
    """Whether the model applies rotary position embeddings to queries and keys (qft's own
    modules say so in ``applies_rotary``; transformers configs by ``rope_parameters``,
    ``rope_theta``, ``rope_scaling``, ``rotary_dim`` or ``position_embedding_type == "rotary"``)."""
    for module in model.modules():
        if hasattr(module, "qkv_observer"):
            return bool(getattr(module, "applies_rotary", False))
    config = getattr(model, "config", None)
    if config is None:
        return False
    if any(getattr(config, n, None) for n in ("rope_parameters", "rope_theta", "rope_scaling", "rotary_dim",
                                                "rotary_pct", "rotary_emb_base")):
        return True
    return getattr(config, "position_embedding_type", None) == "rotary"


# ----------------------------------------------------------------------------- capture

_ACTIVE: list[Callable] = []  # the observer of the running measurement (innermost last)


def _delegate(implementation: str, module: torch.nn.Module) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if implementation == "eager":  # eager is the model file's own eager_attention_forward
        fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if fn is None:
            raise QftInputError(f"{type(module).__name__} has no eager_attention_forward: "
                                "norms attention is not supported for this architecture")
        return fn
    return ALL_ATTENTION_FUNCTIONS[implementation]


def logit_scale(module: torch.nn.Module, head_dim: int, scaling: Optional[float] = None) -> float:
    """The factor the model multiplies Q_h K_h^T by before the softmax: ``scaling`` as the model
    passed it to its attention function, else the module's own ``scaling`` attribute, else
    1/sqrt(d_head) (Vaswani et al. 2017, eq. 1).

    Gemma 2 and 3 scale by ``query_pre_attn_scalar^-1/2`` (their config; 256 where d_head = 256 in
    Gemma 2 9B, but ``d_model / n_heads`` = 144 in Gemma 2 27B) instead of ``d_head^-1/2``; the
    logits of ``norms attention`` use the model's own scale (docs/conventions.md)."""
    for value in (scaling, getattr(module, "scaling", None)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value):
            return float(value)
    return 1.0 / math.sqrt(head_dim)


def register_recording_attention(implementation: str) -> str:
    """Register (once) the recording attention function for ``implementation`` in transformers'
    ``AttentionInterface`` and the implementation's mask function in ``AttentionMaskInterface``
    under the name ``qft_record_<implementation>``; returns that name.

    The function calls the active observer with ``(module, query, key, value, scaling=...)`` (query
    (batch, H, N, d_head), key/value (batch, H_kv, N, d_head), after rotary embeddings; ``scaling``
    the logit scale the model passes, ``None`` for the default), then returns what
    ``implementation`` returns.
    """
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
    )
    from transformers.modeling_utils import AttentionInterface

    name = f"qft_record_{implementation}"

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        if _ACTIVE:
            _ACTIVE[-1](module, query, key, value, scaling=kwargs.get("scaling"))
        return _delegate(implementation, module)(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(name, recording_attention)
    if implementation in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[implementation])
    return name


class _Capture:
    """Installs the observer on a model (and removes it): native ``qkv_observer`` modules, or the
    recording attention function; plus the pre-hooks that keep X of each attention module."""

    def __init__(self, model: torch.nn.Module, blocks: torch.nn.ModuleList, observe: Callable,
                 layers: Sequence[int] | None = None):
        self.model, self.blocks, self.observe = model, blocks, observe
        self.layers = None if layers is None else set(layers)  # X is kept for these blocks (1..L) only
        self.x: dict[int, torch.Tensor] = {}
        self.layer_of: dict[int, int] = {}
        self.handles: list = []
        self.native = [m for m in model.modules() if hasattr(m, "qkv_observer")]
        self.config = getattr(model, "config", None)
        self.implementation = None

    def __enter__(self) -> "_Capture":
        for index, block in enumerate(self.blocks):
            wanted = self.layers is None or index + 1 in self.layers
            for module in block.modules():
                self.layer_of[id(module)] = index + 1
                if wanted and (hasattr(module, "qkv_observer") or "attention" in type(module).__name__.lower()):
                    self.handles.append(module.register_forward_pre_hook(self._keep_x, with_kwargs=True))
        if self.native:
            for module in self.native:
                module.qkv_observer = self.observe
        else:
            if self.config is None or not hasattr(self.config, "_attn_implementation"):
                raise QftInputError(f"{type(self.model).__name__} has no transformers config: "
                                    "norms attention is not supported for this architecture")
            self.implementation = self.config._attn_implementation or "eager"
            if self.implementation == "eager" and getattr(self.config, "reorder_and_upcast_attn", False):
                raise QftInputError("GPT-2's reorder_and_upcast_attn bypasses transformers' AttentionInterface: "
                                    "norms attention is not supported for this architecture (use sdpa)")
            self.config._attn_implementation = register_recording_attention(self.implementation)
            _ACTIVE.append(self.observe)
        return self

    def _keep_x(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor):
            self.x[id(module)] = x

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        if self.native:
            for module in self.native:
                module.qkv_observer = None
        elif self.implementation is not None:
            self.config._attn_implementation = self.implementation
            _ACTIVE.remove(self.observe)


# ----------------------------------------------------------------------------- measurement

def parse_blocks(spec: str, depth: int) -> list[int]:
    """``--layers`` of ``norms attention``: ``all`` or indices/ranges of blocks 1..depth.

    Raises:
        QftInputError: malformed, 0 (the embedding has no attention) or beyond ``depth``.
    """
    if spec.strip().lower() == "all":
        return list(range(1, depth + 1))
    layers = parse_layers(spec, depth, valid=f"blocks are 1 to {depth} (layer 0, the embedding, has no attention)")
    if 0 in layers:
        raise QftInputError(f"--layers {spec}: layer 0 is the embedding and has no attention; "
                            f"blocks are 1 to {depth}")
    return layers


@dataclass
class AttentionNormsResult:
    """Result of :func:`attention_norms`: the table (:data:`ATTENTION_COLUMNS`), the
    (sample, layer) pairs whose X, Q, K or V were not finite, and those whose X was all zero
    (degenerate: every norm and bound 0, ratios NaN)."""

    table: pd.DataFrame
    nonfinite: list[tuple[int, int]] = field(default_factory=list)
    all_zero: list[tuple[int, int]] = field(default_factory=list)


def _ratio(measured: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    return torch.where(bound > 0, measured / bound, torch.full_like(measured, float("nan")))


@torch.no_grad()
def attention_norms(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], layers: Sequence[int], *,
                    batch_size: int = 8, pad_token_id: int = 0, progress: Optional[ProgressFn] = None,
                    labels: Optional[dict] = None) -> AttentionNormsResult:
    """Per (sample, block, head): norms of X, Q_h, K_h, V_h and the unmasked logits, with their bounds.

    Args:
        model: a base model (``AutoModel``, qft's DNABERT-2 or training model) in eval mode.
        token_ids: one list of token ids per sample (N_i >= 1).
        layers: blocks 1..L (see :func:`parse_blocks`); blocks after the deepest never run.
        batch_size: samples per forward pass; -1 = all in one batch (results do not depend on it).
        pad_token_id: id used for padding (padding rows never enter a norm).
        labels: constant columns (model, model_alias, dataset).

    Returns:
        :class:`AttentionNormsResult`; the table has :data:`ATTENTION_COLUMNS` (norms float64, in
        the units of the hidden states; ratios dimensionless), sorted by sample, layer, head.
        Samples with non-finite values get NaN norms and ``finite`` False.

    Raises:
        QftInputError: bad batch size or samples (:func:`qft_cli.measure.inputs.check_samples`), a
            layer outside 1..L, or an architecture whose attention cannot be observed
            ("not supported for this architecture").
    """
    name = (labels or {}).get("model_alias", "the model")
    check_samples(model, token_ids, batch_size, name)
    blocks = find_blocks(model)
    if len({id(b) for b in blocks}) < len(blocks):
        raise QftInputError(f"{name} shares one layer among its blocks (ALBERT): norms attention is not supported "
                            "for shared layers (norms inputs and norms weights are)")
    if any(n.endswith("kv_a_proj_with_mqa.weight") for n, _ in model.named_parameters()):
        raise QftInputError(_LATENT_REFUSAL)
    depth = num_layers(model.config) if getattr(model, "config", None) is not None else len(blocks)
    layers = sorted(set(layers))
    if not layers or layers[0] < 1 or layers[-1] > depth:
        raise QftInputError(f"attention layers must be blocks 1 to {depth} (got {layers})")
    rotary = has_rotary(model)
    weights: dict[int, LayerWeights] = {}
    state: dict = {}
    parts: list[dict[str, np.ndarray]] = []
    nonfinite: set[tuple[int, int]] = set()
    all_zero: set[tuple[int, int]] = set()
    lengths = [len(x) for x in token_ids]

    def observe(module, q, k, v, scaling=None):
        layer = capture.layer_of.get(id(module))
        if layer is None or layer not in layers:
            return
        if layer in state["seen"]:
            raise QftInputError(f"block {layer} of {name} runs attention more than once per forward pass: "
                                "norms attention is not supported for this architecture")
        state["seen"].add(layer)
        x = capture.x.pop(id(module), None)
        if x is None:
            raise QftInputError(f"the input of the attention of block {layer} of {name} was not seen: "
                                "norms attention is not supported for this architecture")
        parts.append(_measure(module, layer, x, q, k, v, scaling))

    def _measure(module, layer, x, q, k, v, scaling=None) -> dict[str, np.ndarray]:
        mask = state["mask"]
        batch = state["batch"]
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or q.shape[2] != mask.shape[1] or k.shape[2] != mask.shape[1]:
            raise QftInputError(f"attention of {name} passes queries of shape {tuple(q.shape)} for a batch of "
                                f"{tuple(mask.shape)} tokens: norms attention is not supported for this architecture")
        dh = q.shape[-1]
        if not weights:  # once, for every requested block (one scan of the model's modules)
            weights.update(layer_weights(model, list(layers), dh))
        w = weights[layer]
        device = q.device if q.device.type != "mps" else torch.device("cpu")
        m = mask.to(device=device, dtype=torch.bool)
        if x.dim() == 2:
            x = repad(x, m.to(x.device))
        xn = masked_norms(x, m.to(x.device))

        def prep(t):
            t = t.to(device=device, dtype=ACCUMULATE).masked_fill(~m[:, None, :, None], 0.0)
            ok = torch.isfinite(t).flatten(1).all(dim=1)
            return torch.where(ok[:, None, None, None], t, torch.zeros((), dtype=ACCUMULATE, device=device)), ok

        (q, fq), (k, fk), (v, fv) = prep(q), prep(k), prep(v)
        heads = q.shape[1]
        kv = kv_heads_of(heads, k.shape[1])
        if w.q_spectral.numel() != heads or w.k_spectral.numel() != k.shape[1]:
            raise QftInputError(f"block {layer} of {name}: {heads} query / {k.shape[1]} key heads at run time but "
                                f"{w.q_spectral.numel()} / {w.k_spectral.numel()} in the weights: "
                                "norms attention is not supported for this architecture")
        rq, rk, rv = r_factor(q), r_factor(k), r_factor(v)
        kvd = kv.to(device)
        q_spec, q_frob = spectral_norm(rq), frobenius_norm(q)
        k_spec, k_frob = spectral_norm(rk)[:, kvd], frobenius_norm(k)[:, kvd]
        v_spec, v_frob = spectral_norm(rv)[:, kvd], frobenius_norm(v)[:, kvd]
        l_spec, l_frob = product_norms(rq, rk[:, kvd], factored=True)
        scale = 1.0 / logit_scale(module, dh, scaling)  # the logits are Q K^T * logit_scale
        l_spec, l_frob = l_spec / scale, l_frob / scale
        finite = xn["finite"].to(device) & fq & fk & fv
        xs = xn["spectral_norm"].to(device, ACCUMULATE)[:, None]
        xf = xn["frobenius_norm"].to(device, ACCUMULATE)[:, None]
        n = m.sum(dim=1).to(ACCUMULATE)[:, None]
        wd = {f: getattr(w, f).to(device) for f in ("q_spectral", "q_frobenius", "q_bias", "k_spectral",
                                                     "k_frobenius", "k_bias", "v_spectral", "v_frobenius",
                                                     "v_bias", "qk_spectral")}
        qk_normed = any(hasattr(module, a) for a in _QK_NORM_NAMES)

        def linear_bound(spec, frob, bias, rotated):
            if rotated:
                return torch.minimum(xf * spec, xs * frob) + n.sqrt() * bias
            return xs * spec + n.sqrt() * bias

        nan = torch.full((len(batch), heads), float("nan"), dtype=ACCUMULATE, device=device)
        q_bound = nan if qk_normed else linear_bound(wd["q_spectral"], wd["q_frobenius"], wd["q_bias"], rotary)
        k_bound = nan if qk_normed else linear_bound(wd["k_spectral"][kvd], wd["k_frobenius"][kvd], wd["k_bias"][kvd],
                                                     rotary)
        v_bound = linear_bound(wd["v_spectral"][kvd], wd["v_frobenius"][kvd], wd["v_bias"][kvd], False)
        qk_bound = q_spec * k_spec / scale
        if rotary or w.qk_bias or qk_normed:
            weight_bound = nan
        else:
            weight_bound = xs ** 2 * wd["qk_spectral"] / scale
        cols = {
            "x_spectral_norm": xs.expand(-1, heads), "x_frobenius_norm": xf.expand(-1, heads),
            "q_spectral_norm": q_spec, "q_frobenius_norm": q_frob, "k_spectral_norm": k_spec,
            "k_frobenius_norm": k_frob, "v_spectral_norm": v_spec, "v_frobenius_norm": v_frob,
            "logits_unmasked_spectral_norm": l_spec, "logits_unmasked_frobenius_norm": l_frob,
            "q_spectral_bound": q_bound, "q_bound_ratio": _ratio(q_spec, q_bound),
            "k_spectral_bound": k_bound, "k_bound_ratio": _ratio(k_spec, k_bound),
            "v_spectral_bound": v_bound, "v_bound_ratio": _ratio(v_spec, v_bound),
            "logits_unmasked_qk_bound": qk_bound, "logits_unmasked_qk_bound_ratio": _ratio(l_spec, qk_bound),
            "logits_unmasked_weight_bound": weight_bound,
            "logits_unmasked_weight_bound_ratio": _ratio(l_spec, weight_bound)}
        out = {c: torch.where(finite[:, None], t, nan).cpu().numpy().reshape(-1) for c, t in cols.items()}
        samples = np.asarray(batch, dtype=np.int64)
        out["sample_index"] = np.repeat(samples, heads)
        out["layer"] = np.full(len(batch) * heads, layer, dtype=np.int64)
        out["head_index"] = np.broadcast_to(np.arange(heads, dtype=np.int64), (len(batch), heads)).reshape(-1)
        out["kv_head_index"] = np.broadcast_to(kv.numpy().astype(np.int64), (len(batch), heads)).reshape(-1)
        out["num_tokens"] = np.repeat(np.asarray([lengths[i] for i in batch], dtype=np.int64), heads)
        out["head_dim"] = np.full(len(batch) * heads, dh, dtype=np.int64)
        ok = finite.cpu().numpy()
        out["finite"] = np.repeat(ok, heads)
        nonfinite.update((i, layer) for i, good in zip(batch, ok) if not good)
        zero = xn["all_zero"].numpy()
        all_zero.update((i, layer) for i, z in zip(batch, zero) if z)
        return out

    handles = [stop_after(blocks[layers[-1] - 1])]
    num_batches = len(_batches(lengths, batch_size))
    try:
        with _Capture(model, blocks, observe, layers) as capture:
            for b, (batch, ids, mask) in enumerate(padded_batches(token_ids, batch_size, pad_token_id)):
                state.update(batch=batch, mask=mask, seen=set())
                capture.x.clear()
                forward_encoder(model, ids, mask)
                missing = [layer for layer in layers if layer not in state["seen"]]
                if missing:
                    how = ("its attention does not dispatch through transformers' AttentionInterface"
                           if not capture.native else "its attention modules did not call qkv_observer")
                    raise QftInputError(f"norms attention is not supported for this architecture "
                                        f"({type(model).__name__}: {how}; block {missing[0]} was not observed)")
                report(progress, "attention", b + 1, num_batches)
    finally:
        for h in handles:
            h.remove()
    table = pd.DataFrame({c: np.concatenate([p[c] for p in parts]) for c in parts[0]})
    table = table.sort_values(["sample_index", "layer", "head_index"], kind="stable").reset_index(drop=True)
    for key, value in reversed(list((labels or {}).items())):
        table.insert(0, key, value)
    table = table[[c for c in ATTENTION_COLUMNS if c in table.columns]]
    return AttentionNormsResult(table, sorted(nonfinite), sorted(all_zero))


def attention_fits(table: pd.DataFrame) -> pd.DataFrame:
    """``fits.parquet`` rows of ``norms attention``: per (model, model_alias, dataset, layer) and
    quantity (``q``, ``k``, ``v``, ``logits_unmasked``), norm ~ c N^b fitted on the per-sample
    maximum over heads of the spectral and of the Frobenius norm (:func:`qft_cli.measure.fits.fit_table`).
    Samples with ``finite`` False are left out."""
    from qft_cli.measure.fits import fit_table

    group = [c for c in ("model", "model_alias", "dataset", "layer") if c in table.columns]
    df = table[table["finite"].astype(bool)]
    value_columns = [f"{q}_{n}_norm" for q in FIT_QUANTITIES for n in ("spectral", "frobenius")]
    per_sample = df.groupby(group + ["sample_index"], sort=True, dropna=False).agg(
        {**{c: "max" for c in value_columns}, "num_tokens": "first"}).reset_index()
    fits = [fit_table(per_sample, group, {f"{q}_frobenius_norm": "frobenius", f"{q}_spectral_norm": "spectral"},
                      quantity=q) for q in FIT_QUANTITIES]
    return pd.concat(fits, ignore_index=True)


def summarize_attention(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dataset, layer): number of samples and the median measured / bound ratio of
    each bound (over samples and heads; NaN where the bound does not apply)."""
    keys = [k for k in ("model_alias", "dataset", "layer") if k in table.columns]
    ratios = ["q_bound_ratio", "k_bound_ratio", "v_bound_ratio", "logits_unmasked_qk_bound_ratio",
              "logits_unmasked_weight_bound_ratio"]
    grouped = table.groupby(keys, sort=True)
    out = grouped[ratios].median()
    out.insert(0, "num_samples", grouped["sample_index"].nunique())
    return out.reset_index()
