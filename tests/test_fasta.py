"""FASTA input (``qft_cli/data/fasta.py``): multi-line and gzipped records, both label conventions,
split files, the seeded stratified split (counts worked by hand, reproducible), IUPAC codes read
as N, every bad case as one line and exit 2, and ``qft runs verify`` redrawing the split."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qft_cli.data.fasta import load_fasta_dir, read_fasta, stratified_split, verify_split
from qft_cli.data.tasks import load_task
from qft_cli.system.errors import QftInputError


def _seqs(n, length=30, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice("ACGT") for _ in range(length)) for _ in range(n)]


def _write(path: Path, records, width=None, gz=False, lower=False):
    """records: (header, sequence); ``width`` wraps sequences over several lines."""
    lines = []
    for header, seq in records:
        seq = seq.lower() if lower else seq
        lines.append(f">{header}")
        step = width or len(seq) or 1
        lines += [seq[i:i + step] for i in range(0, len(seq), step)] if seq else []
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def _class_dir(tmp_path, n0=20, n1=30):
    d = tmp_path / "fa"
    d.mkdir()
    s0, s1 = _seqs(n0, seed=1), _seqs(n1, seed=2)
    _write(d / "0.fa", [(f"neg{i} some words", s) for i, s in enumerate(s0)], width=7, lower=True)
    _write(d / "1.fasta.gz", [(f"pos{i}", s) for i, s in enumerate(s1)], width=11, gz=True)
    return d, s0, s1


def test_multiline_lowercase_gzip_and_iupac_records(tmp_path):
    path = _write(tmp_path / "x.fa.gz", [("a desc", "acgtRYacgtnn"), ("b", "A" * 25)], width=5, gz=True)
    records, mapped = read_fasta(path)
    assert [r.id for r in records] == ["a", "b"]
    assert records[0].description == "desc"
    assert records[0].sequence == "ACGTNNACGTNN"  # R, Y -> N; lower case upper-cased; lines joined
    assert records[1].sequence == "A" * 25
    assert mapped == 2


def test_class_files_named_by_label_and_stratified_split(tmp_path):
    d, s0, s1 = _class_dir(tmp_path)
    data = load_task("genomic-bench", data_dir=d, seed=7)
    assert data.task == "fa" and data.label_names == ["0", "1"]
    # by hand: class 0 (20): val round(2.0)=2, test 2, train 16; class 1 (30): val 3, test 3, train 24
    sizes = {k: (v["labels"].count(0), v["labels"].count(1)) for k, v in data.splits.items()}
    assert sizes == {"train": (16, 24), "validation": (2, 3), "test": (2, 3)}
    everything = sorted(x for v in data.splits.values() for x in v["inputs"])
    assert everything == sorted(s0 + s1)  # every record once, lower case upper-cased
    for split in data.splits.values():  # each label matches its file
        for seq, label in zip(split["inputs"], split["labels"]):
            assert seq in (s1 if label else s0)
    fasta = data.record()["fasta"]
    assert fasta["layout"] == "class_files" and fasta["split_seed"] == 7 and fasta["split_sizes"] == [0.8, 0.1, 0.1]
    assert fasta["split_counts"]["test"] == {"0": 2, "1": 3}
    assert {Path(p).name for p in fasta["files"].values()} == {"0.fa", "1.fasta.gz"}
    assert {p.name for p in data.files} == {"0.fa", "1.fasta.gz"}


def test_split_is_reproducible_and_depends_on_the_seed(tmp_path):
    d, _, _ = _class_dir(tmp_path)
    a = load_fasta_dir(d, seed=3)
    b = load_fasta_dir(d, seed=3)
    c = load_fasta_dir(d, seed=4)
    assert a.splits == b.splits and a.record["ids_sha256"] == b.record["ids_sha256"]
    assert a.splits["test"]["ids"] != c.splits["test"]["ids"]
    custom = load_fasta_dir(d, seed=3, split_sizes=(0.5, 0.25, 0.25))
    # class 0: val 5, test 5, train 10; class 1: val round(7.5)=8, test 8, train 14
    assert [len(custom.splits[s]["ids"]) for s in ("train", "validation", "test")] == [24, 13, 13]


def test_stratified_split_by_hand():
    labels = [0] * 10 + [1] * 3
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert sorted(sum((list(v) for v in parts.values()), [])) == list(range(13))
    for split, (n0, n1) in {"train": (8, 1), "validation": (1, 1), "test": (1, 1)}.items():
        got = [labels[i] for i in parts[split]]
        assert (got.count(0), got.count(1)) == (n0, n1), split


def test_header_labels_and_class_file_option(tmp_path):
    d = tmp_path / "one"
    d.mkdir()
    seqs = _seqs(24, seed=5)
    _write(d / "promoters.fna", [(f"s{i} label={i % 2} x", s) for i, s in enumerate(seqs)], width=9)
    data = load_task("gue", data_dir=d, seed=0)
    assert data.task == "one" and data.record()["fasta"]["layout"] == "header_labels"
    for split in data.splits.values():
        for seq, label in zip(split["inputs"], split["labels"]):
            assert label == seqs.index(seq) % 2
    other = tmp_path / "named"
    other.mkdir()
    _write(other / "positives.fa", [(f"p{i}", s) for i, s in enumerate(_seqs(10, seed=6))])
    _write(other / "negatives.fa.gz", [(f"n{i}", s) for i, s in enumerate(_seqs(10, seed=7))], gz=True)
    from qft_cli.data.fasta import parse_class_files

    files = parse_class_files(["1=positives.fa", "0=negatives.fa.gz"], base=other)
    data = load_task("genomic-bench", data_dir=other, class_files=files, seed=0)
    assert sum(len(v["inputs"]) for v in data.splits.values()) == 20
    assert data.splits["test"]["labels"].count(1) == 1


def test_split_files_with_header_labels_and_class_folders(tmp_path):
    d = tmp_path / "split"
    d.mkdir()
    seqs = _seqs(40, seed=8)
    _write(d / "train.fa", [(f"t{i} label={i % 2}", s) for i, s in enumerate(seqs[:24])])
    _write(d / "dev.fa", [(f"d{i} label={i % 2}", s) for i, s in enumerate(seqs[24:32])])
    (d / "test").mkdir()
    _write(d / "test" / "0.fa", [(f"e{i}", s) for i, s in enumerate(seqs[32:36])])
    _write(d / "test" / "1.fa.gz", [(f"f{i}", s) for i, s in enumerate(seqs[36:])], gz=True)
    data = load_task("genomic-bench", data_dir=d)
    assert data.splits["train"]["inputs"] == seqs[:24]
    assert data.splits["validation"]["labels"] == [0, 1] * 4
    assert data.splits["test"]["labels"] == [0] * 4 + [1] * 4
    assert data.record()["fasta"]["layout"] == "split_files"
    with pytest.raises(QftInputError, match="--split-sizes applies to unsplit FASTA"):
        load_task("genomic-bench", data_dir=d, split_sizes=(0.8, 0.1, 0.1))


def _bad(tmp_path, kind):
    d = tmp_path / kind
    d.mkdir()
    s = _seqs(10, seed=9)
    if kind == "no records":
        (d / "0.fa").write_text("")
        _write(d / "1.fa", [(f"b{i}", x) for i, x in enumerate(s)])
    elif kind == "no sequence":
        _write(d / "0.fa", [("a0", s[0]), ("a1", ""), ("a2", s[2])])
        _write(d / "1.fa", [(f"b{i}", x) for i, x in enumerate(s)])
    elif kind == "no label":
        _write(d / "all.fa", [("a0 label=0", s[0]), ("a1", s[1])])
    elif kind == "file not named by label":
        _write(d / "0.fa", [(f"a{i}", x) for i, x in enumerate(s)])
        _write(d / "positives.fa", [(f"b{i}", x) for i, x in enumerate(s)])
    elif kind == "one example":
        _write(d / "0.fa", [(f"a{i}", x) for i, x in enumerate(s)])
        _write(d / "1.fa", [("b0", s[0])])
    elif kind == "duplicate across splits":
        _write(d / "train.fa", [(f"a{i} label={i % 2}", x) for i, x in enumerate(s)])
        _write(d / "test.fa", [("a3 label=1", s[3]), ("z label=0", s[4])])
    elif kind == "iupac":
        _write(d / "0.fa", [(f"a{i}", x) for i, x in enumerate(s)])
        _write(d / "1.fa", [("b0", "ACGU")] + [(f"b{i}", x) for i, x in enumerate(s[1:], 1)])
    return d


@pytest.mark.parametrize("kind, match", [
    ("no records", "has no FASTA records"),
    ("no sequence", "record a1 (line 3) has no sequence"),
    ("no label", "has no label=VALUE in its header"),
    ("file not named by label", "is not named by its label"),
    ("one example", "class 1 has 1 example(s)"),
    ("duplicate across splits", "record id a3 is in the train split"),
    ("iupac", "invalid DNA letters 'U'"),
])
def test_bad_fasta_is_one_line_and_exit_2(tmp_path, kind, match, monkeypatch):
    from qft_cli.cli.app import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = _bad(tmp_path, kind)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["train", "--data-dir", str(d), "--tokenizer", "char", "--d-model", "16",
                                      "--num-heads", "2", "--d-ff", "32", "--device", "cpu", "--quiet",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args, match", [
    (["--class-file", "x=a.fa"], "labels must be integers"),
    (["--class-file", "1"], "write LABEL=PATH"),
    (["--class-file", "1=missing.fa"], "does not exist"),
    (["--split-sizes", "0.8,0.2"], "three positive fractions"),
    (["--split-sizes", "0.5,0.3,0.3"], "sum to 1"),
    (["--baseline", "kmer"], "--baseline kmer: use auto"),
])
def test_bad_fasta_options(tmp_path, args, match):
    from qft_cli.cli.app import app

    d, _, _ = _class_dir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--data-dir", str(d), *args, "--tokenizer", "char", "--device", "cpu",
                                      "--quiet", "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert match in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_verify_split_redraws_it_from_the_files(tmp_path):
    d, _, _ = _class_dir(tmp_path)
    data = load_task("genomic-bench", data_dir=d, seed=11)
    meta = json.loads(json.dumps({"data": data.record()}))
    row = verify_split(meta)
    assert row["status"] == "unchanged" and row["sha256"] == row["recorded_sha256"]
    s = _seqs(21, seed=1)  # one more record in class 0: the same seed draws another split
    _write(d / "0.fa", [(f"neg{i}", x) for i, x in enumerate(s)])
    assert verify_split(meta)["status"] == "changed"
    (d / "0.fa").unlink()
    assert verify_split(meta)["status"] == "missing"
    assert verify_split({"data": {"dataset": "gue"}}) is None
