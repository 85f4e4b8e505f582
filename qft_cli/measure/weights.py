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
    MATRIX_ORDER,
    MatrixSpec,
    classify,
    head_dim,
    split_heads,
)
from qft_cli.models.loading import TensorStore, open_weights  # noqa: F401 (re-exported)
from qft_cli.models.names import ModelSource
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report

WEIGHT_COLUMNS = ["model", "model_alias", "model_format", "part", "layer", "matrix", "parameter", "d_out", "d_in", "dtype",
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
        unrecognised: 2-D tensors qft does not recognise (:func:`unrecognised_parameters`): not
            measured, reported.
    """

    table: pd.DataFrame
    vectors: pd.DataFrame
    nonfinite: list[str]
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)
    unrecognised: list[str] = field(default_factory=list)


#: 2-D tensors qft knows and does not measure: position and token-type embeddings, tied or shared
#: copies of the token embedding, poolers and the heads of a task (LM, masked-LM, classifier).
#: Any other 2-D tensor outside :func:`qft_cli.models.layout.classify` is *unrecognised*: listed in
#: ``run.json`` (``unrecognised_parameters``) and in one warning line.
NOT_MEASURED_RE = re.compile(r"(?:^|\.)(?:position_embeddings|wpe|embed_positions|position_embedding|"
                             r"token_type_embeddings|pooler|lm_head|cls|embed_out|classifier|score|qa_outputs)(?:\.|$)")


def unrecognised_parameters(shapes: dict[str, tuple[int, ...]], specs: list[MatrixSpec]) -> list[str]:
    """2-D tensors that are neither measured (``specs``) nor known as not measured
    (:data:`NOT_MEASURED_RE`, copies of the token embedding), in checkpoint order."""
    measured = {s.parameter for s in specs}
    return [name for name, shape in shapes.items()
            if len(shape) == 2 and name not in measured and not NOT_MEASURED_RE.search(name)
            and not _EMBEDDING_RE.search(name)]


def check_complete_blocks(specs: list[MatrixSpec], unrecognised: list[str], name: str) -> None:
    """Every block of a part must have every matrix its sibling blocks have.

    Raises:
        QftInputError: naming the first blocks that lack a matrix (and the unrecognised tensors of
            those blocks, e.g. a renamed key).
    """
    by_block: dict[tuple[str, int], set[str]] = defaultdict(set)
    for spec in specs:
        if spec.layer > 0:
            by_block[(spec.part, spec.layer)].add(spec.matrix)
    gaps = []
    for (part, layer), matrices in sorted(by_block.items()):
        union = set().union(*(m for (p, _), m in by_block.items() if p == part))
        for matrix in sorted(union - matrices, key=MATRIX_ORDER.index):
            gaps.append(f"{part + ' ' if part else ''}block {layer} has no {matrix}")
    if gaps:
        blocks = {g.split(" has no ")[0] for g in gaps}
        nearby = [u for u in unrecognised if any(f".{int(b.rsplit(' ', 1)[1]) - 1}." in u for b in blocks)]
        hint = f" (unrecognised tensors there: {', '.join(nearby[:4])})" if nearby else ""
        raise QftInputError(f"{name}: missing weight matrices that the sibling blocks have ({len(gaps)}): "
                            f"{'; '.join(gaps[:4])}"
                            f"{hint}: the checkpoint is incomplete or a weight was renamed; fix or re-download it")


def iter_matrices(store: TensorStore, specs: list[MatrixSpec], dtype: Optional[torch.dtype] = None,
                  device: Optional[torch.device] = None) -> Iterator[tuple[MatrixSpec, torch.Tensor]]:
    """Yield ``(spec, W)`` with W oriented ``(d_out, d_in)``; each stored tensor is read once
    (fused parameters serve all their blocks) and dropped before the next is read."""
    by_param: dict[str, list[MatrixSpec]] = defaultdict(list)
    for spec in specs:
        by_param[spec.parameter].append(spec)
    for parameter, group in by_param.items():
        tensor = store.read(parameter)
        if dtype is not None:
            tensor = tensor.to(dtype)
        if device is not None:
            tensor = tensor.to(device)
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
            block lacking a matrix its sibling blocks have (:func:`check_complete_blocks`).
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
        if parameters is not None:
            specs = [s for s in specs if s.parameter in parameters]
        rows, vectors, heads, nonfinite = [], [], [], []
        pending: dict[tuple[str, int], dict[str, torch.Tensor]] = defaultdict(dict)  # q/k/v/o heads of a layer
        dim = head_dim(store.config)

        def measure(spec: MatrixSpec, w: torch.Tensor):
            stats = matrix_stats(w, exact=exact)  # finite=False (NaN norms) for a NaN or infinite entry
            blocks = split_heads(spec.matrix, w, dim) if stats.finite else None
            grams = None if blocks is None else head_grams(blocks, "columns" if spec.matrix.endswith("o") else "rows")
            return stats, grams, (None if grams is None else gram_norms(grams))

        def record(spec: MatrixSpec, w: torch.Tensor, stats, grams, head_values) -> None:
            finite = stats.finite
            rec = {"part": spec.part, "layer": spec.layer, "matrix": spec.matrix, "parameter": spec.parameter,
                   "d_out": int(w.shape[0]), "d_in": int(w.shape[1]),
                   "dtype": str(w.dtype).removeprefix("torch."),
                   "quant_type": store.quant_types.get(spec.parameter), "finite": finite}
            if finite:
                rec.update(stats_record(stats), spectral_norm_error_bound=stats.spectral_error_bound)
                if spec.matrix in VECTOR_MATRICES:
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
    for key, value in (labels or {}).items():
        table.insert(0, key, value)
    # every norm column, also when no matrix was finite (NaN then)
    table = table.reindex(columns=[c for c in WEIGHT_COLUMNS if c in table.columns or c not in ("model", "model_alias", "model_format")])
    norm_columns = [c for c in WEIGHT_COLUMNS[WEIGHT_COLUMNS.index("frobenius_norm"):] if c != "finite"]
    table = table.astype({c: "float64" for c in norm_columns})
    table["stable_rank"] = stable_rank(table["frobenius_norm"], table["spectral_norm"])
    vec = pd.concat(vectors, ignore_index=True) if vectors else pd.DataFrame(
        columns=["part", "layer", "matrix", "kind", "vector_index", "value"])
    for key, value in (labels or {}).items():
        vec.insert(0, key, value)
    vec = vec.astype({"layer": "int64", "vector_index": "int64", "value": "float64"})
    head_table = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame(
        columns=["part", "layer", "matrix", "head_index", "spectral_norm", "frobenius_norm"])
    for key, value in (labels or {}).items():
        head_table.insert(0, key, value)
    return WeightNormsResult(table.astype({"layer": "int64", "d_out": "int64", "d_in": "int64"}), vec, nonfinite,
                             head_table.astype({"layer": "int64", "head_index": "int64"}), unrecognised)


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
            if spec.parameter not in names:
                names.append(spec.parameter)
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
                             ordered([r.heads for r in parts]), parts[0].unrecognised)


def summarize_weights(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, matrix): number of matrices, mean and max spectral and Frobenius norm."""
    keys = [k for k in ("model_alias", "matrix") if k in table.columns]
    grouped = table.groupby(keys, sort=False)
    return grouped.agg(count=("layer", "size"), spectral_norm_mean=("spectral_norm", "mean"),
                       spectral_norm_max=("spectral_norm", "max"), frobenius_norm_mean=("frobenius_norm", "mean"),
                       frobenius_norm_max=("frobenius_norm", "max")).reset_index()


def weights_by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Per-layer view of ``norms_weights``: one row per (model, part, layer, norm), one column per
    attention/FFN matrix type present (``q, k, v, o, cross_*, ffn_gate, ffn_up, ffn_down`` in
    :data:`qft_cli.models.layout.MATRIX_ORDER`), values the spectral or Frobenius norm (float64, the
    weights' units). Layers 1..L only (the embedding, layer 0, is in the summary); a matrix type
    absent from a layer is NaN. ``part`` is dropped when every row has ``""`` (decoder-only and
    encoder-only models).

    Raises:
        ValueError: two matrices of one type in the same model, part and layer (never silently
            merged; :mod:`qft_cli.models.layout` names each matrix once per layer).
    """
    from qft_cli.models.layout import MATRIX_ORDER

    keys = [k for k in ("model_alias", "part", "layer") if k in table.columns]
    blocks = table[(table["layer"] >= 1) & (table["matrix"] != "embedding")]
    if blocks.duplicated(keys + ["matrix"]).any():
        raise ValueError("norms_weights has two matrices of one type in one layer: "
                         + ", ".join(map(str, blocks[blocks.duplicated(keys + ["matrix"])]["parameter"].head(3))))
    matrices = [m for m in MATRIX_ORDER if m in set(blocks["matrix"])]
    matrices += sorted(set(blocks["matrix"]) - set(matrices))
    frames = []
    for column, label in (("spectral_norm", "spectral"), ("frobenius_norm", "frobenius")):
        wide = blocks.pivot(index=keys, columns="matrix", values=column).reindex(columns=matrices)
        wide.columns.name = None
        frames.append(wide.reset_index().assign(norm=label))
    out = pd.concat(frames, ignore_index=True)
    order = {m: i for i, m in enumerate(dict.fromkeys(table["model_alias"]))} if "model_alias" in keys else {}
    out = out.sort_values(keys + ["norm"], key=lambda s: s.map(order) if s.name == "model_alias"
                          else (s.map({"spectral": 0, "frobenius": 1}) if s.name == "norm" else s),
                          kind="stable").reset_index(drop=True)
    if "part" in out.columns and (out["part"] == "").all():
        out = out.drop(columns="part")
    return out[[c for c in keys if c in out.columns] + ["norm"] + matrices]
