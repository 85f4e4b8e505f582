"""Shared CLI plumbing: error handling, progress bars, consoles, common options."""

from __future__ import annotations

import contextlib
import functools
import inspect
import shlex
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn

console = Console()  # stdout; tables printed through print_frame are never wrapped at 80 columns when piped
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_BAD_INPUT = 2


def fail(message: str) -> "typer.Exit":
    """Print one error line on stderr and return the exit (status 2) to raise."""
    err_console.print(f"error: {message}", markup=False)
    return typer.Exit(EXIT_BAD_INPUT)


class ResumedRun:
    """Context for ``--resume``: like :class:`qft_cli.runs.rundir.Run` but bad input marks the run
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
    Ctrl-C -> exit 130 with one line; a full disk (:func:`qft_cli.runs.files.disk_full_error`
    anywhere in the exception's chain) -> one line naming the run directory and the command to
    resume, exit status 2. Other exceptions propagate (they are bugs)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except QftInputError as err:
            raise fail(str(err)) from None
        except KeyboardInterrupt as exc:
            for line in interrupted_lines(getattr(exc, "qft_run_dir", None), argv(), resumable):
                err_console.print(line, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as exc:
            from qft_cli.runs.files import disk_full_error

            full = disk_full_error(exc)
            if full is None:
                raise
            raise fail(disk_full_line(full, getattr(exc, "qft_run_dir", None), argv(), resumable)) from None
        finally:
            _close_process_group()

    resumable = "resume" in inspect.signature(fn).parameters
    return wrapper


def interrupted_lines(run_dir: Optional[Path], command: Sequence[str], resumable: bool) -> list[str]:
    """What Ctrl-C (or SIGTERM) prints on stderr: the run directory (``qft_run_dir``, set on the
    exception by :meth:`qft_cli.runs.rundir.Run.__exit__`) and the exact command to continue it.

    Commands with a ``--resume`` option get the typed ``command`` with ``--resume RUN_DIR`` (any
    earlier ``--resume`` replaced); the others (norms, demo) the command to re-run. Without a run
    directory (stopped before one was created): ``interrupted`` only.
    """
    if run_dir is None:
        return ["interrupted"]
    words = list(command)
    if resumable:
        kept, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word == "--resume":
                skip = True
            elif not word.startswith("--resume="):
                kept.append(word)
        return [f"interrupted: run directory {run_dir}",
                f"resume with: {shlex.join(kept + ['--resume', str(run_dir)])}"]
    return [f"interrupted: run directory {run_dir} (status interrupted; this command has no --resume)",
            f"re-run with: {shlex.join(words)}"]


def disk_full_line(err: BaseException, run_dir: Optional[Path], command: Sequence[str], resumable: bool) -> str:
    """The one line of a full disk: what could not be written, the run directory (its last complete
    checkpoint and ``run.json`` are kept) and the command to continue once space is freed."""
    target = getattr(err, "filename", None)
    what = f" writing {target}" if target else ""
    if run_dir is None:
        return f"no space left on the device{what}: free space and run the command again"
    again = interrupted_lines(Path(run_dir), command, resumable)[1].split(": ", 1)[1]
    how = "resume" if resumable else "re-run"
    return (f"no space left on the device{what}; run directory {run_dir} keeps its last complete "
            f"{'checkpoint and ' if resumable else ''}run.json: free space, then {how} with: {again}")


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
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=err_console, transient=False)

    def update(description: str, completed: int, total: int) -> None:
        if not tasks:
            bar.start()  # only once there is a bar to draw: an empty one leaves a blank line before an error
        if description not in tasks:
            tasks[description] = bar.add_task(description, total=total)
        bar.update(tasks[description], completed=completed, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


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


#: The example at the foot of every ``--help`` page (Typer's epilog; paragraphs are separated by a
#: blank line, which the help keeps as line breaks). ``../shared/data`` is the project's shared data
#: folder beside the checkout (see its PROVENANCE.md); any folder of the same layout works.
EXAMPLES = {
    "qft": "Examples: qft demo (the whole pipeline offline, about 20 s)\n\n"
           "qft norms inputs gpt2 --max-tokens 512\n\nqft report runs/ -o report.html",
    "models": "Example: qft models (then e.g. qft norms weights tiny-llama; tinyllama is the real TinyLlama-1.1B, "
              "tiny-llama a random 2-block model)",
    "norms": "Examples: qft norms inputs gpt2 --max-tokens 512\n\nqft norms attention minilm --dataset random "
             "--max-tokens 256\n\nqft norms weights minilm tiny-llama",
    "norms inputs": "Example: qft norms inputs minilm --dataset mmlu --data-file ../shared/data/mmlu/validation.csv "
                    "--layers all",
    "norms attention": "Example: qft norms attention minilm --dataset random --max-tokens 256 --layers 1-3",
    "norms weights": "Example: qft norms weights minilm tiny-llama --exact",
    "train": "Example (a quick CPU run): qft train --dataset gue --task prom_core_notata --data-dir "
             "../shared/data/gue --tokenizer kmer:3 --d-model 64 --num-heads 4 --d-ff 128 --max-steps 100 "
             "--max-train-samples 2000 --max-eval-samples 500",
    "finetune": "Example (a quick CPU run): qft finetune minilm --dataset gue --task prom_core_notata --data-dir "
                "../shared/data/gue --norm vanilla,frobenius --layers 6 --max-steps 100 --max-train-samples 2000",
    "report": "Example: qft report runs/ -o report.html",
    "demo": "Example: qft demo --out demo-runs",
    "runs": "Example: qft runs verify runs/20260101-120000-train-qft-1layer-d64",
    "runs verify": "Example: qft runs verify runs/*-finetune-*",
    "cost": "Example: qft norms inputs minilm --dataset random --max-tokens 256 --out runs; qft norms weights minilm "
            "--out runs; qft cost runs/*-norms-inputs-minilm runs/*-norms-weights-minilm",
    "sweep": "Examples: qft sweep run --preset smoke --out sweeps/smoke --jobs 2\n\nqft sweep status sweeps/smoke"
             "\n\nqft report sweeps/smoke -o report.html",
    "sweep run": "Example: qft sweep run grid.yaml --out sweeps/grid --jobs 2 --dry-run",
    "sweep status": "Example: qft sweep status sweeps/smoke",
    "sweep presets": "Example: qft sweep presets (then qft sweep run --preset smoke)",
}

QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bar.")
CLASS_FILE_OPTION = typer.Option(None, "--class-file", help="FASTA file of one class, LABEL=PATH (repeat per class, e.g. --class-file 1=positives.fa --class-file 0=negatives.fa.gz); PATH relative to --data-dir when not found as given.")
SPLIT_SIZES_OPTION = typer.Option(None, "--split-sizes", help="Unsplit FASTA: train,validation,test fractions of the seeded stratified split (default 0.8,0.1,0.1).")
BASELINE_OPTION = typer.Option("auto", "--baseline", help="auto: also fit a k-mer logistic regression (DNA, k 3..6 chosen on validation) or the most-frequent-tag baseline (POS), scored on the same test split | none.")
OUT_OPTION = typer.Option("runs", "--out", "-o", help="Directory that receives the run directory.")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto|cpu|cuda|mps (auto = CUDA when present).")
DTYPE_OPTION = typer.Option("float32", "--dtype", help="Model dtype: float32|bfloat16|float16 (norms are always accumulated in float64).")
TRUST_OPTION = typer.Option(False, "--trust-remote-code", help="Run model code from the hub (off unless given).")
THREADS_OPTION = typer.Option(None, "--threads", help="CPU threads for torch (default: OMP_NUM_THREADS, else the CPUs the affinity mask and cgroup quota allow).")
DEVICE_MAP_OPTION = typer.Option(None, "--device-map", help="'auto' shards a model too large for one GPU across several (accelerate).")


def argv() -> list[str]:
    """The command line as typed."""
    return list(sys.argv)


TABLE_FORMATS = ("table", "csv", "markdown")
FORMAT_OPTION = typer.Option("table", "--format", help="How result tables are printed: table | csv | markdown "
                                                      "(csv and markdown: only the tables on stdout).")


def check_format(fmt: str) -> str:
    """Validate ``--format`` before any work.

    Raises:
        QftInputError: not one of :data:`TABLE_FORMATS`.
    """
    if fmt not in TABLE_FORMATS:
        raise QftInputError(f"--format '{fmt}' is not known: use table, csv or markdown")
    return fmt


def short_model_name(name: str) -> str:
    """The model as shown in printed tables: an alias or hub id (``owner/name``) as given, a local
    path by its last component (``/data/models/llama-7b/`` -> ``llama-7b``)."""
    text = str(name).rstrip("/\\")
    local = (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
             or Path(text).expanduser().is_dir())
    return Path(text).name or text if local else text


def _cell(value, spec: str = ".4g") -> str:
    """A value as shown in a table or markdown cell: floats in format ``spec`` (default 4
    significant digits), NaN and None empty, anything else as ``str``."""
    import numbers

    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        return "" if value != value else format(float(value), spec)
    return str(value)


def print_frame(frame, title: str, fmt: str = "table", formats: Optional[dict[str, str]] = None,
                align: Optional[dict[str, str]] = None) -> None:
    """Print one result table on stdout in the ``--format`` of the command.

    Args:
        frame: pandas DataFrame; its column names are the headers (units in the names), its values
            raw numbers or strings. A ``model`` or ``model_alias`` column is shown through
            :func:`short_model_name`.
        title: one line saying what the table is (rich title, ``# title`` line in csv,
            ``**title**`` line in markdown).
        fmt: ``table`` (a rich table; numbers with 4 significant digits, never wrapped at 80
            columns when stdout is not a terminal), ``csv`` (full precision, NaN empty) or
            ``markdown`` (GitHub table via pandas/tabulate, 4 significant digits).
        formats: column -> Python format spec for its floats in table and markdown (e.g.
            ``{"Δ F1 (pp)": "+.2f"}``); csv always writes full precision.
        align: column -> ``left``/``right`` in table and markdown (default: numbers right, text
            left; e.g. right for a column of pre-formatted numbers such as ``"81.2 ± 1.4"``).

    Raises:
        QftInputError: unknown ``fmt``.
    """
    import pandas as pd

    check_format(fmt)
    frame = frame.copy()
    for col in frame.columns:
        if col in ("model", "model_alias"):
            frame[col] = frame[col].map(short_model_name)
    if fmt == "csv":
        print(f"# {title}")
        sys.stdout.write(frame.to_csv(index=False, lineterminator="\n"))
        print()
        return
    numeric = {c: pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns}
    numeric.update({c: side == "right" for c, side in (align or {}).items()})
    formats = formats or {}
    cells = frame.astype(object).apply(lambda column: column.map(lambda v: _cell(v, formats.get(column.name, ".4g"))))
    if fmt == "markdown":
        cells = cells.apply(lambda column: column.str.replace("|", "\\|", regex=False))
        print(f"**{title}**")
        print()
        print(cells.to_markdown(index=False, disable_numparse=True,  # keep our digits and signs
                                colalign=["right" if numeric[c] else "left" for c in frame.columns]))
        print()
        return
    from rich.table import Table

    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if numeric[col] else "left", overflow="fold")
    for row in cells.itertuples(index=False):
        table.add_row(*row)
    target = console
    if not console.is_terminal:  # rich assumes 80 columns without a terminal: use the table's own width
        width = console.measure(table, options=console.options.update_width(100_000)).maximum
        target = Console(width=max(width, console.width))
    target.print(table)


def print_run_dir(run_dir, fmt: str = "table") -> None:
    """``results: RUN_DIR`` after the tables: on stdout for ``table``, on stderr for csv/markdown
    (so that stdout holds only the tables)."""
    target = console if fmt == "table" else err_console
    target.print(f"results: {run_dir}", soft_wrap=True, markup=False, highlight=False)


def print_test_table(title: str, summary, run_dir, fmt: str = "table", epochs: Optional[dict] = None) -> None:
    """The final table of ``train`` and ``finetune``: per variant the test accuracy and F1 with
    their 95% interval and the paired difference to vanilla, in percentage points
    (:func:`qft_cli.train.stats.summary_display_table`, table and markdown); with ``csv`` the
    ``test_summary`` rows themselves (fractions, full precision). Then a line saying what the
    intervals are, a warning for variants that learnt (almost) nothing (mean F1 < 0.05, e.g. one
    class predicted for every input), and the run directory (notes on stderr for csv/markdown).

    Args:
        summary: :func:`qft_cli.train.stats.test_summary` of the run.
        fmt: ``table``, ``csv`` or ``markdown`` (:func:`print_frame`).
        epochs: ``variant -> mean epochs trained`` (an ``epochs`` column; not in csv).
    """
    from qft_cli.train.stats import summary_display_table, summary_interval_note

    if fmt == "csv":
        print_frame(summary, title, fmt)
    else:
        display = summary_display_table(summary, epochs)
        print_frame(display, title, fmt, align={c: "right" for c in display.columns if c != "variant"})
    notes = console if fmt == "table" else err_console
    note = summary_interval_note(summary)
    if note:
        notes.print(note, soft_wrap=True, markup=False, highlight=False)
    if len(summary) and (summary["interval"] != "t over seeds").all():
        notes.print("with one seed the intervals cover test-sample noise only: pass --seeds 0,1,2 for "
                    "seed-to-seed variation", soft_wrap=True, markup=False, highlight=False)
    if len(summary):
        for r in summary[summary["metric"] == "f1"].itertuples(index=False):
            if r.mean_value == r.mean_value and r.mean_value < 0.05:
                err_console.print(f"warning: {r.variant} has test F1 {r.mean_value:.3f}: it (almost) always predicts "
                                  "one class; train longer or change the learning rate", markup=False)
    print_run_dir(run_dir, fmt)


def format_duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.4 h`` or ``11 days`` (for the training estimate)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def estimate_line(estimate) -> str:
    """The one line printed before a CPU training goes on (a
    :class:`qft_cli.train.training.TrainingEstimate`): step count, estimated time, how to make a
    quick run."""
    line = (f"{estimate.variant} (seed {estimate.seed}): {estimate.steps:,} steps, about "
            f"{format_duration(estimate.estimated_seconds)} on the CPU ({estimate.seconds_per_step:.2f} s/step over "
            f"{estimate.timed_steps} steps; evaluation extra, early stopping may end it sooner)")
    if estimate.estimated_seconds > 600:
        line += "; for a quick run pass --max-steps 100 and/or --max-train-samples 2000"
    return line


def print_estimate(estimate) -> None:
    """Print :func:`estimate_line` on stderr (above the progress bar)."""
    err_console.print(estimate_line(estimate), markup=False, highlight=False, soft_wrap=True)


def print_notes(notes) -> None:
    """Print data notes (``note: ...``) on stderr before training."""
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
