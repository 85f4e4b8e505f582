"""runs/files.py: the atomic writers keep nothing half-written and convert or name what parquet
cannot store (issue 21)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qft_cli.runs.files import write_parquet_atomic


def test_parquet_of_tensors_and_numpy_values_is_plain_numbers(tmp_path):
    df = pd.DataFrame({"name": ["a", "b", "c"],
                       "value": [torch.tensor(1.5, dtype=torch.float64), np.float32(2.25), 3.0],
                       "shape": [torch.tensor([2, 3]), np.array([4, 5]), [6, 7]]})
    path = write_parquet_atomic(df, tmp_path / "t.parquet")
    back = pd.read_parquet(path)
    assert back["value"].dtype == np.float64 and back["value"].tolist() == [1.5, 2.25, 3.0]
    assert [list(v) for v in back["shape"]] == [[2, 3], [4, 5], [6, 7]]
    assert back["name"].tolist() == ["a", "b", "c"]
    assert isinstance(df["value"][0], torch.Tensor)  # the caller's frame is not changed


def test_parquet_column_mixing_tensors_and_strings_names_the_column(tmp_path):
    df = pd.DataFrame({"ok": [1, 2], "spectral_norm": [torch.tensor(1.5), "n/a"]})
    with pytest.raises(TypeError, match=r"column 'spectral_norm' of t.parquet .*float, str"):
        write_parquet_atomic(df, tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left
