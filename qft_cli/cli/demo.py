"""``qft demo``: norms, training and the report, offline on embedded defaults, in about 20 seconds."""

from __future__ import annotations

from pathlib import Path

import typer

from qft_cli.cli.common import (
    FORMAT_OPTION,
    OUT_OPTION,
    QUIET_OPTION,
    check_format,
    cli_errors,
    console,
    err_console,
    print_frame,
    progress_bar,
)


@cli_errors
def demo_command(
    out: Path = OUT_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of the random tokens, the synthetic DNA data and training."),
    fmt: str = FORMAT_OPTION,
    quiet: bool = QUIET_OPTION,
) -> None:
    """Run the whole pipeline offline on embedded defaults and write the HTML report (about 20 s on 2 CPU cores).

    Weight norms of minilm and the tiny models, input norms of minilm on random tokens (N up to 256),
    vanilla/spectral/Frobenius training on a small synthetic DNA task generated from --seed, then the report.
    """
    from qft_cli.demo import DemoConfig, run_demo

    check_format(fmt)
    with progress_bar(quiet) as progress:
        result = run_demo(DemoConfig(out=out, seed=seed), progress)
    text = console if fmt == "table" else err_console  # csv/markdown: only the tables on stdout
    for step in result.steps:
        where = str(step.run_dir) if step.run_dir else "-"
        text.print(f"  {step.status:<11} {step.seconds:6.1f} s  {step.name}", markup=False, highlight=False, soft_wrap=True)
        text.print(f"              run: {where}", markup=False, highlight=False, soft_wrap=True)
        if step.message:
            err_console.print(f"  {step.status}: {step.message}", markup=False, soft_wrap=True)
    text.print(f"synthetic data: {result.data_dir}", markup=False, highlight=False, soft_wrap=True)
    if result.fits is not None:
        print_frame(result.fits.rename(columns={
            "model_alias": "model", "exponent": "b", "exponent_ci_low": "b 95% low", "exponent_ci_high": "b 95% high",
            "r_squared": "R²", "num_points": "samples"}),
            "hidden-state norms ||S|| ~ c N^b on random tokens (b with its 95% Student-t interval)", fmt)
    if result.accuracy is not None:
        print_frame(result.accuracy.rename(columns={
            "num_seeds": "seeds", "f1": "F1", "accuracy_diff_pp": "Δ accuracy (pp)", "f1_diff_pp": "Δ F1 (pp)"}),
            "synthetic DNA task, test split: accuracy and F1 per variant, differences to vanilla", fmt,
            formats={"accuracy": ".4f", "F1": ".4f", "Δ accuracy (pp)": "+.2f", "Δ F1 (pp)": "+.2f"})
    if result.report:
        text.print(f"report: {result.report}", markup=False, highlight=False, soft_wrap=True)
    else:
        err_console.print(f"error: {result.report_message}", markup=False)
    if not result.ok:
        raise typer.Exit(1)
