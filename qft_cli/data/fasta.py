"""FASTA input for ``--data-dir``: reading, validating and a seeded, stratified split.

Layouts (checked in this order, in ``DIR`` or ``DIR/<task>``):

* **split files**: ``train``, ``dev``/``valid``/``validation`` and ``test`` FASTA files
  (``train.fa``, ...), labels in the headers (``>id label=1``), or split folders ``train/``,
  ``dev/``, ``test/`` holding one file per class (``train/0.fa``, ``train/1.fa``). The split is the
  user's; without a validation file the test file is halved as for CSV files
  (:func:`qft_cli.data.tasks._finish_dna`).
* **one file per class**, named by its integer label: ``0.fa``, ``1.fasta.gz``, ... (or any names
  given with ``--class-file LABEL=PATH``);
* **one file** whose headers carry the label: ``>seq17 label=1``.

The last two have no given split: :func:`stratified_split` draws train/validation/test with
``numpy.random.default_rng(seed)`` per class (sizes ``--split-sizes``, default 0.8,0.1,0.1), and
:func:`split_record` records it in ``run.json`` (``data.fasta``: seed, fractions, per-split
counts per label and a SHA-256 of each split's ids) so :func:`verify_split` (``qft runs verify``)
can redraw it from the files and say whether it is the same.

Files: ``.fa``, ``.fasta``, ``.fna`` and the same with ``.gz`` (gzip, read with :mod:`gzip`).
Records may span several lines; letters are upper-cased; whitespace inside a sequence is dropped.
Letters: ``A C G T N`` pass; the IUPAC ambiguity codes ``R Y S W K M B D H V`` (Cornish-Bowden,
Nucleic Acids Res. 13:3021, 1985) become ``N``, the one unknown-base letter of qft's DNA
tokenizers (``kmer:K`` and ``char`` have ``N`` in their vocabulary; DNABERT-2's BPE learned it as
a letter); any other letter (``U``, ``-``, ``*``, digits) is an error.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from qft_cli.system.errors import QftInputError

FASTA_SUFFIXES = (".fa", ".fasta", ".fna")
#: Every accepted file ending (plain and gzip).
FASTA_ENDINGS = FASTA_SUFFIXES + tuple(s + ".gz" for s in FASTA_SUFFIXES)
#: IUPAC nucleotide ambiguity codes, mapped to ``N``.
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
DEFAULT_SPLIT_SIZES = (0.8, 0.1, 0.1)
SPLIT_STEMS = {"train": ("train",), "validation": ("dev", "valid", "validation"), "test": ("test",)}
_LABEL_RE = re.compile(r"(?:^|\s)label=(\S+)")
_IUPAC_TABLE = str.maketrans({c: "N" for c in IUPAC_AMBIGUOUS})
_BAD_RE = re.compile(r"[^ACGTN]")


@dataclass
class FastaRecord:
    """One FASTA record: ``id`` (the header up to the first blank), ``description`` (the rest of
    the header), ``sequence`` (upper case, ``ACGTN`` only), ``path`` and ``line`` of its header."""

    id: str
    description: str
    sequence: str
    path: Path
    line: int


def fasta_stem(path: Path) -> Optional[str]:
    """The file name without its FASTA ending (``1.fasta.gz`` -> ``1``); ``None`` when ``path``
    has no FASTA ending."""
    name = Path(path).name
    for ending in sorted(FASTA_ENDINGS, key=len, reverse=True):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return None


def fasta_files(directory: Path) -> list[Path]:
    """The FASTA files directly in ``directory``, sorted by name (empty when it is no directory)."""
    try:
        return sorted(p for p in Path(directory).iterdir() if p.is_file() and fasta_stem(p) is not None)
    except OSError:
        return []


def clean_sequence(raw: str, where: str) -> tuple[str, int]:
    """Upper-case ``raw``, drop whitespace, map IUPAC ambiguity codes to ``N``.

    Returns:
        ``(sequence, number of letters mapped to N)``.

    Raises:
        QftInputError: a letter outside ``ACGTN`` and the IUPAC codes.
    """
    s = "".join(raw.split()).upper()
    mapped = s.translate(_IUPAC_TABLE)
    bad = sorted(set(_BAD_RE.findall(mapped)))
    if bad:
        raise QftInputError(f"{where} has invalid DNA letters {''.join(bad)!r}: FASTA sequences may contain "
                            f"A, C, G, T, N and the IUPAC codes {IUPAC_AMBIGUOUS} (read as N), any case")
    return mapped, sum(a != b for a, b in zip(s, mapped))


def read_fasta(path: Path) -> tuple[list[FastaRecord], int]:
    """Read a FASTA or gzipped FASTA file (gzip told by its magic bytes).

    Returns:
        ``(records, letters mapped to N)``; records in file order.

    Raises:
        QftInputError: unreadable, not UTF-8 or not gzip, text before the first ``>``, a record
            without sequence, no records, invalid letters.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise QftInputError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x}): save it as a "
                            "plain or gzipped FASTA file") from None
    except (OSError, EOFError) as err:
        raise QftInputError(f"{path} cannot be read ({type(err).__name__}: {err}): pass a FASTA or FASTA.gz "
                            "file") from None
    records: list[FastaRecord] = []
    mapped = 0
    header: Optional[tuple[str, int]] = None
    body: list[str] = []

    def close() -> None:
        nonlocal mapped
        if header is None:
            return
        text_h, line_h = header
        parts = text_h.split(None, 1)
        if not parts:
            raise QftInputError(f"{path} line {line_h} is a header without an id ('>' alone): name every record")
        seq, n = clean_sequence("".join(body), f"{path} record {parts[0]} (line {line_h})")
        if not seq:
            raise QftInputError(f"{path} record {parts[0]} (line {line_h}) has no sequence: remove the record or "
                                "add its sequence")
        mapped += n
        records.append(FastaRecord(parts[0], parts[1] if len(parts) > 1 else "", seq, path, line_h))

    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith(">"):
            close()
            header, body = (line[1:].strip(), number), []
        elif line.startswith(";") or not line:
            continue
        elif header is None:
            raise QftInputError(f"{path} line {number} comes before the first '>' header: this is not FASTA "
                                "(a record starts with '>id')")
        else:
            body.append(line)
    close()
    if not records:
        raise QftInputError(f"{path} has no FASTA records (no '>' header line): pass a FASTA file with sequences")
    return records, mapped


def header_label(record: FastaRecord) -> Optional[str]:
    """The ``label=VALUE`` word of the record's header description, else ``None``."""
    m = _LABEL_RE.search(record.description)
    return m.group(1) if m else None


def _int_label(value: str, where: str) -> int:
    try:
        number = int(value)
        if number < 0:
            raise ValueError
    except ValueError:
        raise QftInputError(f"{where} has label {value!r}: labels must be integers 0, 1, ...") from None
    return number


def parse_class_files(specs: Sequence[str], base: Optional[Path] = None) -> dict[int, Path]:
    """``--class-file LABEL=PATH`` values -> ``{label: path}``. A relative PATH that does not
    exist as given is looked up in ``base`` (the ``--data-dir``).

    Raises:
        QftInputError: a value without ``=``, a non-integer label, a label given twice, a missing
            file or one without a FASTA ending.
    """
    out: dict[int, Path] = {}
    for spec in specs:
        label, sep, raw = str(spec).partition("=")
        if not sep or not raw.strip():
            raise QftInputError(f"--class-file {spec!r}: write LABEL=PATH, e.g. --class-file 1=positives.fa")
        number = _int_label(label.strip(), f"--class-file {spec}")
        if number in out:
            raise QftInputError(f"--class-file gives label {number} twice: one file per class")
        path = Path(raw.strip()).expanduser()
        if not path.is_file() and base is not None and (Path(base) / path).is_file():
            path = Path(base) / path
        if not path.is_file():
            raise QftInputError(f"--class-file {spec}: {path} does not exist: pass an existing FASTA file")
        if fasta_stem(path) is None:
            raise QftInputError(f"--class-file {spec}: {path.name} is not named like FASTA: use "
                                f"{', '.join(FASTA_ENDINGS)}")
        out[number] = path
    return out


def parse_split_sizes(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    """``--split-sizes 0.8,0.1,0.1`` -> ``(train, validation, test)`` fractions; ``None`` stays ``None``.

    Raises:
        QftInputError: not three numbers, one not positive, or a sum other than 1.
    """
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        words = [str(w) for w in text]
    else:
        words = [w for w in str(text).split(",") if w.strip()]
    try:
        values = tuple(float(w) for w in words)
    except ValueError:
        raise QftInputError(f"--split-sizes {text}: write three fractions train,validation,test, e.g. 0.8,0.1,0.1") from None
    if len(values) != 3 or any(not v > 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise QftInputError(f"--split-sizes {text}: give three positive fractions train,validation,test that sum "
                            "to 1, e.g. 0.8,0.1,0.1")
    return values  # type: ignore[return-value]


def _labelled_records(files: Mapping[Optional[int], Path]) -> tuple[list[FastaRecord], list[int], int, list[Path]]:
    """Records and labels of class files (``{label: path}``) or of header-labelled files (``{None: path}``)."""
    records, labels, mapped, read = [], [], 0, []
    for label, path in files.items():
        recs, n = read_fasta(path)
        mapped += n
        read.append(Path(path).resolve())
        for r in recs:
            if label is None:
                value = header_label(r)
                if value is None:
                    raise QftInputError(f"{path} record {r.id} (line {r.line}) has no label=VALUE in its header: "
                                        "write '>id label=1', or give one file per class (0.fa, 1.fa or "
                                        "--class-file LABEL=PATH)")
                labels.append(_int_label(value, f"{path} record {r.id} (line {r.line})"))
            else:
                labels.append(label)
            records.append(r)
    return records, labels, mapped, read


def _check_unique(records: Sequence[FastaRecord], splits: Optional[Sequence[str]] = None) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.id in seen:
            j = seen[r.id]
            other = records[j]
            if splits is not None and splits[i] != splits[j]:
                raise QftInputError(f"record id {r.id} is in the {splits[j]} split ({other.path}) and in the "
                                    f"{splits[i]} split ({r.path}): one example in two splits leaks test data; "
                                    "remove or rename one")
            raise QftInputError(f"record id {r.id} occurs twice ({other.path} line {other.line}, {r.path} line "
                                f"{r.line}): FASTA ids must be unique")
        seen[r.id] = i


def stratified_split(labels: Sequence[int], sizes: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """A seeded, stratified train/validation/test split of examples with ``labels``.

    For each class (in increasing label order) its example indices are permuted with one
    ``numpy.random.default_rng(seed)``; the first ``n_val = max(1, round(f_val n))`` go to
    validation, the next ``n_test = max(1, round(f_test n))`` to test, the rest (at least one) to
    train. Each split's indices are returned sorted (file order).

    Args:
        labels: int class of each example.
        sizes: ``(f_train, f_validation, f_test)``, positive, summing to 1.
        seed: the split seed.

    Returns:
        ``{"train"|"validation"|"test": int64 indices}``.

    Raises:
        QftInputError: a class with fewer than 3 examples (one per split).
    """
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for c in sorted(set(y.tolist())):
        idx = np.flatnonzero(y == c)
        n = idx.size
        if n < 3:
            raise QftInputError(f"class {c} has {n} example(s): a stratified train/validation/test split needs at "
                                "least 3 per class; add examples or give the split as train/dev/test files")
        order = idx[rng.permutation(n)]
        n_val, n_test = max(1, round(sizes[1] * n)), max(1, round(sizes[2] * n))
        while n - n_val - n_test < 1:
            if n_val >= n_test and n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        parts["validation"].append(order[:n_val])
        parts["test"].append(order[n_val:n_val + n_test])
        parts["train"].append(order[n_val + n_test:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the ids of one split, joined by newlines in split order (hex)."""
    return hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()


@dataclass
class FastaData:
    """What :func:`load_fasta_dir` read.

    Attributes:
        splits: ``{"train"|"validation"|"test": {"inputs": [str], "labels": [int], "ids": [str]}}``
            (``validation`` may be absent for split files without a dev file).
        files: every file read (absolute paths).
        record: the ``data.fasta`` entry of ``run.json`` (layout, files, split seed and
            fractions, counts, id digests, letters mapped to N).
    """

    splits: dict[str, dict[str, list]]
    files: list[Path]
    record: dict[str, Any]


def _split_dir_files(directory: Path, split: str) -> Optional[dict[Optional[int], Path]]:
    """The FASTA of ``split`` in ``directory``: ``{None: file}`` (header labels) or ``{label: file}``
    (a split folder with class files); ``None`` when absent."""
    for stem in SPLIT_STEMS[split]:
        for ending in FASTA_ENDINGS:
            if (directory / f"{stem}{ending}").is_file():
                return {None: directory / f"{stem}{ending}"}
        folder = directory / stem
        if folder.is_dir() and fasta_files(folder):
            return _class_files_by_name(folder, fasta_files(folder))
    return None


def _class_files_by_name(directory: Path, files: list[Path]) -> dict[Optional[int], Path]:
    out: dict[Optional[int], Path] = {}
    for p in files:
        stem = fasta_stem(p) or ""
        if not re.fullmatch(r"\d+", stem):
            raise QftInputError(f"{p} is not named by its label ({directory} holds one FASTA file per class): "
                                "name the files 0.fa, 1.fa, ... or pass --class-file LABEL=PATH for each")
        label = int(stem)
        if label in out:
            raise QftInputError(f"{directory} holds two files of label {label} ({out[label].name}, {p.name}): "
                                "one file per class")
        out[label] = p
    return out


def has_fasta(directory: Path) -> bool:
    """True when ``directory`` holds FASTA files or split folders of FASTA files."""
    directory = Path(directory)
    return bool(fasta_files(directory)) or any(
        _split_dir_files(directory, s) is not None for s in ("train", "test"))


def load_fasta_dir(directory: Optional[Path], *, class_files: Optional[Mapping[int, Path]] = None,
                   split_sizes: Optional[Sequence[float]] = None, seed: int = 42) -> FastaData:
    """Read a FASTA data set (module docstring) and split it when no split is given.

    Args:
        directory: the folder with FASTA files (``None`` with ``class_files`` alone).
        class_files: ``{label: path}`` from ``--class-file`` (overrides the files of ``directory``).
        split_sizes: ``(train, validation, test)`` fractions; default :data:`DEFAULT_SPLIT_SIZES`;
            an error with split files (their split is the user's).
        seed: the split seed.

    Raises:
        QftInputError: no FASTA, bad records, a record without label, a class with fewer than 3
            examples, duplicate ids (within the data or across splits), ``split_sizes`` with
            split files.
    """
    mapped = 0
    files: list[Path] = []
    directory = Path(directory) if directory is not None else None
    given = {s: _split_dir_files(directory, s) for s in ("train", "validation", "test")} \
        if directory is not None and not class_files else {}
    if any(v is not None for v in given.values()):
        if split_sizes is not None:
            raise QftInputError(f"--split-sizes applies to unsplit FASTA but {directory} holds train/dev/test files: "
                                "drop --split-sizes (the files are the split)")
        if given.get("train") is None or given.get("test") is None:
            missing = "train" if given.get("train") is None else "test"
            raise QftInputError(f"{directory} has FASTA split files but no {missing} file: add {missing}.fa (or a "
                                f"{missing}/ folder of class files), or give unsplit FASTA to be split by qft")
        splits: dict[str, dict[str, list]] = {}
        all_records, all_splits = [], []
        layout = {}
        for split, entry in given.items():
            if entry is None:
                continue
            recs, labels, n, read = _labelled_records(entry)
            mapped += n
            files += read
            all_records += recs
            all_splits += [split] * len(recs)
            splits[split] = {"inputs": [r.sequence for r in recs], "labels": labels, "ids": [r.id for r in recs]}
            layout[split] = {str(k) if k is not None else "header labels": str(Path(p).resolve()) for k, p in entry.items()}
        _check_unique(all_records, all_splits)
        record = {"layout": "split_files", "files": layout, "iupac_to_n": mapped,
                  "ids_sha256": {k: ids_digest(v["ids"]) for k, v in splits.items()}}
        return FastaData(splits, files, record)
    if class_files:
        entry: dict[Optional[int], Path] = dict(class_files)
        layout_name = "class_files"
    else:
        found = fasta_files(directory) if directory is not None else []
        if not found:
            raise QftInputError(f"--data-dir {directory} holds no FASTA files ({', '.join(FASTA_ENDINGS)})")
        if len(found) == 1 and not re.fullmatch(r"\d+", fasta_stem(found[0]) or ""):
            entry, layout_name = {None: found[0]}, "header_labels"
        else:
            entry, layout_name = _class_files_by_name(directory, found), "class_files"
    if layout_name == "class_files" and len(entry) < 2:
        only = next(iter(entry))
        raise QftInputError(f"only one class file (label {only}, {entry[only]}): give one FASTA file per class "
                            "(0.fa, 1.fa, ... or --class-file LABEL=PATH), or one file with label=VALUE headers")
    splits, files, mapped = _split_entry(entry, split_sizes, seed)
    sizes = tuple(split_sizes) if split_sizes is not None else DEFAULT_SPLIT_SIZES
    record = {"layout": layout_name,
              "files": {(str(k) if k is not None else "header labels"): str(Path(p).resolve())
                        for k, p in entry.items()},
              "iupac_to_n": mapped, **split_record(splits, sizes, seed)}
    return FastaData(splits, files, record)


def _split_entry(entry: Mapping[Optional[int], Path], split_sizes: Optional[Sequence[float]],
                 seed: int) -> tuple[dict[str, dict[str, list]], list[Path], int]:
    """Read unsplit FASTA (class files or one header-labelled file) and split it
    (:func:`stratified_split`): ``(splits, files read, letters mapped to N)``."""
    records, labels, mapped, files = _labelled_records(entry)
    _check_unique(records)
    sizes = tuple(split_sizes) if split_sizes is not None else DEFAULT_SPLIT_SIZES
    counts = {c: labels.count(c) for c in sorted(set(labels))}
    if len(counts) < 2:
        raise QftInputError(f"every record of {', '.join(str(p) for p in entry.values())} has label "
                            f"{next(iter(counts))}: a classification task needs at least two classes")
    index = stratified_split(labels, sizes, seed)
    splits = {}
    for split, idx in index.items():
        splits[split] = {"inputs": [records[i].sequence for i in idx], "labels": [labels[i] for i in idx],
                         "ids": [records[i].id for i in idx]}
    return splits, files, mapped


def split_record(splits: Mapping[str, Mapping[str, list]], sizes: Sequence[float], seed: int) -> dict[str, Any]:
    """The split part of ``data.fasta`` in ``run.json``: ``split_seed``, ``split_sizes``
    (fractions train, validation, test), ``stratified``, ``split_counts`` (split -> label ->
    examples) and ``ids_sha256`` (split -> :func:`ids_digest`)."""
    return {"split_seed": int(seed), "split_sizes": [float(s) for s in sizes], "stratified": True,
            "split_counts": {k: {str(c): int(v["labels"].count(c)) for c in sorted(set(v["labels"]))}
                             for k, v in splits.items()},
            "ids_sha256": {k: ids_digest(v["ids"]) for k, v in splits.items()}}


def verify_split(meta: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """Redraw the FASTA split a run recorded (``data.fasta`` of its ``run.json``) from the files as
    they are now and compare the ids of every split (``qft runs verify``).

    Returns:
        ``None`` when the run recorded no FASTA split; else a verify row ``what`` = ``fasta split``,
        ``path`` (the files), ``status`` (``unchanged``, ``changed`` or ``missing``),
        ``recorded_sha256``/``sha256`` (a digest of the per-split id digests).
    """
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    fasta = data.get("fasta") if isinstance(data, dict) else None
    if not isinstance(fasta, dict) or "ids_sha256" not in fasta:
        return None
    recorded = fasta["ids_sha256"]

    def digest(d: Mapping[str, str]) -> str:
        return hashlib.sha256(";".join(f"{k}={d[k]}" for k in sorted(d)).encode()).hexdigest()

    files = fasta.get("files", {})
    row = {"what": "fasta split", "path": ", ".join(str(v) if not isinstance(v, dict) else ", ".join(v.values())
                                                    for v in files.values()),
           "recorded_sha256": digest(recorded), "sha256": None, "recorded_size_bytes": None, "size_bytes": None}
    paths = [Path(p) for v in files.values() for p in (v.values() if isinstance(v, dict) else [v])]
    if not all(p.is_file() for p in paths):
        return {**row, "status": "missing"}
    try:
        if fasta.get("layout") == "split_files":
            now = {}
            for split, entry in files.items():
                now[split] = ids_digest([r.id for p in entry.values() for r in read_fasta(Path(p))[0]])
        else:
            entry = {(None if k == "header labels" else int(k)): Path(p) for k, p in files.items()}
            splits, _, _ = _split_entry(entry, fasta["split_sizes"], int(fasta["split_seed"]))
            now = {k: ids_digest(v["ids"]) for k, v in splits.items()}
    except FileNotFoundError:
        return {**row, "status": "missing"}
    except QftInputError:
        return {**row, "status": "changed"}
    return {**row, "sha256": digest(now), "status": "unchanged" if now == dict(recorded) else "changed"}
