"""``qft sweep run GRID.yaml``, ``qft sweep status DIR``, ``qft sweep presets``: experiment grids
(docs/sweep.md). The commands and options a grid may name are read here from qft's own Typer app
and handed to the sweep library as :class:`qft_cli.sweep.grid.CommandSpec`."""

from __future__ import annotations

import shlex
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from qft_cli.cli.common import EXAMPLES, QUIET_OPTION, cli_errors, console, err_console, progress_bar

app = typer.Typer(help="Experiment grids from one YAML file: run them here, on SLURM or on Ray; "
                       "done cells are skipped by content.", no_args_is_help=True, epilog=EXAMPLES["sweep"])

_KINDS = {bool: "flag", int: "int", float: "float", str: "str", Path: "path"}


def _kind(annotation) -> tuple[str, bool]:
    """``(kind, multiple)`` of a Typer parameter annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (list, typing.List):
        return _kind(args[0])[0], True
    if origin is typing.Union and len(args) == 1:
        return _kind(args[0])
    return _KINDS.get(annotation, "str"), False


def command_specs():
    """The :class:`CommandSpec` of every command of :data:`qft_cli.sweep.grid.COMMANDS` this qft has,
    read from the Typer app (option names as the CLI spells them, kinds, defaults, MODEL argument)."""
    import typer.main

    from qft_cli.cli.app import app as root_app
    from qft_cli.sweep.grid import COMMANDS, CommandSpec, OptionSpec

    root = typer.main.get_command(root_app)
    specs = {}
    for name in COMMANDS:
        cmd = root
        for word in name.split():
            cmd = getattr(cmd, "commands", {}).get(word)
            if cmd is None:
                break
        if cmd is None:
            continue
        options, model = {}, None
        for p in cmd.params:
            annotation = p.type_descriptor.annotation
            if p.param_type_name == "argument":
                model = "many" if p.nargs == -1 else "one"
                continue
            long = [o for o in p.opts if o.startswith("--")]
            if not long:
                continue
            kind, multiple = _kind(annotation)
            if getattr(p, "is_flag", False):
                kind = "flag"
            default = p.default
            if isinstance(default, Path):
                default = str(default)
            options[long[0][2:]] = OptionSpec(long[0][2:], kind, default, multiple)
        specs[name] = CommandSpec(name, options, model)
    return specs


def _resolver(name: str) -> tuple[str, str]:
    from qft_cli.models.names import resolve_model

    source = resolve_model(name)
    return source.kind, source.location


def _load(grid: Optional[Path], preset: Optional[str]):
    from qft_cli.sweep.grid import load_grid
    from qft_cli.sweep.presets import preset_path
    from qft_cli.system.errors import QftInputError

    if (grid is None) == (preset is None):
        raise QftInputError("give a GRID file or --preset NAME (one of them; qft sweep presets lists the presets)")
    path = preset_path(preset) if preset is not None else grid
    return load_grid(path, command_specs())


@app.command("run", epilog=EXAMPLES["sweep run"])
@cli_errors
def run_command(
    grid: Optional[Path] = typer.Argument(None, help="The grid file (YAML; docs/sweep.md)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="A shipped grid instead of GRID (qft sweep presets)."),
    out: Path = typer.Option(Path("sweep"), "--out", "-o", help="The sweep folder: one folder per cell, by key "
                                                              "(on a cluster: a shared filesystem path)."),
    executor: str = typer.Option("local", "--executor", help="local (worker processes here) | slurm (submitit "
                                                             "job arrays) | ray (Ray tasks)."),
    jobs: int = typer.Option(1, "--jobs", "-j", help="local: cells at once (torch threads per cell = usable "
                                                     "cores // jobs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print each cell's qft command line and what would be "
                                                          "skipped; run nothing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the cells that failed before again."),
    slurm_local: bool = typer.Option(False, "--slurm-local", help="slurm: run the jobs here through submitit's "
                                                                  "LocalExecutor (no SLURM; to try a grid)."),
    quiet: bool = QUIET_OPTION,
) -> None:
    """Run every cell of GRID that is not done yet; failed cells are named at the end (exit status 1).

    A cell is done when a completed, verified run of the same command, options, qft version and
    input hashes is in its folder (docs/sweep.md)."""
    from qft_cli.sweep.executors import local_threads, make_plan, run_sweep
    from qft_cli.sweep.cells import qft_argv, CellTask

    parsed = _load(grid, preset)
    specs = command_specs()
    if dry_run:
        plan = make_plan(parsed, specs, out, retry_failed=retry_failed, resolve=_resolver)
        threads = local_threads(jobs)[1] if executor == "local" else None
        for c in plan.cells:
            words = qft_argv(CellTask(c.key, "", c.cell.command, tuple(c.args), str(plan.sweep_dir / c.key), threads,
                                      own=c.own))
            words[:3] = ["qft"]
            what = {"run": "run", "resume": "resume", "skip": "skip (done)", "failed": "skip (failed; --retry-failed)",
                    "duplicate": "skip (same key as an earlier cell)"}[c.action]
            console.print(f"{c.key}  {what:<33} {shlex.join(words)}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"{len(plan.cells)} cells: {len(plan.to_run())} to run, {plan.count('skip')} done, "
                      f"{plan.count('failed')} failed before, {plan.count('duplicate')} duplicate", markup=False)
        return
    try:
        with progress_bar(quiet) as progress:
            result = run_sweep(parsed, specs, out, executor=executor, jobs=jobs, retry_failed=retry_failed,
                               resolve=_resolver, slurm_cluster="local" if slurm_local else "slurm", progress=progress)
    except KeyboardInterrupt:
        from qft_cli.cli.common import argv

        err_console.print(f"interrupted: the running cells of {out} are marked interrupted", markup=False,
                          soft_wrap=True)
        err_console.print(f"finish the sweep with: {shlex.join(argv())}", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    plan = result.plan
    done = sum(r.get("status") == "completed" for r in result.results)
    how = f", {result.workers} workers x {result.threads} threads" if result.workers else ""
    console.print(f"sweep {plan.sweep_dir}: {len(plan.cells)} cells, {done} run now{how}, {plan.count('skip')} "
                  f"done before, {len(result.failed)} failed", markup=False, highlight=False, soft_wrap=True)
    for r in result.failed:
        err_console.print(f"failed: {r.get('key')} {r.get('label')}: {r.get('error')}", markup=False, soft_wrap=True)
    if result.failed:
        err_console.print(f"{len(result.failed)} cells failed (their cell.json and stderr.log say why): fix and rerun "
                          "with --retry-failed", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"report: qft report {plan.sweep_dir}", markup=False, highlight=False, soft_wrap=True)


@app.command("status", epilog=EXAMPLES["sweep status"])
@cli_errors
def status_command(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (the --out of qft sweep run)."),
) -> None:
    """One row per cell: status, seconds, peak memory, run dir, error line."""
    from qft_cli.sweep.executors import sweep_status

    rows = sweep_status(sweep_dir)
    table = Table(title=f"qft sweep status {sweep_dir}")
    table.add_column("key", no_wrap=True, min_width=16)  # an identifier: never folded
    for col in ("cell", "status", "seconds", "peak memory (MiB)", "run dir", "error"):
        table.add_column(col, overflow="fold")
    styles = {"completed": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}
    for r in rows:
        table.add_row(r["key"], Text(r["label"]), Text(r["status"], style=styles.get(r["status"], "")),
                      "" if r["seconds"] is None else f"{r['seconds']:.1f}",
                      "" if r["peak_memory_mib"] is None else f"{r['peak_memory_mib']:.0f}",
                      Text(r["run_dir"] or ""), Text(r["error"] or ""))
    console.print(table)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), markup=False)


@app.command("presets", epilog=EXAMPLES["sweep presets"])
@cli_errors
def presets_command() -> None:
    """List the shipped grids (qft sweep run --preset NAME)."""
    from qft_cli.sweep.presets import preset_names, preset_path, preset_summary

    table = Table(title="qft sweep presets")
    for col in ("preset", "cells", "what, what it needs, how long"):
        table.add_column(col, overflow="fold")
    from qft_cli.sweep.grid import load_grid

    specs = command_specs()
    for name in preset_names():
        cells = len(load_grid(preset_path(name), specs).cells)
        table.add_row(name, str(cells), Text(preset_summary(name)))
    console.print(table)
    console.print("run one: qft sweep run --preset NAME --out DIR (--dry-run lists its cells)", markup=False)
