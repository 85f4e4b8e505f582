"""Shared CLI plumbing: error handling, progress bars, consoles, common options."""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from qft_cli.errors import QftInputError
from qft_cli.progress import ProgressFn

console = Console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_BAD_INPUT = 2


def fail(message: str) -> "typer.Exit":
    """Print one error line on stderr and return the exit (status 2) to raise."""
    err_console.print(f"error: {message}", markup=False)
    return typer.Exit(EXIT_BAD_INPUT)


class ResumedRun:
    """Context for ``--resume``: like :class:`qft_cli.runs.Run` but bad input marks the run
    ``failed`` instead of deleting the directory that holds the earlier work."""

    def __init__(self, run):
        self.run = run

    def __enter__(self):
        return self.run.__enter__()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, QftInputError):
            self.run.meta["error"] = f"QftInputError: {exc}"
            return self.run.__exit__(RuntimeError, exc, tb)  # status "failed", directory kept
        return self.run.__exit__(exc_type, exc, tb)


def cli_errors(fn):
    """Decorator for commands: :class:`QftInputError` -> one stderr line and exit status 2;
    Ctrl-C -> exit 130 with one line. Other exceptions propagate (they are bugs)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QftInputError as err:
            raise fail(str(err)) from None
        except KeyboardInterrupt:
            err_console.print("interrupted", markup=False)
            raise typer.Exit(130) from None
        finally:
            _close_process_group()

    return wrapper


def _close_process_group() -> None:
    """Under torchrun, end the process group the Trainer/accelerate opened: a process that exits
    with gloo threads alive aborts ("terminate called without an active exception")."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def progress_bar(quiet: bool) -> Iterator[Optional[ProgressFn]]:
    """Yield a :data:`ProgressFn` drawing a rich progress bar on stderr, or ``None`` when quiet."""
    if quiet:
        yield None
        return
    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err_console, transient=False) as bar:

        def update(description: str, completed: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=completed, total=total)

        yield update


def quiet_libraries() -> None:
    """Silence third-party progress bars and warnings that would garble qft's own output."""
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
    except Exception:  # pragma: no cover
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)


QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bar.")
OUT_OPTION = typer.Option("runs", "--out", "-o", help="Directory that receives the run directory.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto|cpu|cuda|mps (auto = CUDA when present).")
DTYPE_OPTION = typer.Option("float32", "--dtype", help="Model dtype: float32|bfloat16|float16 (norms are always accumulated in float64).")
TRUST_OPTION = typer.Option(False, "--trust-remote-code", help="Run model code from the hub (off unless given).")
THREADS_OPTION = typer.Option(None, "--threads", help="CPU threads for torch (default: OMP_NUM_THREADS, else the CPUs the affinity mask and cgroup quota allow).")
DEVICE_MAP_OPTION = typer.Option(None, "--device-map", help="'auto' shards a model too large for one GPU across several (accelerate).")


def argv() -> list[str]:
    """The command line as typed."""
    return list(sys.argv)


def print_test_table(title: str, rows: list[dict], run_dir) -> None:
    """The final table of ``train`` and ``finetune``: variant x test accuracy and F1, and their
    differences to vanilla in percentage points; a warning for variants that learnt (almost)
    nothing (F1 < 0.05, e.g. one class predicted for every input); then the run directory."""
    from rich.table import Table

    def num(x) -> str:
        return "" if x is None or x != x else f"{x:.4f}"

    def points(x) -> str:
        return "" if x is None or x != x else f"{100 * x:+.2f}"

    table = Table(title=title)
    for col in ("variant", "accuracy", "F1", "Δ accuracy (pp)", "Δ F1 (pp)", "epochs"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in rows:
        vanilla = row["variant"] == "vanilla"
        epochs = row.get("epochs")
        table.add_row(row["variant"], num(row["accuracy"]), num(row["f1"]),
                      "" if vanilla else points(row["accuracy_diff"]), "" if vanilla else points(row["f1_diff"]),
                      "" if epochs is None else f"{epochs:.3g}")
    console.print(table)
    for row in rows:
        if row["f1"] == row["f1"] and row["f1"] < 0.05:
            err_console.print(f"warning: {row['variant']} has test F1 {row['f1']:.3f}: it (almost) always predicts "
                              "one class; train longer or change the learning rate", markup=False)
    console.print(f"results: {run_dir}", soft_wrap=True, markup=False, highlight=False)
