"""The plan (which cells run) and the three executors that run them: ``local`` (a pool of worker
processes on this machine), ``slurm`` (submitit job arrays), ``ray`` (Ray tasks).

Every executor hands the same :class:`qft_cli.sweep.cells.CellTask` to
:func:`qft_cli.sweep.cells.run_cell`, which runs the cell's qft command line as a subprocess, so a
cell computes the same thing wherever it runs. ``submitit`` and ``ray`` are optional extras
(``pip install 'qft-cli[slurm]'``, ``'qft-cli[ray]'``), imported only when their executor is used.
"""

from __future__ import annotations

import concurrent.futures as futures
import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from qft_cli import __version__
from qft_cli.runs.files import check_writable, write_json_atomic
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report
from qft_cli.system.threads import default_threads
from qft_cli.sweep.cells import (CELL_JSON, SWEEP_JSON, CellTask, cell_state, read_json, run_cell, task_dict,
                                 terminate_running)
from qft_cli.sweep.grid import Cell, CommandSpec, Grid
from qft_cli.sweep.keys import ModelResolver, cell_key

EXECUTORS = ("local", "slurm", "ray")
#: SLURM time limit (minutes) of a cell whose grid gives no ``time``.
DEFAULT_TIME_MIN = 240
LOCK = ".sweep.lock"


@dataclass
class PlannedCell:
    """A cell of the grid with its ``key``, its ``state`` before this sweep (``cell_state``'s
    status) and ``action``: ``run``, ``resume`` (an interrupted train/finetune run), ``skip``
    (completed and verified), ``failed`` (failed before; rerun only with ``--retry-failed``) or
    ``duplicate`` (the same key as an earlier cell: same command, options and inputs)."""

    cell: Cell
    key: str
    args: list[str]
    state: str
    action: str
    run_dir: Optional[str] = None
    error: Optional[str] = None
    own: tuple[str, ...] = ("out", "quiet", "threads")


@dataclass
class Plan:
    """The cells of a grid and what this sweep does with each."""

    sweep_dir: Path
    cells: list[PlannedCell] = field(default_factory=list)

    def to_run(self) -> list[PlannedCell]:
        return [c for c in self.cells if c.action in ("run", "resume")]

    def count(self, action: str) -> int:
        return sum(c.action == action for c in self.cells)


def make_plan(grid: Grid, specs: dict[str, CommandSpec], sweep_dir: Path | str, *, retry_failed: bool = False,
              resolve: Optional[ModelResolver] = None) -> Plan:
    """Key every cell and decide what to do with it (see :class:`PlannedCell`).

    Raises:
        QftInputError: an unknown model or unreadable input file (named with the experiment's line).
    """
    sweep_dir = Path(sweep_dir).absolute()
    plan, seen = Plan(sweep_dir=sweep_dir), set()
    for cell in grid.cells:
        spec = specs[cell.command]
        key = cell_key(cell, spec, resolve)
        args = cell.argv(spec)
        if key in seen:
            plan.cells.append(PlannedCell(cell, key, args, "duplicate", "duplicate"))
            continue
        seen.add(key)
        state = cell_state(sweep_dir / key)
        status = state["status"]
        if status == "completed":
            action = "skip"
        elif status == "failed":
            action = "run" if retry_failed else "failed"
        elif status == "interrupted" and cell.command in ("train", "finetune"):
            action = "resume"
        else:
            action = "run"
        own = tuple(o for o in ("out", "quiet", "threads") if o in spec.options)
        plan.cells.append(PlannedCell(cell, key, args, status, action, state.get("run_dir"), state.get("error"), own))
    return plan


def write_sweep_json(plan: Plan, grid: Grid, executor: str) -> None:
    """``<sweep>/sweep.json``: the grid file, executor, qft version and every cell's key, label,
    experiment and qft arguments (what ``qft sweep status`` lists, run or not)."""
    path = plan.sweep_dir / SWEEP_JSON
    old = read_json(path) or {}
    known = {c["key"]: c for c in old.get("cells", []) if isinstance(c, dict) and "key" in c}
    cells = [{"key": c.key, "label": c.cell.label(), "experiment": c.cell.experiment, "command": c.cell.command,
              "args": c.args} for c in plan.cells if c.action != "duplicate"]
    for c in cells:
        known.pop(c["key"], None)
    # cells of an earlier grid in the same folder stay listed (their results are still there)
    write_json_atomic(path, {"grid": str(grid.path), "executor": executor, "qft_version": __version__,
                             "cells": cells + [{**c, "in_grid": False} for c in known.values()]})


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Hold ``<sweep>/.sweep.lock`` (``flock``; the kernel drops it when the process dies, kill -9
    included).

    Raises:
        QftInputError: another ``qft sweep run`` holds it.
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise QftInputError(f"another qft sweep run is working in {sweep_dir}: wait for it to end, or pass "
                                "another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def local_threads(jobs: int, cores: Optional[int] = None) -> tuple[int, int]:
    """``(workers, threads per cell)`` with workers x threads <= the usable cores: ``cores`` defaults
    to qft's thread logic (:func:`qft_cli.system.threads.default_threads`: ``OMP_NUM_THREADS``, else
    the affinity mask and cgroup quota); ``jobs`` above the cores is cut to the cores.

    Raises:
        QftInputError: ``jobs`` below 1.
    """
    if jobs < 1:
        raise QftInputError(f"--jobs must be at least 1 (got {jobs})")
    cores = default_threads().count if cores is None else cores
    workers = max(1, min(jobs, cores))
    return workers, max(1, cores // workers)


def tasks_for(plan: Plan, threads: Optional[int], executor: str) -> list[CellTask]:
    """The :class:`CellTask` of every cell the plan runs."""
    return [CellTask(key=c.key, label=c.cell.label(), command=c.cell.command, args=tuple(c.args),
                     cell_dir=str(plan.sweep_dir / c.key), threads=threads, executor=executor, own=c.own)
            for c in plan.to_run()]


# ----------------------------------------------------------------------------- local

def run_local(tasks: list[CellTask], workers: int, progress: Optional[ProgressFn] = None) -> list[dict[str, Any]]:
    """Run ``tasks`` on this machine, ``workers`` at a time: each worker drives one qft process
    (a worker thread waits on it), so ``workers`` qft processes compute at once. Returns each
    cell's ``cell.json`` in completion order; Ctrl-C ends the running cells as ``interrupted``."""
    results: list[dict[str, Any]] = []
    report(progress, "cells", 0, len(tasks))
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qft-sweep")
    try:
        pending = [pool.submit(run_cell, t) for t in tasks]
        for fut in futures.as_completed(pending):
            results.append(fut.result())
            report(progress, "cells", len(results), len(tasks))
    except BaseException:
        terminate_running()  # Ctrl-C, SIGTERM: the running cells end as interrupted, the others do not start
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


# ----------------------------------------------------------------------------- slurm (submitit)

def _minutes(value: Any) -> int:
    """SLURM ``time`` in minutes: an integer (minutes) or ``[D-]HH:MM[:SS]``/``MM``."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise QftInputError(f"slurm time {value!r} is not minutes or [D-]HH:MM[:SS]: write e.g. 90 or 01:30:00")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if b is None:
        minutes = a
    else:
        minutes = a * 60 + b + (1 if c else 0)
    return (days or 0) * 1440 + minutes


def slurm_parameters(resources: dict[str, Any], name: str) -> dict[str, Any]:
    """``submitit.AutoExecutor.update_parameters`` keywords of a grid's ``slurm`` resources:
    ``partition, account, qos, constraint, mem, array_parallelism`` -> ``slurm_<key>``; ``time``
    -> ``timeout_min`` (default :data:`DEFAULT_TIME_MIN`: submitit's own default is 5 minutes on
    SLURM, 2 in its LocalExecutor); ``gpus_per_node``, ``cpus_per_task`` as they are; ``name`` the
    job name."""
    params: dict[str, Any] = {"name": name, "timeout_min": DEFAULT_TIME_MIN}
    for key, value in resources.items():
        if key in ("partition", "account", "qos", "constraint", "mem", "array_parallelism"):
            params[f"slurm_{key}"] = value
        elif key == "time":
            params["timeout_min"] = _minutes(value)
        else:
            params[key] = value
    return params


def submitit_executor(folder: Path, resources: dict[str, Any], name: str, cluster: str = "slurm"):
    """A ``submitit.AutoExecutor`` (``cluster`` ``slurm``, or ``local`` for submitit's
    LocalExecutor) with the parameters of :func:`slurm_parameters`; logs go to ``folder/%j``.

    Raises:
        QftInputError: submitit is not installed, or no SLURM here (``srun`` not found).
    """
    try:
        import submitit
    except ImportError:
        raise QftInputError("--executor slurm needs submitit: pip install 'qft-cli[slurm]'") from None
    try:
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    except RuntimeError as err:
        raise QftInputError(f"--executor slurm: {err} (run qft sweep on a SLURM login node, or pass --slurm-local "
                            "to run the jobs here through submitit's LocalExecutor)") from None
    executor.update_parameters(**slurm_parameters(resources, name))
    return executor


class SubmititCell:
    """The callable a SLURM job runs: :func:`run_cell`. On preemption or timeout submitit calls
    :meth:`checkpoint`, which requeues the same cell; the rerun resumes an interrupted train or
    finetune run from its checkpoint (``--resume``) and skips a completed one."""

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        return run_cell(task)

    def checkpoint(self, task: dict[str, Any]):
        import submitit

        return submitit.helpers.DelayedSubmission(SubmititCell(), task)


def run_submitit(tasks: list[CellTask], cells: dict[str, Cell], folder: Path, cluster: str = "slurm",
                 progress: Optional[ProgressFn] = None, poll_s: float = 1.0) -> list[dict[str, Any]]:
    """Submit one job array per experiment (its ``slurm`` resources) and wait for every job.

    A job that dies without a result (cancelled, node failure) is read from its ``cell.json``.
    Returns each cell's ``cell.json``.
    """
    groups: dict[tuple, list[CellTask]] = {}
    for t in tasks:
        cell = cells[t.key]
        groups.setdefault((cell.experiment, cell.slurm), []).append(t)
    jobs = []
    for (experiment, slurm), group in groups.items():
        executor = submitit_executor(folder, dict(slurm), f"qft-sweep-{experiment}", cluster)
        fn = SubmititCell()
        with executor.batch():
            submitted = [executor.submit(fn, task_dict(t)) for t in group]
        jobs += list(zip(submitted, group))
        for job, t in zip(submitted, group):
            info = read_json(Path(t.cell_dir) / CELL_JSON) or {}
            Path(t.cell_dir).mkdir(parents=True, exist_ok=True)
            write_json_atomic(Path(t.cell_dir) / CELL_JSON, {**info, "key": t.key, "label": t.label,
                                                             "status": "submitted", "job_id": str(job.job_id)})
    results: list[dict[str, Any]] = []
    report(progress, "cells", 0, len(jobs))
    waiting = list(jobs)
    while waiting:
        still = []
        for job, t in waiting:
            if job.done():
                try:
                    results.append(job.result())
                except Exception as err:  # the job died outside run_cell
                    state = cell_state(Path(t.cell_dir))
                    if state["status"] != "completed":
                        state.update(status="failed", error=state.get("error") or f"{type(err).__name__}: {err}")
                        write_json_atomic(Path(t.cell_dir) / CELL_JSON, state)
                    results.append(state)
                report(progress, "cells", len(results), len(jobs))
            else:
                still.append((job, t))
        waiting = still
        if waiting:
            time.sleep(poll_s)
    return results


# ----------------------------------------------------------------------------- ray

def _ray_cell(task: dict[str, Any]) -> dict[str, Any]:
    return run_cell(task)


def run_ray(tasks: list[CellTask], cells: dict[str, Cell], address: Optional[str] = None,
            progress: Optional[ProgressFn] = None) -> list[dict[str, Any]]:
    """Run each cell as a Ray task with its ``ray`` resources (``num_cpus`` default 1, which is
    also its ``--threads``; ``num_gpus`` default 0). ``address``: ``auto`` joins a running
    cluster; none starts a local one (unless this process already called ``ray.init``).

    Raises:
        QftInputError: ray is not installed, or no cluster at ``address``.
    """
    try:
        import ray
    except ImportError:
        raise QftInputError("--executor ray needs Ray: pip install 'qft-cli[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as err:
            raise QftInputError(f"--executor ray: no Ray cluster at address {address!r} ({err}): start one "
                                "(ray start --head) or leave address out for a local one") from None
    remote = ray.remote(_ray_cell)
    refs = {}
    for t in tasks:
        res = dict(cells[t.key].ray)
        num_cpus = res.get("num_cpus", 1)
        task = task_dict(t)
        task["threads"] = t.threads if t.threads is not None else max(1, int(num_cpus))
        task["executor"] = "ray"
        refs[remote.options(num_cpus=num_cpus, num_gpus=res.get("num_gpus", 0)).remote(task)] = t
    results: list[dict[str, Any]] = []
    report(progress, "cells", 0, len(refs))
    waiting = list(refs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            try:
                results.append(ray.get(ref))
            except Exception as err:  # the worker died outside run_cell
                t = refs[ref]
                state = cell_state(Path(t.cell_dir))
                if state["status"] != "completed":
                    state.update(status="failed", error=f"{type(err).__name__}: {str(err).splitlines()[0]}")
                    write_json_atomic(Path(t.cell_dir) / CELL_JSON, state)
                results.append(state)
        report(progress, "cells", len(results), len(refs))
    return results


# ----------------------------------------------------------------------------- one sweep

def check_executor(executor: str, slurm_cluster: str = "slurm") -> None:
    """Refuse an executor whose extra is missing, or ``slurm`` where there is no SLURM.

    Raises:
        QftInputError: with the fix (the pip extra, or ``--slurm-local``).
    """
    import importlib.util
    import shutil

    if executor == "slurm":
        if importlib.util.find_spec("submitit") is None:
            raise QftInputError("--executor slurm needs submitit: pip install 'qft-cli[slurm]'")
        if slurm_cluster == "slurm" and shutil.which("srun") is None:
            raise QftInputError("--executor slurm: no SLURM here (srun not found): run qft sweep on a SLURM login "
                                "node, or pass --slurm-local to run the jobs here through submitit's LocalExecutor")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise QftInputError("--executor ray needs Ray: pip install 'qft-cli[ray]'")


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the plan, each run cell's ``cell.json``, the failed cells
    (this run's and earlier ones not retried), workers and threads per cell."""

    plan: Plan
    results: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    workers: Optional[int]
    threads: Optional[int]


def run_sweep(grid: Grid, specs: dict[str, CommandSpec], sweep_dir: Path | str, *, executor: str = "local",
              jobs: int = 1, retry_failed: bool = False, resolve: Optional[ModelResolver] = None,
              slurm_cluster: str = "slurm", progress: Optional[ProgressFn] = None) -> SweepResult:
    """Run a grid's cells that are not done, in the sweep folder ``sweep_dir``.

    Args:
        executor: one of :data:`EXECUTORS`.
        jobs: local workers (cut to the usable cores; threads per cell = cores // workers).
        retry_failed: rerun cells that failed before (else they stay failed and are reported).
        slurm_cluster: ``slurm``, or ``local`` for submitit's LocalExecutor (same jobs, no SLURM).

    Raises:
        QftInputError: an unknown executor, an unwritable folder, another sweep in the same
            folder, a missing extra, or a grid error found while keying the cells.
    """
    if executor not in EXECUTORS:
        raise QftInputError(f"--executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    check_executor(executor, slurm_cluster)
    for cell in grid.cells:  # grid errors (an unknown model, an unreadable file) before anything is written
        cell_key(cell, specs[cell.command], resolve)
    sweep_dir = check_writable(Path(sweep_dir)).absolute()
    with sweep_lock(sweep_dir):
        plan = make_plan(grid, specs, sweep_dir, retry_failed=retry_failed, resolve=resolve)
        write_sweep_json(plan, grid, executor)
        cells = {c.key: c.cell for c in plan.cells}
        workers = threads = None
        if executor == "local":
            workers, threads = local_threads(jobs)
            tasks = tasks_for(plan, threads, "local")
            results = run_local(tasks, workers, progress) if tasks else []
        elif executor == "slurm":
            tasks = []
            for t in tasks_for(plan, None, "slurm" if slurm_cluster == "slurm" else "slurm-local"):
                cpus = dict(cells[t.key].slurm).get("cpus_per_task")
                tasks.append(CellTask(**{**task_dict(t), "args": tuple(t.args), "own": t.own, "threads": cpus}))
            results = run_submitit(tasks, cells, sweep_dir / ".submitit", slurm_cluster, progress) if tasks else []
        else:
            tasks = tasks_for(plan, None, "ray")
            results = run_ray(tasks, cells, grid.ray.get("address"), progress) if tasks else []
    ran = {r.get("key") for r in results}
    failed = [r for r in results if r.get("status") != "completed"]
    failed += [{"key": c.key, "label": c.cell.label(), "status": "failed", "error": c.error, "run_dir": c.run_dir}
               for c in plan.cells if c.action == "failed" and c.key not in ran]
    return SweepResult(plan, results, failed, workers, threads)


def sweep_status(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """One row per cell of a sweep folder: ``key, label, status, seconds, peak_memory_mib, run_dir,
    error, attempts``, in grid order (cells of earlier grids after).

    Raises:
        QftInputError: ``sweep_dir`` is not a sweep folder (no readable sweep.json).
    """
    sweep_dir = Path(sweep_dir)
    meta = read_json(sweep_dir / SWEEP_JSON)
    if meta is None:
        raise QftInputError(f"{sweep_dir} is not a sweep folder (no readable {SWEEP_JSON}): pass the --out of a "
                            "qft sweep run")
    rows = []
    for c in meta.get("cells", []):
        state = cell_state(sweep_dir / c["key"])
        run_dir = state.get("run_dir")
        if run_dir:
            try:
                run_dir = str(Path(run_dir).relative_to(sweep_dir.absolute()))
            except ValueError:
                pass
        rows.append({"key": c["key"], "label": c.get("label"), "status": state["status"],
                     "seconds": state.get("seconds"), "peak_memory_mib": state.get("peak_memory_mib"),
                     "run_dir": run_dir, "error": state.get("error") if state["status"] != "completed" else None,
                     "attempts": state.get("attempts", 0), "in_grid": c.get("in_grid", True)})
    return rows
