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

import json
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import pandas as pd
import torch

from qft_cli.errors import QftInputError
from qft_cli.layout import MatrixSpec, classify, head_dim, split_heads
from qft_cli.models import ModelSource, build_tiny_model, hub_snapshot
from qft_cli.norms import column_norms, frobenius_norm, matrix_norm_record, row_norms, spectral_norm
from qft_cli.progress import ProgressFn, report

WEIGHT_COLUMNS = ["model", "model_alias", "part", "layer", "matrix", "parameter", "d_out", "d_in",
                  "frobenius_norm", "spectral_norm", "column_norm_mean", "column_norm_var", "column_norm_max",
                  "row_norm_mean", "row_norm_var", "row_norm_max", "finite"]
VECTOR_MATRICES = ("q", "k", "v", "embedding")


@dataclass
class TensorStore:
    """Read access to named tensors without loading a whole model.

    Attributes:
        shapes: parameter name -> shape, in checkpoint order.
        config: the model's ``config.json`` as a dict (may be empty).
        read: function name -> tensor (on CPU, stored dtype).
    """

    shapes: dict[str, tuple[int, ...]]
    config: dict
    read: Callable[[str], torch.Tensor]
    _stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self._stack.close()


def _store_from_module(module: torch.nn.Module) -> TensorStore:
    params = dict(module.named_parameters())
    config = module.config.to_dict() if hasattr(module, "config") else {}
    return TensorStore({n: tuple(p.shape) for n, p in params.items()}, config, lambda n: params[n].detach())


def _damaged(path: Path, err: BaseException) -> QftInputError:
    first = " ".join(str(err).strip().split("\n", 1)[0].split())
    return QftInputError(f"could not read weights file {path} ({type(err).__name__}: {first}): "
                         "the file is damaged or not a checkpoint; download it again")


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files that make up the Hugging Face checkpoint in ``directory``.

    With ``model.safetensors.index.json``, the shards its ``weight_map`` names; else
    ``model*.safetensors``; else any ``*.safetensors``. Other copies of the weights in the same
    repository (e.g. Mistral's ``consolidated.safetensors``, with other parameter names) are
    ignored, so no parameter is counted twice.
    """
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    return sorted(directory.glob("model*.safetensors")) or sorted(directory.glob("*.safetensors"))


def _store_from_dir(directory: Path) -> TensorStore:
    from safetensors import safe_open

    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    stack = ExitStack()
    files = checkpoint_files(directory)
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, object] = {}
    if files:
        for f in files:
            try:
                handle = stack.enter_context(safe_open(str(f), framework="pt"))
            except Exception as err:  # SafetensorError: truncated download, not a safetensors file
                stack.close()
                raise _damaged(f, err) from None
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
                where[name] = handle
        return TensorStore(shapes, config, lambda n: where[n].get_tensor(n), stack)
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if not bins:
        raise QftInputError(f"no *.safetensors or pytorch_model*.bin weights in {directory}: "
                            "pass a Hugging Face model directory")
    for f in bins:
        try:
            try:
                state = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:  # legacy (pre-zip) format cannot be memory-mapped: read it whole
                if "mmap" not in str(err):
                    raise
                state = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, not a checkpoint, or pickled objects beyond tensors
            raise _damaged(f, err) from None
        for name, tensor in state.items():
            shapes[name] = tuple(tensor.shape)
            where[name] = state
    return TensorStore(shapes, config, lambda n: where[n][n], stack)


def open_weights(source: ModelSource) -> TensorStore:
    """Open the weights of ``source`` for streaming.

    Hub models: only ``*.json`` and ``model*.safetensors`` files are fetched (any ``*.safetensors``
    when there is no ``model*`` file, ``pytorch_model*.bin`` when there is no safetensors file);
    see :func:`checkpoint_files` for the files that are read.

    Raises:
        QftInputError: the hub is unreachable and the files are not cached; no weight files.
    """
    if source.kind == "tiny":
        return _store_from_module(build_tiny_model(source.location))
    if source.kind == "hub":
        directory = hub_snapshot(source, ["*.json", "model*.safetensors"])  # not consolidated.* copies
        if not list(directory.glob("*.safetensors")):
            directory = hub_snapshot(source, ["*.json", "*.safetensors"])
        if not list(directory.glob("*.safetensors")):
            directory = hub_snapshot(source, ["*.json", "pytorch_model*.bin"])
        return _store_from_dir(directory)
    return _store_from_dir(Path(source.location))


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
    """

    table: pd.DataFrame
    vectors: pd.DataFrame
    nonfinite: list[str]
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)


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
        QftInputError: no attention matrices found (the message lists the parameter names seen).
    """
    store = open_weights(source)
    try:
        specs = classify(store.shapes.items(), store.config)
        if not any(s.role == "attention" for s in specs):
            sample = ", ".join(list(store.shapes)[:8])
            raise QftInputError(f"found no attention matrices in {source.name} (parameters seen: {sample}, ...): "
                                "this architecture's parameter names are not known to qft")
        rows, vectors, heads, nonfinite = [], [], [], []
        dim = head_dim(store.config)
        for done, (spec, w) in enumerate(iter_matrices(store, specs, dtype, device), start=1):
            finite = bool(torch.isfinite(w).all())
            rec = {"part": spec.part, "layer": spec.layer, "matrix": spec.matrix, "parameter": spec.parameter,
                   "d_out": int(w.shape[0]), "d_in": int(w.shape[1]), "finite": finite}
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
                             head_table.astype({"layer": "int64", "head": "int64"}))


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
    :data:`qft_cli.layout.MATRIX_ORDER`), values the spectral or Frobenius norm (float64, the
    weights' units). Layers 1..L only (the embedding, layer 0, is in the summary); a matrix type
    absent from a layer is NaN. ``part`` is dropped when every row has ``""`` (decoder-only and
    encoder-only models).

    Raises:
        ValueError: two matrices of one type in the same model, part and layer (never silently
            merged; :mod:`qft_cli.layout` names each matrix once per layer).
    """
    from qft_cli.layout import MATRIX_ORDER

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
