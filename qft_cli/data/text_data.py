"""Input samples for ``qft norms inputs``: MMLU questions, random tokens, local text/DNA files.

Sources:

* ``mmlu``: the 1,531 MMLU validation questions (Hendrycks et al., "Measuring Massive Multitask
  Language Understanding", ICLR 2021), from the hub dataset ``cais/mmlu`` (config ``all``, split
  ``validation``) or from a local CSV with columns ``subject,question,A,B,C,D,answer``. The text of
  a sample is its ``question``.
* ``random``: for each N in 1..max_tokens one sequence of N token ids drawn uniformly (with
  replacement) from the vocabulary without special tokens, from ``torch.Generator().manual_seed(seed)``.
  No special tokens are added.
* a local file: ``.txt`` (one text per non-empty line), ``.csv``/``.tsv``/``.parquet`` (column
  ``text_column``, default the first of text/question/sequence/seq), ``.fa``/``.fasta`` (one DNA
  sequence per record).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from qft_cli.system.errors import QftInputError, first_line

TEXT_COLUMNS = ("text", "question", "sequence", "seq")
FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".parquet", ".fa", ".fasta")
MMLU_HUB_ID = "cais/mmlu"


@dataclass
class Samples:
    """Tokenised samples.

    Attributes:
        dataset: name written in the results (``mmlu``, ``random`` or the file name).
        token_ids: one list of token ids per sample (already truncated to ``max_tokens``).
    """

    dataset: str
    token_ids: list[list[int]]


class Texts(list):
    """A list of texts that also says where they came from.

    Attributes:
        files: the local files read (absolute paths).
        origin: keys of :func:`qft_cli.runs.provenance.data_record` besides ``dataset``/``task``
            (``source``: ``local`` or ``hub``; ``hub_id``, ``config``, ``split``, ``revision``).
    """

    def __init__(self, texts=(), *, files=(), origin=None):
        super().__init__(texts)
        self.files = [Path(f) for f in files]
        self.origin = dict(origin or {"source": "local"})


def _unreadable(path: Path, err: BaseException) -> QftInputError:
    first = first_line(err)
    return QftInputError(f"data file {path} could not be read as {path.suffix.lower()} ({type(err).__name__}: "
                         f"{first}): check its format (text files must be UTF-8)")


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _unreadable(path, err) from None


def read_text_file(path: Path, text_column: Optional[str] = None) -> Texts:
    """Texts of a local file (see module docstring for the formats), as :class:`Texts` naming the file.

    Raises:
        QftInputError: missing, empty or unreadable file, unknown suffix, or a table without the text column.
    """
    path = Path(path)
    if not path.is_file():
        raise QftInputError(f"data file {path} does not exist: check the path")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise QftInputError(f"data file {path} has an unknown type '{suffix}': use one of {', '.join(FILE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise QftInputError(f"data file {path} is empty: give a file with at least one text")
    if suffix == ".txt":
        texts = [line.rstrip("\r") for line in _decode(path).split("\n")]
        texts = [t for t in texts if t.strip()]
    elif suffix in (".fa", ".fasta"):
        texts, current = [], []
        for line in _decode(path).splitlines():
            line = line.strip()
            if line.startswith(">"):
                if current:
                    texts.append("".join(current))
                current = []
            elif line and not line.startswith(";"):
                current.append(line.upper())
        if current:
            texts.append("".join(current))
    else:
        import pandas as pd

        try:
            if suffix == ".parquet":
                frame = pd.read_parquet(path)
            else:
                frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
        except (ValueError, OSError) as err:  # pandas ParserError, pyarrow ArrowInvalid, bad encoding
            raise _unreadable(path, err) from None
        if text_column is None:
            text_column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
            if text_column is None:
                raise QftInputError(f"{path} has no text column (looked for {', '.join(TEXT_COLUMNS)}; "
                                    f"it has {', '.join(map(str, frame.columns))}): pass --text-column")
        elif text_column not in frame.columns:
            raise QftInputError(f"{path} has no column '{text_column}' (it has {', '.join(map(str, frame.columns))}): "
                                "pass --text-column with one of them")
        texts = [str(t) for t in frame[text_column].tolist() if not pd.isna(t) and str(t).strip()]
    if not texts:
        raise QftInputError(f"data file {path} holds no text: give a file with at least one text")
    return Texts(texts, files=[path.resolve()])


def mmlu_questions(data_file: Optional[Path] = None, text_column: Optional[str] = None) -> Texts:
    """The MMLU validation questions, from ``data_file`` (CSV; column ``text_column``, default ``question``)
    or the hub (``cais/mmlu``, ``all``, ``validation``; :class:`Texts` records the resolved revision).

    Raises:
        QftInputError: the file lacks a ``question`` column, has bad MMLU choices
            (:func:`check_mmlu_choices`), or the hub is unreachable.
    """
    if data_file is not None:
        texts = read_text_file(Path(data_file), text_column or "question")
        check_mmlu_choices(Path(data_file))
        return texts
    from qft_cli.models.names import load_hub_dataset

    ds = load_hub_dataset(MMLU_HUB_ID, name="all", split="validation", what="MMLU",
                          fix="pass a local CSV with --data-file (columns subject,question,A,B,C,D,answer)")
    from qft_cli.runs.provenance import hub_dataset_files, hub_dataset_revision

    return Texts(ds["question"], files=hub_dataset_files(ds),
                 origin={"source": "hub", "hub_id": MMLU_HUB_ID, "config": "all", "split": ["validation"],
                         "revision": hub_dataset_revision(ds)})


MMLU_CHOICES = ("A", "B", "C", "D")


def check_mmlu_choices(path: Path) -> None:
    """Check the multiple-choice columns of an MMLU-style table (``subject,question,A,B,C,D,answer``).

    A table with none of ``A, B, C, D, answer`` is a list of questions and passes. One with any of
    them must have all five, every ``answer`` one of A-D (surrounding spaces ignored) and no empty
    choice, so that a shifted or damaged file is not measured as MMLU.

    Raises:
        QftInputError: a missing column, or the rows (numbered from 1 after the header) with an
            answer outside A-D or an empty choice.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".parquet"):
        return
    import pandas as pd

    try:
        frame = (pd.read_parquet(path) if suffix == ".parquet" else
                 pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False))
    except (ValueError, OSError) as err:
        raise _unreadable(path, err) from None
    wanted = (*MMLU_CHOICES, "answer")
    present = [c for c in wanted if c in frame.columns]
    if not present:
        return
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise QftInputError(f"{path} has MMLU columns but not {', '.join(missing)}: give all of "
                            "subject,question,A,B,C,D,answer (or only a question column)")
    text = frame[list(wanted)].astype(object).where(frame[list(wanted)].notna(), "").astype(str)
    bad_answer = ~text["answer"].str.strip().isin(MMLU_CHOICES)
    empty = text[list(MMLU_CHOICES)].apply(lambda c: c.str.strip() == "")
    problems = []
    for i in frame.index[bad_answer | empty.any(axis=1)]:
        row = int(i) + 1
        if bad_answer[i]:
            problems.append(f"row {row} answer {text['answer'][i]!r}")
        else:
            problems.append(f"row {row} empty choice {','.join(c for c in MMLU_CHOICES if empty[c][i])}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; ... ({len(problems)} rows)" if len(problems) > 3 else "")
        raise QftInputError(f"{path} is not a valid MMLU table ({shown}): every answer must be one of "
                            "A, B, C, D and every choice non-empty; fix those rows")


def random_token_ids(vocab_size: int, special_ids: set[int], max_tokens: int, seed: int) -> list[list[int]]:
    """For each N in 1..max_tokens, N token ids uniform over ``range(vocab_size)`` minus ``special_ids``.

    Returns:
        ``max_tokens`` lists, the i-th of length i + 1.
    """
    allowed = torch.tensor([i for i in range(vocab_size) if i not in special_ids], dtype=torch.long)
    if allowed.numel() == 0:
        raise QftInputError("the vocabulary has no non-special tokens to draw random samples from")
    gen = torch.Generator().manual_seed(seed)
    return [allowed[torch.randint(len(allowed), (n,), generator=gen)].tolist() for n in range(1, max_tokens + 1)]


def load_texts(dataset: str, data_file: Optional[Path] = None,
               text_column: Optional[str] = None) -> tuple[str, Texts]:
    """``(name, texts)`` of a text dataset (``mmlu`` or a file path; not ``random``), without a tokenizer,
    so that bad data is found before any model is loaded.

    Raises:
        QftInputError: unknown dataset, bad file, bad column.
    """
    if dataset == "mmlu":
        return "mmlu", mmlu_questions(data_file, text_column)
    path = Path(data_file) if data_file is not None and dataset == "file" else Path(dataset)
    if dataset != "file" and path.suffix.lower() not in FILE_SUFFIXES and not path.exists():
        raise QftInputError(f"unknown dataset '{dataset}': use mmlu, random, or a path to a "
                            f"{'/'.join(s.lstrip('.') for s in FILE_SUFFIXES)} file")
    return path.name, read_text_file(path, text_column)


def load_samples(dataset: str, tokenizer, *, vocab_size: int, max_tokens: int, num_samples: Optional[int] = None,
                 data_file: Optional[Path] = None, text_column: Optional[str] = None, seed: int = 0,
                 loaded: Optional[tuple[str, list[str]]] = None) -> Samples:
    """Load and tokenise the samples of ``dataset`` (``mmlu``, ``random`` or a file path).

    Texts are tokenised with the model's own tokenizer, special tokens included, truncated to
    ``max_tokens``. ``num_samples`` keeps the first samples. ``loaded``: the result of
    :func:`load_texts` when the caller has already read (and so checked) the texts.

    Raises:
        QftInputError: unknown dataset, bad file, bad column, bad numbers.
    """
    if max_tokens < 1:
        raise QftInputError(f"--max-tokens must be at least 1 (got {max_tokens})")
    if num_samples is not None and num_samples < 1:
        raise QftInputError(f"--num-samples must be at least 1 (got {num_samples})")
    if dataset == "random":
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        # control tokens added as special AddedTokens (chat templates) are not in all_special_ids
        special |= {i for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                    if getattr(t, "special", False)}
        ids = random_token_ids(vocab_size, special, max_tokens, seed)
        return Samples("random", ids[:num_samples] if num_samples else ids)
    name, texts = loaded if loaded is not None else load_texts(dataset, data_file, text_column)
    if num_samples:
        texts = texts[:num_samples]
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens, add_special_tokens=True)
    # a tokenizer returns the sequence untruncated when max_length cannot even hold its special tokens
    ids = [list(x)[:max_tokens] for x in encoded["input_ids"]]
    if any(len(x) == 0 for x in ids):
        raise QftInputError("a sample tokenised to zero tokens: remove empty texts")
    return Samples(name, ids)
