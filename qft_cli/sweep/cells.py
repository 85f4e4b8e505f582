"""One cell: its folder, running it as a ``python -m qft_cli`` subprocess, and its state.

Layout of a sweep directory (docs/sweep.md)::

    <sweep>/sweep.json               the grid: cells in order, their keys, labels and qft arguments
    <sweep>/<key>/cell.json          the cell's last attempt: status, exit_code, error, seconds,
                                     peak_memory_mib, run_dir, attempts, threads, executor, host
    <sweep>/<key>/stdout.log, stderr.log   the last attempt's output
    <sweep>/<key>/<run dir>/run.json the qft run (qft_cli.runs.rundir), found by `qft report <sweep>`
    <sweep>/<key>/.attempts/         run dirs of interrupted norms cells (not resumable), kept aside

Every executor calls :func:`run_cell` with the same :class:`CellTask`, so a cell runs the same
code path on a laptop, a SLURM node or a Ray worker: the qft command line of the cell with
``--out <sweep>/<key> --quiet --threads T`` (and ``--resume RUN_DIR`` for an interrupted train or
finetune run). A cell is done when a run directory in its folder has ``run.json`` status
``completed`` and :func:`qft_cli.runs.provenance.verify_run` finds no recorded file changed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from qft_cli.runs.files import write_json_atomic
from qft_cli.runs.provenance import verify_run
from qft_cli.runs.rundir import RUN_JSON
from qft_cli.system.errors import QftInputError

CELL_JSON = "cell.json"
SWEEP_JSON = "sweep.json"
#: Commands whose interrupted run continues with ``--resume RUN_DIR``.
RESUMABLE = ("train", "finetune")
#: Cell statuses: ``pending`` (never run), ``running``, ``completed``, ``failed``, ``interrupted``.
STATUSES = ("pending", "running", "completed", "failed", "interrupted")
#: Exit status of qft after Ctrl-C or SIGTERM (qft_cli.cli.common.cli_errors).
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class CellTask:
    """What an executor hands to :func:`run_cell` (plain data: it is pickled to SLURM and Ray).

    ``args``: the qft arguments (after ``qft``) without ``--out``, ``--quiet``, ``--threads``;
    ``cell_dir``: absolute path of the cell's folder; ``threads``: torch threads of the cell
    (``None``: qft's default); ``executor``: recorded in ``cell.json``; ``own``: which of the
    sweep's options (``out``, ``quiet``, ``threads``) the command has (a command without ``--out``
    writes no run directory: it is completed when it exits with status 0).
    """

    key: str
    label: str
    command: str
    args: tuple[str, ...]
    cell_dir: str
    threads: Optional[int] = None
    executor: str = "local"
    own: tuple[str, ...] = ("out", "quiet", "threads")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON object from ``path``, ``None`` when missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_dirs(cell_dir: Path) -> list[Path]:
    """The run directories of a cell folder (those holding ``run.json``), oldest first by name."""
    cell_dir = Path(cell_dir)
    if not cell_dir.is_dir():
        return []
    return sorted(p for p in cell_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / RUN_JSON).is_file())


def verified(run_dir: Path) -> bool:
    """``run.json`` says ``completed`` and no file it records has changed (a run that records no
    files, like one on a tiny model and random tokens, has nothing to verify)."""
    meta = read_json(Path(run_dir) / RUN_JSON)
    if meta is None or meta.get("status") != "completed":
        return False
    try:
        rows = verify_run(run_dir)
    except QftInputError:
        return True  # records no files
    return not any(r["status"] == "changed" for r in rows)


def completed_run(cell_dir: Path) -> Optional[Path]:
    """The newest completed, verified run directory of a cell, else ``None``."""
    for run_dir in reversed(run_dirs(cell_dir)):
        if verified(run_dir):
            return run_dir
    return None


def cell_state(cell_dir: Path) -> dict[str, Any]:
    """The state of a cell folder: ``cell.json``'s fields (if any) with ``status`` one of
    :data:`STATUSES` and ``run_dir`` (the completed run, else the newest one): a completed
    verified run wins over what ``cell.json`` says (a sweep killed after the run finished)."""
    cell_dir = Path(cell_dir)
    info = read_json(cell_dir / CELL_JSON) or {}
    done = completed_run(cell_dir)
    if done is not None:
        return {**info, "status": "completed", "run_dir": str(done)}
    runs = run_dirs(cell_dir)
    status = info.get("status", "pending")
    if status == "completed" and "out" not in info.get("own", ["out"]) and info.get("exit_code") == 0:
        return {**info, "status": "completed"}  # a command that writes no run directory
    if status == "running" and _running_elsewhere(info):
        pass  # another process (this host, or a cluster node) is running it now
    elif status in ("running", "completed"):  # a sweep killed mid-cell, or a completed run whose files changed
        status = "interrupted"
    if status == "pending" and runs:
        status = "interrupted"
    return {**info, "status": status, "run_dir": str(runs[-1]) if runs else info.get("run_dir")}


def _pid_is_qft(pid: Any) -> bool:
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            return b"qft_cli" in f.read()
    except (OSError, TypeError, ValueError):
        return False


def _running_elsewhere(info: dict[str, Any]) -> bool:
    """``cell.json`` says ``running`` and its qft process is alive (on this host: checked by pid;
    on another host, a cluster node: taken as said)."""
    if info.get("host") != socket.gethostname():
        return True
    return _pid_is_qft(info.get("pid"))


def _resumable_run(task: CellTask) -> Optional[Path]:
    if task.command not in RESUMABLE:
        return None
    for run_dir in reversed(run_dirs(Path(task.cell_dir))):
        meta = read_json(run_dir / RUN_JSON) or {}
        if meta.get("status") in ("interrupted", "running"):
            return run_dir
    return None


def _set_aside(cell_dir: Path) -> None:
    """Move a cell's unfinished run dirs under ``.attempts/`` (hidden: `qft report` skips them)."""
    for run_dir in run_dirs(cell_dir):
        meta = read_json(run_dir / RUN_JSON) or {}
        if meta.get("status") != "completed" or not verified(run_dir):
            aside = cell_dir / ".attempts"
            aside.mkdir(exist_ok=True)
            target = aside / run_dir.name
            i = 1
            while target.exists():
                i += 1
                target = aside / f"{run_dir.name}-{i}"
            run_dir.rename(target)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the cell gets SIGTERM (qft records ``interrupted``) when the process that started it
    dies, even by kill -9, so that no orphan keeps running a cell a rerun starts again."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


#: The qft processes this process is running (:func:`terminate_running` ends them).
_LIVE: set = set()


def terminate_running() -> None:
    """Send SIGTERM to every cell this process is running: each qft records ``interrupted`` and
    exits (the sweep itself was interrupted)."""
    for proc in list(_LIVE):
        try:
            proc.send_signal(signal.SIGTERM)
        except OSError:
            pass


def _wait_for_orphan(before: dict[str, Any], timeout_s: float = 120.0) -> None:
    """A sweep killed mid-cell leaves its qft process ending (SIGTERM from :func:`_die_with_parent`):
    wait until that process, named in ``cell.json``, has written its run.json and exited."""
    pid = before.get("pid")
    if before.get("status") != "running" or not isinstance(pid, int) or before.get("host") != socket.gethostname():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_is_qft(pid):
        time.sleep(0.2)


def error_line(stderr_text: str) -> Optional[str]:
    """The last non-empty line of a cell's stderr (qft's one-line error, or a traceback's last line)."""
    lines = [line.strip() for line in stderr_text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else None


def qft_argv(task: CellTask, resume: Optional[Path] = None) -> list[str]:
    """The full command line of a cell: ``python -m qft_cli ARGS --out CELL_DIR --quiet [--threads T]
    [--resume RUN_DIR]``."""
    words = [sys.executable, "-m", "qft_cli", *task.args]
    if "out" in task.own:
        words += ["--out", task.cell_dir]
    if "quiet" in task.own:
        words.append("--quiet")
    if task.threads is not None and "threads" in task.own:
        words += ["--threads", str(task.threads)]
    if resume is not None:
        words += ["--resume", str(resume)]
    return words


def run_cell(task: CellTask | dict[str, Any]) -> dict[str, Any]:
    """Run one cell to its end and write its ``cell.json``.

    A cell that already has a completed, verified run is not run again (an executor that
    retries or requeues a job gets the same answer). An interrupted train/finetune run continues
    with ``--resume``; the unfinished run dirs of other commands are moved under ``.attempts/``.

    Returns:
        ``cell.json``'s content: ``key, label, status`` (``completed``, ``failed``,
        ``interrupted``), ``exit_code``, ``error`` (last stderr line, ``None`` when completed),
        ``seconds`` (wall clock), ``peak_memory_mib`` (the qft process's maximum resident set
        size, MiB, from ``wait4``), ``run_dir``, ``attempts``, ``threads``, ``executor``, ``host``,
        ``argv``, ``started``, ``ended``.
    """
    if isinstance(task, dict):
        task = CellTask(**{**task, "args": tuple(task["args"]), "own": tuple(task.get("own", ("out", "quiet",
                                                                                               "threads")))})
    cell_dir = Path(task.cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    before = read_json(cell_dir / CELL_JSON) or {}
    _wait_for_orphan(before)
    done = completed_run(cell_dir)
    if done is not None:
        return {**before, "key": task.key, "label": task.label, "status": "completed", "run_dir": str(done)}
    resume = _resumable_run(task)
    if resume is None:
        _set_aside(cell_dir)
    argv = qft_argv(task, resume)
    info: dict[str, Any] = {
        "key": task.key, "label": task.label, "command": task.command, "argv": argv, "status": "running",
        "exit_code": None, "error": None, "seconds": None, "peak_memory_mib": None, "run_dir": None,
        "attempts": int(before.get("attempts") or 0) + 1, "threads": task.threads, "executor": task.executor,
        "own": list(task.own), "host": socket.gethostname(), "resumed_from": str(resume) if resume else None,
        "started": _now(), "ended": None}
    write_json_atomic(cell_dir / CELL_JSON, info)
    env = dict(os.environ)
    if task.threads is not None:
        env.update(OMP_NUM_THREADS=str(task.threads), MKL_NUM_THREADS=str(task.threads))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.perf_counter()
    with open(cell_dir / "stdout.log", "wb") as out, open(cell_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        _LIVE.add(proc)
        info["pid"] = proc.pid
        write_json_atomic(cell_dir / CELL_JSON, info)
        try:
            _, wait_status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.terminate()  # Ctrl-C / SIGTERM of the worker: the cell ends as interrupted
            _, wait_status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
            _finish(info, cell_dir, proc.returncode, usage, start)
            raise
        finally:
            _LIVE.discard(proc)
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return _finish(info, cell_dir, proc.returncode, usage, start)


def _finish(info: dict[str, Any], cell_dir: Path, code: int, usage, start: float) -> dict[str, Any]:
    runs = run_dirs(cell_dir)
    newest = runs[-1] if runs else None
    meta = read_json(newest / RUN_JSON) if newest is not None else None
    if code == 0 and "out" not in info.get("own", ["out"]):
        status = "completed"
    elif code == 0 and meta is not None and meta.get("status") == "completed":
        status = "completed"
    elif code in (EXIT_INTERRUPTED, -signal.SIGTERM, -signal.SIGINT) or \
            (meta is not None and meta.get("status") == "interrupted"):
        status = "interrupted"
    else:
        status = "failed"
    try:
        stderr_text = (cell_dir / "stderr.log").read_text(errors="replace")
    except OSError:
        stderr_text = ""
    error = None
    if status == "interrupted":
        said = [ln.strip() for ln in stderr_text.splitlines() if ln.strip().startswith("interrupted")]
        error = said[0] if said else f"interrupted (exit status {code})"
    elif status != "completed":
        error = error_line(stderr_text) or (f"exit status {code}" if code else "no run directory was written")
        if code == -signal.SIGKILL:  # the kernel's OOM killer, or a kill -9 of the cell itself
            error = f"killed by SIGKILL (out of memory? see dmesg); last stderr line: {error}"
        if code == 0 and status == "failed":
            error = f"exit status 0 but no completed run directory ({error})"
    info.update(status=status, exit_code=code, error=error, seconds=round(time.perf_counter() - start, 3),
                peak_memory_mib=round(usage.ru_maxrss / 1024.0, 1), run_dir=str(newest) if newest else None,
                ended=_now())
    write_json_atomic(cell_dir / CELL_JSON, info)
    return info


def task_dict(task: CellTask) -> dict[str, Any]:
    """A :class:`CellTask` as plain data (JSON, pickling across Ray/SLURM)."""
    return {**asdict(task), "args": list(task.args), "own": list(task.own)}

