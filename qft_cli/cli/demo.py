"""``qft demo``: norms, training and the report, offline on embedded defaults, in a few minutes."""

from __future__ import annotations

from pathlib import Path

import typer

from qft_cli.cli.common import OUT_OPTION, QUIET_OPTION, cli_errors, console, err_console, progress_bar


@cli_errors
def demo_command(
    out: Path = OUT_OPTION,
    seed: int = typer.Option(0, "--seed", help="Seed of the random tokens, the synthetic DNA data and training."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Run the whole pipeline offline on embedded defaults and write the HTML report (minutes on 2 CPU cores).

    Weight norms of minilm and the tiny models, input norms of minilm on random tokens (N up to 256),
    vanilla/spectral/Frobenius training on a small synthetic DNA task generated from --seed, then the report.
    """
    from qft_cli.demo import DemoConfig, run_demo

    with progress_bar(quiet) as progress:
        result = run_demo(DemoConfig(out=out, seed=seed), progress)
    for step in result.steps:
        where = str(step.run_dir) if step.run_dir else "-"
        console.print(f"  {step.status:<11} {step.seconds:6.1f} s  {step.name}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"              run: {where}", markup=False, highlight=False, soft_wrap=True)
        if step.message:
            err_console.print(f"  {step.status}: {step.message}", markup=False, soft_wrap=True)
    console.print(f"synthetic data: {result.data_dir}", markup=False, highlight=False, soft_wrap=True)
    if result.report:
        console.print(f"report: {result.report}", markup=False, highlight=False, soft_wrap=True)
    else:
        err_console.print(f"error: {result.report_message}", markup=False)
    if not result.ok:
        raise typer.Exit(1)
