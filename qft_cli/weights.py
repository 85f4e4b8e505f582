"""Norms of every attention and FFN weight matrix (``qft norms weights``).

Weights are streamed tensor by tensor from the checkpoint files (safetensors shards, or
``pytorch_model*.bin`` through ``torch.load(mmap=True, weights_only=True)``), so peak memory stays
near the largest single tensor (plus its float64 copy), not the whole model: a 7B model is
measurable on a 24 GiB machine. Tiny models (built in memory) are read from their parameters.
No model code runs, so no ``trust_remote_code`` is ever needed here.

Which parameters are matrices, their orientation (``(d_out, d_in)``), layer numbering and the split
of fused projections are decided by :mod:`qft_cli.layout`.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterator, Optional

import pandas as pd
import torch

from qft_cli.errors import QftInputError
from qft_cli.layout import _EMBEDDING_RE, MATRIX_ORDER, MatrixSpec, classify, head_dim, split_heads
from qft_cli.loading import TensorStore, checkpoint_files, open_weights  # noqa: F401 (re-exported)
from qft_cli.models import ModelSource
from qft_cli.norms import column_norms, frobenius_norm, matrix_norm_record, row_norms, spectral_norm
from qft_cli.progress import ProgressFn, report

WEIGHT_COLUMNS = ["model", "model_alias", "part", "layer", "matrix", "parameter", "d_out", "d_in", "dtype",
                  "frobenius_norm", "spectral_norm", "column_norm_mean", "column_norm_var", "column_norm_max",
                  "row_norm_mean", "row_norm_var", "row_norm_max", "finite"]
VECTOR_MATRICES = ("q", "k", "v", "embedding")


@dataclass
class WeightNormsResult:
    """Result of :func:`weight_norms`.

    Attributes:
        table: one row per matrix, columns :data:`WEIGHT_COLUMNS`.
        vectors: column l2 norms of q/k/v and per-token l2 norms of the embedding (long format:
            part, layer, matrix, kind, index, value).
        heads: per-head spectral and Frobenius norms of every attention matrix (part, layer,
            matrix, head, spectral_norm, frobenius_norm); see :func:`qft_cli.layout.split_heads`.
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
#: Any other 2-D tensor outside :func:`qft_cli.layout.classify` is *unrecognised*: listed in
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
        raise QftInputError(f"{name}: {len(gaps)} matrices missing that the sibling blocks have: {'; '.join(gaps[:4])}"
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


def weight_norms(source: ModelSource, *, dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
                 progress: Optional[ProgressFn] = None, labels: Optional[dict] = None) -> WeightNormsResult:
    """Frobenius and spectral norms, and column/row l2-norm statistics, of every matrix.

    Args:
        source: the model (see :func:`qft_cli.models.resolve_model`).
        dtype: cast each tensor to this dtype first (as if the model were loaded in it); ``None``
            keeps the stored dtype. Norms are accumulated in float64 either way.
        device: where to compute (``cuda`` is much faster for 7B models).
        labels: constant columns to add (e.g. ``model``, ``model_alias``).

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
        rows, vectors, heads, nonfinite = [], [], [], []
        dim = head_dim(store.config)
        for done, (spec, w) in enumerate(iter_matrices(store, specs, dtype, device), start=1):
            finite = bool(torch.isfinite(w).all())
            rec = {"part": spec.part, "layer": spec.layer, "matrix": spec.matrix, "parameter": spec.parameter,
                   "d_out": int(w.shape[0]), "d_in": int(w.shape[1]),
                   "dtype": str(w.dtype).removeprefix("torch."), "finite": finite}
            if finite:
                rec.update(matrix_norm_record(w))
                if spec.matrix in VECTOR_MATRICES:
                    kind = "token_norm" if spec.matrix == "embedding" else "column_norm"
                    values = row_norms(w) if spec.matrix == "embedding" else column_norms(w)
                    vectors.append(pd.DataFrame({"part": spec.part, "layer": spec.layer, "matrix": spec.matrix,
                                                 "kind": kind, "index": range(values.numel()),
                                                 "value": values.cpu().numpy()}))
                blocks = split_heads(spec.matrix, w, dim)
                if blocks is not None:
                    heads.append(pd.DataFrame({"part": spec.part, "layer": spec.layer, "matrix": spec.matrix,
                                               "head": range(blocks.shape[0]),
                                               "spectral_norm": spectral_norm(blocks).cpu().numpy(),
                                               "frobenius_norm": frobenius_norm(blocks).cpu().numpy()}))
            else:
                nonfinite.append(spec.parameter)
            rows.append(rec)
            report(progress, f"weights {source.name}", done, len(specs))
    finally:
        store.close()
    table = pd.DataFrame(rows)
    for key, value in (labels or {}).items():
        table.insert(0, key, value)
    # every norm column, also when no matrix was finite (NaN then)
    table = table.reindex(columns=[c for c in WEIGHT_COLUMNS if c in table.columns or c not in ("model", "model_alias")])
    norm_columns = [c for c in WEIGHT_COLUMNS[WEIGHT_COLUMNS.index("frobenius_norm"):] if c != "finite"]
    table = table.astype({c: "float64" for c in norm_columns})
    vec = pd.concat(vectors, ignore_index=True) if vectors else pd.DataFrame(
        columns=["part", "layer", "matrix", "kind", "index", "value"])
    for key, value in (labels or {}).items():
        vec.insert(0, key, value)
    vec = vec.astype({"layer": "int64", "index": "int64", "value": "float64"})
    head_table = pd.concat(heads, ignore_index=True) if heads else pd.DataFrame(
        columns=["part", "layer", "matrix", "head", "spectral_norm", "frobenius_norm"])
    for key, value in (labels or {}).items():
        head_table.insert(0, key, value)
    return WeightNormsResult(table.astype({"layer": "int64", "d_out": "int64", "d_in": "int64"}), vec, nonfinite,
                             head_table.astype({"layer": "int64", "head": "int64"}), unrecognised)


def summarize_weights(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, matrix): number of matrices, mean and max spectral and Frobenius norm."""
    keys = [k for k in ("model_alias", "matrix") if k in table.columns]
    grouped = table.groupby(keys, sort=False)
    return grouped.agg(count=("layer", "size"), spectral_norm_mean=("spectral_norm", "mean"),
                       spectral_norm_max=("spectral_norm", "max"), frobenius_norm_mean=("frobenius_norm", "mean"),
                       frobenius_norm_max=("frobenius_norm", "max")).reset_index()
