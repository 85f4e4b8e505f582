"""How many CPU threads torch should use: the CPUs this process may really run on.

torch starts one thread per *visible* core. In a container with a CPU quota (Docker ``--cpus``,
Kubernetes limits, SLURM's cgroup) or a process restricted by ``taskset``/``cpuset``, that is more
threads than CPUs: the threads wait for each other and a run can be 20x slower. qft's default is
instead the smallest of

* the CPU affinity mask (``os.sched_getaffinity``: ``taskset``, SLURM ``--cpus-per-task``),
* the cgroup CPU quota, rounded down, at least 1: cgroup v2 ``cpu.max`` (``"<quota> <period>"`` or
  ``"max <period>"``), cgroup v1 ``cpu.cfs_quota_us / cpu.cfs_period_us`` (-1 = no quota), read for
  the process's own cgroup (``/proc/self/cgroup``) and every parent up to the root,

divided by the number of processes on this node under torchrun (``LOCAL_WORLD_SIZE``), and
lowered to the cores other processes leave free: ``usable - floor(1-minute load average)``, at
least 1 (``os.getloadavg``; source ``load``). On a shared 2-core machine with one other busy
process, two OpenMP threads wait for each other: 36 MiniLM-sized float64 ``eigvalsh`` took 177.5 s
with 2 threads and 0.76 s with 1 (issue 18; ``benchmarks/bench_threads_load.py``). An
``OMP_NUM_THREADS`` set in the environment wins over this default, and ``--threads`` over both.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from qft_cli.system.errors import QftInputError


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroups(proc_self_cgroup: Path) -> dict[str, str]:
    """controller list ('' for cgroup v2) -> the process's cgroup path, from /proc/self/cgroup."""
    text = _read(proc_self_cgroup) or ""
    groups = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            groups[parts[1]] = parts[2]
    return groups


def _ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and every parent directory up to ``base`` itself."""
    rel = Path(path.lstrip("/")) if path else Path()
    dirs = [base / rel]
    while rel != Path() and rel != Path("."):
        rel = rel.parent
        dirs.append(base / rel)
    return dirs


def cgroup_cpu_limit(root: Path | str = "/sys/fs/cgroup", proc_self_cgroup: Path | str = "/proc/self/cgroup") -> Optional[float]:
    """The cgroup CPU quota of this process in CPUs (e.g. 1.5), or ``None`` when there is none.

    Reads cgroup v2 ``cpu.max`` and cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` under ``root``
    for the process's own cgroup and its parents (the smallest quota wins); the files of a
    container's namespace are at ``root`` itself. Unreadable or malformed files count as no quota.
    """
    root = Path(root)
    groups = _own_cgroups(Path(proc_self_cgroup))
    limits = []
    for directory in _ancestors(root, groups.get("", "")):  # v2: unified hierarchy
        text = _read(directory / "cpu.max")
        if text:
            fields = text.split()
            if len(fields) == 2 and fields[0] != "max":
                try:
                    quota, period = float(fields[0]), float(fields[1])
                    if quota > 0 and period > 0:
                        limits.append(quota / period)
                except ValueError:
                    pass
    v1_path = next((p for c, p in groups.items() if "cpu" in c.split(",")), "")
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / mount
        if not base.is_dir():
            continue
        for directory in _ancestors(base, v1_path):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            try:
                q, p = float(quota), float(period)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if q > 0 and p > 0:
                limits.append(q / p)
    return min(limits) if limits else None


def available_cpus(root: Path | str = "/sys/fs/cgroup", proc_self_cgroup: Path | str = "/proc/self/cgroup",
                   affinity: Optional[set[int]] = None) -> int:
    """CPUs this process may use: min(affinity mask size, floor(cgroup quota)), at least 1."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # macOS, Windows
            affinity = set(range(os.cpu_count() or 1))
    cpus = max(1, len(affinity))
    quota = cgroup_cpu_limit(root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return cpus


@dataclass(frozen=True)
class ThreadChoice:
    """``count`` threads chosen because of ``source``: ``--threads``, ``OMP_NUM_THREADS``, ``cpus``
    (affinity and cgroup quota, see :func:`available_cpus`) or ``load`` (fewer than ``cpus``
    because other processes keep cores busy, see :func:`free_cpus`)."""

    count: int
    source: str


def load_average() -> Optional[float]:
    """The 1-minute load average (runnable processes, ``os.getloadavg``), ``None`` where unknown."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        return None


def free_cpus(cpus: int, load: Optional[float]) -> int:
    """Of ``cpus`` usable cores, those the ``load`` (1-minute load average) leaves free:
    ``cpus - floor(load)`` (a core counts as taken once a whole process keeps it busy: a load of 0.6
    left over from a finished run does not halve the threads), clipped to 1..cpus; ``cpus`` when the
    load is unknown."""
    if load is None or not math.isfinite(load):
        return cpus
    return max(1, min(cpus, cpus - int(math.floor(load))))


def default_threads(env: Optional[Mapping[str, str]] = None, *, load: Optional[float] = -1.0, **where) -> ThreadChoice:
    """``OMP_NUM_THREADS`` when set to a positive integer, else :func:`available_cpus` divided by
    ``LOCAL_WORLD_SIZE`` (processes of this node under torchrun) and lowered to the cores the
    machine's load leaves free (:func:`free_cpus`), at least 1.

    Args:
        env: the environment (default ``os.environ``).
        load: the 1-minute load average; the default -1 reads :func:`load_average`, ``None``
            ignores the load.
        where: the keyword arguments of :func:`available_cpus` (tests pass fake cgroup files).
    """
    env = os.environ if env is None else env
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadChoice(int(omp), "OMP_NUM_THREADS")
    local = env.get("LOCAL_WORLD_SIZE", "1")
    per_node = int(local) if local.isdigit() and int(local) > 0 else 1
    cpus = max(1, available_cpus(**where) // per_node)
    free = free_cpus(cpus, load_average() if load == -1.0 else load)
    return ThreadChoice(free, "cpus" if free == cpus else "load")


def configure_threads(requested: Optional[int] = None, env: Optional[Mapping[str, str]] = None, **where) -> ThreadChoice:
    """Set torch's intra-op thread count: ``requested`` (``--threads``) or :func:`default_threads`.

    Raises:
        QftInputError: ``requested`` below 1.
    """
    import torch

    if requested is not None:
        if requested < 1:
            raise QftInputError(f"--threads must be at least 1 (got {requested}); leave it out for the default")
        choice = ThreadChoice(int(requested), "--threads")
    else:
        choice = default_threads(env, **where)
    torch.set_num_threads(choice.count)
    return choice


#: Allocations of at least this many bytes get their own memory mapping (see :func:`fix_mmap_threshold`).
MMAP_THRESHOLD_BYTES = 8 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Make glibc serve every allocation of ``threshold`` bytes or more by its own ``mmap``.

    glibc raises its mmap threshold each time a large mapped block is freed (up to 32 MiB), after
    which the 16 MiB float64 blocks, float32 copies and Krylov bases of ``norms weights`` come from
    the heap, which fragments and is not given back: on a Llama-2-7B-shaped checkpoint the peak
    anonymous memory grew to 978 MiB above a tiny model's, against about 340 MiB with a fixed
    threshold (one block of 7 matrices: 491-541 MiB against 332-350 MiB; about 20% slower).
    Setting the threshold with ``mallopt(M_MMAP_THRESHOLD)`` also turns that adjustment off.
    Process-wide; a no-op where the C library is not glibc.

    Args:
        threshold: bytes; allocations at least this large are mapped and unmapped on free.

    Returns:
        True when the threshold was set, False where ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    if mallopt is None:
        return False
    M_MMAP_THRESHOLD = -3  # malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))
