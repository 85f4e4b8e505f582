"""Run directories: layout, run.json status, atomic writes, cleanup on bad input."""

import json

import pandas as pd
import pytest

from qft_cli.runs.files import check_writable
from qft_cli.runs.rundir import Run, read_run_json, slug
from qft_cli.system.errors import QftInputError


def test_run_lifecycle(tmp_path):
    with Run("norms inputs", ["openai-community/gpt2"], {"seed": 1}, out=tmp_path) as run:
        assert read_run_json(run.path)["status"] == "running"
        run.write_table("norms_inputs", pd.DataFrame({"x": [1.0]}))
    meta = read_run_json(run.path)
    assert meta["status"] == "completed" and meta["end_time"] and meta["versions"]["torch"]
    assert run.path.name.endswith("-norms-inputs-openai-community_gpt2")
    assert sorted(p.name for p in run.path.iterdir()) == ["norms_inputs.parquet", "run.json"]


def test_failed_and_interrupted_runs_keep_status(tmp_path):
    for exc, status in ((RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")):
        with pytest.raises(type(exc)):
            with Run("train", ["m"], {}, out=tmp_path) as run:
                raise exc
        meta = json.loads((run.path / "run.json").read_text())
        assert meta["status"] == status
    assert "boom" in read_run_json(sorted(tmp_path.iterdir())[0])["error"]


def test_bad_input_leaves_nothing(tmp_path):
    with pytest.raises(QftInputError):
        with Run("norms weights", ["m"], {}, out=tmp_path):
            raise QftInputError("bad")
    assert list(tmp_path.iterdir()) == []


def test_unique_names_and_slug(tmp_path):
    a = Run("x", ["a/b"], {}, out=tmp_path).create()
    b = Run("x", ["a/b"], {}, out=tmp_path).create()
    assert a != b
    assert slug("../weird name/<b>") == "weird_name_b"


def test_check_writable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(QftInputError, match="is a file"):
        check_writable(tmp_path / "file")
    assert check_writable(tmp_path / "new" / "dir").is_dir()


def test_bad_input_removes_out_directories_the_run_created(tmp_path):
    with pytest.raises(QftInputError):
        with Run("norms inputs", ["m"], {}, out=tmp_path / "new" / "runs"):
            raise QftInputError("bad")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(QftInputError):
        with Run("norms inputs", ["m"], {}, out=tmp_path / "kept" / "runs"):
            raise QftInputError("bad")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_check_writable_without_creating(tmp_path):
    assert check_writable(tmp_path / "a" / "b", create=False) == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(QftInputError, match="not writable"):
        check_writable(tmp_path / "file" / "sub", create=False)
    with pytest.raises(QftInputError, match="is a file"):
        check_writable(tmp_path / "file", create=False)


def test_written_files_follow_the_umask_not_mkstemp_0600(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with Run("norms inputs", ["m"], {}, out=tmp_path) as run:
            run.write_table("norms_inputs", pd.DataFrame({"x": [1.0]}))
    finally:
        os.umask(old)
    for name in ("run.json", "norms_inputs.parquet"):
        assert stat.S_IMODE((run.path / name).stat().st_mode) == 0o644, name


def _create_many(out, barrier, queue, count):
    barrier.wait()  # every process starts within the same second
    try:
        queue.put([str(Run("train", ["m"], {}, out=out).create()) for _ in range(count)])
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(err).__name__}: {err}")


def test_run_create_is_unique_across_processes(tmp_path):
    """Sweeps start many runs at once (issue 21, item 6): processes creating runs of the same command
    and model in the same second each get their own directory, and none fails."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs, count = 8, 25
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_create_many, args=(tmp_path, barrier, queue, count)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    errors = [r for r in results if isinstance(r, str)]
    assert not errors, errors
    paths = [p for r in results for p in r]
    assert len(paths) == len(set(paths)) == procs * count
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[1] for p in paths)


def test_run_create_loses_the_race_and_takes_the_next_name(tmp_path, monkeypatch):
    """Deterministic form of the race: another process makes the chosen directory right before this
    one does; create() takes the next free name instead of failing with FileExistsError."""
    from pathlib import Path

    real_mkdir = Path.mkdir
    taken = []

    def other_process_first(self, *args, **kwargs):
        if self.parent == tmp_path and not taken:
            real_mkdir(self)  # the other process wins
            taken.append(self)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_process_first)
    path = Run("train", ["m"], {}, out=tmp_path).create()
    assert taken and path != taken[0] and path.is_dir() and path.name == taken[0].name + "-2"
