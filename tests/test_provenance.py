"""Provenance: file hashes (against hashlib), the hash cache, hub revisions from a fake cache,
software facts, the report helpers and ``qft runs verify``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from qft_cli.runs import files, provenance
from qft_cli.system.errors import QftInputError

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QFT_CACHE", str(tmp_path / "qft-cache"))


def _hashlib(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_equals_hashlib(tmp_path):
    small = tmp_path / "small.csv"
    small.write_bytes(b"sequence,label\nACGT,0\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * (1 << 20) + 17))  # several chunks and a partial one
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    for p in (small, big, empty):
        assert files.sha256_file(p) == _hashlib(p)
        assert files.cached_sha256(p, min_bytes=0) == _hashlib(p)
        rec = provenance.file_record(p)
        assert rec == {"path": str(p.resolve()), "size_bytes": p.stat().st_size, "sha256": _hashlib(p)}
    assert files.sha256_file(empty) == hashlib.sha256(b"").hexdigest()


def test_cache_dir_respects_env(monkeypatch, tmp_path):
    monkeypatch.setenv("QFT_CACHE", str(tmp_path / "a"))
    assert files.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("QFT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert files.cache_dir() == tmp_path / "xdg" / "qft"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert files.cache_dir() == tmp_path / "home" / ".cache" / "qft"


def test_cache_hit_does_not_reread(tmp_path, monkeypatch):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 4096)
    first = files.cached_sha256(f, min_bytes=1)
    assert first == _hashlib(f)
    cache = json.loads((tmp_path / "qft-cache" / "sha256.json").read_text())
    assert cache[str(f.resolve())]["sha256"] == first

    reads = []
    real = files.sha256_file
    monkeypatch.setattr(files, "sha256_file", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    assert files.cached_sha256(f, min_bytes=1) == first
    assert reads == []  # a hit: the file was not read
    # same size and mtime but other bytes: the cache cannot tell (verify rehashes; see below)
    st = f.stat()
    f.write_bytes(b"b" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files.cached_sha256(f, min_bytes=1) == first and reads == []
    # a new mtime is a miss: reread, new hash
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert files.cached_sha256(f, min_bytes=1) == _hashlib(f) != first
    assert len(reads) == 1
    # small files bypass the cache entirely
    assert files.cached_sha256(f, min_bytes=10**9) == _hashlib(f) and len(reads) == 2


def test_damaged_cache_is_ignored(tmp_path):
    (tmp_path / "qft-cache").mkdir()
    (tmp_path / "qft-cache" / "sha256.json").write_text("{not json")
    f = tmp_path / "x.bin"
    f.write_bytes(b"xyz" * 100)
    assert files.cached_sha256(f, min_bytes=1) == _hashlib(f)


def test_file_record_of_missing_file_is_input_error(tmp_path):
    with pytest.raises(QftInputError, match="could not be read"):
        provenance.file_record(tmp_path / "nope.csv")


def _fake_hub_dataset(root, hub="owner___name", config="cfg", revision=REV):
    import datasets

    folder = root / hub / config / "0.0.0" / revision
    folder.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        ds = datasets.Dataset.from_dict({"sequence": ["ACGT", "TTTT"], "label": [0, 1]})
        out[split] = ds.map(lambda x: x, cache_file_name=str(folder / f"name-{split}.arrow"))
    return datasets.DatasetDict(out)


def test_hub_dataset_revision_from_cache_dir(tmp_path):
    ds = _fake_hub_dataset(tmp_path)
    assert provenance.hub_dataset_revision(ds) == REV
    assert provenance.hub_dataset_revision(ds["train"]) == REV
    files = provenance.hub_dataset_files(ds)
    assert {f.name for f in files} == {"name-train.arrow", "name-test.arrow"}
    import datasets

    assert provenance.hub_dataset_revision(datasets.Dataset.from_dict({"a": [1]})) is None  # in memory


def test_hub_gue_records_revision(tmp_path, monkeypatch):
    """A hub dataset (datasets.load_dataset faked, its files in a fake cache) records id, config,
    splits, the resolved revision and the cache files it was read from."""
    import datasets

    from qft_cli.data import tasks

    ds = _fake_hub_dataset(tmp_path, "leannmlindsey___gue", "prom_core_tata")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, **kw: calls.append((repo, kw)) or ds)
    data = tasks.load_task("gue", task="prom_core_tata")
    assert calls == [("leannmlindsey/GUE", {"name": "prom_core_tata"})]
    rec = data.record()
    assert rec["dataset"] == "gue" and rec["task"] == "prom_core_tata"
    assert (rec["source"], rec["hub_id"], rec["config"], rec["revision"]) == ("hub", "leannmlindsey/GUE",
                                                                            "prom_core_tata", REV)
    assert rec["split"] == ["train", "test"]
    assert {p.name for p in data.files} == {"name-train.arrow", "name-test.arrow"}
    # without --task the hub default is the task read, and recorded as such
    data = tasks.load_task("gue")
    assert data.task == "prom_300_notata" and calls[-1][1] == {"name": "prom_300_notata"}


def test_mmlu_hub_records_revision(tmp_path, monkeypatch):
    import datasets

    from qft_cli.data import text_data

    folder = tmp_path / "cais___mmlu" / "all" / "0.0.0" / REV
    folder.mkdir(parents=True)
    ds = datasets.Dataset.from_dict({"question": ["q1?", "q2?"]}).map(
        lambda x: x, cache_file_name=str(folder / "mmlu-validation.arrow"))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: ds)
    name, texts = text_data.load_texts("mmlu")
    assert name == "mmlu" and list(texts) == ["q1?", "q2?"]
    assert texts.origin == {"source": "hub", "hub_id": "cais/mmlu", "config": "all", "split": ["validation"],
                            "revision": REV}


def test_model_files_local_dir_and_tiny(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model-00001-of-00002.safetensors").write_bytes(os.urandom(2000))
    (d / "model-00002-of-00002.safetensors").write_bytes(os.urandom(3000))
    (d / "pytorch_model.bin").write_bytes(os.urandom(100))
    rec = provenance.model_files_record("mine", "local", str(d))
    assert rec["model"] == "mine" and rec["kind"] == "local" and rec["revision"] is None
    assert [f["path"] for f in rec["files"]] == [str(p.resolve()) for p in sorted(  # the files read: not the .bin
        [d / "model-00001-of-00002.safetensors", d / "model-00002-of-00002.safetensors"])]
    for f in rec["files"]:
        assert f["sha256"] == hashlib.sha256(open(f["path"], "rb").read()).hexdigest()
    (d / "model-00002-of-00002.safetensors").unlink()  # an incomplete shard set: every weight file there
    assert [Path(f["path"]).name for f in provenance.model_files_record("mine", "local", str(d))["files"]] == [
        "model-00001-of-00002.safetensors", "pytorch_model.bin"]
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(50))
    rec = provenance.model_files_record("m.gguf", "gguf", str(gguf))
    assert [f["sha256"] for f in rec["files"]] == [_hashlib(gguf)]
    assert provenance.model_files_record("tiny-bert", "tiny", "tiny-bert")["files"] == []


def test_model_files_hub_from_cache(tmp_path, monkeypatch):
    """A hub model: the revision of the cached snapshot; weight files carry the SHA-256 their blob names give."""
    import huggingface_hub

    payload = os.urandom(500)
    blob_sha = hashlib.sha256(payload).hexdigest()
    repo = tmp_path / "models--o--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / blob_sha).write_bytes(payload)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").symlink_to(repo / "blobs" / blob_sha)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo_id, filename, **k: str(snap / filename) if repo_id == "o/m" else None)
    rec = provenance.model_files_record("o/m", "hub", "o/m")
    assert rec["revision"] == REV
    assert rec["files"] == [{"path": str((snap / "model.safetensors").resolve()), "size_bytes": 500,
                             "sha256": blob_sha}]
    assert provenance.model_files_record("o/x", "hub", "o/x") == {"model": "o/x", "kind": "hub",
                                                                  "revision": None, "files": []}


def test_software_info():
    info = provenance.software_info("cpu")
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    assert info["device_name"].startswith("CPU")
    assert info["torch"] == torch.__version__


def test_run_json_has_software(tmp_path):
    from qft_cli.runs.rundir import Run, read_run_json

    with Run("norms weights", ["tiny-bert"], {"device": "cpu"}, out=tmp_path) as run:
        run.update(device="cpu")
    meta = read_run_json(run.path)
    sw = meta["software"]
    assert sw["torch_threads"] == torch.get_num_threads() and sw["device_name"].startswith("CPU")
    assert set(sw) >= {"qft", "torch", "transformers", "torch_threads", "device_name", "deterministic_algorithms"}


def _run_dir(tmp_path, files):
    run = tmp_path / "run"
    run.mkdir()
    meta = {"command": "train", "data_files": provenance.file_records(files), "model_files": []}
    (run / "run.json").write_text(json.dumps(meta))
    return run


def test_verify_files(tmp_path):
    a, b = tmp_path / "train.csv", tmp_path / "test.csv"
    a.write_text("sequence,label\nACGT,0\n")
    b.write_text("sequence,label\nTTTT,1\n")
    run = _run_dir(tmp_path, [a, b])
    assert [r["status"] for r in provenance.verify_run(run)] == ["unchanged", "unchanged"]
    a.write_text("sequence,label\nACGA,0\n")  # same size, other bytes
    b.unlink()
    rows = provenance.verify_run(run)
    assert [r["status"] for r in rows] == ["changed", "missing"]
    assert rows[0]["sha256"] == _hashlib(a)
    with pytest.raises(QftInputError, match="no run.json"):
        provenance.verify_run(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run.json").write_text("{}")
    with pytest.raises(QftInputError, match="records no data or model files"):
        provenance.verify_run(tmp_path / "empty")


def test_cli_runs_verify(tmp_path):
    from typer.testing import CliRunner

    from qft_cli.cli.app import app

    a = tmp_path / "train.csv"
    a.write_text("sequence,label\nACGT,0\n")
    run = _run_dir(tmp_path, [a])
    result = CliRunner().invoke(app, ["runs", "verify", str(run)])
    assert result.exit_code == 0, result.output
    assert "1 unchanged, 0 changed, 0 missing" in result.output
    st = a.stat()
    a.write_text("sequence,label\nACGA,0\n")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with size and mtime unchanged
    result = CliRunner().invoke(app, ["runs", "verify", str(run)])
    assert result.exit_code == 2
    assert "0 unchanged, 1 changed" in result.output and "changed since run" in result.output
    result = CliRunner().invoke(app, ["runs", "verify", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'} is not a run directory (no run.json): "
                                                  "pass a directory written by qft"]
    a.unlink()  # a missing file is reported, but does not fail
    result = CliRunner().invoke(app, ["runs", "verify", str(run)])
    assert result.exit_code == 0 and "0 unchanged, 0 changed, 1 missing" in result.output
    assert "is missing" in result.stderr
    assert "runs" in CliRunner().invoke(app, ["--help"]).output


def test_norms_runs_record_model_and_data_files(tmp_path):
    """norms weights/inputs on a local model directory and a local data file: run.json names the
    weight file and the data file with hashlib's SHA-256, and a tiny model with no files."""
    from transformers import AutoModel

    from qft_cli.measure.workflows import (
        NormsInputsArgs,
        NormsWeightsArgs,
        run_norms_inputs,
        run_norms_weights,
    )
    from qft_cli.models.names import build_tiny_model, tiny_tokenizer
    from qft_cli.runs.rundir import read_run_json

    model_dir = tmp_path / "bert-dir"
    build_tiny_model("tiny-bert", AutoModel).save_pretrained(model_dir)
    tiny_tokenizer(True).save_pretrained(model_dir)
    weights = model_dir / "model.safetensors"
    result = run_norms_weights(NormsWeightsArgs(models=[str(model_dir), "tiny-gpt2"], device="cpu", out=tmp_path / "w"))
    meta = read_run_json(result.run_dir)
    local, tiny = meta["model_files"]
    assert (local["model"], local["kind"], local["revision"]) == (str(model_dir), "local", None)
    assert local["files"] == [{"path": str(weights.resolve()), "size_bytes": weights.stat().st_size,
                               "sha256": _hashlib(weights)}]
    assert tiny == {"model": "tiny-gpt2", "kind": "tiny", "revision": None, "files": []}
    assert "data_files" not in meta

    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond one\n")
    result = run_norms_inputs(NormsInputsArgs(models=[str(model_dir)], dataset=str(texts), layers="0", device="cpu",
                                              out=tmp_path / "i"))
    meta = read_run_json(result.run_dir)
    assert meta["data"]["dataset"] == "texts.txt" and meta["data"]["source"] == "local"
    assert meta["data_files"] == [provenance.file_record(texts)]
    assert meta["data_files"][0]["sha256"] == _hashlib(texts)
    assert meta["model_files"][0]["files"][0]["sha256"] == _hashlib(weights)
    assert [r["status"] for r in provenance.verify_run(result.run_dir)] == ["unchanged", "unchanged"]
    result = run_norms_inputs(NormsInputsArgs(models=["tiny-gpt2"], dataset="random", max_tokens=3, layers="0",
                                              device="cpu", out=tmp_path / "r"))
    meta = read_run_json(result.run_dir)
    assert meta["data"]["source"] == "random" and meta["data_files"] == []
    from qft_cli.measure.workflows import NormsAttentionArgs, run_norms_attention

    result = run_norms_attention(NormsAttentionArgs(models=[str(model_dir)], dataset=str(texts), layers="1",
                                                    device="cpu", out=tmp_path / "a"))
    meta = read_run_json(result.run_dir)
    assert meta["data_files"] == [provenance.file_record(texts)]
    assert meta["model_files"][0]["files"][0]["sha256"] == _hashlib(weights)


def test_model_files_for_takes_the_loaded_hub_revision(monkeypatch):
    """A hub model's revision is the commit its config was loaded from (``config._commit_hash``),
    even where the cache's snapshot for the default branch is another one."""
    from types import SimpleNamespace

    import huggingface_hub

    from qft_cli.models.names import ModelSource

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    model = SimpleNamespace(config=SimpleNamespace(_commit_hash=REV))
    rec = provenance.model_files_for(ModelSource("bert", "hub", "bert-base-uncased"), model)
    assert rec == {"model": "bert", "kind": "hub", "revision": REV, "files": []}
    local = provenance.model_files_for(ModelSource("tiny-bert", "tiny", "tiny-bert"), model)
    assert local["revision"] is None  # only hub models have revisions


def test_hashing_a_large_file_reports_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "PROGRESS_MIN_BYTES", 1 << 20)
    f = tmp_path / "big.safetensors"
    f.write_bytes(os.urandom(3 << 20))
    calls = []
    digest = files.sha256_file(f, chunk_size=1 << 14, progress=lambda d, c, t: calls.append((d, c, t)))
    assert digest == _hashlib(f)
    assert calls[-1] == ("sha256 big.safetensors (MiB)", 3, 3) and all(t == 3 for _, _, t in calls)
    assert [c for _, c, _ in calls] == sorted(c for _, c, _ in calls) and len(calls) > 2
    calls.clear()
    files.sha256_file(f, progress=None)
    small = tmp_path / "small.csv"
    small.write_bytes(b"x")
    files.sha256_file(small, progress=lambda *a: calls.append(a))
    assert calls == []  # small files: no bar


def test_resume_keeps_and_checks_the_data_files(tmp_path):
    a = tmp_path / "train.csv"
    a.write_text("sequence,label\nACGT,0\n")
    run = _run_dir(tmp_path, [a])
    meta = provenance.resume_meta(run)
    assert meta["resumed"] is True and meta[provenance.RESUMED_KEY] == provenance.file_records([a])
    provenance.check_resumed_data(meta, provenance.file_records([a]))  # same bytes: fine
    a.write_text("sequence,label\nACGA,0\n")
    with pytest.raises(QftInputError, match=r"differ from those the run started with \(train.csv"):
        provenance.check_resumed_data(meta, provenance.file_records([a]))
    provenance.check_resumed_data({"resumed": True}, provenance.file_records([a]))  # older runs: nothing to check
    assert provenance.resume_meta(tmp_path / "nowhere") == {"resumed": True}
