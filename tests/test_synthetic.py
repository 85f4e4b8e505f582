"""The synthetic DNA task of ``qft demo``: seeded, balanced, valid letters, labelled synthetic."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from qft_cli.data.synthetic import (
    MOTIFS,
    SyntheticSpec,
    make_synthetic_promoters,
    write_synthetic_promoters,
)
from qft_cli.system.errors import QftInputError

SMALL = SyntheticSpec(seed=3, num_train=200, num_dev=40, num_test=40)


def test_seeded_balanced_and_valid():
    a, b = make_synthetic_promoters(SMALL), make_synthetic_promoters(SMALL)
    for split, n in (("train", 200), ("dev", 40), ("test", 40)):
        pd.testing.assert_frame_equal(a[split], b[split])
        df = a[split]
        assert list(df.columns) == ["sequence", "label"] and len(df) == n
        assert df["label"].sum() == n // 2
        assert df["sequence"].str.fullmatch("[ACGT]{100}").all()
        assert df.attrs["synthetic"] is True and df.attrs["dataset"] == "synthetic-dna-seed3"
    other = make_synthetic_promoters(SyntheticSpec(seed=4, num_train=200, num_dev=40, num_test=40))
    assert not other["train"].equals(a["train"])


def test_motifs_carry_the_label():
    df = make_synthetic_promoters(SyntheticSpec(seed=0, mutation_rate=0.0, decoy_prob=0.0))["train"]
    counts = df["sequence"].apply(lambda s: sum(m in s for m in MOTIFS.values()))
    assert (counts[df["label"] == 1] >= 2).mean() > 0.97  # at least two elements planted (rarely overwritten)
    assert (counts[df["label"] == 0] >= 2).mean() < 0.01


def test_written_files_say_synthetic(tmp_path):
    directory = write_synthetic_promoters(tmp_path, SMALL)
    assert directory.name == "synthetic-dna-seed3"
    for split in ("train", "dev", "test"):
        df = pd.read_csv(directory / f"{split}.csv")
        assert list(df.columns) == ["sequence", "label"]
    assert "SYNTHETIC" in (directory / "SYNTHETIC.md").read_text()
    assert json.loads((directory / "spec.json").read_text())["synthetic"] is True


@pytest.mark.parametrize("bad", [dict(length=50), dict(num_train=3), dict(motif_prob=1.5)])
def test_bad_spec(bad):
    with pytest.raises(QftInputError):
        SyntheticSpec(**bad)
