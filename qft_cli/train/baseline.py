"""Baselines beside every accuracy: a k-mer logistic regression for DNA classification and the
most-frequent-tag-per-word baseline for POS tagging. Pure functions: data in, predictions and
metrics out (the recording is :func:`qft_cli.train.training.record_baseline`).

* **k-mer logistic regression** (variant ``baseline_kmer``): every sequence becomes the vector of
  its overlapping k-mer counts (scikit-learn ``CountVectorizer(analyzer="char", ngram_range=(k, k))``,
  vocabulary from the training split), scaled to unit l2 norm per sequence (so a long sequence
  does not weigh more than a short one); then ``LogisticRegression(C=1, max_iter=2000)``
  (L2-penalised, lbfgs; multinomial for more than two classes). ``k`` in 3..6 is chosen on the
  validation split by F1 (qft's model-selection metric; ties: the smaller k), then scored once on
  the test split. The classic k-mer spectrum features of Leslie, Eskin & Noble (PSB 2002) with a
  linear classifier.
* **most frequent tag** (variant ``baseline_majority_tag``): each word gets the tag it has most
  often in the training split (ties: the smaller tag id); a word never seen in training gets the
  most frequent tag of training overall (the standard POS baseline, e.g. Jurafsky & Martin,
  *Speech and Language Processing*, 3rd ed., ch. 8). Scored over every word.

Metrics are those of :func:`qft_cli.train.stats.point_metrics` (= :func:`qft_cli.train.training.classification_metrics`):
accuracy, and binary F1 of class 1 for two classes, else macro F1 over the classes present.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from qft_cli.system.errors import QftInputError
from qft_cli.train.stats import point_metrics

KMER_VARIANT = "baseline_kmer"
TAG_VARIANT = "baseline_majority_tag"
BASELINE_VARIANTS = (KMER_VARIANT, TAG_VARIANT)
BASELINE_CHOICES = ("auto", "none")
#: The k-mer lengths tried on the validation split.
K_CHOICES = (3, 4, 5, 6)


def check_baseline(value: Optional[str]) -> str:
    """``--baseline auto|none`` (``None`` = ``auto``).

    Raises:
        QftInputError: another value.
    """
    value = "auto" if value is None else str(value).strip().lower()
    if value not in BASELINE_CHOICES:
        raise QftInputError(f"--baseline {value}: use auto (a k-mer logistic regression for DNA, the most frequent "
                            "tag per word for POS) or none")
    return value


@dataclass
class BaselineResult:
    """A fitted baseline's scores.

    Attributes:
        variant: ``baseline_kmer`` or ``baseline_majority_tag``.
        k: the chosen k-mer length (``None`` for the tag baseline).
        validation, test: ``{"accuracy", "f1"}`` (fractions).
        test_predictions: int64 class ids, one per test example (tags: one per test word).
        test_labels: the matching labels.
        validation_by_k: ``k -> {"accuracy", "f1"}`` on the validation split (k-mer baseline).
    """

    variant: str
    k: Optional[int]
    validation: dict[str, float]
    test: dict[str, float]
    test_predictions: np.ndarray
    test_labels: np.ndarray
    validation_by_k: dict[int, dict[str, float]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The ``baseline`` field of ``run.json``."""
        return {"variant": self.variant, "k": self.k, "validation": self.validation, "test": self.test,
                "validation_by_k": {str(k): v for k, v in self.validation_by_k.items()}}


def kmer_features(train: Sequence[str], others: Sequence[Sequence[str]], k: int):
    """Overlapping k-mer counts, l2-normalised per sequence.

    Args:
        train: training sequences (upper-case DNA); they fix the k-mer vocabulary.
        others: further lists of sequences mapped onto the same vocabulary.
        k: k-mer length (>= 1).

    Returns:
        ``(X_train, [X_other, ...])``: scipy CSR float64 matrices (sequences x k-mers); a sequence
        shorter than ``k`` (or with no training k-mer) is a zero row.
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.preprocessing import normalize

    vectorizer = CountVectorizer(analyzer="char", ngram_range=(k, k), lowercase=False, dtype=np.float64)
    x_train = normalize(vectorizer.fit_transform(list(train)), norm="l2")
    return x_train, [normalize(vectorizer.transform(list(o)), norm="l2") for o in others]


def fit_kmer_baseline(train: tuple[Sequence[str], Sequence[int]], validation: tuple[Sequence[str], Sequence[int]],
                      test: tuple[Sequence[str], Sequence[int]], num_labels: int,
                      ks: Sequence[int] = K_CHOICES, seed: int = 0) -> BaselineResult:
    """The k-mer logistic regression (module docstring): fit on ``train`` for every k in ``ks``,
    keep the k with the best validation F1, score it on ``test``.

    Args:
        train, validation, test: ``(sequences, int labels)``.
        num_labels: number of classes (2 -> binary F1 of class 1).
        ks: k-mer lengths to try.
        seed: ``random_state`` of the logistic regression (lbfgs is deterministic; kept for clarity).

    Raises:
        QftInputError: an empty split, or fewer than two training classes.
    """
    from sklearn.linear_model import LogisticRegression

    for name, (seqs, labels) in (("train", train), ("validation", validation), ("test", test)):
        if len(seqs) == 0 or len(seqs) != len(labels):
            raise QftInputError(f"the k-mer baseline needs a non-empty {name} split with one label per sequence")
    y_train = np.asarray(train[1], dtype=np.int64)
    if len(set(y_train.tolist())) < 2:
        raise QftInputError("the k-mer baseline needs at least two classes in the training split")
    y_val, y_test = np.asarray(validation[1], dtype=np.int64), np.asarray(test[1], dtype=np.int64)
    best = None
    by_k: dict[int, dict[str, float]] = {}
    for k in ks:
        x_train, (x_val, x_test) = kmer_features(train[0], [validation[0], test[0]], k)
        model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
        model.fit(x_train, y_train)
        scores = point_metrics(y_val, model.predict(x_val), num_labels)
        by_k[int(k)] = scores
        if best is None or scores["f1"] > best[1]["f1"]:
            best = (int(k), scores, model.predict(x_test).astype(np.int64))
    k, val_scores, test_pred = best
    return BaselineResult(KMER_VARIANT, k, val_scores, point_metrics(y_test, test_pred, num_labels), test_pred,
                          y_test, by_k)


def fit_majority_tag_baseline(train: tuple[Sequence[Sequence[str]], Sequence[Sequence[int]]],
                              validation: tuple[Sequence[Sequence[str]], Sequence[Sequence[int]]],
                              test: tuple[Sequence[Sequence[str]], Sequence[Sequence[int]]],
                              num_labels: int) -> BaselineResult:
    """The most-frequent-tag-per-word baseline (module docstring), scored over every word.

    Args:
        train, validation, test: ``(sentences as word lists, tag-id lists)``.
        num_labels: number of tags (macro F1 unless 2).

    Raises:
        QftInputError: no training words.
    """
    per_word: dict[str, Counter] = {}
    overall: Counter = Counter()
    for words, tags in zip(*train):
        for w, t in zip(words, tags):
            per_word.setdefault(w, Counter())[int(t)] += 1
            overall[int(t)] += 1
    if not overall:
        raise QftInputError("the most-frequent-tag baseline needs training words")

    def top(counter: Counter) -> int:
        return min(counter, key=lambda t: (-counter[t], t))

    table = {w: top(c) for w, c in per_word.items()}
    fallback = top(overall)

    def predict(split):
        pred, gold = [], []
        for words, tags in zip(*split):
            pred += [table.get(w, fallback) for w in words]
            gold += [int(t) for t in tags]
        return np.asarray(pred, dtype=np.int64), np.asarray(gold, dtype=np.int64)

    val_pred, val_gold = predict(validation)
    test_pred, test_gold = predict(test)
    return BaselineResult(TAG_VARIANT, None, point_metrics(val_gold, val_pred, num_labels),
                          point_metrics(test_gold, test_pred, num_labels), test_pred, test_gold)


def fit_baseline(kind: str, splits: dict[str, dict[str, list]], num_labels: int) -> BaselineResult:
    """The baseline of a task: ``kind`` ``sequence_classification`` -> :func:`fit_kmer_baseline`,
    ``token_classification`` -> :func:`fit_majority_tag_baseline`. ``splits`` as
    :attr:`qft_cli.data.tasks.TaskData.splits` (``inputs``, ``labels``), after subsampling.

    Raises:
        QftInputError: unknown kind, or a missing split.
    """
    for name in ("train", "validation", "test"):
        if name not in splits:
            raise QftInputError(f"the baseline needs a {name} split")
    parts = [(splits[s]["inputs"], splits[s]["labels"]) for s in ("train", "validation", "test")]
    if kind == "sequence_classification":
        return fit_kmer_baseline(*parts, num_labels=num_labels)
    if kind == "token_classification":
        return fit_majority_tag_baseline(*parts, num_labels=num_labels)
    raise QftInputError(f"no baseline for task kind {kind!r}")
