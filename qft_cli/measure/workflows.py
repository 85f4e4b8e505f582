"""The ``qft norms inputs``, ``qft norms attention`` and ``qft norms weights`` workflows: validate, load, measure, write.

Each workflow takes a small dataclass of arguments (validated in ``__post_init__`` before any heavy
work), writes one run directory (:class:`qft_cli.runs.rundir.Run`) and returns the tables it wrote.
"""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from qft_cli.measure.fits import fit_summary, fit_table
from qft_cli.measure.inputs import (
    InputNormsResult,
    check_num_tokens,
    hidden_state_norms,
    num_layers,
    parse_layers,
)
from qft_cli.measure.weights import (
    matrix_groups,
    merge_weight_results,
    summarize_weights,
    weight_norms,
)
from qft_cli.models.loading import load_model
from qft_cli.models.names import load_config, load_tokenizer, resolve_model
from qft_cli.runs.files import check_writable
from qft_cli.runs.rundir import Run
from qft_cli.system.device import resolve_device, resolve_dtype
from qft_cli.system.distributed import balanced_shards, gather_to_main, process_group
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn
from qft_cli.system.threads import configure_threads, fix_mmap_threshold


def _check_models_and_threads(models: Sequence[str], threads: Optional[int]) -> None:
    """The checks every norms command starts with: at least one MODEL, ``--threads`` at least 1.

    Raises:
        QftInputError: no model, or ``threads < 1``.
    """
    if not models:
        raise QftInputError("give at least one MODEL (see `qft models`)")
    if threads is not None and threads < 1:
        raise QftInputError(f"--threads must be at least 1 (got {threads}); leave it out for the default")


@dataclass
class NormsInputsArgs:
    """Arguments of ``qft norms inputs`` (see the CLI help for each)."""

    models: list[str]
    dataset: str = "mmlu"
    data_file: Optional[Path] = None
    text_column: Optional[str] = None
    layers: str = "all"
    max_tokens: int = 512
    num_samples: Optional[int] = None
    batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    device_map: Optional[str] = None
    trust_remote_code: bool = False
    threads: Optional[int] = None
    out: Path = Path("runs")

    def __post_init__(self) -> None:
        _check_models_and_threads(self.models, self.threads)
        if self.max_tokens < 1:
            raise QftInputError(f"--max-tokens must be at least 1 (got {self.max_tokens})")
        if self.batch_size == 0 or self.batch_size < -1:
            raise QftInputError(f"--batch-size must be a positive number or -1 for no limit (got {self.batch_size})")
        if self.num_samples is not None and self.num_samples < 1:
            raise QftInputError(f"--num-samples must be at least 1 (got {self.num_samples})")
        if not -(2 ** 63) <= self.seed < 2 ** 64:  # what torch.Generator.manual_seed accepts
            raise QftInputError(f"--seed must be between -2^63 and 2^64 - 1 (got {self.seed})")
        if self.device_map not in (None, "auto"):
            raise QftInputError(f"--device-map '{self.device_map}' is not supported: use --device-map auto")
        if self.data_file is not None and not Path(self.data_file).is_file():
            raise QftInputError(f"--data-file {self.data_file} does not exist: check the path")
        resolve_dtype(self.dtype)
        resolve_device(self.device)


@dataclass
class NormsAttentionArgs(NormsInputsArgs):
    """Arguments of ``qft norms attention``: those of ``norms inputs``; ``layers`` are blocks 1..L."""

    layers: str = "all"


@dataclass
class NormsWeightsArgs:
    """Arguments of ``qft norms weights``."""

    models: list[str]
    device: str = "auto"
    dtype: Optional[str] = None
    exact: bool = False
    threads: Optional[int] = None
    out: Path = Path("runs")

    def __post_init__(self) -> None:
        _check_models_and_threads(self.models, self.threads)
        if self.dtype is not None:
            resolve_dtype(self.dtype)
        resolve_device(self.device)


@dataclass
class NormsResult:
    """What a norms workflow wrote: the run directory, its tables, a summary, and warnings
    for the CLI to print (one line per kind, e.g. non-finite hidden states; run.json lists each):
    ``warnings`` are degenerate results (exit status 2), ``notices`` change no number (exit 0,
    e.g. unrecognised 2-D tensors that were not measured)."""

    run_dir: Path
    tables: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _options(args) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(args).items()}


def one_line(warnings: list[str], shown: int = 3) -> list[str]:
    """The warnings for the terminal as one line: the count and the first few (run.json keeps them all).

    ``["non-finite weight: a", "non-finite weight: b"]`` -> ``["2 non-finite weights: a; b"]``.
    Warnings of different kinds (the text before the first ``": "``) give one line per kind.
    """
    kinds: dict[str, list[str]] = {}
    for w in warnings:
        kinds.setdefault(w.split(": ", 1)[0], []).append(w)
    lines = []
    for kind, group in kinds.items():
        if len(group) == 1:
            lines.append(group[0])
            continue
        items = [w.split(": ", 1)[-1] for w in group]
        more = f"; ... {len(items) - shown} more in run.json" if len(items) > shown else ""
        lines.append(f"{len(items)} {kind}s: " + "; ".join(items[:shown]) + more)
    return lines


#: Group columns of the power-law fits of ``qft norms inputs`` (one fit per group and norm).
FIT_GROUPS = ["model", "model_alias", "dataset", "layer"]


def run_norms_inputs(args: NormsInputsArgs, progress: Optional[ProgressFn] = None) -> NormsResult:
    """Measure hidden-state norms of every model in ``args.models`` and write ``norms_inputs.parquet``
    and ``fits.parquet`` (norm ~ c N^b per model, dataset, layer and norm, :func:`qft_cli.measure.fits.fit_table`,
    quantity ``hidden_states``). The result's ``summary`` is :func:`qft_cli.measure.fits.fit_summary` of them.

    All models are resolved, and their depth checked against ``--layers``, before any heavy work.

    Raises:
        QftInputError: bad model names, layers beyond a model's depth, bad data, unwritable out.
    """
    return _per_sample_run("norms inputs", args, progress, parse_layers, hidden_state_norms, "hidden state",
                           ("model", "model_alias", "model_format", "dataset"), "sample_index", ["layer"], "norms_inputs",
                           lambda table: fit_table(table, FIT_GROUPS, quantity="hidden_states"),
                           lambda table, fits: fit_summary(table, fits, FIT_GROUPS))


def _per_sample_run(command: str, args: NormsInputsArgs, progress: Optional[ProgressFn],
                    parse: Callable[[str, int], list[int]], measure: Callable, what: str, label_keys: Sequence[str],
                    sample_column: str, order: Sequence[str], name: str, fits_of: Callable, summary_of: Callable
                    ) -> NormsResult:
    """The run of ``norms inputs`` and ``norms attention``: for every model (:func:`_loaded_models`),
    ``measure(model, token_ids, layers, batch_size=, pad_token_id=, progress=, labels=)`` on its
    samples (sharded under torch.distributed, :func:`_per_sample_sharded`); warnings name ``what``
    with the dataset's sample index; rank 0 writes ``<name>.parquet`` and ``fits.parquet``
    (``fits_of(table)``) and returns the summary ``summary_of(table, fits)``."""
    prepared = _prepare(args, parse)
    tables, warnings = [], []
    rank, world = process_group(prepared["device"].type)
    with Run(command, args.models, _options(args), out=Path(args.out), is_main_process=rank == 0) as run:
        run.update(world_size=world)
        shown = progress if rank == 0 else None
        for source, model, samples, pad, layers in _loaded_models(args, run, prepared, shown):
            values = {"dataset": samples.dataset, "model_alias": source.name, "model": source.model_id,
                      "model_format": source.model_format}
            labels = {key: values[key] for key in label_keys}
            result = _per_sample_sharded(measure, model, samples.token_ids, layers, args, pad, labels,
                                         progress, rank, world, sample_column, order)
            del model  # before the next model is loaded
            if result is None:  # another rank than 0
                continue
            warnings += [f"non-finite {what}: model {source.name}, sample {i}, layer {l}" for i, l in result.nonfinite]
            warnings += [f"all-zero {what}: model {source.name}, sample {i}, layer {l}" for i, l in result.all_zero]
            tables.append(result.table)
        if rank != 0:
            return NormsResult(run.path, {}, pd.DataFrame())
        table = pd.concat(tables, ignore_index=True)
        fits = fits_of(table)
        run.write_table(name, table)
        run.write_table("fits", fits)
        run.update(warnings=warnings, num_rows=len(table))
    return NormsResult(run.path, {name: table, "fits": fits}, summary_of(table, fits), one_line(warnings))


def _prepare(args: NormsInputsArgs, parse: Callable[[str, int], list[int]]) -> dict:
    """Shared by ``norms inputs`` and ``norms attention``, before the run directory exists: resolve
    every model, check ``--layers`` with ``parse`` against each depth, check ``--out``, read the texts."""
    sources = [resolve_model(name) for name in args.models]
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    check_writable(args.out, create=False)
    configs = [load_config(s, args.trust_remote_code) for s in sources]
    layer_lists = []
    for source, config in zip(sources, configs):
        try:
            layer_lists.append(parse(args.layers, num_layers(config)))
        except QftInputError as err:
            raise QftInputError(f"model {source.name}: {err}") from None
    from qft_cli.data.text_data import load_texts

    texts = None if args.dataset == "random" else load_texts(args.dataset, args.data_file, args.text_column)
    return {"sources": sources, "layer_lists": layer_lists, "texts": texts, "device": device, "dtype": dtype}


def _loaded_models(args: NormsInputsArgs, run: Run, prepared: dict, progress: Optional[ProgressFn] = None):
    """Yield ``(source, model, samples, pad_token_id, layers)`` one model at a time (each model is
    dropped before the next is loaded); ``prepared`` from :func:`_prepare`. Records the data read
    (``data``, ``data_files``) and each model's weights (``model_files``) in ``run.json``
    (:mod:`qft_cli.runs.provenance`)."""
    from qft_cli.runs.provenance import data_record, file_records, model_files_for

    sources, layer_lists, texts = prepared["sources"], prepared["layer_lists"], prepared["texts"]
    device, dtype = prepared["device"], prepared["dtype"]
    if texts is None:
        data, data_files = data_record("random", source="random"), []
    else:
        data, data_files = data_record(texts[0], **texts[1].origin), file_records(texts[1].files)
    threads = configure_threads(args.threads)
    run.update(device=str(device), dtype=args.dtype, threads=threads.count, threads_source=threads.source,
               data=data, data_files=data_files)
    model_files = []
    for source, layers in zip(sources, layer_lists):
        tokenizer = load_tokenizer(source, args.trust_remote_code)
        model = load_model(source, dtype=dtype, device=device, device_map=args.device_map,
                           trust_remote_code=args.trust_remote_code)
        if run.is_main_process:  # the one process that writes run.json hashes the weights
            model_files.append(model_files_for(source, model, progress))
            run.update(model_files=model_files)
        vocab = min(model.config.vocab_size, len(tokenizer))
        if args.dataset == "random":  # before drawing max_tokens sequences of up to max_tokens ids
            check_num_tokens(model, args.max_tokens, source.name)
        samples = load_samples_for(args, tokenizer, vocab, texts)
        pad = tokenizer.pad_token_id
        try:
            rows = model.get_input_embeddings().num_embeddings
        except Exception:  # custom code without get_input_embeddings
            rows = None
        if pad is None or (rows is not None and pad >= rows):  # any valid id pads
            pad = 0
        yield source, model, samples, pad, layers
        del model
        gc.collect()


def run_norms_attention(args: NormsAttentionArgs, progress: Optional[ProgressFn] = None) -> NormsResult:
    """Measure per-head norms of X, Q, K, V and the unmasked logits, with their bounds, of every
    model in ``args.models`` (:func:`qft_cli.measure.attention.attention_norms`); write
    ``norms_attention.parquet`` and ``fits.parquet`` (:func:`qft_cli.measure.attention.attention_fits`).

    Under torchrun (``WORLD_SIZE`` > 1) each rank measures a share of the samples balanced by length
    (:func:`qft_cli.system.distributed.balanced_shards`); rank 0 merges them (:func:`merge_sample_results`:
    the single-process table, dataset sample indices in the rows and the warnings) and is the only
    process that writes the run directory (``world_size`` in run.json); other ranks return a result
    with no tables.

    Raises:
        QftInputError: bad model names, layers outside blocks 1..L, bad data, unwritable out, an
            architecture whose attention cannot be observed.
    """
    from qft_cli.measure.attention import (
        attention_fits,
        attention_norms,
        parse_blocks,
        summarize_attention,
    )

    return _per_sample_run("norms attention", args, progress, parse_blocks, attention_norms, "attention input",
                           ("model", "model_alias", "model_format", "dataset"), "sample_index", ["layer", "head_index"], "norms_attention",
                           attention_fits, lambda table, fits: summarize_attention(table))

def _per_sample_sharded(measure: Callable, model, token_ids: Sequence[Sequence[int]], layers, args, pad: int,
                        labels: dict, progress: Optional[ProgressFn], rank: int, world: int,
                        sample_column: str, order: Sequence[str]):
    """``measure(model, token_ids, layers, batch_size=, pad_token_id=, progress=, labels=)`` on every
    sample (one process), or under torch.distributed on this rank's balanced share (by length),
    gathered and merged on rank 0 (:func:`merge_sample_results` with ``sample_column`` and
    ``order``). Returns the result; ``None`` on the other ranks. Progress is shown on rank 0 only."""
    if world == 1:
        return measure(model, token_ids, layers, batch_size=args.batch_size, pad_token_id=pad, progress=progress,
                       labels=labels)
    mine = balanced_shards([len(x) for x in token_ids], world)[rank]
    part = measure(model, [token_ids[i] for i in mine], layers, batch_size=args.batch_size, pad_token_id=pad,
                   progress=progress if rank == 0 else None, labels=labels) if mine else None
    parts = gather_to_main((mine, part))
    return merge_sample_results(parts, sample_column, order) if rank == 0 else None


def merge_sample_results(parts: list, sample_column: str = "sample_index", order: Sequence[str] = ("layer",)):
    """One per-sample result from the ``(sample indices, result)`` of every rank (``result`` None for a
    rank without samples): local sample indices mapped back to the dataset's (``mine[i]`` for local
    sample ``i``, in ``sample_column``, ``nonfinite`` and ``all_zero``), rows sorted as the
    single-process run (by ``sample_column``, then ``order``).

    Works for every result with ``table``, ``nonfinite`` and ``all_zero`` (both lists of
    ``(sample, layer)``): :class:`qft_cli.measure.inputs.InputNormsResult` (column ``sample_index``, rows by
    sample and layer) and :class:`qft_cli.measure.attention.AttentionNormsResult` (column ``sample``, rows by
    sample, layer and head); the result has the type of the parts.

    Raises:
        ValueError: every part is None (no rank had a sample).
    """
    tables, nonfinite, all_zero, kind = [], [], [], None
    for mine, part in parts:
        if part is None:
            continue
        kind = type(part)
        table = part.table.copy()
        table[sample_column] = np.asarray([mine[i] for i in table[sample_column]], dtype=table[sample_column].dtype)
        tables.append(table)
        nonfinite += [(mine[i], layer) for i, layer in part.nonfinite]
        all_zero += [(mine[i], layer) for i, layer in part.all_zero]
    if kind is None:
        raise ValueError("no rank returned a result: nothing to merge")
    table = pd.concat(tables, ignore_index=True).sort_values([sample_column, *order], kind="stable")
    return kind(table.reset_index(drop=True), sorted(nonfinite), sorted(all_zero))


def merge_input_results(parts: list) -> InputNormsResult:
    """:func:`merge_sample_results` for ``norms inputs`` (column ``sample_index``, rows by sample, then layer)."""
    return merge_sample_results(parts, "sample_index", ("layer",))


def load_samples_for(args: NormsInputsArgs, tokenizer, vocab_size: int, texts=None):
    """:func:`qft_cli.data.text_data.load_samples` with the options of ``args`` (``texts``: from
    :func:`qft_cli.data.text_data.load_texts`, read once for all models)."""
    from qft_cli.data.text_data import load_samples

    return load_samples(args.dataset, tokenizer, vocab_size=vocab_size, max_tokens=args.max_tokens,
                        num_samples=args.num_samples, data_file=args.data_file, text_column=args.text_column,
                        seed=args.seed, loaded=texts)


def run_norms_weights(args: NormsWeightsArgs, progress: Optional[ProgressFn] = None) -> NormsResult:
    """Measure every weight matrix of every model and write ``norms_weights.parquet``,
    ``norm_vectors.parquet`` and ``norms_heads.parquet``.

    Raises:
        QftInputError: bad model names, models without attention matrices, unwritable out.
    """
    sources = [resolve_model(name) for name in args.models]
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype) if args.dtype else None
    check_writable(args.out, create=False)
    from qft_cli.runs.provenance import model_files_for

    tables, vectors, heads, warnings, notices, unrecognised, model_files = [], [], [], [], [], {}, []
    shared = {}
    rank, world = process_group(device.type)
    with Run("norms weights", args.models, _options(args), out=Path(args.out), is_main_process=rank == 0) as run:
        threads = configure_threads(args.threads)
        fix_mmap_threshold()  # no heap growth from freed 16+ MiB blocks (docs/performance.md)
        run.update(device=str(device), dtype=args.dtype or "stored", threads=threads.count,
                   threads_source=threads.source, spectral_method="exact" if args.exact else "krylov",
                   world_size=world)
        for source in sources:
            labels = {"model": source.model_id, "model_alias": source.name, "model_format": source.model_format}
            if world == 1:
                result = weight_norms(source, dtype=dtype, device=device, progress=progress, exact=args.exact,
                                      labels=labels, workers=threads.count)
            else:  # each rank measures a balanced share of the stored tensors; rank 0 merges
                groups = matrix_groups(source)
                mine = balanced_shards([size for _, _, size in groups], world)[rank]
                part = weight_norms(source, dtype=dtype, device=device, progress=progress if rank == 0 else None,
                                    exact=args.exact, labels=labels, workers=threads.count,
                                    parameters={p for i in mine for p in groups[i][1]})
                parts = gather_to_main(part)
                if rank != 0:
                    continue
                result = merge_weight_results(parts, [key for key, _, _ in groups])
            model_files.append(model_files_for(source, progress=progress))  # after reading: a hub snapshot is cached now
            run.update(model_files=model_files)
            warnings += [f"non-finite weight: model {source.name}, parameter {p}" for p in result.nonfinite]
            if result.unrecognised:
                unrecognised[source.name] = result.unrecognised
                shown = ", ".join(result.unrecognised[:3]) + (", ..." if len(result.unrecognised) > 3 else "")
                notices.append(f"unrecognised 2-D tensors (not measured, listed in run.json "
                                f"unrecognised_parameters): model {source.name}, {len(result.unrecognised)}: {shown}")
            if result.shared_layers:  # ALBERT: each stored layer group -> the blocks that run it
                shared[source.name] = result.shared_layers
            tables.append(result.table)
            vectors.append(result.vectors)
            heads.append(result.heads)
        if rank != 0:
            return NormsResult(run.path, {}, pd.DataFrame())
        table = pd.concat(tables, ignore_index=True)
        run.write_table("norms_weights", table)
        run.write_table("norm_vectors", pd.concat(vectors, ignore_index=True))
        run.write_table("norms_heads", pd.concat(heads, ignore_index=True))
        run.update(warnings=warnings + notices, num_rows=len(table), unrecognised_parameters=unrecognised,
                   shared_layers=shared)
    return NormsResult(run.path, {"norms_weights": table}, summarize_weights(table), one_line(warnings),
                       one_line(notices))
