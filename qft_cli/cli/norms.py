"""``qft norms inputs`` and ``qft norms weights``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pandas as pd
import typer
from rich.table import Table

from qft_cli.cli.common import (DEVICE_MAP_OPTION, DEVICE_OPTION, OUT_OPTION, QUIET_OPTION, TRUST_OPTION,
                                EXIT_BAD_INPUT, cli_errors, console, err_console, progress_bar)

app = typer.Typer(help="Block-encoding normalisation factors: norms of hidden states and of weights.",
                  no_args_is_help=True)


def _print_table(title: str, frame: pd.DataFrame, headers: dict[str, str]) -> None:
    table = Table(title=title)
    for col in headers.values():
        table.add_column(col, justify="left" if col in ("model", "dataset", "matrix") else "right", overflow="fold")
    for _, row in frame.iterrows():
        table.add_row(*[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in headers])
    console.print(table)


def _span(frame: pd.DataFrame, norm: str) -> pd.Series:
    return frame.apply(lambda r: f"{r[norm + '_min']:.3g} / {r[norm + '_median']:.3g} / {r[norm + '_max']:.3g}", axis=1)


def _finish(result) -> None:
    console.print(f"results: {result.run_dir}", soft_wrap=True, markup=False, highlight=False)
    for line in result.warnings + result.notices:
        err_console.print(f"warning: {line}", markup=False)
    if result.warnings:
        raise typer.Exit(EXIT_BAD_INPUT)


@app.command("inputs")
@cli_errors
def inputs_command(
    models: List[str] = typer.Argument(..., help="Model aliases (see `qft models`), hub ids or local dirs."),
    dataset: str = typer.Option("mmlu", "--dataset", help="mmlu | random | a .txt/.csv/.tsv/.parquet/.fa file."),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="Local CSV for mmlu (subject,question,A,B,C,D,answer)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column with the text (default: first of text/question/sequence/seq)."),
    layers: str = typer.Option("0,1", "--layers", help="Layers: 0 = embedding output, l = output of block l; e.g. 0,1 or 0-3 or all."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Truncate samples to this many tokens (random: N = 1..max)."),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", help="Keep only the first samples."),
    batch_size: int = typer.Option(8, "--batch-size", help="Samples per forward pass; -1 = no limit."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random-token dataset."),
    device: str = DEVICE_OPTION,
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype: float32|bfloat16|float16 (norms always in float64)."),
    device_map: Optional[str] = DEVICE_MAP_OPTION,
    trust_remote_code: bool = TRUST_OPTION,
    out: Path = OUT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Norms of the hidden-state matrices S (num_tokens x d) per sample and layer."""
    from qft_cli.norms_runs import NormsInputsArgs, run_norms_inputs

    args = NormsInputsArgs(models=models, dataset=dataset, data_file=data_file, text_column=text_column,
                           layers=layers, max_tokens=max_tokens, num_samples=num_samples, batch_size=batch_size,
                           seed=seed, device=device, dtype=dtype, device_map=device_map,
                           trust_remote_code=trust_remote_code, out=out)
    with progress_bar(quiet) as progress:
        result = run_norms_inputs(args, progress)
    summary = result.summary.assign(frobenius=_span(result.summary, "frobenius_norm"),
                                    spectral=_span(result.summary, "spectral_norm"))
    _print_table("hidden-state norms per layer: min / median / max, and b of norm ~ c N^b", summary,
                 {"model_alias": "model", "dataset": "dataset", "layer": "layer", "num_samples": "samples",
                  "frobenius": "||S||_F", "frobenius_norm_exponent": "b_F",
                  "spectral": "||S||_2", "spectral_norm_exponent": "b_2"})
    _finish(result)


@app.command("weights")
@cli_errors
def weights_command(
    models: List[str] = typer.Argument(..., help="Model aliases (see `qft models`), hub ids or local dirs."),
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Cast weights to float32|bfloat16|float16 first (default: as stored)."),
    out: Path = OUT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Norms of every attention (q, k, v, o) and FFN weight matrix per layer, and of the embedding."""
    from qft_cli.norms_runs import NormsWeightsArgs, run_norms_weights

    args = NormsWeightsArgs(models=models, device=device, dtype=dtype, out=out)
    with progress_bar(quiet) as progress:
        result = run_norms_weights(args, progress)
    _print_table("weight norms per matrix type (mean and max over layers)", result.summary,
                 {"model_alias": "model", "matrix": "matrix", "count": "n", "spectral_norm_mean": "||W||_2 mean",
                  "spectral_norm_max": "||W||_2 max", "frobenius_norm_mean": "||W||_F mean",
                  "frobenius_norm_max": "||W||_F max"})
    _finish(result)
