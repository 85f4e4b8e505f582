"""Data loading, validation and tokenizers, offline."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from qft_cli.data import tasks
from qft_cli.system.errors import QftInputError


def _write_csv(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def _dna_dir(tmp_path, train=None, dev=None, test=None, header=("sequence", "label"), suffix=".csv"):
    train = train if train is not None else [("ACGT", 0), ("acgn", 1), ("TTTT", 0), ("GGGG", 1)]
    test = test if test is not None else [("AAAA", 0), ("CCCC", 1), ("GGTT", 0), ("TTGG", 1)]
    delim = "\t" if suffix == ".tsv" else ","
    _write_csv(tmp_path / f"train{suffix}", header, train, delim)
    _write_csv(tmp_path / f"test{suffix}", header, test, delim)
    if dev is not None:
        _write_csv(tmp_path / f"dev{suffix}", header, dev, delim)
    return tmp_path


def test_conll_sentence_counts_of_shared_files(shared_data):
    counts = {}
    for name in ("train", "valid", "test"):
        sentences, tags = tasks.read_conll(shared_data / "conll2003" / f"{name}.txt")
        counts[name] = (len(sentences), sum(map(len, sentences)))
        assert all(len(s) == len(t) for s, t in zip(sentences, tags))
    # published CoNLL-2003 English statistics (sentences, tokens): PROVENANCE.md
    assert counts == {"train": (14041, 203621), "valid": (3250, 51362), "test": (3453, 46435)}


def test_conll_task_labels_are_hf_pos_ids(shared_data):
    data = tasks.load_task("conll2003", data_dir=shared_data / "conll2003")
    assert data.kind == "token_classification" and data.num_labels == 47
    assert data.sizes() == {"train": 14041, "validation": 3250, "test": 3453}
    first = data.splits["train"]
    assert first["inputs"][0] == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    names = [data.label_names[i] for i in first["labels"][0]]
    assert names == ["NNP", "VBZ", "JJ", "NN", "TO", "VB", "JJ", "NN", "."]
    # HF conll2003 ids: NNP = 22, '.' = 7
    assert first["labels"][0][0] == 22 and first["labels"][0][-1] == 7


def test_gue_shared_files(shared_data):
    data = tasks.load_task("gue", task="prom_core_notata", data_dir=shared_data / "gue")
    assert data.sizes() == {"train": 42452, "validation": 5307, "test": 5307}
    assert np.bincount(data.splits["train"]["labels"]).tolist() == [21284, 21168]
    assert all(len(s) == 70 for s in data.splits["test"]["inputs"][:100])


def test_genomic_bench_with_only_a_test_split_is_refused(shared_data):
    with pytest.raises(QftInputError, match="only a test split"):
        tasks.load_task("genomic-bench", data_dir=shared_data / "genomic_benchmarks")


def test_gue_default_task_with_only_a_test_split_is_refused_naming_it(tmp_path):
    # without --task, GUE reads DIR/prom_300_notata: the hint must name that folder, not a genomic-bench one
    (tmp_path / "prom_300_notata").mkdir()
    (tmp_path / "prom_300_notata" / "test.csv").write_text("sequence,label\nACGT,0\n")
    (tmp_path / "human_nontata_promoters").mkdir()
    (tmp_path / "human_nontata_promoters" / "test.csv").write_text("sequence,label\nACGT,0\n")
    with pytest.raises(QftInputError, match="prom_300_notata holds only a test split"):
        tasks.load_task("gue", data_dir=tmp_path)


def test_genomic_bench_validation_and_test_are_seeded_halves(tmp_path):
    test_rows = [("ACGT"[i % 4] * 5, i % 2) for i in range(11)]
    data = tasks.load_task("genomic-bench", data_dir=_dna_dir(tmp_path, test=test_rows, header=("seq", "label"),
                                                              suffix=".tsv"), seed=3)
    val, test = data.splits["validation"], data.splits["test"]
    assert len(val["inputs"]) == 5 and len(test["inputs"]) == 6
    order = np.random.default_rng(3).permutation(11)
    assert val["labels"] == [test_rows[i][1] for i in order[:5]]
    assert sorted(val["inputs"] + test["inputs"]) == sorted(s for s, _ in test_rows)
    again = tasks.load_task("genomic-bench", data_dir=tmp_path, seed=3)
    assert again.splits["validation"] == val
    assert data.splits["train"]["inputs"][1] == "ACGN"  # upper-cased


@pytest.mark.parametrize("case, match", [
    ("letters", "invalid DNA letters 'X'"),
    ("label_outside", r"labels outside \[0, 1\] \(gue/prom_core_notata has 2 classes\) in .*dev.csv: 1 row\(s\) \(row 1 label 2\)"),
    ("label_text", "labels must be integers"),
    ("label_inf", "labels must be integers"),  # int(inf) is an OverflowError, not a ValueError
    ("columns", "needs a 'sequence'"),
    ("no_train", "no train.csv"),
    ("one_class", "at least two classes"),
])
def test_bad_dna_data_one_line(tmp_path, case, match):
    if case == "letters":
        _dna_dir(tmp_path, train=[("ACGX", 0), ("ACGT", 1)])
    elif case == "label_outside":
        _dna_dir(tmp_path, dev=[("ACGT", 2)])
    elif case == "label_text":
        _dna_dir(tmp_path, train=[("ACGT", "yes"), ("ACGT", 1)])
    elif case == "label_inf":
        _dna_dir(tmp_path, train=[("ACGT", "inf"), ("ACGT", 1)])
    elif case == "columns":
        _dna_dir(tmp_path, header=("dna", "label"))
    elif case == "one_class":
        _dna_dir(tmp_path, train=[("ACGT", 0), ("ACGT", 0)])
    with pytest.raises(QftInputError, match=match) as err:
        tasks.load_task("gue", task="prom_core_notata", data_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_unknown_dataset_and_task():
    with pytest.raises(QftInputError, match="did you mean 'gue'"):
        tasks.load_task("guee")
    with pytest.raises(QftInputError, match="did you mean 'prom_core_notata'"):
        tasks.load_task("gue", task="prom_core_nottata")
    with pytest.raises(QftInputError, match="only to --dataset gue"):
        tasks.load_task("genomic-bench", task="x")


def test_kmer_and_char_tokenizers_against_hand_split(tmp_path):
    data = tasks.load_task("gue", task="prom_core_notata", data_dir=_dna_dir(tmp_path))
    tok = tasks.kmer_tokenizer(3)
    assert len(tok) == 5 + 125 + 5
    ids = tok("ACGTNAC")["input_ids"]
    # non-overlapping 3-mers; the 1-letter tail is its own token
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "ACG", "TNA", "C", "[SEP]"]
    char = tasks.build_tokenizer("char", data)
    assert char.convert_ids_to_tokens(char("GATC")["input_ids"]) == ["[CLS]", "G", "A", "T", "C", "[SEP]"]
    with pytest.raises(QftInputError, match="unknown DNA tokenizer"):
        tasks.build_tokenizer("kmers:3", data)
    with pytest.raises(QftInputError, match="between 1 and 6"):
        tasks.build_tokenizer("kmer:9", data)


def test_bpe_trained_on_train_split_and_saved(tmp_path):
    from transformers import AutoTokenizer

    rows = [("ACGTACGTAAAACCCC" * 4, i % 2) for i in range(40)]
    data = tasks.load_task("gue", task="prom_core_notata", data_dir=_dna_dir(tmp_path, train=rows))
    tok = tasks.build_tokenizer("bpe:40", data, save_dir=tmp_path / "run")
    assert len(tok) <= 40
    enc = tok(rows[0][0])["input_ids"]
    assert tok.convert_ids_to_tokens(enc)[0] == "[CLS]"
    assert "".join(tok.convert_ids_to_tokens(enc)[1:-1]) == rows[0][0]
    assert len(enc) - 2 < len(rows[0][0])  # merges learnt
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "run" / tasks.DNA_TOKENIZER_FILE)
    assert reloaded(rows[0][0])["input_ids"] == enc


def test_pos_labels_on_first_subtoken_only():
    from qft_cli.models.names import tiny_tokenizer

    tok = tiny_tokenizer(with_bert_specials=True)  # byte-level: one token per character
    data = tasks.TaskData("conll2003", None, "token_classification", list(tasks.CONLL_POS_TAGS),
                          {"train": {"inputs": [["EU", "rejects", "."]], "labels": [[22, 42, 7]]}}, "mem")
    enc = tasks.encode(data, tok, 64)["train"][0]
    # [CLS] E U r e j e c t s . [SEP]  (byte-level BPE without prefix space: one token per character)
    assert enc["labels"] == [-100, 22, -100, 42, -100, -100, -100, -100, -100, -100, 7, -100]
    assert len(enc["input_ids"]) == len(enc["labels"])


def test_text_task_needs_a_text_tokenizer(shared_data):
    data = tasks.TaskData("conll2003", None, "token_classification", list(tasks.CONLL_POS_TAGS), {}, "mem")
    with pytest.raises(QftInputError, match="text task"):
        tasks.build_tokenizer("char", data)


def test_data_files_that_are_not_utf8_are_one_line(tmp_path):
    dna = tmp_path / "dna"
    _dna_dir(dna.mkdir() or dna)
    (dna / "train.csv").write_bytes(b"sequence,label\nACGT,0\n\xff\xfeACGT,1\n")
    with pytest.raises(QftInputError, match="UTF-8") as err:
        tasks.load_task("gue", task="prom_core_notata", data_dir=dna)
    assert "\n" not in str(err.value)
    conll = tmp_path / "conll"
    conll.mkdir()
    for name in ("train", "valid", "test"):
        (conll / f"{name}.txt").write_text("EU NNP B-NP B-ORG\n")
    (conll / "valid.txt").write_bytes(b"EU NNP B-NP B-ORG\n\xff NN O O\n")
    with pytest.raises(QftInputError, match="UTF-8"):
        tasks.load_task("conll2003", data_dir=conll)


def test_csv_with_a_utf8_byte_order_mark_loads(tmp_path):
    _dna_dir(tmp_path)
    text = (tmp_path / "train.csv").read_text()
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Excel saves "CSV UTF-8"
    data = tasks.load_task("gue", task="prom_core_notata", data_dir=tmp_path)
    assert data.splits["train"]["inputs"][0] == "ACGT"


def test_default_dnabert2_tokenizer_offline_names_the_offline_choices(monkeypatch):
    import huggingface_hub.constants

    from qft_cli.data.tasks import build_tokenizer
    from qft_cli.system.errors import QftInputError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("QFT_SHARED_DATA", "/nonexistent-qft-shared-data")  # no local copy either
    data = tasks.TaskData("gue", "prom_core_notata", "sequence_classification", ["0", "1"],
                          {"train": {"inputs": ["ACGT"], "labels": [0]}}, "test")
    with pytest.raises(QftInputError, match="dnabert2.*--tokenizer PATH .*bpe:512, kmer:6 or char") as err:
        build_tokenizer("auto", data)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the task actually read (issue 12)

def test_dir_holding_split_files_is_labelled_by_its_name(tmp_path):
    """DIR = .../prom_core_tata holding train/test directly: the task is prom_core_tata, not the
    default prom_300_notata; every file read is recorded with its SHA-256."""
    import hashlib

    from qft_cli.runs.provenance import file_records

    (tmp_path / "prom_core_tata").mkdir()
    d = _dna_dir(tmp_path / "prom_core_tata")
    data = tasks.load_task("gue", data_dir=d)
    assert data.task == "prom_core_tata"
    rec = data.record()
    assert rec["task"] == "prom_core_tata" and rec["source"] == "local" and rec["dataset"] == "gue"
    assert rec["hub_id"] is None and rec["revision"] is None
    assert [p.name for p in data.files] == ["train.csv", "test.csv"]
    for f in file_records(data.files):
        assert f["sha256"] == hashlib.sha256(open(f["path"], "rb").read()).hexdigest()
    # --task naming the same task agrees; --task naming another one is an error
    assert tasks.load_task("gue", task="prom_core_tata", data_dir=d).task == "prom_core_tata"
    with pytest.raises(QftInputError, match="holds the files of GUE task prom_core_tata but --task is prom_300_notata") as err:
        tasks.load_task("gue", task="prom_300_notata", data_dir=d)
    assert "\n" not in str(err.value)


def test_task_disagreeing_with_the_task_folder_is_an_error(tmp_path):
    (tmp_path / "prom_core_tata").mkdir()
    _dna_dir(tmp_path / "prom_core_tata")
    with pytest.raises(QftInputError, match=r"--task prom_300_notata but --data-dir .* holds the task folder\(s\) "
                                            r"prom_core_tata and no prom_300_notata/"):
        tasks.load_task("gue", task="prom_300_notata", data_dir=tmp_path)
    # without --task the only task folder is the one read, and named
    assert tasks.load_task("gue", data_dir=tmp_path).task == "prom_core_tata"
    (tmp_path / "tf0").mkdir()
    _dna_dir(tmp_path / "tf0")
    with pytest.raises(QftInputError, match="several GUE task folders .*pass --task"):
        tasks.load_task("gue", data_dir=tmp_path)
    assert tasks.load_task("gue", task="tf0", data_dir=tmp_path).task == "tf0"


def test_default_task_only_when_read(tmp_path):
    (tmp_path / "prom_300_notata").mkdir()
    _dna_dir(tmp_path / "prom_300_notata")
    data = tasks.load_task("gue", data_dir=tmp_path)
    assert data.task == "prom_300_notata" and data.files[0].parent.name == "prom_300_notata"
    assert tasks.validate_dataset_name("gue", None) == ("gue", None)  # no default filled in before reading
    plain = tmp_path / "mydata"
    plain.mkdir()
    _dna_dir(plain)
    assert tasks.load_task("gue", task="tf1", data_dir=plain).task == "tf1"  # the user's name for unnamed files
    assert tasks.load_task("genomic-bench", data_dir=plain).task is None


def test_shared_gue_folder_names_its_task(shared_data):
    data = tasks.load_task("gue", data_dir=shared_data / "gue" / "prom_core_notata")
    assert data.task == "prom_core_notata"
    with pytest.raises(QftInputError, match="holds the files of GUE task prom_core_notata"):
        tasks.load_task("gue", task="prom_300_notata", data_dir=shared_data / "gue" / "prom_core_notata")


def test_task_folder_name_as_given_and_relative(tmp_path, monkeypatch):
    real = tmp_path / "somewhere"
    real.mkdir()
    _dna_dir(real)
    (tmp_path / "prom_core_tata").symlink_to(real)
    assert tasks.load_task("gue", data_dir=tmp_path / "prom_core_tata").task == "prom_core_tata"
    own = tmp_path / "tf3"
    own.mkdir()
    _dna_dir(own)
    monkeypatch.chdir(own)
    assert tasks.load_task("gue", data_dir=".").task == "tf3"


def test_gue_task_choice_is_noted_and_a_missing_train_file_named(tmp_path):
    """Without --task the chosen task and the reason are one note; --task T with a T/ lacking its
    training file names that file (not 'no T/'), on a copy of the shared layout."""
    (tmp_path / "prom_300_notata").mkdir()
    for name in ("dev.csv", "test.csv"):
        (tmp_path / "prom_300_notata" / name).write_text("sequence,label\nACGT,0\nTTGA,1\n")
    (tmp_path / "prom_core_notata").mkdir()
    _dna_dir(tmp_path / "prom_core_notata")
    data = tasks.load_task("gue", data_dir=tmp_path)
    assert data.task == "prom_core_notata"
    assert data.notes[0] == (f"no --task: read prom_core_notata, the only task folder of {tmp_path} with a training "
                             f"file; {tmp_path / 'prom_300_notata'} has no train.csv or train.tsv "
                             "(it holds dev.csv, test.csv)")
    assert "no --task" in " ".join(data.record()["notes"])
    assert not any("no --task" in n for n in tasks.load_task("gue", task="prom_core_notata", data_dir=tmp_path).notes)
    with pytest.raises(QftInputError) as err:
        tasks.load_task("gue", task="prom_300_notata", data_dir=tmp_path)
    assert str(err.value) == (f"{tmp_path / 'prom_300_notata'} has no train.csv or train.tsv (it holds dev.csv, "
                              f"test.csv): add the training file, or pass --task prom_core_notata (a task folder "
                              f"of {tmp_path} with one)")
    _dna_dir(tmp_path / "prom_300_notata")
    assert tasks.load_task("gue", data_dir=tmp_path).notes[0] == (
        f"no --task: read prom_300_notata (the default GUE task) from {tmp_path / 'prom_300_notata'}")
    assert tasks.load_task("gue", data_dir=tmp_path / "prom_core_notata").notes[0] == (
        f"no --task: read {tmp_path / 'prom_core_notata'} as GUE task prom_core_notata (the folder's name)")


def test_shared_gue_task_choice_note_and_missing_train_file(shared_data):
    gue = shared_data / "gue"
    data = tasks.load_task("gue", data_dir=gue)
    assert data.task == "prom_core_notata"
    assert data.notes[0].startswith(f"no --task: read prom_core_notata, the only task folder of {gue} with a training "
                                    f"file; {gue / 'prom_300_notata'} has no train.csv or train.tsv")
    with pytest.raises(QftInputError, match=r"prom_300_notata has no train\.csv or train\.tsv .*--task prom_core_notata"):
        tasks.load_task("gue", task="prom_300_notata", data_dir=gue)


def test_labels_outside_the_task_label_set_are_refused_naming_the_rows(tmp_path, shared_data):
    """Issue 21, item 4: {0, 1, 2} in a binary task (every split, also train) is refused with the
    rows, instead of a 3-class model; --num-labels 3 (load_task(num_labels=3)) accepts it; the
    real GUE and Genomic Benchmarks files pass with two classes."""
    import shutil

    real = tasks.load_task("gue", task="prom_core_notata", data_dir=shared_data / "gue")
    assert real.label_names == ["0", "1"]
    assert tasks.task_num_labels("genomic-bench", None) == 2 and tasks.task_num_labels("gue", "covid") == 9
    assert tasks.task_num_labels("gue", "splice_reconstructed") == 3
    folder = tmp_path / "prom_core_notata"
    shutil.copytree(shared_data / "gue" / "prom_core_notata", folder)
    train = folder / "train.csv"
    lines = train.read_text().splitlines()
    for row in (3, 7):
        seq, _ = lines[row].rsplit(",", 1)
        lines[row] = f"{seq},2"
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(QftInputError, match=r"labels outside \[0, 1\].*train.csv: 2 row\(s\) \(row 3 label 2, "
                                            r"row 7 label 2\).*--num-labels") as err:
        tasks.load_task("gue", data_dir=folder)
    assert "\n" not in str(err.value)
    data = tasks.load_task("gue", data_dir=folder, num_labels=3)
    assert data.num_labels == 3 and data.label_names == ["0", "1", "2"]
    with pytest.raises(QftInputError, match="--num-labels 2"):
        tasks.load_task("gue", data_dir=folder, num_labels=2)
