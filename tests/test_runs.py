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
