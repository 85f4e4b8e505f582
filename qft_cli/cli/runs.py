"""``qft runs verify RUN_DIR...``: check that the files a run recorded are still the same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table
from rich.text import Text

from qft_cli.cli.common import EXAMPLES, EXIT_BAD_INPUT, cli_errors, console, err_console

app = typer.Typer(help="Inspect run directories: check the data and weight files they recorded.",
                  epilog=EXAMPLES["runs"], no_args_is_help=True)


@app.command("verify", epilog=EXAMPLES["runs verify"])
@cli_errors
def verify_command(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories (with run.json) written by qft."),
) -> None:
    """Recompute the SHA-256 of every data and weight file RUN_DIR's run.json records (never from the
    cache) and say which changed or are missing. Exit status 2 when a file changed, 0 otherwise
    (missing files are reported but do not fail: data may have been moved on purpose)."""
    from qft_cli.runs.provenance import short_hash, verify_run

    changed = 0
    for run_dir in run_dirs:
        rows = verify_run(run_dir)
        split = _fasta_split_row(run_dir)
        if split is not None:
            rows.append(split)
        table = Table(title=f"qft runs verify {run_dir}")
        for col in ("status", "what", "file", "recorded sha256", "sha256 now"):
            table.add_column(col, overflow="fold")
        for r in rows:
            style = {"changed": "red", "missing": "yellow"}.get(r["status"], "green")
            table.add_row(Text(r["status"], style=style), Text(r["what"]), Text(r["path"]),
                          short_hash(r["recorded_sha256"]), short_hash(r["sha256"]))
        console.print(table)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("unchanged", "changed", "missing")}
        console.print(f"{run_dir}: {counts['unchanged']} unchanged, {counts['changed']} changed, "
                      f"{counts['missing']} missing", markup=False, highlight=False, soft_wrap=True)
        for r in rows:
            if r["status"] == "changed":
                err_console.print(f"error: {r['path']} changed since run {run_dir} (sha256 {r['sha256']} now, "
                                  f"{r['recorded_sha256']} recorded)", markup=False, soft_wrap=True)
            elif r["status"] == "missing":
                err_console.print(f"warning: {r['path']} recorded by run {run_dir} is missing", markup=False,
                                  soft_wrap=True)
        changed += counts["changed"]
    if changed:
        raise typer.Exit(EXIT_BAD_INPUT)


def _fasta_split_row(run_dir: Path):
    """The ``fasta split`` verify row of a run that split FASTA itself (:func:`qft_cli.data.fasta.verify_split`)."""
    from qft_cli.data.fasta import verify_split
    from qft_cli.runs.rundir import read_run_json

    try:
        return verify_split(read_run_json(run_dir))
    except (ValueError, OSError, AttributeError):
        return None
