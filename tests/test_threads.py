"""Default thread count from fake cgroup files (v1 and v2), the affinity mask and OMP_NUM_THREADS."""

import pytest
import torch

from qft_cli.system.errors import QftInputError
from qft_cli.system.threads import (
    available_cpus,
    cgroup_cpu_limit,
    configure_threads,
    default_threads,
)


def _v2(tmp_path, cpu_max, own="/"):
    root = tmp_path / "cgroup"
    (root / own.strip("/")).mkdir(parents=True, exist_ok=True)
    if cpu_max is not None:
        (root / own.strip("/") / "cpu.max").write_text(cpu_max + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"0::{own}\n")
    return {"root": root, "proc_self_cgroup": proc}


def _v1(tmp_path, quota, period, mount="cpu,cpuacct", own="/"):
    base = tmp_path / "cgroup" / mount / own.strip("/")
    base.mkdir(parents=True, exist_ok=True)
    (base / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (base / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(f"4:cpu,cpuacct:{own}\n3:memory:{own}\n")
    return {"root": tmp_path / "cgroup", "proc_self_cgroup": proc}


def test_cgroup_v2_quota(tmp_path):
    where = _v2(tmp_path, "150000 100000")
    assert cgroup_cpu_limit(**where) == pytest.approx(1.5)
    assert available_cpus(**where, affinity=set(range(8))) == 1  # floor(1.5)
    assert default_threads({}, **where, affinity=set(range(8))).count == 1


def test_cgroup_v2_no_quota_uses_affinity(tmp_path):
    where = _v2(tmp_path, "max 100000")
    assert cgroup_cpu_limit(**where) is None
    assert available_cpus(**where, affinity={0, 3, 5}) == 3


def test_cgroup_v2_parent_quota_of_own_cgroup(tmp_path):
    where = _v2(tmp_path, "max 100000", own="/slurm/job_7/step_0")
    (tmp_path / "cgroup" / "slurm" / "cpu.max").write_text("400000 100000\n")  # parent of the own cgroup
    assert cgroup_cpu_limit(**where) == pytest.approx(4.0)
    assert available_cpus(**where, affinity=set(range(64))) == 4


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    where = _v1(tmp_path, 250000, 100000, own="/docker/abc")
    assert cgroup_cpu_limit(**where) == pytest.approx(2.5)
    assert available_cpus(**where, affinity=set(range(16))) == 2
    unlimited = _v1(tmp_path / "u", -1, 100000)
    assert cgroup_cpu_limit(**unlimited) is None


def test_quota_below_one_cpu_still_one_thread(tmp_path):
    where = _v2(tmp_path, "50000 100000")
    assert available_cpus(**where, affinity=set(range(4))) == 1


def test_no_cgroup_files(tmp_path):
    where = {"root": tmp_path / "missing", "proc_self_cgroup": tmp_path / "missing_file"}
    assert cgroup_cpu_limit(**where) is None
    assert available_cpus(**where, affinity={0, 1}) == 2


def test_omp_num_threads_wins_and_torchrun_divides(tmp_path):
    where = _v2(tmp_path, "max 100000")
    assert default_threads({"OMP_NUM_THREADS": "3"}, **where, affinity=set(range(8))) .count == 3
    choice = default_threads({"LOCAL_WORLD_SIZE": "2"}, **where, affinity=set(range(8)), load=None)
    assert (choice.count, choice.source) == (4, "cpus")
    assert default_threads({"OMP_NUM_THREADS": "junk"}, **where, affinity={0}).count == 1


@pytest.mark.parametrize("load, expected", [((0.0, 0.0, 0.0), (2, "cpus")), ((0.4, 3.0, 3.0), (2, "cpus")),
                                            ((1.0, 1.0, 1.0), (1, "load")), ((0.6, 0.0, 0.0), (2, "cpus")),
                                            ((1.4, 0.0, 0.0), (1, "load")),
                                            ((7.5, 7.0, 6.0), (1, "load"))])
def test_thread_choice_follows_the_load(tmp_path, monkeypatch, load, expected):
    """A 2-core machine (affinity {0, 1}, no quota): one other busy process (1-minute load 1) leaves
    one core free, so the default is 1 thread (2 threads wait for each other: issue 18)."""
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: load)
    where = _v2(tmp_path, "max 100000")
    choice = default_threads({}, **where, affinity={0, 1})
    assert (choice.count, choice.source) == expected
    assert default_threads({"OMP_NUM_THREADS": "2"}, **where, affinity={0, 1}).count == 2  # the user's word wins
    before = torch.get_num_threads()
    try:
        assert configure_threads(None, {}, **where, affinity={0, 1}).count == expected[0] == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_thread_choice_without_load_average(tmp_path, monkeypatch):
    import os

    def unavailable():
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    where = _v2(tmp_path, "max 100000")
    choice = default_threads({}, **where, affinity={0, 1, 2})
    assert (choice.count, choice.source) == (3, "cpus")


def test_configure_threads_sets_torch_and_rejects_zero(tmp_path):
    before = torch.get_num_threads()
    try:
        choice = configure_threads(2)
        assert (choice.count, choice.source) == (2, "--threads") and torch.get_num_threads() == 2
        where = _v2(tmp_path, "100000 100000")
        choice = configure_threads(None, {}, **where, affinity=set(range(8)))
        assert (choice.count, choice.source) == (1, "cpus") and torch.get_num_threads() == 1
        with pytest.raises(QftInputError, match="--threads"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("command", [["train"], ["finetune", "tiny-bert"]])
def test_threads_option_of_train_and_finetune_is_validated(tmp_path, command):
    from typer.testing import CliRunner

    from qft_cli.cli.app import app

    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, [*command, "--threads", "0", "--device", "cpu", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 2 and "--threads must be at least 1" in result.output
    assert not list(tmp_path.iterdir())  # nothing written



_HEAP_PROBE = """
import sys, torch
from qft_cli.system.threads import fix_mmap_threshold
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold() is True
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssAnon:")) / 1024
block = torch.empty(24 << 20, dtype=torch.uint8).fill_(1)
del block   # glibc's dynamic threshold now rises to 24 MiB (when not fixed)
before = rss()
block = torch.empty(16 << 20, dtype=torch.uint8).fill_(1)
del block   # from the heap when not fixed, and kept there
print(rss() - before)
"""


def test_fixed_mmap_threshold_returns_freed_blocks():
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")

    def kept_mib(mode):
        done = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True)
        return float(done.stdout.split()[-1])

    default = kept_mib("default")
    if default < 12:
        pytest.skip(f"this glibc returned the block without the fix ({default:.1f} MiB kept)")
    assert kept_mib("fixed") < 4, "a freed 16 MiB block stayed in the heap with the threshold fixed"
