"""Norms of every attention and FFN weight matrix (``qft norms weights``).

Weights are streamed tensor by tensor from the checkpoint files (safetensors shards, or
``pytorch_model*.bin`` through ``torch.load(mmap=True, weights_only=True)``), so peak memory stays
near the largest single tensor as stored (norms are accumulated in float64 over blocks of rows, see
:func:`qft_cli.measure.norms.matrix_stats`), not the whole model: a 7B model is
measurable on a 24 GiB machine. Tiny models (built in memory) are read from their parameters.
No model code runs, so no ``trust_remote_code`` is ever needed here.

Which parameters are matrices, their orientation (``(d_out, d_in)``), layer numbering and the split
of fused projections are decided by :mod:`qft_cli.models.layout`.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import pandas as pd
import torch

from qft_cli.measure.attention import composite_head_rows, gram_norms, head_grams
from qft_cli.measure.norms import matrix_stats, stable_rank, stats_record
from qft_cli.models.layout import (
    _EMBEDDING_RE,
    BLOCK_EXCEPTIONS_RE,
    MATRIX_ORDER,
    SHARED_EXPERT,
    MatrixSpec,
    classify,
    in_block,
    latent_effective,
    matrix_head_dim,
    split_heads,
)
from qft_cli.models.loading import TensorStore, open_weights  # noqa: F401 (re-exported)
from qft_cli.models.names import ModelSource
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report

WEIGHT_COLUMNS = ["model", "model_alias", "model_format", "part", "layer", "matrix", "expert", "shared_by_blocks", "parameter", "d_out", "d_in", "dtype",
                  "quant_type",
                  "frobenius_norm", "spectral_norm", "stable_rank", "column_norm_mean", "column_norm_var", "column_norm_max",
                  "row_norm_mean", "row_norm_var", "row_norm_max", "spectral_norm_error_bound", "finite"]
VECTOR_MATRICES = ("q", "k", "v", "embedding")


@dataclass
class WeightNormsResult:
    """Result of :func:`weight_norms`.

    Attributes:
        table: one row per matrix, columns :data:`WEIGHT_COLUMNS`.
        vectors: column l2 norms of q/k/v and per-token l2 norms of the embedding (long format:
            part, layer, matrix, kind, index, value).
        heads: per-head spectral and Frobenius norms of every attention matrix (part, layer,
            matrix, head, spectral_norm, frobenius_norm); see :func:`qft_cli.models.layout.split_heads`.
            Also the weight-only composites of each block, matrix ``qk`` (W_q,h^T W_k,h, GQA heads
            paired as the model pairs them) and ``ov`` (W_o,h W_v,h), computed through
            head_dim x head_dim matrices (:func:`qft_cli.measure.attention.weight_composites`).
        nonfinite: parameters that held NaN/inf.
        unrecognised: 2-D tensors outside the blocks that qft does not recognise
            (:func:`unrecognised_parameters`): not measured, reported.
        shared_layers: for ALBERT, each stored layer and the blocks that run it (e.g.
            ``{"encoder.albert_layer_groups.0": [1, 2, ..., 12]}``); empty for other models.
    """

    table: pd.DataFrame
    vectors: pd.DataFrame
    nonfinite: list[str]
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)
    unrecognised: list[str] = field(default_factory=list)
    shared_layers: dict[str, list[int]] = field(default_factory=dict)


#: 2-D tensors qft knows and does not measure: the ``position_ids``/``token_type_ids`` buffers (integer
#: indices some checkpoints store), position and token-type embeddings, tied or shared
#: copies of the token embedding, poolers and the heads of a task (LM, masked-LM, classifier).
#: Any other 2-D tensor outside :func:`qft_cli.models.layout.classify` is *unrecognised*: listed in
#: ``run.json`` (``unrecognised_parameters``) and in one warning line.
NOT_MEASURED_RE = re.compile(r"(?:^|\.)(?:position_ids|token_type_ids|position_embeddings|wpe|embed_positions|position_embedding|"
                             r"token_type_embeddings|positions_embed|rel_embeddings|pooler|lm_head|cls|embed_out|classifier|score|qa_outputs)(?:\.|$)")


def unrecognised_parameters(shapes: dict[str, tuple[int, ...]], specs: list[MatrixSpec]) -> list[str]:
    """Tensors of two or more dimensions that are neither measured (``specs``, their ``factors``)
    nor known as not measured (:data:`NOT_MEASURED_RE`, copies of the token embedding, the
    in-block exceptions :data:`qft_cli.models.layout.BLOCK_EXCEPTIONS_RE`), in checkpoint order."""
    measured = {s.parameter for s in specs} | {f for s in specs for f in s.factors}
    return [name for name, shape in shapes.items()
            if len(shape) >= 2 and name not in measured and not NOT_MEASURED_RE.search(name)
            and not _EMBEDDING_RE.search(name) and not BLOCK_EXCEPTIONS_RE.search(name)]


def _block_label(part: str, layer: int, expert: str = "") -> str:
    who = f" expert {expert}" if expert and expert != SHARED_EXPERT else (" shared expert" if expert else "")
    return f"{part + ' ' if part else ''}block {layer}{who}"


def check_complete_blocks(specs: list[MatrixSpec], unrecognised: list[str], name: str) -> None:
    """Completeness of every block (docs/conventions.md, "norms weights completeness").

    Every block has q, k, v and o; the decoder blocks of an encoder-decoder model also the
    cross-attention ``cross_q/k/v/o``; every block has an FFN, and every FFN (dense, each routed
    expert, the shared expert) has ``ffn_up`` and ``ffn_down``, and ``ffn_gate`` where another FFN of
    the block has one; routed experts come with a ``router``, and the MoE blocks of a part have the
    same experts. Any other matrix type a sibling block of the same part has (GPT-2 cross-attention,
    latent-attention factors) must be there too. No tensor of two or more dimensions inside a block
    may be unrecognised (the known exceptions are :data:`qft_cli.models.layout.BLOCK_EXCEPTIONS_RE`).

    Raises:
        QftInputError: naming the first blocks that lack a matrix (and the unrecognised tensors of
            those blocks, e.g. a renamed key), or the unrecognised tensors inside blocks.
    """
    by_block: dict[tuple[str, int], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for spec in specs:
        if spec.layer > 0:
            by_block[(spec.part, spec.layer)][spec.expert].add(spec.matrix)
    gaps = []
    attention_like = set(MATRIX_ORDER[:MATRIX_ORDER.index("router")])
    parts_with_decoder = {p for p, _ in by_block} >= {"encoder", "decoder"}  # OPT's "decoder." alone: decoder-only
    for (part, layer), groups in sorted(by_block.items()):
        dense = groups.get("", set())
        required = {"q", "k", "v", "o"}
        if parts_with_decoder and part == "decoder":
            required |= {"cross_q", "cross_k", "cross_v", "cross_o"}
        siblings = set().union(*(g.get("", set()) for (p, _), g in by_block.items() if p == part)) & attention_like
        for matrix in sorted((required | siblings) - dense, key=MATRIX_ORDER.index):
            gaps.append(f"{_block_label(part, layer)} has no {matrix}")
        ffns = {e: m & {"ffn_gate", "ffn_up", "ffn_down"} for e, m in groups.items()}
        ffns = {e: m for e, m in ffns.items() if m}
        if not ffns:
            gaps.append(f"{_block_label(part, layer)} has no FFN (ffn_up, ffn_down)")
        gated = any("ffn_gate" in m for m in ffns.values())
        for expert, matrices in ffns.items():
            need = {"ffn_up", "ffn_down"} | ({"ffn_gate"} if gated else set())
            for matrix in sorted(need - matrices, key=MATRIX_ORDER.index):
                gaps.append(f"{_block_label(part, layer, expert)} has no {matrix}")
        routed = {e for e in groups if e not in ("", SHARED_EXPERT)}
        if routed and "router" not in dense:
            gaps.append(f"{_block_label(part, layer)} has experts but no router")
        others = [{e for e in g if e not in ("", SHARED_EXPERT)} for (p, _), g in by_block.items() if p == part]
        widest = max(others, key=len)
        if routed and routed != widest:
            for expert in sorted(widest - routed, key=int)[:4]:
                gaps.append(f"{_block_label(part, layer, expert)} is missing")
    if gaps:
        blocks = {g.split(" has no ")[0].split(" expert")[0].split(" shared")[0] for g in gaps}
        nearby = [u for u in unrecognised if any(f".{int(b.rsplit(' ', 1)[1]) - 1}." in u for b in blocks)]
        hint = f" (unrecognised tensors there: {', '.join(nearby[:4])})" if nearby else ""
        raise QftInputError(f"{name}: missing weight matrices ({len(gaps)}): "
                            f"{'; '.join(gaps[:4])}"
                            f"{hint}: the checkpoint is incomplete, a weight was renamed, or qft does not know "
                            "this layout; fix or re-download it")
    inside = [u for u in unrecognised if in_block(u)]
    if inside:
        raise QftInputError(f"{name}: {len(inside)} tensors inside the blocks are not known to qft "
                            f"({', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''}): "
                            "they would go unmeasured; this layout is not supported (docs/conventions.md)")


def shared_layers(shapes: dict[str, tuple[int, ...]], config: dict) -> dict[str, list[int]]:
    """ALBERT's parameter sharing: each stored layer group (``...albert_layer_groups.G``) and the
    blocks 1..L that run it (block i+1 runs group ``int(i / (L / G))``, as ``AlbertTransformer``
    does); ``{}`` for models without shared layers.

    Raises:
        QftInputError: an ALBERT with more than one layer per group (``inner_group_num`` > 1).
    """
    groups = sorted({m.group(1) for n in shapes for m in [re.search(r"^(.*albert_layer_groups\.\d+)\.", n)] if m},
                    key=lambda g: int(g.rsplit(".", 1)[1]))
    if not groups:
        return {}
    if any(re.search(r"albert_layers\.[1-9]", n) for n in shapes):
        raise QftInputError("ALBERT with more than one layer per group (inner_group_num > 1) is not supported")
    depth = int(config.get("num_hidden_layers", len(groups)))
    per = depth / len(groups)
    return {g: [i + 1 for i in range(depth) if int(i / per) == k] for k, g in enumerate(groups)}


def _blocks_text(blocks: list[int]) -> str:
    return f"{blocks[0]}-{blocks[-1]}" if len(blocks) > 1 and blocks == list(range(blocks[0], blocks[-1] + 1)) \
        else ",".join(map(str, blocks))


def _config_value(config, *names):
    from qft_cli.models.layout import _config_get

    value = _config_get(config or {}, *names)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_config_shapes(shapes: dict[str, tuple[int, ...]], specs: list[MatrixSpec], config, name: str) -> None:
    """The self-attention matrices must have the shapes their config implies, or the per-head
    tables would be computed with the wrong head width (or silently left empty).

    With ``d`` = ``hidden_size`` (``n_embd``, ``d_model``, ``dim``), ``H`` heads
    (``num_attention_heads``, ...; ``decoder_attention_heads`` for a decoder part), ``H_kv`` =
    ``num_key_value_heads`` (default ``H``; grouped-query attention, Ainslie et al. 2023) and
    ``d_head`` = ``head_dim`` (default ``d / H``), the oriented ``(d_out, d_in)`` shapes are
    q ``(H d_head, d)``, k and v ``(H_kv d_head, d)``, o ``(d, H d_head)`` (Vaswani et al. 2017,
    section 3.2.2). Checked only where the config gives ``d`` and ``H`` and uses no other head
    widths (multi-head latent attention's ``kv_lora_rank``/``v_head_dim``).

    Raises:
        QftInputError: the first mismatching tensors: name, shape found, shape the config implies.
    """
    config = config or {}
    if _config_value(config, "kv_lora_rank", "v_head_dim", "qk_nope_head_dim") is not None:
        return
    d = _config_value(config, "hidden_size", "n_embd", "d_model", "dim")
    wrong = []
    for spec in specs:
        if spec.matrix not in ("q", "k", "v", "o"):
            continue
        heads = (_config_value(config, "decoder_attention_heads") if spec.part == "decoder" else None) or \
            _config_value(config, "num_attention_heads", "n_head", "encoder_attention_heads", "n_heads")
        if not d or not heads:
            return
        kv_heads = _config_value(config, "num_key_value_heads") or heads
        width = _config_value(config, "head_dim", "attention_head_size")
        if width is None:
            if d % heads:
                raise QftInputError(f"{name}: config.json gives hidden size {d} and {heads} attention heads, "
                                    f"which do not divide (head width {d}/{heads}): fix config.json or use the "
                                    "one the checkpoint was saved with")
            width = d // heads
        expected = {"q": (heads * width, d), "k": (kv_heads * width, d), "v": (kv_heads * width, d),
                    "o": (d, heads * width)}[spec.matrix]
        try:
            found = tuple(spec.extract(torch.empty(shapes[spec.parameter], device="meta")).shape)
        except (RuntimeError, IndexError, KeyError):  # a split that needs the real tensor
            continue
        if found != expected:
            where = f" ({spec.matrix} of {spec.parameter})" if spec.rows is not None else ""
            wrong.append(f"{spec.parameter if not where else spec.matrix + ' block'}{where} is {found}, "
                         f"the config implies {expected}")
    if wrong:
        facts = (f"hidden_size={d}, heads={heads}, key/value heads={kv_heads}, head_dim={width}"
                 if d and heads and width else "")
        raise QftInputError(f"{name}: config.json does not match the weights ({len(wrong)} tensor(s)): "
                            f"{'; '.join(wrong[:3])}{f' ({facts})' if facts else ''}: fix config.json or "
                            "use the one the checkpoint was saved with")


def iter_matrices(store: TensorStore, specs: list[MatrixSpec], dtype: Optional[torch.dtype] = None,
                  device: Optional[torch.device] = None) -> Iterator[tuple[MatrixSpec, torch.Tensor]]:
    """Yield ``(spec, W)`` with W oriented ``(d_out, d_in)``; each stored tensor is read once
    (fused parameters serve all their blocks) and dropped before the next is read."""
    by_param: dict[str, list[MatrixSpec]] = defaultdict(list)
    for spec in specs:
        by_param[spec.parameter].append(spec)
    cache: dict[str, torch.Tensor] = {}  # factors of the composites of the current block
    for parameter, group in by_param.items():
        if group[0].factors:
            tensors = {}
            for f in group[0].factors:
                if f not in cache:
                    cache.clear() if len(cache) > 8 else None
                    cache[f] = store.read(f)
                tensors[f] = cache[f]
            for spec in group:
                w = latent_effective(spec, tensors, store.config)
                w = w.to(dtype) if dtype is not None else w
                yield spec, (w.to(device) if device is not None else w)
            continue
        tensor = store.read(parameter)
        if dtype is not None:
            tensor = tensor.to(dtype)
        if device is not None:
            tensor = tensor.to(device)
        if any(s.matrix in ("q_a", "q_b", "kv_a", "kv_b") for s in group):
            cache[parameter] = tensor
        for spec in group:
            yield spec, spec.extract(tensor)
        del tensor


@contextmanager
def one_thread_each():
    """torch's intra-op thread count set to 1 inside (for matrices measured on several Python
    threads at once), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weight_norms(source: ModelSource, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
                 progress: Optional[ProgressFn] = None, labels: Optional[dict] = None,
                 exact: bool = False, parameters: Optional[set[str]] = None, workers: int = 1) -> WeightNormsResult:
    """Frobenius and spectral norms, and column/row l2-norm statistics, of every matrix.

    Args:
        source: the model (see :func:`qft_cli.models.names.resolve_model`).
        dtype: cast each tensor to this dtype first (as if the model were loaded in it); ``None``
            keeps the stored dtype. Norms are accumulated in float64 either way.
        device: where to compute (``cuda`` is much faster for 7B models).
        labels: constant columns to add (e.g. ``model``, ``model_alias``).
        exact: spectral norms by the float64 Gram matrix + ``eigvalsh`` for every matrix (relative
            error ~1e-15); default: the fast block-Krylov path for matrices whose short side exceeds
            :data:`qft_cli.measure.norms.EXACT_BELOW`, certified to :data:`qft_cli.measure.norms.SPECTRAL_RTOL`
            (column ``spectral_norm_error_bound``; see :func:`qft_cli.measure.norms.matrix_stats`).
        parameters: measure only the matrices stored in these parameters (a rank's share under
            torch.distributed); ``None`` = all.
        workers: matrices measured at once on a CPU, each with one torch thread (torch's thread
            count is set to 1 meanwhile, then restored). Two workers on two cores are about 1.25x
            faster than one matrix at a time on two threads (the Krylov steps' small eigen solves
            and QRs do not parallelise). The tables do not depend on ``workers`` when torch runs
            one thread per matrix anyway (``workers=1`` keeps torch's thread count; the CLI passes
            ``--threads`` as ``workers``, so its numbers do not depend on ``--threads``). Ignored
            (1) on other devices.

    Memory: per matrix in flight (at most ``workers``, plus the one being read), the stored tensor,
    float64 blocks of 2-16 MiB and one copy of it as stored (bfloat16) or at most a 192 MiB float32
    copy (see :func:`qft_cli.measure.norms.matrix_stats`); no whole-tensor float64 copy.

    Raises:
        QftInputError: no attention matrices found (the message lists the parameter names seen); a
            block lacking a matrix its sibling blocks have (:func:`check_complete_blocks`); attention
            matrices of other shapes than the config implies (:func:`check_config_shapes`).
    """
    store = open_weights(source)
    try:
        specs = classify(store.shapes.items(), store.config)
        if not any(s.role == "attention" for s in specs):
            sample = ", ".join(list(store.shapes)[:8])
            raise QftInputError(f"found no attention matrices in {source.name} (parameters seen: {sample}, ...): "
                                "this architecture's parameter names are not known to qft")
        unrecognised = unrecognised_parameters(store.shapes, specs)
        check_complete_blocks(specs, unrecognised, source.name)
        check_config_shapes(store.shapes, specs, store.config, source.name)
        sharing = shared_layers(store.shapes, store.config)
        shared_text = {int(k.rsplit(".", 1)[1]) + 1: _blocks_text(v) for k, v in sharing.items()}
        if parameters is not None:
            specs = [s for s in specs if s.parameter in parameters or (s.factors and s.factors[0] in parameters)]
        rows, vectors, heads, nonfinite = [], [], [], []
        pending: dict[tuple[str, int], dict[str, torch.Tensor]] = defaultdict(dict)  # q/k/v/o heads of a layer

        def measure(spec: MatrixSpec, w: torch.Tensor):
            stats = matrix_stats(w, exact=exact)  # finite=False (NaN norms) for a NaN or infinite entry
            dim = matrix_head_dim(store.config, spec.matrix)
            blocks = split_heads(spec.matrix, w, dim) if stats.finite and not spec.expert else None
            grams = None if blocks is None else head_grams(blocks, "columns" if spec.matrix.endswith("o") else "rows")
            return stats, grams, (None if grams is None else gram_norms(grams))

        def record(spec: MatrixSpec, w: torch.Tensor, stats, grams, head_values) -> None:
            finite = stats.finite
            rec = {"part": spec.part, "layer": spec.layer, "matrix": spec.matrix, "expert": spec.expert,
                   "shared_by_blocks": shared_text.get(spec.layer, "") if spec.layer else "",
                   "parameter": spec.parameter,
                   "d_out": int(w.shape[0]), "d_in": int(w.shape[1]),
                   "dtype": str(w.dtype).removeprefix("torch."),
                   "quant_type": store.quant_types.get(spec.parameter), "finite": finite}
            if finite:
                rec.update(stats_record(stats), spectral_norm_error_bound=stats.spectral_error_bound)
                if spec.matrix in VECTOR_MATRICES and not spec.expert:
                    kind = "token_norm" if spec.matrix == "embedding" else "column_norm"
                    values = stats.row_norms if spec.matrix == "embedding" else stats.column_norms
                    vectors.append(pd.DataFrame({"part": spec.part, "layer": spec.layer, "matrix": spec.matrix,
                                                 "kind": kind, "vector_index": range(values.numel()),
                                                 "value": values.cpu().numpy()}))
                if grams is not None:
                    head_spectral, head_frobenius = head_values
                    heads.append(pd.DataFrame({"part": spec.part, "layer": spec.layer, "matrix": spec.matrix,
                                               "head_index": range(grams.shape[0]),
                                               "spectral_norm": head_spectral.cpu().numpy(),
                                               "frobenius_norm": head_frobenius.cpu().numpy()}))
                    if spec.matrix in ("q", "k", "v", "o"):  # weight-only composites qk and ov
                        layer_grams = pending[(spec.part, spec.layer)]
                        layer_grams[spec.matrix] = grams
                        composite = composite_head_rows(layer_grams)
                        if composite is not None:
                            heads.append(composite.assign(part=spec.part, layer=spec.layer)[
                                ["part", "layer", "matrix", "head_index", "spectral_norm", "frobenius_norm"]])
                            del pending[(spec.part, spec.layer)]
            else:
                nonfinite.append(spec.parameter)
            rows.append(rec)
            report(progress, f"weights {source.name}", len(rows), len(specs))

        on_cpu = device is None or torch.device(device).type == "cpu"
        workers = max(1, workers) if on_cpu else 1
        if workers == 1:
            for spec, w in iter_matrices(store, specs, dtype, device):
                record(spec, w, *measure(spec, w))
        else:  # results recorded in reading order, so the tables do not depend on ``workers``
            with one_thread_each(), ThreadPoolExecutor(workers) as pool:
                queue: deque = deque()
                for spec, w in iter_matrices(store, specs, dtype, device):
                    queue.append((spec, w, pool.submit(measure, spec, w)))
                    if len(queue) >= workers:
                        spec_, w_, job = queue.popleft()
                        record(spec_, w_, *job.result())
                while queue:
                    spec_, w_, job = queue.popleft()
                    record(spec_, w_, *job.result())
    finally:
        store.close()
    table = pd.DataFrame(rows)
    for key, value in reversed(list((labels or {}).items())):  # label columns lead, in the given order
        table.insert(0, key, value)
    # every norm column, also when no matrix was finite (NaN then)
    table = table.reindex(columns=[c for c in WEIGHT_COLUMNS if c in table.columns or c not in ("model", "model_alias", "model_format")])
    norm_columns = [c for c in WEIGHT_COLUMNS[WEIGHT_COLUMNS.index("frobenius_norm"):] if c != "finite"]
    table = table.astype({c: "float64" for c in norm_columns})
    table["stable_rank"] = stable_rank(table["frobenius_norm"], table["spectral_norm"])
    vec = pd.concat(vectors, ignore_index=True) if vectors else pd.DataFrame(
        columns=["part", "layer", "matrix", "kind", "vector_index", "value"])
    for key, value in reversed(list((labels or {}).items())):
        vec.insert(0, key, value)
    vec = vec.astype({"layer": "int64", "vector_index": "int64", "value": "float64"})
    head_table = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame(
        columns=["part", "layer", "matrix", "head_index", "spectral_norm", "frobenius_norm"])
    for key, value in reversed(list((labels or {}).items())):
        head_table.insert(0, key, value)
    return WeightNormsResult(table.astype({"layer": "int64", "d_out": "int64", "d_in": "int64"}), vec, nonfinite,
                             head_table.astype({"layer": "int64", "head_index": "int64"}), unrecognised,
                             {k: v for k, v in sharing.items()})


def matrix_groups(source: ModelSource) -> list[tuple[tuple[str, int], list[str], int]]:
    """The units of sharding across ranks, in the order :func:`weight_norms` reads them: per
    ``(part, layer)`` (a block, or the embedding at layer 0), its stored parameters and their total
    number of elements. A block stays on one rank because its q/k/v/o heads make the ``qk``/``ov``
    composites."""
    store = open_weights(source)
    try:
        specs = classify(store.shapes.items(), store.config)
        groups: dict[tuple[str, int], list[str]] = {}
        for spec in specs:
            names = groups.setdefault((spec.part, spec.layer), [])
            for p in (spec.factors or (spec.parameter,)):
                if p not in names:
                    names.append(p)
        return [(key, names, sum(int(torch.Size(store.shapes[p]).numel()) for p in names))
                for key, names in groups.items()]
    finally:
        store.close()


def merge_weight_results(parts: list[WeightNormsResult], groups: list[tuple[str, int]]) -> WeightNormsResult:
    """The :class:`WeightNormsResult` of one process from the results of ranks that each measured
    whole groups (``(part, layer)`` keys in the order of :func:`matrix_groups`): rows in the
    single-process order (by group, then as measured)."""
    rank_of = {key: i for i, key in enumerate(groups)}

    def ordered(frames: list[pd.DataFrame]) -> pd.DataFrame:
        filled = [f for f in frames if len(f)]
        if not filled:
            return frames[0]
        frame = pd.concat(filled, ignore_index=True)
        key = [rank_of[(p, int(l))] for p, l in zip(frame["part"], frame["layer"])]
        return frame.iloc[pd.Series(key).argsort(kind="stable").to_numpy()].reset_index(drop=True)

    table = ordered([r.table for r in parts])
    order = {p: i for i, p in enumerate(table["parameter"])}
    nonfinite = sorted({p for r in parts for p in r.nonfinite}, key=lambda p: order.get(p, len(order)))
    return WeightNormsResult(table, ordered([r.vectors for r in parts]), nonfinite,
                             ordered([r.heads for r in parts]), parts[0].unrecognised, parts[0].shared_layers)


def summarize_weights(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, matrix): number of matrices, mean and max spectral and Frobenius norm."""
    keys = [k for k in ("model_alias", "matrix") if k in table.columns]
    grouped = table.groupby(keys, sort=False)
    return grouped.agg(count=("layer", "size"), spectral_norm_mean=("spectral_norm", "mean"),
                       spectral_norm_max=("spectral_norm", "max"), frobenius_norm_mean=("frobenius_norm", "mean"),
                       frobenius_norm_max=("frobenius_norm", "max")).reset_index()


def weights_by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Per-layer view of ``norms_weights``: one row per (model, part, layer, norm), one column per
    attention/FFN matrix type present (``q, k, v, o, cross_*, router, ffn_gate, ffn_up, ffn_down``
    in :data:`qft_cli.models.layout.MATRIX_ORDER`), values the spectral or Frobenius norm (float64,
    the weights' units). Mixtures of experts: per matrix type the maximum and the median over the
    routed experts of the layer (columns ``<matrix> max/expert`` and ``<matrix> median/expert``)
    and the shared expert (``<matrix> shared``), beside the dense matrices. Layers 1..L only (the
    embedding, layer 0, is in the summary); a matrix type absent from a layer is NaN. ``part`` is
    dropped when every row has ``""`` (decoder-only and encoder-only models). ALBERT's shared
    layer: a column ``blocks`` names the blocks that run it.

    Raises:
        ValueError: two matrices of one type and expert in the same model, part and layer (never
            silently merged; :mod:`qft_cli.models.layout` names each matrix once per layer and expert).
    """
    keys = [k for k in ("model_alias", "part", "layer") if k in table.columns]
    blocks = table[(table["layer"] >= 1) & (table["matrix"] != "embedding")].copy()
    if "expert" not in blocks.columns:
        blocks["expert"] = ""
    blocks["expert"] = blocks["expert"].fillna("").astype(str)
    if blocks.duplicated(keys + ["matrix", "expert"]).any():
        raise ValueError("norms_weights has two matrices of one type in one layer: "
                         + ", ".join(map(str, blocks[blocks.duplicated(keys + ["matrix", "expert"])]["parameter"].head(3))))
    order = {m: i for i, m in enumerate(MATRIX_ORDER)}
    routed = (blocks["expert"] != "") & (blocks["expert"] != SHARED_EXPERT)
    column_of = blocks["matrix"].where(~(blocks["expert"] == SHARED_EXPERT), blocks["matrix"] + " shared")
    blocks = blocks.assign(column=column_of)
    dense = blocks[~routed]
    columns = sorted(set(dense["column"]), key=lambda c: (order.get(c.split(" ")[0], 99), c))
    expert_matrices = sorted(set(blocks.loc[routed, "matrix"]), key=lambda m: order.get(m, 99))
    frames = []
    for column, label in (("spectral_norm", "spectral"), ("frobenius_norm", "frobenius")):
        wide = dense.pivot(index=keys, columns="column", values=column).reindex(columns=columns)
        if expert_matrices:
            agg = blocks[routed].groupby(keys + ["matrix"])[column].agg(["max", "median"]).unstack("matrix")
            for m in expert_matrices:
                wide[f"{m} max/expert"] = agg[("max", m)].reindex(wide.index) if len(wide) else agg[("max", m)]
                wide[f"{m} median/expert"] = agg[("median", m)].reindex(wide.index) if len(wide) else agg[("median", m)]
        wide.columns.name = None
        frames.append(wide.reset_index().assign(norm=label))
    matrices = [c for c in frames[0].columns if c not in keys and c != "norm"]
    out = pd.concat(frames, ignore_index=True)
    if "shared_by_blocks" in table.columns and (blocks["shared_by_blocks"].fillna("") != "").any():
        shared = blocks.groupby(keys)["shared_by_blocks"].first()
        out["blocks"] = [shared.get(tuple(r) if len(keys) > 1 else r[0], "") for r in out[keys].itertuples(index=False)]
        matrices = ["blocks"] + matrices
    model_order = {m: i for i, m in enumerate(dict.fromkeys(table["model_alias"]))} if "model_alias" in keys else {}
    out = out.sort_values(keys + ["norm"], key=lambda s: s.map(model_order) if s.name == "model_alias"
                          else (s.map({"spectral": 0, "frobenius": 1}) if s.name == "norm" else s),
                          kind="stable").reset_index(drop=True)
    if "part" in out.columns and (out["part"] == "").all():
        out = out.drop(columns="part")
    return out[[c for c in keys if c in out.columns] + ["norm"] + matrices]
