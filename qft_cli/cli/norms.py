"""``qft norms inputs``, ``qft norms attention`` and ``qft norms weights``."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import List, Optional

import pandas as pd
import typer

from qft_cli.cli.common import (
    DEVICE_MAP_OPTION,
    DEVICE_OPTION,
    EXAMPLES,
    EXIT_BAD_INPUT,
    FORMAT_OPTION,
    OUT_OPTION,
    QUIET_OPTION,
    THREADS_OPTION,
    TRUST_OPTION,
    check_format,
    cli_errors,
    console,
    err_console,
    print_frame,
    print_run_dir,
    progress_bar,
    short_model_name,
)

app = typer.Typer(help="Block-encoding normalisation factors: norms of hidden states (inputs), of attention's "
                       "per-head Q, K, V and logits (attention) and of weight matrices (weights).",
                  epilog=EXAMPLES["norms"], no_args_is_help=True)


MODELS_ARGUMENT = typer.Argument(..., metavar="MODELS...",
                                 help="Model aliases (see `qft models`), hub ids or local dirs.")


# Options shared by `norms inputs` and `norms attention` (the same data, batching and model loading).
DATASET_OPTION = typer.Option("mmlu", "--dataset", help="mmlu | random | a .txt/.csv/.tsv/.parquet/.fa file.")
DATA_FILE_OPTION = typer.Option(None, "--data-file", help="Local CSV for mmlu (subject,question,A,B,C,D,answer).")
TEXT_COLUMN_OPTION = typer.Option(None, "--text-column", help="Column with the text (default: first of text/question/sequence/seq).")
MAX_TOKENS_OPTION = typer.Option(512, "--max-tokens", help="Truncate samples to this many tokens (random: N = 1..max).")
NUM_SAMPLES_OPTION = typer.Option(None, "--num-samples", help="Keep only the first samples.")
BATCH_SIZE_OPTION = typer.Option(8, "--batch-size", help="Samples per forward pass; -1 = no limit.")
SEED_OPTION = typer.Option(0, "--seed", help="Seed of the random-token dataset.")
MODEL_DTYPE_OPTION = typer.Option("float32", "--dtype", help="Model dtype: float32|bfloat16|float16 (norms always in float64).")


def _print_table(title: str, frame: pd.DataFrame, headers: dict[str, str], fmt: str = "table") -> None:
    """Print the ``headers`` columns of ``frame`` (column -> header) through :func:`print_frame`."""
    print_frame(frame[list(headers)].rename(columns=headers), title, fmt)


def _command(args_class, workflow, options: dict, show) -> None:
    """The body of every ``norms`` command: check ``--format``; build ``args_class`` (the workflow's
    arguments, validated in its ``__post_init__``) from the command's ``options`` (its ``locals()``,
    one value per field, by name); run ``workflow(args, progress)`` under a progress bar (off with
    ``--quiet`` and on ranks other than 0 under torchrun); then ``show(result, fmt)`` prints its tables,
    and the run directory and warnings follow (exit status 2 on a degenerate result). Ranks other
    than 0 print nothing (their result has no tables: rank 0 writes and prints)."""
    fmt = options["fmt"]
    check_format(fmt)
    args = args_class(**{f.name: options[f.name] for f in dataclasses.fields(args_class)})
    main = os.environ.get("RANK", "0") == "0"
    with progress_bar(options["quiet"] or not main) as progress:
        result = workflow(args, progress)
    if not result.tables:  # a rank other than 0 under torchrun
        return
    show(result, fmt)
    _finish(result, fmt)


def layer_ranges(layers) -> str:
    """``[0, 1, 2, 3, 5]`` -> ``0-3,5`` (sorted, distinct)."""
    values, parts = sorted({int(x) for x in layers}), []
    for v in values:
        if parts and v == parts[-1][1] + 1:
            parts[-1][1] = v
        else:
            parts.append([v, v])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def measured_layers_line(frame: pd.DataFrame, what: str) -> str:
    """``<what> measured: minilm 0-6; gpt2 0-12`` from the ``model_alias`` and ``layer`` columns."""
    per_model = [f"{short_model_name(str(alias))} {layer_ranges(g['layer'])}"
                 for alias, g in frame.groupby("model_alias", sort=False)]
    return f"{what} measured: {'; '.join(per_model)}"


def _print_layers(frame: pd.DataFrame, what: str, fmt: str) -> None:
    (console if fmt == "table" else err_console).print(measured_layers_line(frame, what), markup=False,
                                                       highlight=False, soft_wrap=True)


def _finish(result, fmt: str = "table") -> None:
    print_run_dir(result.run_dir, fmt)
    for line in result.warnings + result.notices:
        err_console.print(f"warning: {line}", markup=False)
    if result.warnings:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("inputs", epilog=EXAMPLES["norms inputs"])
@cli_errors
def inputs_command(
    models: List[str] = MODELS_ARGUMENT,
    dataset: str = DATASET_OPTION,
    data_file: Optional[Path] = DATA_FILE_OPTION,
    text_column: Optional[str] = TEXT_COLUMN_OPTION,
    layers: str = typer.Option("all", "--layers", help="Layers: 0 = embedding output, l = output of block l; all (default: 0..L) or e.g. 0,1 or 0-3."),
    max_tokens: int = MAX_TOKENS_OPTION,
    num_samples: Optional[int] = NUM_SAMPLES_OPTION,
    batch_size: int = BATCH_SIZE_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = MODEL_DTYPE_OPTION,
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    trust_remote_code: bool = TRUST_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    out: Path = OUT_OPTION,
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Norms of the hidden-state matrices S (num_tokens x d) per sample and layer, and the power-law fit
    norm ~ c N^b per layer with the 95% interval of b (norms_inputs.parquet, fits.parquet)."""
    from qft_cli.measure.workflows import NormsInputsArgs, run_norms_inputs

    def show(result, fmt: str) -> None:
        _print_table("hidden-state norms ||S|| per layer: min / median / max over samples, and the fit ||S|| ~ c N^b "
                     "(b with its 95% Student-t interval, R² in log-log space)", result.summary,
                     {"model_alias": "model", "dataset": "dataset", "layer": "layer", "norm": "norm",
                      "num_samples": "samples", "norm_min": "min", "norm_median": "median", "norm_max": "max",
                      "exponent": "b", "exponent_ci_low": "b 95% low", "exponent_ci_high": "b 95% high",
                      "r_squared": "R²"}, fmt)
        _print_layers(result.summary, "layers (0 = embedding output, l = output of block l)", fmt)

    _command(NormsInputsArgs, run_norms_inputs, locals(), show)


@app.command("attention", epilog=EXAMPLES["norms attention"])
@cli_errors
def attention_command(
    models: List[str] = MODELS_ARGUMENT,
    dataset: str = DATASET_OPTION,
    data_file: Optional[Path] = DATA_FILE_OPTION,
    text_column: Optional[str] = TEXT_COLUMN_OPTION,
    layers: str = typer.Option("all", "--layers", help="Transformer blocks 1..L (the attention of block l; 0, the embedding, has none); all (default) or e.g. 1,2 or 1-3."),
    max_tokens: int = MAX_TOKENS_OPTION,
    num_samples: Optional[int] = NUM_SAMPLES_OPTION,
    batch_size: int = BATCH_SIZE_OPTION,
    seed: int = SEED_OPTION,
    device: str = DEVICE_OPTION,
    dtype: str = MODEL_DTYPE_OPTION,
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    trust_remote_code: bool = TRUST_OPTION,
    threads: Optional[int] = THREADS_OPTION,
    out: Path = OUT_OPTION,
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Per-head norms of queries, keys, values and unmasked logits Q K^T / sqrt(d_head), with their bounds."""
    from qft_cli.measure.workflows import NormsAttentionArgs, run_norms_attention

    def show(result, fmt: str) -> None:
        _print_table("median measured / bound per block over samples and heads (L: logits; nan: bound does not apply)",
                     result.summary,
                     {"model_alias": "model", "dataset": "dataset", "layer": "block", "num_samples": "samples",
                      "q_bound_ratio": "Q", "k_bound_ratio": "K", "v_bound_ratio": "V",
                      "logits_unmasked_qk_bound_ratio": "L:qk", "logits_unmasked_weight_bound_ratio": "L:weight"}, fmt)
        _print_layers(result.summary, "blocks", fmt)

    _command(NormsAttentionArgs, run_norms_attention, locals(), show)


@app.command("weights", epilog=EXAMPLES["norms weights"])
@cli_errors
def weights_command(
    models: List[str] = MODELS_ARGUMENT,
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Cast weights to float32|bfloat16|float16 first (default: as stored)."),
    exact: bool = typer.Option(False, "--exact", help="Spectral norms by the float64 Gram matrix + eigvalsh for every matrix (default: block Krylov certified to 1e-6 relative for d > 512)."),
    threads: Optional[int] = THREADS_OPTION,
    out: Path = OUT_OPTION,
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Norms of every attention (q, k, v, o) and FFN weight matrix per layer, and of the embedding."""
    from qft_cli.measure.weights import weights_by_layer
    from qft_cli.measure.workflows import NormsWeightsArgs, run_norms_weights

    def show(result, fmt: str) -> None:
        by_layer = weights_by_layer(result.tables["norms_weights"]).rename(columns={"model_alias": "model"})
        print_frame(by_layer, "weight norms per layer (layer = transformer block; spectral ||W||_2 and Frobenius "
                              "||W||_F, W as d_out x d_in)", fmt)
        _print_table("weight norms per matrix type (mean and max over layers)", result.summary,
                     {"model_alias": "model", "matrix": "matrix", "count": "n", "spectral_norm_mean": "||W||_2 mean",
                      "spectral_norm_max": "||W||_2 max", "frobenius_norm_mean": "||W||_F mean",
                      "frobenius_norm_max": "||W||_F max"}, fmt)
        _print_layers(result.tables["norms_weights"], "layers (0 = embedding, l = block l)", fmt)

    _command(NormsWeightsArgs, run_norms_weights, locals(), show)
