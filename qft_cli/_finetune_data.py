"""Interim sequence-classification data for ``qft finetune``.

STOP-GAP: the train branch builds the real data layer (``qft_cli.datasets``: GUE, Genomic
Benchmarks, CoNLL-2003 POS, DNA tokenizers). Until it is merged, ``qft finetune`` reads
sequence-classification data through this module only, via :func:`load_splits`; swapping means
replacing that one call in :mod:`qft_cli.finetune` and deleting this file.

Datasets:

* ``gue``: ``--data-dir`` with ``train.csv``/``dev.csv``/``test.csv`` (columns ``sequence,label``),
  else hub ``leannmlindsey/GUE`` config ``--task`` (splits train/dev/test);
* ``genomic-bench``: ``--data-dir`` or hub ``katarinagresova/Genomic_Benchmarks_human_nontata_promoters``
  (columns ``seq,label``; validation and test are the two seeded halves of the test split);
* ``csv``: ``--data-dir`` with train and dev/valid/validation and test CSV/TSV files.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from qft_cli.errors import QftInputError

DATASETS = ("gue", "genomic-bench", "csv")
GUE_HUB = "leannmlindsey/GUE"
GENOMIC_BENCH_HUB = "katarinagresova/Genomic_Benchmarks_human_nontata_promoters"
DEFAULT_GUE_TASK = "prom_300_notata"
_DNA = re.compile(r"^[ACGTN]+$", re.I)
_SPLIT_NAMES = {"train": ("train",), "validation": ("dev", "valid", "validation", "val"), "test": ("test",)}


@dataclass
class Splits:
    """Sequences and integer labels of the train, validation and test splits."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    num_labels: int
    source: str

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def _read_table(path: Path) -> pd.DataFrame:
    sep = "\t" if path.suffix == ".tsv" else ","
    df = pd.read_csv(path, sep=sep)
    column = next((c for c in ("sequence", "seq", "text", "sentence") if c in df.columns), None)
    if column is None or "label" not in df.columns:
        raise QftInputError(f"{path} needs a sequence (or seq) column and a label column; it has {', '.join(df.columns)}")
    return pd.DataFrame({"sequence": df[column].astype(str), "label": df["label"]})


def _find(directory: Path, split: str) -> Optional[Path]:
    for stem in _SPLIT_NAMES[split]:
        for ext in (".csv", ".tsv"):
            if (directory / f"{stem}{ext}").is_file():
                return directory / f"{stem}{ext}"
    return None


def _halves(df: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    order = list(range(len(df)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    return df.iloc[sorted(order[:half])].reset_index(drop=True), df.iloc[sorted(order[half:])].reset_index(drop=True)


def _from_dir(directory: Path, seed: int, split_test: bool) -> dict[str, pd.DataFrame]:
    if not directory.is_dir():
        raise QftInputError(f"--data-dir {directory} is not a directory")
    paths = {split: _find(directory, split) for split in _SPLIT_NAMES}
    if paths["train"] is None or paths["test"] is None:
        raise QftInputError(f"--data-dir {directory} needs train.csv and test.csv (and dev.csv); found "
                            f"{', '.join(sorted(p.name for p in directory.iterdir())) or 'nothing'}")
    frames = {split: _read_table(path) for split, path in paths.items() if path is not None}
    if "validation" not in frames or split_test:
        frames["validation"], frames["test"] = _halves(frames["test"], seed)
    return frames


def _from_hub(hub_id: str, config: Optional[str], seed: int, split_test: bool) -> dict[str, pd.DataFrame]:
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_id, config) if config else load_dataset(hub_id)
    except Exception as err:  # hub unreachable, unknown config
        raise QftInputError(f"could not load dataset {hub_id}{f' ({config})' if config else ''} from the Hugging Face "
                            f"Hub ({type(err).__name__}); pass --data-dir with local CSV files") from None
    frames = {}
    for split, names in _SPLIT_NAMES.items():
        name = next((n for n in names if n in ds), None)
        if name is not None:
            df = ds[name].to_pandas()
            column = "sequence" if "sequence" in df.columns else "seq"
            frames[split] = pd.DataFrame({"sequence": df[column].astype(str), "label": df["label"]})
    if "validation" not in frames or split_test:
        frames["validation"], frames["test"] = _halves(frames["test"], seed)
    return frames


def _subsample(df: pd.DataFrame, limit: Optional[int], seed: int) -> pd.DataFrame:
    if limit is None or len(df) <= limit:
        return df.reset_index(drop=True)
    return df.sample(n=limit, random_state=seed).reset_index(drop=True)


def load_splits(dataset: str, *, data_dir: Optional[Path] = None, task: Optional[str] = None, seed: int = 42,
                max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
                dna: bool = True) -> Splits:
    """Load train/validation/test of a sequence-classification dataset (see module docstring).

    Args:
        max_train_samples / max_eval_samples: seeded random subsets (for quick runs and tests).
        dna: check that sequences are DNA letters (ACGTN, any case).

    Raises:
        QftInputError: unknown dataset, missing files or columns, non-integer labels, labels of the
            evaluation splits outside the training label set, invalid DNA letters.
    """
    if dataset not in DATASETS:
        raise QftInputError(f"unknown dataset '{dataset}' for finetune: use one of {', '.join(DATASETS)}")
    split_test = dataset == "genomic-bench"
    if data_dir is not None:
        frames = _from_dir(Path(data_dir), seed, split_test)
        source = str(data_dir)
    elif dataset == "gue":
        frames = _from_hub(GUE_HUB, task or DEFAULT_GUE_TASK, seed, False)
        source = f"{GUE_HUB}:{task or DEFAULT_GUE_TASK}"
    elif dataset == "genomic-bench":
        frames = _from_hub(GENOMIC_BENCH_HUB, None, seed, True)
        source = GENOMIC_BENCH_HUB
    else:
        raise QftInputError("--dataset csv needs --data-dir")
    frames["train"] = _subsample(frames["train"], max_train_samples, seed)
    for split in ("validation", "test"):
        frames[split] = _subsample(frames[split], max_eval_samples, seed)
    for split, df in frames.items():
        if not pd.api.types.is_integer_dtype(df["label"]):
            raise QftInputError(f"labels of the {split} split are not integers: use 0..K-1 class labels")
        if dna:
            bad = df.loc[~df["sequence"].str.match(_DNA), "sequence"]
            if len(bad):
                raise QftInputError(f"{split} split has a sequence with letters other than ACGTN: {bad.iloc[0][:30]}")
    labels = sorted(frames["train"]["label"].unique().tolist())
    if labels != list(range(len(labels))):
        raise QftInputError(f"training labels must be 0..K-1, got {labels[:10]}")
    for split in ("validation", "test"):
        extra = sorted(set(frames[split]["label"].unique().tolist()) - set(labels))
        if extra:
            raise QftInputError(f"{split} split has labels {extra} that the training split does not have")
    return Splits(frames["train"], frames["validation"], frames["test"], max(2, len(labels)), source)
