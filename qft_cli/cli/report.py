"""``qft report PATH... [-o report.html]``: one HTML page of charts from any set of runs."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from qft_cli.cli.common import QUIET_OPTION, cli_errors, console, err_console


@cli_errors
def report_command(
    paths: List[Path] = typer.Argument(..., help="Run directories, or directories of run directories "
                                                 "(norms, train, finetune and demo runs may be mixed)."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Write one self-contained HTML page of charts (plotly, works offline) from the runs' parquet tables."""
    from qft_cli.report import write_report
    from qft_cli.report.page import plural

    result = write_report(paths, output)
    not_completed = [r for r in result.runs if r.status != "completed"]
    if not quiet:
        for r in result.runs:
            console.print(f"  {r.status:<11} {r.command:<14} {r.path}", markup=False, highlight=False, soft_wrap=True)
    for r in not_completed:
        err_console.print(f"warning: run {r.path} is {r.status}"
                          + (f": {r.meta.get('error') or '; '.join(r.problems)}" if (r.meta.get('error') or r.problems)
                             else ""), markup=False)
    console.print(f"report: {result.path} ({plural(len(result.runs), 'run')}, {plural(result.num_figures, 'chart')}, "
                  f"{result.size_bytes / 1e6:.1f} MB)", markup=False, highlight=False, soft_wrap=True)
