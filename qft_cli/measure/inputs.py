"""Norms of hidden-state matrices S (``qft norms inputs``).

S_l of one sample is its ``num_tokens x d`` hidden-state matrix at layer ``l``: ``l = 0`` is the
embedding output (the input of the first block, ``hidden_states[0]`` in Hugging Face terms) and
``l >= 1`` is the output of block ``l``. For pre-LayerNorm models (GPT-2, Llama) this is the raw
block output: Hugging Face's *last* ``hidden_states`` entry has the final LayerNorm applied, the
block output does not.

How it is computed:

* Hidden states are captured with forward hooks on the transformer blocks, so every architecture
  that has a list of blocks works (also models that ignore ``output_hidden_states``), and the
  forward pass stops after the deepest requested block: blocks after it are never run.
* Samples are batched (sorted by length, padded to the longest sample *in the batch*, right
  padding, attention mask). Padding rows are set to zero before any norm: a zero row changes
  neither ||S||_F nor the singular values, so the values equal those of the real-token rows alone
  and do not depend on the batch size or on the other samples of a batch.
* Norms are accumulated in float64 (:mod:`qft_cli.measure.norms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import pandas as pd
import torch

from qft_cli.measure.norms import ACCUMULATE, fit_power_law, stable_rank
from qft_cli.models.names import max_positions
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report

INPUT_COLUMNS = ["model", "model_alias", "model_format", "dataset", "sample_index", "layer", "num_tokens",
                 "frobenius_norm", "spectral_norm", "stable_rank", "max_row_norm", "finite", "all_zero"]


class _StopForward(Exception):
    """Raised by the hook of the deepest requested block to skip the remaining blocks."""


def num_layers(config) -> int:
    """Number of transformer blocks (of the encoder, for encoder-decoder models)."""
    for name in ("encoder_layers", "num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise QftInputError(f"cannot tell the depth of model type '{getattr(config, 'model_type', '?')}' from its config")


def parse_layers(spec: str, depth: int, valid: Optional[str] = None) -> list[int]:
    """Parse ``--layers``: ``all`` or comma-separated indices and ranges (``0,1``, ``0-3``).

    Args:
        valid: how the error messages state the valid range (default ``layers are 0 (embedding
            output) to <depth>``; ``norms attention`` says blocks 1 to depth).

    Raises:
        QftInputError: malformed, negative, or beyond ``depth`` (layers are 0..depth).
    """
    valid = valid or f"layers are 0 (embedding output) to {depth}"
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(depth + 1))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                layers.update(range(a, b + 1))
            else:
                layers.add(int(part))
    except ValueError:
        raise QftInputError(f"--layers '{spec}' is not a list of layer indices: use e.g. 0,1 or 0-3 or all") from None
    if not layers:
        raise QftInputError(f"--layers {spec} selects no layer (a range is low-high, e.g. 1-3): {valid}")
    bad = sorted(x for x in layers if x < 0 or x > depth)
    if bad:
        raise QftInputError(f"--layers {spec}: layer {bad[0]} does not exist; the model has "
                            f"{depth} blocks, so {valid}")
    return sorted(layers)


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | list[torch.nn.Module]:
    """The ModuleList of transformer blocks (of the encoder for encoder-decoder models). ALBERT,
    whose blocks share layers: the list of the depth's blocks in the order they run, each the
    layer group it runs (``AlbertTransformer``: block i runs group ``int(i / (L / G))``), so one
    module appears several times.

    Raises:
        QftInputError: no list of blocks with the config's depth was found (names the module types).
    """
    config = getattr(model, "config", None)
    depth = num_layers(config) if config is not None else None
    root = model
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        root = model.get_encoder()
    groups = getattr(getattr(root, "encoder", None), "albert_layer_groups", None)
    if isinstance(groups, torch.nn.ModuleList) and depth:
        if getattr(config, "inner_group_num", 1) != 1:
            raise QftInputError("ALBERT with more than one layer per group (inner_group_num > 1) is not supported")
        return [groups[int(i / (depth / len(groups)))] for i in range(depth)]
    candidates = []
    for name, module in root.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and (depth is None or len(module) == depth):
            if len({type(m) for m in module}) == 1:
                candidates.append((name, module))
    if not candidates:
        from qft_cli.models.layout import module_types

        raise QftInputError(f"found no list of {depth} transformer blocks in the model (module types: "
                            f"{', '.join(module_types(model))}): this architecture is not supported")
    candidates.sort(key=lambda nm: ("decoder" in nm[0], nm[0].count(".")))
    return candidates[0][1]


def input_device(model: torch.nn.Module) -> torch.device:
    """Device of the input embedding (the right place for input ids, also with ``device_map``)."""
    try:
        return model.get_input_embeddings().weight.device
    except Exception:
        return next(model.parameters()).device


def repad(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, d) from unpadded hidden states (real tokens, d) in row-major order of ``mask``
    (the layout of ``flash_attn.bert_padding.unpad_input``); padding rows are zero."""
    flat = mask.flatten().bool()
    if hidden.shape[0] != int(flat.sum()):
        raise RuntimeError(f"a block returned {hidden.shape[0]} token rows for {int(flat.sum())} real tokens")
    full = hidden.new_zeros(flat.numel(), hidden.shape[-1])
    full[flat] = hidden
    return full.view(*mask.shape, hidden.shape[-1])


@torch.no_grad()
def masked_norms(hidden: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Norms of each sample's real-token rows.

    Args:
        hidden: (batch, tokens, d) hidden states, any float dtype.
        mask: (batch, tokens) bool or 0/1, True for real tokens.

    Returns:
        dict of float64 tensors of shape (batch,): ``frobenius_norm``, ``spectral_norm``,
        ``max_row_norm``, and bool ``finite`` and ``all_zero``. Non-finite samples get NaN norms;
        an all-zero S (every real-token row zero: a degenerate model, e.g. zeroed embeddings) is
        finite with norms 0 and ``all_zero`` True.
    """
    device = hidden.device if hidden.device.type != "mps" else torch.device("cpu")  # MPS has no float64
    s = hidden.to(device=device, dtype=ACCUMULATE)
    m = mask.to(device=device, dtype=torch.bool)
    s = s.masked_fill(~m[..., None], 0.0)
    finite = torch.isfinite(s).flatten(1).all(dim=1)
    s = torch.where(finite[:, None, None], s, torch.zeros((), dtype=ACCUMULATE, device=device))
    frob = torch.linalg.vector_norm(s, dim=(1, 2))
    rows = torch.linalg.vector_norm(s, dim=2)
    t, d = s.shape[1], s.shape[2]
    gram = s @ s.mT if t <= d else s.mT @ s
    spec = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0).sqrt()
    nan = torch.tensor(float("nan"), dtype=ACCUMULATE, device=device)
    out = {"frobenius_norm": frob, "spectral_norm": spec, "max_row_norm": rows.max(dim=1).values}
    out = {k: torch.where(finite, v, nan).cpu() for k, v in out.items()}
    out["finite"] = finite.cpu()
    out["all_zero"] = (finite & (frob == 0)).cpu()
    return out


def check_num_tokens(model: torch.nn.Module, num_tokens: int, name: str) -> None:
    """Raise if ``num_tokens`` exceeds the position table of ``model`` (:func:`max_positions`).

    Raises:
        QftInputError: naming the largest ``--max-tokens`` that fits.
    """
    limit = max_positions(model)
    if limit is not None and num_tokens > limit:
        raise QftInputError(f"a sample has {num_tokens} tokens but {name} has {limit} positions: "
                            f"use --max-tokens {limit} or less")


@dataclass
class InputNormsResult:
    """Result of :func:`hidden_state_norms`: the table and the (sample, layer) pairs that were not
    finite, or all zero (degenerate: both are warnings, exit status 2)."""

    table: pd.DataFrame
    nonfinite: list[tuple[int, int]] = field(default_factory=list)
    all_zero: list[tuple[int, int]] = field(default_factory=list)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if batch_size == -1:
        return [order]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def check_samples(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], batch_size: int,
                  name: str = "the model") -> None:
    """Validate samples and ``batch_size`` before any forward pass (shared by ``norms inputs``
    and ``norms attention``).

    Raises:
        QftInputError: ``batch_size`` is 0 or < -1; no samples; a sample longer than the model's
            position table (:func:`max_positions`); a token id without an embedding row.
    """
    if batch_size == 0 or batch_size < -1:
        raise QftInputError(f"--batch-size must be a positive number or -1 for no limit (got {batch_size})")
    if not token_ids:
        raise QftInputError("no samples to measure")
    check_num_tokens(model, max(len(x) for x in token_ids), name)
    try:
        rows = model.get_input_embeddings().num_embeddings
    except Exception:  # custom code without get_input_embeddings
        rows = None
    top = max(max(x) for x in token_ids)
    if rows is not None and top >= rows:
        raise QftInputError(f"token id {top} has no row in the {rows} rows of the embedding of {name}: "
                            "the tokenizer does not belong to this model (or the embedding was not resized)")


def padded_batches(token_ids: Sequence[Sequence[int]], batch_size: int,
                   pad_token_id: int = 0) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Yield ``(sample indices, input_ids, attention_mask)`` per batch, on CPU.

    Samples are sorted by length (longest first), right-padded with ``pad_token_id`` to the longest
    sample of the batch; ``attention_mask`` (batch, width) int64 is 1 on real tokens.
    ``batch_size`` -1 puts every sample in one batch.
    """
    lengths = [len(x) for x in token_ids]
    for batch in _batches(lengths, batch_size):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, :lengths[i]] = torch.as_tensor(token_ids[i], dtype=torch.long)
            mask[row, :lengths[i]] = 1
        yield batch, ids, mask


def stop_after(block: torch.nn.Module):
    """Forward hook on ``block`` that ends the forward pass after it (blocks after it never run);
    returns the hook handle. Use with :func:`forward_encoder`."""
    def hook(_module, _args, _output):
        raise _StopForward
    return block.register_forward_hook(hook)


def forward_encoder(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    """Run the model (its encoder for encoder-decoder models) on one padded batch, moved to the
    input device, until a :func:`stop_after` hook (or the end); outputs are discarded (hooks capture)."""
    encoder = model.get_encoder() if getattr(model.config, "is_encoder_decoder", False) else model
    device = input_device(model)
    try:
        encoder(input_ids=ids.to(device), attention_mask=mask.to(device))
    except _StopForward:
        pass


@torch.no_grad()
def hidden_state_norms(model: torch.nn.Module, token_ids: Sequence[Sequence[int]], layers: Sequence[int], *,
                       batch_size: int = 8, pad_token_id: int = 0, progress: Optional[ProgressFn] = None,
                       labels: Optional[dict] = None) -> InputNormsResult:
    """Spectral and Frobenius norms of S_l for every sample and requested layer.

    Args:
        model: a Hugging Face base model (``AutoModel``) in eval mode; encoder-decoder models are
            measured on their encoder.
        token_ids: one list of token ids per sample (N_i >= 1 tokens each).
        layers: layer indices, 0 = embedding output, l = output of block l (see :func:`parse_layers`).
        batch_size: samples per forward pass; -1 = all in one batch.
        pad_token_id: id used for padding (its rows never enter a norm; any valid id works).
        labels: extra constant columns for every row (e.g. model, model_alias, dataset).

    Returns:
        :class:`InputNormsResult` whose table has the columns of :data:`INPUT_COLUMNS` (float64
        norms, in the units of the hidden states), one row per (sample, layer).

    Raises:
        QftInputError: ``batch_size`` is 0 or < -1; a sample longer than the model's position
            table (:func:`max_positions`); no block list found.
    """
    check_samples(model, token_ids, batch_size, (labels or {}).get("model_alias", "the model"))
    blocks = find_blocks(model)
    layers = sorted(set(layers))
    deepest = layers[-1]
    captured: dict[int, torch.Tensor] = {}

    # one hook per distinct block module; its k-th call in a forward pass is block runs[id][k] (a
    # module runs several blocks in ALBERT)
    runs: dict[int, list[int]] = {}
    for index, block in enumerate(blocks):
        runs.setdefault(id(block), []).append(index + 1)
    calls: dict[int, int] = {}

    def pre_hook(module, args, kwargs):
        if calls.get(id(module), 0) == 0:
            captured[0] = args[0] if args else kwargs["hidden_states"]
            if deepest == 0:
                raise _StopForward

    def hook(module, _args, output):
        k = calls.get(id(module), 0)
        calls[id(module)] = k + 1
        layer = runs[id(module)][k] if k < len(runs[id(module)]) else None
        if layer in layers:
            captured[layer] = output[0] if isinstance(output, (tuple, list)) else output
        if layer == deepest:
            raise _StopForward

    handles = []
    if 0 in layers:
        handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
    if deepest > 0:
        seen = set()
        for block in blocks[:deepest]:
            if id(block) not in seen:
                seen.add(id(block))
                handles.append(block.register_forward_hook(hook))
    lengths = [len(x) for x in token_ids]
    rows: list[dict] = []
    nonfinite: list[tuple[int, int]] = []
    all_zero: list[tuple[int, int]] = []
    num_batches = len(_batches(lengths, batch_size))
    try:
        for b, (batch, ids, mask) in enumerate(padded_batches(token_ids, batch_size, pad_token_id)):
            captured.clear()
            calls.clear()
            forward_encoder(model, ids, mask)
            for layer in layers:
                if layer not in captured:
                    raise RuntimeError(f"layer {layer} was not captured: the model did not run block {layer}")
                hidden = captured[layer]
                if hidden.dim() == 2:  # unpadded (real tokens, d), as DNABERT-2's encoder passes them
                    hidden = repad(hidden, mask.to(hidden.device))
                norms = masked_norms(hidden, mask.to(hidden.device))
                for row, i in enumerate(batch):
                    ok = bool(norms["finite"][row])
                    zero = bool(norms["all_zero"][row])
                    if not ok:
                        nonfinite.append((i, layer))
                    if zero:
                        all_zero.append((i, layer))
                    rows.append({"sample_index": i, "layer": layer, "num_tokens": lengths[i],
                                 "frobenius_norm": float(norms["frobenius_norm"][row]),
                                 "spectral_norm": float(norms["spectral_norm"][row]),
                                 "max_row_norm": float(norms["max_row_norm"][row]), "finite": ok,
                                 "all_zero": zero})
            report(progress, "hidden states", b + 1, num_batches)
    finally:
        for h in handles:
            h.remove()
    table = pd.DataFrame(rows).sort_values(["sample_index", "layer"], kind="stable").reset_index(drop=True)
    for key, value in reversed(list((labels or {}).items())):  # label columns lead, in the given order
        table.insert(0, key, value)
    table = table.astype({"sample_index": "int64", "layer": "int64", "num_tokens": "int64"})
    table.insert(table.columns.get_loc("spectral_norm") + 1, "stable_rank",
                 stable_rank(table["frobenius_norm"], table["spectral_norm"]))
    return InputNormsResult(table, sorted(nonfinite), sorted(all_zero))


def summarize_inputs(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dataset, layer): min/median/max of each norm and the fitted exponent b of
    norm ~ c N^b (:func:`qft_cli.measure.norms.fit_power_law`) for the Frobenius and spectral norms."""
    out = []
    keys = [k for k in ("model_alias", "dataset", "layer") if k in table.columns]
    for key, group in table.groupby(keys, sort=True):
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rec["num_samples"] = len(group)
        for norm in ("frobenius_norm", "spectral_norm"):
            rec[f"{norm}_min"] = group[norm].min()
            rec[f"{norm}_median"] = group[norm].median()
            rec[f"{norm}_max"] = group[norm].max()
            rec[f"{norm}_exponent"] = fit_power_law(group["num_tokens"], group[norm]).exponent
        out.append(rec)
    return pd.DataFrame(out)
