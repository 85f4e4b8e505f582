"""Datasets and tokenizers of the training experiments: genomic promoters and CoNLL-2003 POS.

Datasets (``--dataset``):

* ``genomic-bench``: Genomic Benchmarks ``human_nontata_promoters`` (Gresova et al., BMC Genomic
  Data 2023), hub ``katarinagresova/Genomic_Benchmarks_human_nontata_promoters`` (columns
  ``seq,label``; splits train/test). As in the research, validation and test are the two seeded
  halves of the test split (the first half of a seeded permutation is validation).
* ``gue``: DNABERT-2's GUE benchmark (Zhou et al., ICLR 2024), hub ``leannmlindsey/GUE``, task
  ``--task`` (default ``prom_300_notata``; with ``--data-dir``, the folder's own task, see
  :func:`find_task_dir`), splits train/dev/test.
* ``conll2003``: part-of-speech tagging on CoNLL-2003 English (Tjong Kim Sang & De Meulder 2003),
  hub ``eriktks/conll2003`` read through its parquet conversion (``refs/convert/parquet``),
  because current ``datasets`` refuses loading scripts. Label ids follow that dataset's
  ``pos_tags`` class list (:data:`CONLL_POS_TAGS`).

Offline (``--data-dir DIR``): for the DNA datasets CSV or TSV files with a ``sequence`` or ``seq``
column and a ``label`` column, named ``train``, ``dev``/``valid``/``validation`` and ``test``
(``.csv``/``.tsv``), in ``DIR`` or in ``DIR/<task>``; for CoNLL, text files ``train.txt``,
``valid.txt``/``dev.txt``, ``test.txt`` (``word POS chunk NER`` per line, blank lines between
sentences, ``-DOCSTART-`` lines ignored). DNA may also come as FASTA (``.fa``/``.fasta``/``.fna``, gzipped
or not: one file per class, one file with ``label=`` headers, or train/dev/test files; unsplit FASTA
gets a seeded stratified split), read by :mod:`qft_cli.data.fasta`. A training file is always required: a directory with
only a test split (like ``shared/data/genomic_benchmarks``) is refused, because training on part of
the official test split would make the test numbers incomparable with the paper's.

DNA tokenizers (``--tokenizer``): ``dnabert2`` (DNABERT-2's BPE: from the hub or its cache, else the
published ``tokenizer.json`` found in the shared data directory ``$QFT_SHARED_DATA/dnabert2/``,
see :func:`shared_data_dir`), a path (a ``tokenizer.json`` file or a tokenizer directory), ``bpe:V`` (a BPE of
vocabulary ``V`` trained on the training sequences with the ``tokenizers`` library, saved in the
run directory), ``kmer:K`` (non-overlapping K-mers, a shorter tail split into single letters) and
``char``. All put ``[CLS]`` first (the sequence-classification head reads it) and ``[SEP]`` last.
"""

from __future__ import annotations

import csv
import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from qft_cli.system.errors import QftInputError

DATASETS = ("genomic-bench", "gue", "conll2003", "synthetic-dna")
#: Datasets that exist only as local files (``synthetic-dna``: written by ``qft demo``, :mod:`qft_cli.data.synthetic`).
LOCAL_ONLY = ("synthetic-dna",)
GENOMIC_BENCH_HUB = "katarinagresova/Genomic_Benchmarks_human_nontata_promoters"
GUE_HUB = "leannmlindsey/GUE"
CONLL_HUB = "eriktks/conll2003"
DEFAULT_GUE_TASK = "prom_300_notata"
#: GUE task names (Zhou et al. 2024, table 1).
GUE_TASKS = (
    "prom_300_all", "prom_300_notata", "prom_300_tata", "prom_core_all", "prom_core_notata", "prom_core_tata",
    "tf0", "tf1", "tf2", "tf3", "tf4", "mouse0", "mouse1", "mouse2", "mouse3", "mouse4",
    "splice_reconstructed", "covid", "H3", "H3K14ac", "H3K36me3", "H3K4me1", "H3K4me2", "H3K4me3",
    "H3K79me3", "H3K9ac", "H4", "H4ac", "EMP_H3", "EMP_H3K14ac", "EMP_H3K36me3", "EMP_H3K4me1",
    "EMP_H3K4me2", "EMP_H3K4me3", "EMP_H3K79me3", "EMP_H3K9ac", "EMP_H4", "EMP_H4ac",
)
#: The ``pos_tags`` class names of the Hugging Face CoNLL-2003 dataset (label id = index).
CONLL_POS_TAGS = (
    '"', "''", "#", "$", "(", ")", ",", ".", ":", "``", "CC", "CD", "DT", "EX", "FW", "IN", "JJ", "JJR",
    "JJS", "LS", "MD", "NN", "NNP", "NNPS", "NNS", "NN|SYM", "PDT", "POS", "PRP", "PRP$", "RB", "RBR",
    "RBS", "RP", "SYM", "TO", "UH", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "WDT", "WP", "WP$", "WRB",
)
#: Number of classes of each DNA task by its own definition: Genomic Benchmarks
#: human_nontata_promoters is binary (Gresova et al. 2023, table 1); in GUE (Zhou et al. 2024,
#: table 1) splice-site prediction has 3 classes, COVID variant classification 9, every other task
#: 2; qft demo's synthetic task is binary. ``--num-labels`` overrides.
GUE_NUM_LABELS = {"splice_reconstructed": 3, "covid": 9}


def task_num_labels(dataset: str, task: Optional[str]) -> Optional[int]:
    """The number of classes ``dataset``/``task`` has by its own definition (see
    :data:`GUE_NUM_LABELS`), ``None`` where qft does not know it (CoNLL: its tag list decides; a
    GUE folder named after no GUE task)."""
    if dataset == "gue":  # a folder named after no GUE task: unknown
        task = task or DEFAULT_GUE_TASK
        return GUE_NUM_LABELS.get(task, 2) if task in GUE_TASKS else None
    if dataset in ("genomic-bench", "synthetic-dna"):
        return 2
    return None


SPLITS = ("train", "validation", "test")
_SPLIT_FILES = {"train": ("train",), "validation": ("dev", "valid", "validation"), "test": ("test",)}
_DNA_RE = re.compile(r"^[ACGTN]+$")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DNA_TOKENIZER_FILE = "dna_tokenizer"


@dataclass
class TaskData:
    """A dataset loaded into memory, before tokenization.

    Attributes:
        dataset: ``genomic-bench``, ``gue`` or ``conll2003``.
        task: GUE task name, else ``None``.
        kind: ``sequence_classification`` (DNA) or ``token_classification`` (POS).
        label_names: class names; label ids are indices into it.
        splits: ``{"train"|"validation"|"test": {"inputs": [...], "labels": [...]}}``. For DNA,
            inputs are upper-case strings and labels ints; for POS, inputs are lists of words and
            labels lists of ints (one per word).
        source: hub id or directory the data came from.
        files: every local file read (absolute paths; for hub data the ``datasets`` cache files).
        origin: where the data came from, the keys of :func:`qft_cli.runs.provenance.data_record`
            besides ``dataset`` and ``task``: ``source`` (``local``, ``hub`` or ``synthetic``),
            ``hub_id``, ``config``, ``split``, ``revision`` (the hub commit hash).
    """

    dataset: str
    task: Optional[str]
    kind: str
    label_names: list[str]
    splits: dict[str, dict[str, list]]
    source: str
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    origin: dict[str, Any] = field(default_factory=lambda: {"source": "local"})

    def record(self) -> dict[str, Any]:
        """The ``data`` field of ``run.json`` (:func:`qft_cli.runs.provenance.data_record`), with the
        number of examples per split (``sizes``, after any subsampling) and ``notes``."""
        from qft_cli.runs.provenance import data_record

        return data_record(self.dataset, task=self.task, **self.origin, sizes=self.sizes(), notes=list(self.notes))

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {k: len(v["inputs"]) for k, v in self.splits.items()}


# ----------------------------------------------------------------------------- validation

def validate_dataset_name(dataset: str, task: Optional[str]) -> tuple[str, Optional[str]]:
    """Check ``--dataset``/``--task``; return ``(dataset, task)``, ``task`` as given (``None`` when
    not given: the task actually read is decided by :func:`load_task`, see :func:`find_task_dir`).

    Raises:
        QftInputError: unknown dataset or GUE task, or ``--task`` with a dataset that has none.
    """
    if dataset not in DATASETS:
        near = difflib.get_close_matches(dataset, DATASETS, n=1, cutoff=0.5)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise QftInputError(f"unknown dataset '{dataset}': {hint}use one of {', '.join(DATASETS)}")
    if dataset == "gue":
        if task is None:
            return dataset, None
        if task not in GUE_TASKS:
            near = difflib.get_close_matches(task, GUE_TASKS, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise QftInputError(f"unknown GUE task '{task}': {hint}use a GUE task name such as prom_300_notata")
        return dataset, task
    if task:
        raise QftInputError(f"--task {task} applies only to --dataset gue: drop --task for {dataset}")
    return dataset, None


def _check_dna(seqs: list[str], where: str) -> list[str]:
    out = []
    for i, s in enumerate(seqs):
        s = str(s).strip().upper()
        if not _DNA_RE.match(s):
            bad = sorted(set(s) - set("ACGTN")) or ["(empty)"]
            raise QftInputError(f"{where} row {i + 1} has invalid DNA letters {''.join(bad)!r}: sequences may "
                                "contain only A, C, G, T, N (any case)")
        out.append(s)
    return out


def _check_labels(raw: list[Any], where: str) -> list[int]:
    labels = []
    for i, value in enumerate(raw):
        try:
            number = float(value)
            if number != int(number) or number < 0:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise QftInputError(f"{where} row {i + 1} has label {value!r}: labels must be integers 0, 1, ...") from None
        labels.append(int(number))
    return labels


def _check_label_set(splits: dict[str, dict[str, list]], num_labels: int, where: dict[str, str], why: str) -> None:
    """Refuse labels outside ``0..num_labels-1`` in any split, naming the rows (1-based, per file)."""
    bad = []
    for split in SPLITS:
        if split not in splits:
            continue
        rows = [(i + 1, lab) for i, lab in enumerate(splits[split]["labels"]) if not 0 <= lab < num_labels]
        if rows:
            shown = ", ".join(f"row {i} label {lab}" for i, lab in rows[:3]) + (" ..." if len(rows) > 3 else "")
            bad.append(f"{where.get(split, split)}: {len(rows)} row(s) ({shown})")
    if bad:
        raise QftInputError(f"labels outside {list(range(num_labels))} ({why}) in " + "; ".join(bad)
                            + ": fix those rows, or pass --num-labels K if the task really has K classes")


def _finish_dna(dataset: str, task: Optional[str], splits: dict[str, dict[str, list]], source: str,
                seed: int, files: Optional[list[Path]] = None, origin: Optional[dict[str, Any]] = None,
                num_labels: Optional[int] = None, where: Optional[dict[str, str]] = None) -> TaskData:
    expected = num_labels or task_num_labels(dataset, task)
    if expected is not None:
        why = (f"--num-labels {num_labels}" if num_labels else
               f"{dataset}{'/' + (task or DEFAULT_GUE_TASK) if dataset == 'gue' else ''} has {expected} classes")
        _check_label_set(splits, expected, where or {s: f"{source} {s}" for s in splits}, why)
    notes = []
    if "validation" not in splits:
        if "test" not in splits:
            raise QftInputError(f"{source} has no test split: {dataset} needs train and test")
        test = splits["test"]
        order = np.random.default_rng(seed).permutation(len(test["inputs"]))
        half = len(order) // 2
        splits["validation"] = {k: [test[k][i] for i in order[:half]] for k in test}
        splits["test"] = {k: [test[k][i] for i in order[half:]] for k in test}
        notes.append(f"validation and test are the two halves of the test split permuted with seed {seed}")
    label_set = sorted(set(splits["train"]["labels"]))
    if expected is not None and len(label_set) >= 2:
        label_set = list(range(expected))  # the task's classes, also those the training subset lacks
    if len(label_set) < 2:
        raise QftInputError(f"the training split of {source} has only label {label_set}: it needs at least two classes")
    if label_set != list(range(len(label_set))):
        raise QftInputError(f"training labels of {source} are {label_set}: use consecutive integers 0..K-1")
    for name in ("validation", "test"):
        for i, lab in enumerate(splits[name]["labels"]):
            if lab not in label_set:
                raise QftInputError(f"label {lab} in the {name} split of {source} (example {i + 1}) is outside "
                                    f"the training labels {label_set}: fix the labels or the files")
    return TaskData(dataset, task, "sequence_classification", [str(x) for x in label_set],
                    {k: splits[k] for k in SPLITS}, source, notes, list(files or []),
                    dict(origin or {"source": "synthetic" if dataset in LOCAL_ONLY else "local"}))


# ----------------------------------------------------------------------------- offline files

def _find_split_file(directory: Path, split: str, suffixes: tuple[str, ...]) -> Optional[Path]:
    for stem in _SPLIT_FILES[split]:
        for suffix in suffixes:
            path = directory / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _not_utf8(path: Path, err: UnicodeDecodeError) -> QftInputError:
    return QftInputError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}): "
                         "save it as UTF-8 CSV/TSV or CoNLL text")


def _read_table(path: Path) -> tuple[list[str], list[Any]]:
    try:
        return _read_table_utf8(path)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None


def _read_table_utf8(path: Path) -> tuple[list[str], list[Any]]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (Excel) is not part of the header
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        seq_col = next((c for c in ("sequence", "seq") if c in columns), None)
        if seq_col is None or "label" not in columns:
            raise QftInputError(f"{path} has columns {columns}: it needs a 'sequence' (or 'seq') column and a "
                                "'label' column")
        reader.fieldnames = columns
        seqs, labels = [], []
        for row in reader:
            seqs.append(row[seq_col] or "")
            labels.append(row["label"])
    return seqs, labels


def _has_split(directory: Path, split: str = "train") -> bool:
    return directory.is_dir() and _find_split_file(directory, split, (".csv", ".tsv")) is not None


def _task_folders(data_dir: Path) -> list[str]:
    """Sub-folders of ``data_dir`` that hold a training file (task folders), sorted."""
    try:
        return sorted(c.name for c in data_dir.iterdir() if _has_split(c))
    except OSError:
        return []


def find_task_dir(dataset: str, task: Optional[str], data_dir: Path) -> tuple[Path, Optional[str]]:
    """The folder of ``data_dir`` that holds the split files, and the task it is (the task actually read).

    GUE (``dataset == "gue"``): with ``--task T``, ``DIR/T`` when it holds a training file, else
    ``DIR`` itself (task ``T``) when it holds the split files and is not named after another GUE
    task. Without ``--task``: ``DIR/prom_300_notata`` (the default task) when present, else ``DIR``
    itself, labelled by its own name (``DIR`` = ``.../prom_core_tata`` is task ``prom_core_tata``).
    Other DNA datasets: ``DIR/human_nontata_promoters`` or ``DIR``; their task is ``None``.

    Returns:
        ``(directory, task)``; ``directory`` is ``None`` when no candidate holds a training file.

    Raises:
        QftInputError: ``--task T`` while ``DIR`` is the folder of another GUE task or holds other
            tasks' folders but not ``T/``; ``DIR/T/`` exists without a training file (the error
            names the missing file); no ``--task`` while ``DIR`` holds several task folders but not
            the default one. Without ``--task`` :func:`load_task` adds :func:`task_choice_note` to
            the notes.
    """
    data_dir = Path(data_dir)
    if dataset != "gue":
        for candidate in _candidate_dirs(dataset, task, data_dir):
            if _has_split(candidate):
                return candidate, task
        return None, task
    name = Path(os.path.abspath(data_dir)).name  # the name as given (a symlink keeps its own name)
    if task is not None:
        if _has_split(data_dir / task):
            return data_dir / task, task
        if (data_dir / task).is_dir() and not _has_split(data_dir):
            raise QftInputError(f"{data_dir / task} has no train.csv or train.tsv{_holds(data_dir / task)}: add the "
                                f"training file{_others_hint(data_dir, task)}")
        if _has_split(data_dir):
            if name in GUE_TASKS and name != task:
                raise QftInputError(f"--data-dir {data_dir} holds the files of GUE task {name} but --task is {task}: "
                                    f"drop --task (or pass --task {name}), or pass the folder of {task}")
            return data_dir, task
        folders = _task_folders(data_dir)
        if folders:
            raise QftInputError(f"--task {task} but --data-dir {data_dir} holds the task folder(s) "
                                f"{', '.join(folders[:5])}{' ...' if len(folders) > 5 else ''} and no {task}/: "
                                f"pass --task {folders[0]} or the directory that holds {task}/")
        return None, task
    if _has_split(data_dir / DEFAULT_GUE_TASK):
        return data_dir / DEFAULT_GUE_TASK, DEFAULT_GUE_TASK
    if _has_split(data_dir):
        return data_dir, name
    folders = _task_folders(data_dir)
    if len(folders) == 1:
        return data_dir / folders[0], folders[0]
    if folders:
        raise QftInputError(f"--data-dir {data_dir} holds several GUE task folders ({', '.join(folders[:5])}"
                            f"{' ...' if len(folders) > 5 else ''}): pass --task to say which one to read")
    return None, None


def _holds(directory: Path) -> str:
    """`` (it holds dev.csv, test.csv)`` of a folder's files, or ``""``."""
    try:
        names = sorted(c.name for c in directory.iterdir() if c.is_file())
    except OSError:
        return ""
    return f" (it holds {', '.join(names[:6])}{' ...' if len(names) > 6 else ''})" if names else " (it is empty)"


def _others_hint(data_dir: Path, task: str) -> str:
    folders = [f for f in _task_folders(data_dir) if f != task]
    return f", or pass --task {folders[0]} (a task folder of {data_dir} with one)" if folders else ""


def task_choice_note(data_dir: Path, directory: Path, task: Optional[str]) -> str:
    """The note of a GUE task chosen without ``--task`` (:func:`find_task_dir`): which task was read
    from which folder, and why (the default task; the folder's own name; the only task folder with
    a training file, and what the default folder lacks)."""
    data_dir = Path(data_dir)
    if Path(directory) == data_dir:
        return f"no --task: read {data_dir} as GUE task {task} (the folder's name)"
    if task == DEFAULT_GUE_TASK:
        return f"no --task: read {DEFAULT_GUE_TASK} (the default GUE task) from {directory}"
    default = data_dir / DEFAULT_GUE_TASK
    why = (f"; {default} has no train.csv or train.tsv{_holds(default)}" if default.is_dir()
           else f"; there is no {DEFAULT_GUE_TASK}/ (the default)")
    return f"no --task: read {task}, the only task folder of {data_dir} with a training file{why}"


def _candidate_dirs(dataset: str, task: Optional[str], data_dir: Path) -> list[Path]:
    """The folders :func:`find_task_dir` tries first, in order: ``DIR/<task>`` (or, without
    ``--task``, the default folder of the dataset: ``prom_300_notata`` for GUE,
    ``human_nontata_promoters`` otherwise), then ``DIR`` itself."""
    default = DEFAULT_GUE_TASK if dataset == "gue" else "human_nontata_promoters"
    return [data_dir / (task or default), data_dir]


def _dna_from_fasta(dataset: str, task: Optional[str], directory: Optional[Path], seed: int,
                    class_files: Optional[dict[int, Path]], split_sizes: Optional[tuple[float, ...]],
                    num_labels: Optional[int] = None) -> TaskData:
    """FASTA data (:mod:`qft_cli.data.fasta`): ``task`` is ``--task``, else the folder's name."""
    from qft_cli.data.fasta import load_fasta_dir

    fasta = load_fasta_dir(directory, class_files=class_files, split_sizes=split_sizes, seed=seed)
    splits = {k: {"inputs": v["inputs"], "labels": v["labels"]} for k, v in fasta.splits.items()}
    if task is None and directory is not None:
        task = Path(os.path.abspath(directory)).name
    source = str(directory) if directory is not None else ", ".join(str(p) for p in fasta.files)
    data = _finish_dna(dataset, task, splits, source, seed, fasta.files, {"source": "local", "fasta": fasta.record},
                       num_labels=num_labels)
    if fasta.record.get("iupac_to_n"):
        data.notes.append(f"{fasta.record['iupac_to_n']} IUPAC ambiguity letters (RYSWKMBDHV) were read as N")
    if "split_seed" in fasta.record:
        data.notes.append("train/validation/test: a stratified split of the FASTA records with seed "
                          f"{seed}, fractions {','.join(f'{x:g}' for x in fasta.record['split_sizes'])}")
    return data


def _dna_from_dir(dataset: str, task: Optional[str], data_dir: Optional[Path], seed: int,
                  num_labels: Optional[int] = None, class_files: Optional[dict[int, Path]] = None,
                  split_sizes: Optional[tuple[float, ...]] = None) -> TaskData:
    from qft_cli.data.fasta import has_fasta

    if class_files:
        return _dna_from_fasta(dataset, task, Path(data_dir) if data_dir else None, seed, class_files, split_sizes,
                               num_labels)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise QftInputError(f"--data-dir {data_dir} is not a directory: pass the folder with train/dev/test files")
    for candidate in ([data_dir / task] if task else []) + [data_dir]:
        if not _has_split(candidate) and not _has_split(candidate, "test") and has_fasta(candidate):
            return _dna_from_fasta(dataset, task, candidate, seed, None, split_sizes, num_labels)
    if split_sizes is not None:
        raise QftInputError(f"--split-sizes applies to unsplit FASTA but --data-dir {data_dir} holds CSV/TSV split "
                            "files: drop --split-sizes")
    given = task
    directory, task = find_task_dir(dataset, task, data_dir)
    if directory is None:
        where = next((c for c in _candidate_dirs(dataset, task, data_dir) if _has_split(c, "test")), None)
        extra = (f" ({where} holds only a test split; qft does not train on test data)") if where else ""
        raise QftInputError(f"--data-dir {data_dir} has no train.csv or train.tsv{extra}: pass a directory with "
                            f"train, dev and test files" + (f" (or a folder holding {task}/)" if task else ""))
    splits: dict[str, dict[str, list]] = {}
    files: list[Path] = []
    where: dict[str, str] = {}
    for split in SPLITS:
        path = _find_split_file(directory, split, (".csv", ".tsv"))
        if path is None:
            continue
        seqs, labels = _read_table(path)
        if not seqs:
            raise QftInputError(f"{path} has no rows: pass a file with sequences")
        splits[split] = {"inputs": _check_dna(seqs, str(path)), "labels": _check_labels(labels, str(path))}
        files.append(path.resolve())
        where[split] = str(path)
    if "test" not in splits:
        raise QftInputError(f"--data-dir {directory} has no test.csv or test.tsv: add the test split")
    data = _finish_dna(dataset, task, splits, str(directory), seed, files, num_labels=num_labels, where=where)
    if dataset == "gue" and given is None:
        data.notes.insert(0, task_choice_note(data_dir, directory, task))
    return data


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Read a CoNLL-2003 file: ``word POS chunk NER`` per line, blank lines between sentences,
    ``-DOCSTART-`` lines skipped.

    Returns:
        ``(sentences, pos_tags)``: lists of word lists and of POS-tag lists.

    Raises:
        QftInputError: a line with fewer than two columns.
    """
    sentences, tags = [], []
    words: list[str] = []
    pos: list[str] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sentences.append(words)
                    tags.append(pos)
                    words, pos = [], []
                continue
            parts = line.split()
            if len(parts) < 2:
                raise QftInputError(f"{path} line {number} has {len(parts)} column(s): CoNLL lines are 'word POS chunk NER'")
            words.append(parts[0])
            pos.append(parts[1])
    if words:
        sentences.append(words)
        tags.append(pos)
    return sentences, tags


def _conll_splits_to_task(raw: dict[str, tuple[list[list[str]], list[list[Any]]]], source: str,
                          names: tuple[str, ...] = CONLL_POS_TAGS) -> TaskData:
    index = {t: i for i, t in enumerate(names)}
    splits = {}
    for split, (sentences, tags) in raw.items():
        ids = []
        for k, sentence_tags in enumerate(tags):
            row = []
            for t in sentence_tags:
                if isinstance(t, str):
                    if t not in index:
                        raise QftInputError(f"POS tag {t!r} in sentence {k + 1} of the {split} split of {source} is not "
                                            "a CoNLL-2003 POS tag: check the file format (word POS chunk NER)")
                    row.append(index[t])
                else:
                    if not 0 <= int(t) < len(names):
                        raise QftInputError(f"POS label {t} in the {split} split of {source} is outside 0..{len(names) - 1}")
                    row.append(int(t))
            ids.append(row)
        splits[split] = {"inputs": sentences, "labels": ids}
    return TaskData("conll2003", None, "token_classification", list(names), splits, source)


def _conll_from_dir(data_dir: Path) -> TaskData:
    data_dir = Path(data_dir)
    raw = {}
    files = []
    for split in SPLITS:
        path = _find_split_file(data_dir, split, (".txt", ".conll", ""))
        if path is None:
            raise QftInputError(f"--data-dir {data_dir} has no CoNLL {split} file "
                                f"({'/'.join(s + '.txt' for s in _SPLIT_FILES[split])}): pass the CoNLL-2003 folder")
        try:
            raw[split] = read_conll(path)
        except UnicodeDecodeError as err:
            raise _not_utf8(path, err) from None
        files.append(path.resolve())
    data = _conll_splits_to_task(raw, str(data_dir))
    data.files = files
    return data


# ----------------------------------------------------------------------------- hub

def _hub_load(repo: str, **kwargs):
    from qft_cli.models.names import load_hub_dataset

    return load_hub_dataset(repo, what=f"dataset {repo}", fix="check the network, or pass --data-dir with local files",
                            **kwargs)


def _hub_origin(ds, hub_id: str, config: Optional[str]) -> tuple[dict[str, Any], list[Path]]:
    """``TaskData.origin`` and files of a hub dataset: id, config, splits and the commit hash
    resolved from the ``datasets`` cache (:func:`qft_cli.runs.provenance.hub_dataset_revision`)."""
    from qft_cli.runs.provenance import hub_dataset_files, hub_dataset_revision

    try:
        splits = list(ds.keys())
    except AttributeError:
        splits = None
    return ({"source": "hub", "hub_id": hub_id, "config": config, "split": splits,
             "revision": hub_dataset_revision(ds)}, hub_dataset_files(ds))


def _dna_from_hub(dataset: str, task: Optional[str], seed: int, num_labels: Optional[int] = None) -> TaskData:
    if dataset == "genomic-bench":
        hub_id, config = GENOMIC_BENCH_HUB, None
        ds, source = _hub_load(GENOMIC_BENCH_HUB), GENOMIC_BENCH_HUB
    else:
        task = task or DEFAULT_GUE_TASK  # the task read from the hub
        hub_id, config = GUE_HUB, task
        ds, source = _hub_load(GUE_HUB, name=task), f"{GUE_HUB}/{task}"
    splits = {}
    for hub_split, ours in (("train", "train"), ("dev", "validation"), ("validation", "validation"), ("test", "test")):
        if hub_split not in ds:
            continue
        columns = ds[hub_split].column_names
        seq_col = next((c for c in ("sequence", "seq") if c in columns), None)
        if seq_col is None or "label" not in columns:
            raise QftInputError(f"{source} split {hub_split} has columns {columns}: expected sequence/seq and label")
        where = f"{source} {hub_split}"
        splits[ours] = {"inputs": _check_dna(ds[hub_split][seq_col], where),
                        "labels": _check_labels(ds[hub_split]["label"], where)}
    if "train" not in splits:
        raise QftInputError(f"{source} has no train split")
    origin, files = _hub_origin(ds, hub_id, config)
    return _finish_dna(dataset, task, splits, source, seed, files, origin, num_labels=num_labels)


def _conll_from_hub() -> TaskData:
    ds = _hub_load(CONLL_HUB, revision="refs/convert/parquet")
    feature = ds["train"].features["pos_tags"].feature
    names = tuple(getattr(feature, "names", CONLL_POS_TAGS))
    raw = {}
    for hub_split, ours in (("train", "train"), ("validation", "validation"), ("test", "test")):
        raw[ours] = (ds[hub_split]["tokens"], ds[hub_split]["pos_tags"])
    data = _conll_splits_to_task(raw, CONLL_HUB, names)
    data.origin, data.files = _hub_origin(ds, CONLL_HUB, None)
    return data


# ----------------------------------------------------------------------------- public loading

def load_task(dataset: str, *, task: Optional[str] = None, data_dir: Optional[Path] = None, seed: int = 42,
              num_labels: Optional[int] = None, class_files: Optional[dict[int, Path]] = None,
              split_sizes: Optional[tuple[float, ...]] = None) -> TaskData:
    """Load ``dataset`` from ``data_dir`` (offline) or the Hugging Face Hub.

    Args:
        dataset: one of :data:`DATASETS`.
        task: GUE task; only for ``gue``. Without it: the task of ``data_dir`` (see
            :func:`find_task_dir`), or ``prom_300_notata`` from the hub. ``TaskData.task`` is
            the task actually read.
        data_dir: local files (see module docstring); ``None`` loads from the hub.
        seed: seed of the validation/test split of ``genomic-bench`` and of the split of unsplit FASTA.
        num_labels: the number of classes of a DNA task (default: the task's own,
            :func:`task_num_labels`); every label of every split must lie in ``0..num_labels-1``.
        class_files: ``{label: path}`` of FASTA class files (``--class-file``; :mod:`qft_cli.data.fasta`).
        split_sizes: ``(train, validation, test)`` fractions of the split of unsplit FASTA.

    Raises:
        QftInputError: unknown dataset/task, missing files or columns, invalid DNA letters,
            labels outside the task's label set (the rows named) or the training label set, hub
            unreachable, bad FASTA (:func:`qft_cli.data.fasta.load_fasta_dir`).
    """
    dataset, task = validate_dataset_name(dataset, task)
    if num_labels is not None and (dataset == "conll2003" or num_labels < 2):
        raise QftInputError(f"--num-labels {num_labels}: " + ("conll2003's tag list sets its classes; drop --num-labels"
                                                              if dataset == "conll2003" else "a classifier needs at least 2 classes"))
    if dataset == "conll2003":
        return _conll_from_dir(data_dir) if data_dir else _conll_from_hub()
    if data_dir or class_files:
        return _dna_from_dir(dataset, task, Path(data_dir) if data_dir else None, seed, num_labels, class_files,
                             split_sizes)
    if split_sizes is not None:
        raise QftInputError("--split-sizes applies to FASTA files: pass --data-dir or --class-file")
    if dataset in LOCAL_ONLY:
        raise QftInputError(f"--dataset {dataset} has no hub copy: pass --data-dir with its train/dev/test CSV files "
                            "(qft demo writes them)")
    return _dna_from_hub(dataset, task, seed, num_labels)


def subsample(data: TaskData, split: str, max_samples: Optional[int], seed: int) -> TaskData:
    """Keep a seeded random subset of ``max_samples`` examples of ``split`` (in their original
    order); ``None`` or a larger number keeps all. Returns ``data`` (modified)."""
    if max_samples is None:
        return data
    if max_samples < 1:
        option = "--max-train-samples" if split == "train" else "--max-eval-samples"
        raise QftInputError(f"{option} {max_samples} must be at least 1")
    part = data.splits[split]
    n = len(part["inputs"])
    if max_samples < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        data.splits[split] = {k: [v[i] for i in keep] for k, v in part.items()}
    return data


# ----------------------------------------------------------------------------- tokenizers

def _wrap(tok) -> Any:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def shared_data_dir() -> Optional[Path]:
    """The shared data directory: ``$QFT_SHARED_DATA`` when set, else ``shared/data`` beside the
    project checkout (``<checkout>/../shared/data``, the layout of qft's development and CI
    machines); ``None`` when neither exists."""
    import os

    env = os.environ.get("QFT_SHARED_DATA")
    candidates = [Path(env).expanduser()] if env else [Path(__file__).resolve().parents[2] / "shared" / "data"]
    return next((p for p in candidates if p.is_dir()), None)


def load_tokenizer_path(path: Path):
    """A fast tokenizer from a ``tokenizer.json`` file (special tokens from a
    ``tokenizer_config.json`` beside it, else ``[PAD] [UNK] [CLS] [SEP] [MASK]`` where the vocabulary
    has them) or from a tokenizer directory (``AutoTokenizer``, no remote code).

    Raises:
        QftInputError: the path does not exist or holds no readable tokenizer.
    """
    import json

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path).expanduser()
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        if path.is_file():
            config_path = path.parent / "tokenizer_config.json"
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
            tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
            specials = {key: config.get(key, default) for key, default in
                        (("pad_token", "[PAD]"), ("unk_token", "[UNK]"), ("cls_token", "[CLS]"),
                         ("sep_token", "[SEP]"), ("mask_token", "[MASK]"))}
            vocab = tok.get_vocab()
            tok.add_special_tokens({k: v for k, v in specials.items() if isinstance(v, str) and v in vocab})
            return tok
    except Exception as err:  # unreadable JSON, not a tokenizer, missing files
        raise QftInputError(f"--tokenizer {path} is not a tokenizer ({type(err).__name__}): pass a tokenizer.json "
                            "file or a directory with tokenizer files") from None
    raise QftInputError(f"--tokenizer {path} does not exist: pass a tokenizer.json file, a tokenizer directory, "
                        "dnabert2, bpe:V, kmer:K or char")


def is_tokenizer_path(spec: Optional[str]) -> bool:
    """True when ``--tokenizer`` names an existing file or directory (or ends in ``.json``)."""
    if not spec:
        return False
    return str(spec).endswith(".json") or Path(str(spec)).expanduser().exists()


def dnabert2_tokenizer(trust_remote_code: bool = False):
    """DNABERT-2's BPE tokenizer: from the hub (or its cache), else the published
    ``tokenizer.json`` in ``shared_data_dir()/dnabert2/`` (:func:`shared_data_dir`).

    Raises:
        QftInputError: neither is available.
    """
    from qft_cli.models.names import load_tokenizer, resolve_model

    try:
        return load_tokenizer(resolve_model("dnabert"), trust_remote_code=trust_remote_code)
    except QftInputError as err:
        shared = shared_data_dir()
        local = shared / "dnabert2" / "tokenizer.json" if shared else None
        if local is not None and local.is_file():
            return load_tokenizer_path(local)
        raise QftInputError(f"the DNA tokenizer dnabert2 (DNABERT-2's BPE, the default) could not be loaded: "
                            f"{err}; no copy in $QFT_SHARED_DATA/dnabert2/tokenizer.json either; offline, pass "
                            "--tokenizer PATH (a tokenizer.json), bpe:512, kmer:6 or char") from None


def kmer_tokenizer(k: int):
    """Non-overlapping k-mer tokenizer over ``ACGTN`` (``k = 1``: one token per letter).

    Vocabulary: the 5 special tokens, then the ``5**k`` k-mers, then the single letters (for the
    tail of a sequence whose length is not a multiple of ``k``).

    Raises:
        QftInputError: ``k`` outside 1..6 (5**6 = 15,625 k-mers).
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    if not 1 <= k <= 6:
        raise QftInputError(f"--tokenizer kmer:{k}: K must be between 1 and 6")
    words = ["".join(p) for p in itertools.product("ACGTN", repeat=k)]
    if k > 1:
        words += list("ACGTN")
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    pattern = f"[ACGTN]{{{k}}}|[ACGTN]" if k > 1 else "[ACGTN]"
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    return _wrap(tok)


def bpe_tokenizer(vocab_size: int, sequences: list[str]):
    """A byte-pair-encoding tokenizer of ``vocab_size`` tokens trained on ``sequences`` with the
    ``tokenizers`` library (each sequence is one word, as DNABERT-2 does; Sennrich et al. 2016).

    Raises:
        QftInputError: ``vocab_size`` below 16.
    """
    from tokenizers import Tokenizer, models, trainers

    if vocab_size < 16:
        raise QftInputError(f"--tokenizer bpe:{vocab_size}: the vocabulary needs at least 16 tokens")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=list("ACGTN"), show_progress=False)
    tok.train_from_iterator(sequences, trainer=trainer)
    return _wrap(tok)


def validate_tokenizer_spec(dataset: str, spec: str, text_model: Optional[str]) -> None:
    """Check ``--tokenizer`` against the dataset before any data is read.

    Raises:
        QftInputError: a malformed DNA tokenizer spec, or a text task without a text tokenizer.
    """
    spec = str(spec or "auto").strip()
    if dataset == "conll2003":
        if spec.lower() == "auto" and not text_model:
            raise QftInputError("conll2003 is a text task: pass --embedding-from MODEL (its tokenizer is used) "
                                "or --tokenizer MODEL, e.g. minilm")
        if spec.lower() in ("char", "dnabert2") or re.fullmatch(r"(?:kmer|bpe):\d+", spec.lower()):
            raise QftInputError(f"--tokenizer {spec} is a DNA tokenizer but conll2003 is a text task: "
                                "pass a model alias such as minilm")
        return
    low = spec.lower()
    if is_tokenizer_path(spec):
        if not Path(spec).expanduser().exists():
            raise QftInputError(f"--tokenizer {spec} does not exist: pass a tokenizer.json file or a tokenizer directory")
        return
    if low not in ("auto", "dnabert2", "char") and not re.fullmatch(r"(?:kmer|bpe):\d+", low):
        raise QftInputError(f"unknown DNA tokenizer '{spec}': use dnabert2, bpe:V (e.g. bpe:512), kmer:K "
                            "(e.g. kmer:6) or char")


def build_tokenizer(spec: str, data: TaskData, *, text_model: Optional[str] = None,
                    save_dir: Optional[Path] = None, trust_remote_code: bool = False):
    """The tokenizer for ``data``.

    Args:
        spec: for DNA: ``dnabert2``, ``bpe:V``, ``kmer:K``, ``char`` or ``auto`` (``text_model``'s
            tokenizer when given, else ``dnabert2``); for text: a model alias or ``auto`` (then
            ``text_model``'s tokenizer).
        text_model: model alias whose tokenizer a text task uses (the embedding's model).
        save_dir: where a trained or built DNA tokenizer is saved (``save_dir/dna_tokenizer``).

    Raises:
        QftInputError: unknown or malformed spec, a text task without a text model.
    """
    from qft_cli.models.names import load_tokenizer, resolve_model

    if data.kind == "token_classification":
        name = text_model if spec in ("auto", "", None) else spec
        if not name or name in ("char", "dnabert2") or ":" in str(name):
            raise QftInputError(f"{data.dataset} is a text task: pass --embedding-from MODEL (its tokenizer is used) "
                                "or --tokenizer MODEL, e.g. minilm")
        tokenizer = load_tokenizer_path(Path(name)) if is_tokenizer_path(name) and not Path(name).is_dir() \
            else load_tokenizer(resolve_model(name))
        if not getattr(tokenizer, "is_fast", False):
            raise QftInputError(f"the tokenizer of {name} is not a fast tokenizer: POS labels need word ids; use another model")
        return tokenizer
    raw_spec = str(spec or "").strip()
    spec = raw_spec.lower()
    if spec in ("auto", ""):
        if text_model and text_model != "dnabert":  # the embedding model's own tokenizer (its token ids)
            tokenizer = load_tokenizer(resolve_model(text_model), trust_remote_code=trust_remote_code)
            if save_dir is not None:
                tokenizer.save_pretrained(str(Path(save_dir) / DNA_TOKENIZER_FILE))
            return tokenizer
        spec = "dnabert2"  # the research's tokenizer
    if spec == "dnabert2":
        tokenizer = dnabert2_tokenizer(trust_remote_code)
    elif is_tokenizer_path(raw_spec):
        tokenizer = load_tokenizer_path(Path(raw_spec))
    elif spec == "char":
        tokenizer = kmer_tokenizer(1)
    elif re.fullmatch(r"kmer:\d+", spec):
        tokenizer = kmer_tokenizer(int(spec.split(":")[1]))
    elif re.fullmatch(r"bpe:\d+", spec):
        tokenizer = bpe_tokenizer(int(spec.split(":")[1]), data.splits["train"]["inputs"])
    else:
        raise QftInputError(f"unknown DNA tokenizer '{spec}': use dnabert2, bpe:V (e.g. bpe:512), kmer:K (e.g. kmer:6) or char")
    if save_dir is not None:
        tokenizer.save_pretrained(str(Path(save_dir) / DNA_TOKENIZER_FILE))
    return tokenizer


# ----------------------------------------------------------------------------- encoding

def encode(data: TaskData, tokenizer, max_length: int) -> dict[str, Any]:
    """Tokenize every split into a ``datasets.Dataset`` with ``input_ids``, ``attention_mask`` and
    ``labels`` (unpadded; the collator pads per batch).

    Sequence classification: one int label per example. Token classification: the label of a word
    goes on its first sub-token, ``-100`` (ignored by the loss) on the others and on special tokens.

    Raises:
        QftInputError: ``max_length`` below 4.
    """
    import datasets

    if max_length < 4:
        raise QftInputError(f"--max-length {max_length} is too short: use at least 4 tokens")
    out = {}
    for split, part in data.splits.items():
        if data.kind == "sequence_classification":
            enc = tokenizer(part["inputs"], truncation=True, max_length=max_length)
            columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": part["labels"]}
        else:
            enc = tokenizer(part["inputs"], is_split_into_words=True, truncation=True, max_length=max_length)
            labels = []
            for i, word_labels in enumerate(part["labels"]):
                previous = None
                row = []
                for word in enc.word_ids(i):
                    row.append(-100 if word is None or word == previous else word_labels[word])
                    previous = word
                labels.append(row)
            columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
        out[split] = datasets.Dataset.from_dict(columns)
    return out
