"""Spectral and Frobenius normalisation of chosen weight matrices of any torch model.

A block-encoding of a matrix ``W`` needs a normalisation factor ``alpha >= ||W||_2``; a model whose
weights satisfy ``||W|| <= 1`` can be block-encoded with ``alpha <= 1``. This module makes that
true *during training* with :mod:`torch.nn.utils.parametrize`: the stored parameter becomes
``<module>.parametrizations.<name>.original`` and every access of ``<module>.<name>`` returns the
effective matrix

* ``spectral``:  ``W / sigma_max(W)``, sigma_max from torch's spectral-norm parametrization
  (:class:`torch.nn.utils.parametrizations._SpectralNorm`: one power-iteration step per forward
  in training mode, persistent ``_u``/``_v`` buffers, no iteration and deterministic in eval mode;
  Miyato et al., "Spectral Normalization for GANs", ICLR 2018);
* ``frobenius``: ``W / (||W||_F + eps)``;
* optionally times a learnable scale ``gamma = max_gamma * sigmoid(g)``, so that the effective
  norm is at most ``max_gamma`` (``max_gamma = 1``: the research's "sub-normalised" variant).

Matrices are chosen with :func:`qft_cli.models.layout.classify_model` by role (``attention``, ``ffn``) or
matrix name (``q``, ``ffn_up``, ...) and by layer (1-indexed blocks). Orientation follows
``layout``: the norm is that of the oriented ``(d_out, d_in)`` matrix (equal for W and W^T, but the
blocks of a fused projection are *row* blocks of the oriented matrix), so GPT-2 ``Conv1D`` and fused
QKV parameters (``c_attn``, ``Wqkv``, ``qkv_proj``, ``query_key_value``) are handled: q, k and v are
normalised as three separate blocks, each with its own power-iteration state and its own gamma.
Token embeddings and LM heads are never selected; a selected parameter shared by several modules
(tied weights) is refused.

Reloading a normalised model: the state dict holds ``parametrizations.<name>.original``, the
power-iteration vectors and the ``g`` logits. Build the same architecture, call
:func:`apply_normalization` with :func:`normalization_settings` of the saved model (also stored in
``config.qft_normalization``), then ``load_state_dict``. :func:`fold_normalization` turns the
effective weights into plain parameters (for export to stock ``transformers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from qft_cli.models.layout import (
    ATTENTION_MATRICES,
    FFN_MATRICES,
    MatrixSpec,
    classify_model,
)
from qft_cli.system.errors import QftInputError

METHODS = ("spectral", "frobenius")
ROLES = ("attention", "ffn")
#: Seed of the random start vectors of the power iteration (kept apart from the global RNG so that
#: normalising a model does not change the data order or dropout of the run).
POWER_ITERATION_SEED = 0
CONFIG_KEY = "qft_normalization"
#: Power-iteration steps run once when a spectral parametrization is created (on top of torch's 15).
INITIAL_POWER_ITERATIONS = 200


# ----------------------------------------------------------------------------- parsing helpers

def parse_method(text: str) -> Optional[str]:
    """``none``/``vanilla`` -> ``None``; ``spectral`` or ``frobenius`` as is.

    Raises:
        QftInputError: any other word.
    """
    value = str(text).strip().lower()
    if value in ("none", "vanilla", ""):
        return None
    if value not in METHODS:
        raise QftInputError(f"unknown normalisation '{text}': use none, spectral or frobenius")
    return value


def parse_targets(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse ``attention,ffn`` (roles) or matrix names (``q,k,v,o,ffn_up,ffn_gate,ffn_down``).

    Returns:
        The distinct words in the order given.

    Raises:
        QftInputError: an empty list or an unknown word.
    """
    words = [w.strip().lower() for w in (text.split(",") if isinstance(text, str) else text)]
    words = [w for w in words if w]
    allowed = ROLES + ATTENTION_MATRICES + FFN_MATRICES
    if not words:
        raise QftInputError("--targets is empty: use attention, ffn or attention,ffn")
    for word in words:
        if word not in allowed:
            raise QftInputError(f"unknown target '{word}' in --targets: use attention, ffn, attention,ffn "
                                f"or matrix names ({', '.join(ATTENTION_MATRICES[:4] + FFN_MATRICES)})")
    return tuple(dict.fromkeys(words))


def parse_layers(text: str | Iterable[int] | None, num_layers: int) -> Optional[tuple[int, ...]]:
    """Parse ``all``, ``1,3`` or ``1-4`` (1-indexed transformer blocks, as in :mod:`qft_cli.models.layout`).

    Args:
        num_layers: depth of the model, for the range check.

    Returns:
        ``None`` for all layers, else the sorted distinct layer numbers.

    Raises:
        QftInputError: a malformed list, layer 0 (the embedding is never normalised) or a layer
            beyond ``num_layers``.
    """
    if text is None or (isinstance(text, str) and text.strip().lower() in ("all", "")):
        return None
    layers: set[int] = set()
    parts = text.split(",") if isinstance(text, str) else list(text)
    for part in parts:
        try:
            if isinstance(part, str) and "-" in part.strip()[1:]:
                lo, hi = part.split("-", 1)
                layers.update(range(int(lo), int(hi) + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise QftInputError(f"--layers '{text}' is not a list of layers: use all, 1,3 or 1-4") from None
    for layer in sorted(layers):
        if layer < 1 or layer > num_layers:
            raise QftInputError(f"layer {layer} in --layers is outside this model's blocks 1..{num_layers} "
                                "(layer 0 is the embedding, which is never normalised)")
    return tuple(sorted(layers))


def variant_name(method: Optional[str], max_gamma: Optional[float] = None) -> str:
    """Name of a variant in result tables: ``vanilla``, ``spectral``, ``frobenius``, or
    ``<method>_subnormalised`` with a learnable scale (see docs/results.md)."""
    if method is None:
        return "vanilla"
    return f"{method}_subnormalised" if max_gamma is not None else method



def norm_variants(norm: str, *, max_gamma: Optional[float] = None,
                  subnormalised: bool = False) -> list[tuple[str, Optional[str], Optional[float]]]:
    """The variants of ``--norm`` (one meaning for ``qft train`` and ``qft finetune``).

    Args:
        norm: ``all`` (vanilla, spectral, frobenius), one of ``none``/``vanilla``, ``spectral``,
            ``frobenius``, or a comma-separated list of them (``vanilla,frobenius``).
        max_gamma: learnable scale bound ``G`` (``gamma = G sigmoid(g)``). Without
            ``subnormalised`` every normalised variant carries it (named ``<method>_subnormalised``).
        subnormalised: also run, after the listed variants, each normalised method with a learnable
            scale bounded by ``max_gamma`` (default 1: the research's sub-normalised variant).

    Returns:
        ``(variant name, method or None, max_gamma or None)`` in training order, vanilla first.

    Raises:
        QftInputError: an unknown word, a repeated variant, ``--subnormalised`` without a
            normalised variant, or ``--max-gamma`` with only vanilla.
    """
    words = [w.strip().lower() for w in str(norm).split(",") if w.strip()]
    if not words:
        raise QftInputError("--norm is empty: use all, vanilla, spectral, frobenius or a list like vanilla,frobenius")
    methods: list[Optional[str]] = []
    for word in words:
        if word == "all":
            chosen: list[Optional[str]] = [None, "spectral", "frobenius"]
        elif word in ("none", "vanilla") or word in METHODS:
            chosen = [parse_method(word)]
        else:
            raise QftInputError(f"unknown --norm '{word}': use all, vanilla (none), spectral, frobenius "
                                "or a list like vanilla,frobenius")
        for method in chosen:
            if method in methods:
                raise QftInputError(f"--norm {norm} names {variant_name(method)} twice: list each variant once")
            methods.append(method)
    methods.sort(key=lambda m: (m is not None, METHODS.index(m) if m else 0))
    normalised = [m for m in methods if m is not None]
    if subnormalised and not normalised:
        raise QftInputError("--subnormalised adds a learnable scale to normalised variants but --norm has none: "
                            "pass --norm all, spectral or frobenius")
    if max_gamma is not None and not normalised:
        raise QftInputError("--max-gamma scales a normalisation but --norm is vanilla only: pass --norm "
                            "spectral, frobenius or all")
    if subnormalised:
        gamma = 1.0 if max_gamma is None else max_gamma
        return ([(variant_name(m), m, None) for m in methods]
                + [(variant_name(m, gamma), m, gamma) for m in normalised])
    return [(variant_name(m, max_gamma if m else None), m, max_gamma if m else None) for m in methods]

# ----------------------------------------------------------------------------- the parametrization

class BlockNormalization(nn.Module):
    """Parametrization that normalises row blocks of the oriented matrix of one parameter.

    ``forward(W)`` takes the stored tensor (``(d_out, d_in)``, or ``(d_in, d_out)`` when
    ``transposed``), normalises each block of rows of the oriented matrix on its own and returns a
    tensor of the stored shape and dtype. Rows in no block are returned unchanged.

    Attributes:
        method: ``spectral`` or ``frobenius``.
        specs: the :class:`~qft_cli.models.layout.MatrixSpec` of each block (parameter name, layer, matrix).
        spectral: one torch ``_SpectralNorm`` per block (own ``_u``/``_v`` buffers), spectral only.
        g: logits of the learnable scales, shape ``(num_blocks,)``, when ``max_gamma`` is set.
    """

    def __init__(self, weight: torch.Tensor, specs: Sequence[MatrixSpec], method: str, *,
                 max_gamma: Optional[float] = None, gamma_init: float = 0.5, n_power_iterations: int = 1,
                 eps: float = 1e-12) -> None:
        super().__init__()
        if method not in METHODS:
            raise QftInputError(f"unknown normalisation '{method}': use spectral or frobenius")
        self.method = method
        self.specs = list(specs)
        self.transposed = bool(self.specs[0].transposed)
        self.eps = float(eps)
        self.max_gamma = None if max_gamma is None else float(max_gamma)
        oriented = weight.detach().mT if self.transposed else weight.detach()
        d_out = oriented.shape[0]
        self.whole = len(self.specs) == 1 and self.specs[0].rows is None
        for i, spec in enumerate(self.specs):
            index = spec.row_index(d_out)
            if isinstance(index, slice):
                index = torch.arange(d_out)[index]
            self.register_buffer(f"rows_{i}", index.to(device=weight.device, dtype=torch.long), persistent=False)
        if method == "spectral":
            self.spectral = nn.ModuleList(
                _SpectralNorm(self._block(oriented, i), n_power_iterations=n_power_iterations, dim=0, eps=eps)
                for i in range(len(self.specs)))
            # torch starts from 15 iterations; random initial weights have close top singular values,
            # so iterate further once (cheap: matrix-vector products) to start from sigma_max itself
            for i, sn in enumerate(self.spectral):
                sn._power_method(self._block(oriented, i), INITIAL_POWER_ITERATIONS)
        if self.max_gamma is not None:
            logit = math.log(gamma_init / (1.0 - gamma_init))
            self.g = nn.Parameter(torch.full((len(self.specs),), logit, dtype=torch.float32, device=weight.device))

    def _rows(self, i: int) -> torch.Tensor:
        return getattr(self, f"rows_{i}")

    def _block(self, oriented: torch.Tensor, i: int) -> torch.Tensor:
        return oriented if self.whole else oriented.index_select(0, self._rows(i))

    def gamma(self) -> Optional[torch.Tensor]:
        """The scales ``max_gamma * sigmoid(g)``, shape ``(num_blocks,)``, or ``None``."""
        if self.max_gamma is None:
            return None
        return self.max_gamma * torch.sigmoid(self.g)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # the norms are computed in the parameter's dtype even under mixed-precision autocast
        # (torch's power iteration mixes its float32 u/v buffers with W, and fp16 norms overflow)
        device_type = weight.device.type
        if device_type in ("cuda", "cpu", "mps", "xpu") and torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return self._normalize(weight)
        return self._normalize(weight)

    def _normalize(self, weight: torch.Tensor) -> torch.Tensor:
        oriented = weight.mT if self.transposed else weight
        gamma = self.gamma()
        out = oriented
        for i in range(len(self.specs)):
            block = self._block(oriented, i)
            if self.method == "spectral":
                normed = self.spectral[i](block)
            else:
                normed = block / (torch.linalg.vector_norm(block) + self.eps)
            if gamma is not None:
                normed = normed * gamma[i].to(normed.dtype)
            out = normed if self.whole else out.index_copy(0, self._rows(i), normed)
        return out.mT if self.transposed else out

    @torch.no_grad()
    def set_exact_sigma(self, weight: torch.Tensor) -> None:
        """Set each block's power-iteration vectors ``_u``/``_v`` to its top singular vectors
        (float64 ``eigh`` of the smaller Gram matrix of the stored ``weight``), so that the eval-mode
        ``sigma = u^T W v`` is ``sigma_max(W)`` to float32 rounding and the effective spectral norm
        is 1 to about 1e-7. One power-iteration step per training forward (Miyato et al. 2018) lags
        the weights it normalises (effective norms up to 1.05 after a short training, issue 18).
        No-op for ``frobenius``."""
        if self.method != "spectral":
            return
        oriented = weight.mT if self.transposed else weight
        for i, sn in enumerate(self.spectral):
            block = self._block(oriented, i).to(torch.float64)
            if block.shape[0] <= block.shape[1]:
                u = torch.linalg.eigh(block @ block.mT)[1][:, -1]
                v = block.mT @ u
            else:
                v = torch.linalg.eigh(block.mT @ block)[1][:, -1]
                u = block @ v
            u, v = u / torch.linalg.vector_norm(u), v / torch.linalg.vector_norm(v)
            if float(u @ (block @ v)) < 0:
                u = -u
            sn._u.copy_(u.to(sn._u.dtype))
            sn._v.copy_(v.to(sn._v.dtype))

    def extra_repr(self) -> str:
        blocks = ",".join(f"{s.matrix}@{s.layer}" for s in self.specs)
        return f"method={self.method}, blocks=[{blocks}], max_gamma={self.max_gamma}"


# ----------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class EffectiveMatrix:
    """One normalised matrix as the model uses it.

    Attributes:
        parameter: the original parameter name (as in ``layout``, before parametrization).
        layer: 1-indexed block.
        matrix: ``q``, ``k``, ``v``, ``o``, ``ffn_up``, ``ffn_gate`` or ``ffn_down``.
        weight: the effective matrix, oriented ``(d_out, d_in)``, detached, dtype of the parameter.
        gamma: the learned scale of this block, or ``None`` without a scale.
    """

    parameter: str
    layer: int
    matrix: str
    weight: torch.Tensor
    gamma: Optional[float]


def _select(model: nn.Module, targets: Sequence[str], layers: Optional[Sequence[int]]) -> list[MatrixSpec]:
    wanted = set()
    for t in targets:
        wanted.update(ATTENTION_MATRICES if t == "attention" else FFN_MATRICES if t == "ffn" else (t,))
    specs = [s for s in classify_model(model) if s.role != "embedding"]
    if layers is not None:
        depth = max((s.layer for s in specs), default=0)
        beyond = [layer for layer in layers if layer < 1 or layer > depth]
        if beyond:
            raise QftInputError(f"layer {beyond[0]} is outside this model's blocks 1..{depth}: pass layers in that range")
        specs = [s for s in specs if s.layer in set(layers)]
    return [s for s in specs if s.matrix in wanted]


def apply_normalization(model: nn.Module, method: str, *, targets: str | Sequence[str] = ("attention", "ffn"),
                        layers: str | Sequence[int] | None = None, max_gamma: Optional[float] = None,
                        gamma_init: float = 0.5, n_power_iterations: int = 1, eps: float = 1e-12,
                        seed: int = POWER_ITERATION_SEED) -> list[MatrixSpec]:
    """Normalise the chosen weight matrices of ``model`` in place through ``torch.nn.utils.parametrize``.

    Args:
        model: any torch model whose parameter names :func:`qft_cli.models.layout.classify_model` knows
            (``nn.Linear``, GPT-2 ``Conv1D``, fused QKV).
        method: ``spectral`` (W / sigma_max(W), torch's spectral-norm power iteration) or
            ``frobenius`` (W / (||W||_F + eps)).
        targets: roles ``attention``/``ffn`` and/or matrix names (``q``, ``ffn_up``, ...), as a
            sequence or a comma-separated string.
        layers: 1-indexed blocks to normalise (sequence, or ``all``/``1,3``/``1-4``); ``None``: all.
        max_gamma: if set (> 0), multiply each block by a learnable ``gamma = max_gamma *
            sigmoid(g)`` (effective norm <= max_gamma); ``g`` starts at ``logit(gamma_init)``.
        gamma_init: initial ``gamma / max_gamma``, in (0, 1).
        n_power_iterations: power-iteration steps per training forward (spectral).
        eps: added to the Frobenius norm / used by torch's power iteration (dimensionless).
        seed: seed of the power iteration's random start vectors (the global RNG is untouched).

    Returns:
        The :class:`~qft_cli.models.layout.MatrixSpec` of every normalised block, in layout order.
        The settings are also stored in ``model.config.qft_normalization`` when the model has a config.

    Parameter names after the call: ``<module>.parametrizations.<name>.original`` (the free
    weight), ``...parametrizations.<name>.0.g`` (scale logits) and ``...0.spectral.<i>._u``/``_v``
    (power-iteration buffers, persistent). Note that the Hugging Face Trainer applies weight decay
    to ``g`` like to any non-bias parameter (pulling gamma towards ``max_gamma / 2``); exclude it
    from decay in the optimizer if that matters for an experiment.

    Raises:
        QftInputError: unknown method or target, ``max_gamma <= 0``, ``gamma_init`` outside (0, 1), a
            layer beyond the depth, no matrix matched, the model is already normalised, or a
            selected parameter is tied to another module.
    """
    method_name = parse_method(method)
    if method_name is None:
        return []
    target_words = parse_targets(targets)
    if max_gamma is not None and not (max_gamma > 0 and math.isfinite(max_gamma)):
        raise QftInputError(f"--max-gamma {max_gamma} must be a positive number (1 = sub-normalised)")
    if not 0.0 < gamma_init < 1.0:
        raise QftInputError(f"gamma_init {gamma_init} must lie strictly between 0 and 1")
    if any(isinstance(m, BlockNormalization) for m in model.modules()):
        raise QftInputError("the model is already normalised: apply the normalisation once "
                            "(fold_normalization removes it)")
    layer_list: Optional[Sequence[int]]
    if isinstance(layers, str):
        depth = max((s.layer for s in classify_model(model)), default=0)
        layer_list = parse_layers(layers, depth)
    else:
        layer_list = None if layers is None else [int(x) for x in layers]
    specs = _select(model, target_words, layer_list)
    if not specs:
        raise QftInputError(f"no {','.join(target_words)} matrix found in {type(model).__name__} "
                            f"for layers {layers or 'all'}: check --targets and --layers")
    by_parameter: dict[str, list[MatrixSpec]] = {}
    for spec in specs:
        by_parameter.setdefault(spec.parameter, []).append(spec)
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    params = dict(model.named_parameters())
    for name in by_parameter:
        if counts[id(params[name])] > 1:
            raise QftInputError(f"parameter {name} is shared by several modules (tied weights): qft does not "
                                "normalise tied weights; untie them or leave this matrix out of --targets")
    devices = sorted({p.device.index for p in params.values() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, block_specs in by_parameter.items():
            module_path, tensor_name = name.rsplit(".", 1)
            module = model.get_submodule(module_path)
            weight = getattr(module, tensor_name)
            par = BlockNormalization(weight, block_specs, method_name, max_gamma=max_gamma, gamma_init=gamma_init,
                                     n_power_iterations=n_power_iterations, eps=eps)
            par.train(module.training)
            parametrize.register_parametrization(module, tensor_name, par)
    settings = {"method": method_name, "targets": list(target_words),
                "layers": None if layer_list is None else list(layer_list), "max_gamma": max_gamma,
                "gamma_init": gamma_init, "n_power_iterations": n_power_iterations, "eps": eps, "seed": seed}
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, settings)
    model._qft_normalization = settings  # type: ignore[attr-defined]
    return [s for s in specs]


def normalization_settings(model: nn.Module) -> Optional[dict[str, Any]]:
    """The keyword arguments :func:`apply_normalization` was called with (``method`` included), or
    ``None`` for a model that is not normalised. Pass them back to rebuild a saved model:
    ``apply_normalization(fresh_model, **settings)`` then ``load_state_dict``."""
    settings = getattr(model, "_qft_normalization", None)
    if settings is None:
        config = getattr(model, "config", None)
        settings = getattr(config, CONFIG_KEY, None) if config is not None else None
    return dict(settings) if settings else None


def _parametrizations(model: nn.Module):
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            for par in plist:
                if isinstance(par, BlockNormalization):
                    yield module_name, module, tensor_name, par


class _EvalMode:
    """Temporarily put the normalisation parametrizations in eval mode (no power-iteration step)."""

    def __init__(self, model: nn.Module):
        self.pars = [par for _, _, _, par in _parametrizations(model)]

    def __enter__(self):
        self.modes = [p.training for p in self.pars]
        for p in self.pars:
            p.eval()
        return self

    def __exit__(self, *exc):
        for p, mode in zip(self.pars, self.modes):
            p.train(mode)
        return False


@torch.no_grad()
def effective_matrices(model: nn.Module) -> list[EffectiveMatrix]:
    """Every normalised matrix as the model currently uses it, oriented ``(d_out, d_in)``.

    Evaluated without a power-iteration step (the parametrizations are in eval mode for the call),
    so observing the matrices does not change training. Order: layout order of the parameters.
    """
    out: list[EffectiveMatrix] = []
    with _EvalMode(model):
        for _, module, tensor_name, par in _parametrizations(model):
            stored = getattr(module, tensor_name).detach()
            gamma = par.gamma()
            for i, spec in enumerate(par.specs):
                out.append(EffectiveMatrix(spec.parameter, spec.layer, spec.matrix, spec.extract(stored).clone(),
                                           None if gamma is None else float(gamma[i])))
    return out


@torch.no_grad()
def gammas(model: nn.Module) -> list[dict[str, Any]]:
    """The learned scale of every normalised block: dicts with ``parameter``, ``layer``, ``matrix``,
    ``gamma`` (float, <= max_gamma). Empty when the normalisation has no scale."""
    rows = []
    for _, _, _, par in _parametrizations(model):
        gamma = par.gamma()
        if gamma is None:
            continue
        for i, spec in enumerate(par.specs):
            rows.append({"parameter": spec.parameter, "layer": spec.layer, "matrix": spec.matrix,
                         "gamma": float(gamma[i])})
    return rows


@torch.no_grad()
def set_exact_spectral_norms(model: nn.Module) -> int:
    """Make every spectral normalisation of ``model`` exact (:meth:`BlockNormalization.set_exact_sigma`):
    afterwards every effective matrix has spectral norm 1 to float32 rounding (<= 1 + 1e-6, tested
    against float64 ``torch.linalg.matrix_norm(ord=2)``). Called at the end of training, so the
    best model, its test scores and its export use exactly normalised weights.

    Returns:
        The number of spectral blocks set.
    """
    count = 0
    for _, module, tensor_name, par in _parametrizations(model):
        if par.method == "spectral":
            par.set_exact_sigma(module.parametrizations[tensor_name].original)
            count += len(par.specs)
    return count


@torch.no_grad()
def fold_normalization(model: nn.Module) -> nn.Module:
    """Replace every normalisation parametrization by a plain parameter holding the effective weight.

    Uses ``parametrize.remove_parametrizations(..., leave_parametrized=True)`` with the
    parametrizations in eval mode (no power-iteration step), so the folded model gives the same
    eval outputs as the normalised one. ``config.qft_normalization`` is removed. Returns ``model``.
    """
    with _EvalMode(model):
        for _, module, tensor_name, _ in list(_parametrizations(model)):
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, CONFIG_KEY):
        delattr(config, CONFIG_KEY)
    if hasattr(model, "_qft_normalization"):
        del model._qft_normalization
    return model
