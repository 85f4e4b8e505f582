"""Every parquet table qft writes: no column named like a DataFrame attribute (``df.head``,
``df.sample``, ``df.mean``, ``df.index`` are methods), one name per concept across tables, and every
column documented in docs/results.md."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from qft_cli.cli.app import app
from qft_cli.measure.attention import ATTENTION_COLUMNS
from qft_cli.measure.inputs import INPUT_COLUMNS
from qft_cli.measure.weights import WEIGHT_COLUMNS
from qft_cli.report.reading import RENAMED_COLUMNS, TABLE_COLUMNS
from qft_cli.train.stats import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES = set(dir(pd.DataFrame))


def _shadowing(columns):
    return sorted(c for c in columns if c in ATTRIBUTES)


def test_declared_columns_shadow_no_dataframe_attribute():
    declared = {"norms_inputs": INPUT_COLUMNS, "norms_attention": ATTENTION_COLUMNS, "norms_weights": WEIGHT_COLUMNS,
                "test_summary": SUMMARY_COLUMNS, **TABLE_COLUMNS}
    bad = {name: _shadowing(cols) for name, cols in declared.items() if _shadowing(cols)}
    assert not bad, f"columns named like DataFrame attributes: {bad}"
    # the renames the report applies to older runs lead to names that shadow nothing
    assert not _shadowing(new for renames in RENAMED_COLUMNS.values() for new in renames.values())


def test_the_check_catches_a_shadowing_name():
    assert _shadowing(["head", "sample", "mean", "index", "layer"]) == ["head", "index", "mean", "sample"]


@pytest.fixture(scope="module")
def written_tables(tmp_path_factory):
    """The parquet files of one run of each norms command on tiny models and of a tiny train run."""
    out = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    commands = [
        ["norms", "weights", "tiny-llama", "--quiet"],
        ["norms", "inputs", "tiny-gpt2", "--dataset", "random", "--max-tokens", "12", "--num-samples", "3",
         "--layers", "all", "--quiet"],
        ["norms", "attention", "tiny-llama", "--dataset", "random", "--max-tokens", "12", "--num-samples", "3", "--quiet"],
    ]
    for args in commands:
        result = runner.invoke(app, [*args, "--out", str(out)])
        assert result.exit_code == 0, result.output
    tables: dict[str, pd.DataFrame] = {}
    for file in sorted(out.rglob("*.parquet")):
        tables.setdefault(file.stem, pd.read_parquet(file))
    return tables


def _documented_names(docs: str) -> set[str]:
    """Column names docs/results.md names: `quoted` words and the first cells of its tables, where
    ``a, b`` lists names, ``x_mean/var/max`` shares a prefix and ``q_/k_/v_norm`` a suffix."""
    names = set(re.findall(r"`([A-Za-z_][\w]*)`", docs))
    for cell in re.findall(r"^\|\s*([^|]+?)\s*\|", docs, flags=re.M):
        for item in (x.strip().strip("`") for x in cell.split(",")):
            parts = item.split("/")
            if len(parts) == 1:
                names.add(item)
            elif parts[0].endswith("_"):  # q_/k_/v_spectral_norm
                suffix = parts[-1].split("_", 1)[1]
                names.update([p + suffix for p in parts[:-1]] + [parts[-1]])
            else:  # column_norm_mean/var/max
                prefix = parts[0].rsplit("_", 1)[0]
                names.update([parts[0]] + [f"{prefix}_{p}" for p in parts[1:]])
    return names


def test_written_columns_shadow_nothing_and_are_documented(written_tables):
    assert {"norms_weights", "norms_heads", "norm_vectors", "norms_inputs", "norms_attention", "fits"} <= set(written_tables)
    docs = (ROOT / "docs" / "results.md").read_text()
    for name, df in written_tables.items():
        assert not _shadowing(df.columns), (name, _shadowing(df.columns))
        undocumented = [c for c in df.columns if c not in _documented_names(docs)]
        assert not undocumented, f"{name}.parquet columns missing from docs/results.md: {undocumented}"


def test_one_name_per_concept(written_tables):
    for name, df in written_tables.items():
        assert "sample" not in df.columns and "head" not in df.columns, name
    assert "sample_index" in written_tables["norms_inputs"] and "sample_index" in written_tables["norms_attention"]
    assert "head_index" in written_tables["norms_heads"] and "head_index" in written_tables["norms_attention"]
    for name in ("norms_weights", "norms_inputs", "norms_attention"):
        df = written_tables[name]
        assert set(df["model_format"]) == {"tiny"}, name


def test_model_column_is_an_id_and_the_format_has_its_own_column():
    from qft_cli.models.names import ModelSource

    gguf = ModelSource("smollm2", "gguf", "/x/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert gguf.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and gguf.model_format == "gguf"
    assert ModelSource("gpt2", "hub", "openai-community/gpt2").model_format == "transformers"
    assert ModelSource("tiny-gpt2", "tiny", "tiny-gpt2").model_format == "tiny"


def test_report_reads_older_runs_with_the_old_names(tmp_path):
    import json

    from qft_cli.report.reading import load_run

    run = tmp_path / "old"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"command": "norms weights", "status": "completed", "models": ["m"]}))
    pd.DataFrame({"model": ["m"], "layer": [1], "matrix": ["q"], "head": [0], "spectral_norm": [1.0],
                  "frobenius_norm": [2.0]}).to_parquet(run / "norms_heads.parquet")
    record = load_run(run)
    assert list(record.tables["norms_heads"]["head_index"]) == [0] and not record.problems
