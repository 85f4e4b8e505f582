"""The report's Runs section: device / dtype text, plurals, provenance (issue 12) and the warning
when runs under one dataset name read different data files."""

from __future__ import annotations

import hashlib
import html
import json
from pathlib import Path

import pandas as pd
from test_report import EVIL, _run_json, make_inputs_run, make_weights_run

from qft_cli.report import (
    build_report_html,
    data_file_mismatches,
    load_runs,
    provenance_table,
)
from qft_cli.report.metadata import device_dtype_text


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _set_meta(run_dir: Path, **fields) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    meta.update(fields)
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_weights_run_as_stored_dtype_and_singular_run(tmp_path):
    run_dir = make_weights_run(tmp_path, "m", num_layers=1)
    _set_meta(run_dir, device="cpu", dtype="stored", options={"device": "auto", "dtype": None})
    table = pd.read_parquet(run_dir / "norms_weights.parquet")
    table["dtype"] = "bfloat16"
    table.to_parquet(run_dir / "norms_weights.parquet")
    runs = load_runs([run_dir])
    assert device_dtype_text(runs[0]) == "cpu / as stored (bfloat16)"
    page, _ = build_report_html(runs)
    assert "cpu / as stored (bfloat16)" in page and "None" not in page.split('class="runs"')[1]
    assert "1 run (" in page and "1 runs" not in page
    # an older run without the dtype column still says "as stored", never None
    table.drop(columns="dtype").to_parquet(run_dir / "norms_weights.parquet")
    assert device_dtype_text(load_runs([run_dir])[0]) == "cpu / as stored"


def _with_provenance(run_dir: Path, files: dict[str, str], task: str = "prom_core_tata") -> None:
    _set_meta(run_dir, data={"dataset": "gue", "task": task, "source": "local", "hub_id": None, "config": None,
                             "split": None, "revision": None},
              data_files=[{"path": f"/data/{task}/{name}", "size_bytes": len(body), "sha256": _sha(body)}
                          for name, body in files.items()],
              model_files=[{"model": "minilm", "kind": "hub", "revision": "a" * 40, "files": []},
                           {"model": EVIL, "kind": "local", "revision": None,
                            "files": [{"path": "/w/model.safetensors", "size_bytes": 10, "sha256": _sha("w")}]}])


def test_provenance_short_hashes_with_full_ones_in_tooltip_and_table(tmp_path):
    run_dir = make_inputs_run(tmp_path, models=("minilm",))
    _with_provenance(run_dir, {"train.csv": "a,b\n", "test.csv": "c,d\n"})
    runs = load_runs([run_dir])
    table = provenance_table(runs)
    assert list(table["kind"]) == ["data", "data", "weights", "weights"]
    assert table.loc[0, "sha256"] == hashlib.sha256(b"a,b\n").hexdigest()
    assert table.loc[2, "sha256"] == "revision " + "a" * 40
    page, _ = build_report_html(runs)
    runs_html = page.split('class="provenance-short"')[1].split("</table>")[0]
    full = _sha("a,b\n")
    assert f"<code>{full[:10]}</code>" in runs_html and f"sha256 {full}" in runs_html  # short shown, full in title
    assert full not in runs_html.replace(f"sha256 {full}", "")  # the full hash only in the tooltip
    assert f"<code>{full}</code>" in page.split('class="provenance"')[1]  # and in the file table
    assert EVIL not in page and html.escape(EVIL) in page


def test_different_data_files_under_one_name_warn(tmp_path):
    a = make_inputs_run(tmp_path, name="20261129-200000-a", models=("minilm",))
    b = make_inputs_run(tmp_path, name="20261129-200001-b", models=("minilm",))
    c = make_inputs_run(tmp_path, name="20261129-200002-c", models=("minilm",))
    _with_provenance(a, {"train.csv": "x"})
    _with_provenance(b, {"train.csv": "x"})
    runs = load_runs([tmp_path])
    assert data_file_mismatches(runs) == []
    page, _ = build_report_html(runs)
    assert "Different data under one name" not in page
    _with_provenance(c, {"train.csv": "y"})  # same name gue/prom_core_tata, other bytes
    runs = load_runs([tmp_path])
    assert data_file_mismatches(runs) == [("gue/prom_core_tata", [[a.name, b.name], [c.name]])]
    page, _ = build_report_html(runs)
    assert "Different data under one name" in page and "read 2 different sets of data files" in page
    _with_provenance(c, {"train.csv": "y"}, task="prom_300_tata")  # another name: nothing to compare
    assert data_file_mismatches(load_runs([tmp_path])) == []


def test_runs_without_provenance_show_dashes(tmp_path):
    run_dir = tmp_path / "20261129-200000-old"
    _run_json(run_dir, "train", ["qft"], {"dataset": "gue", "device": "cpu", "dtype": "float32"}, device="cpu")
    runs = load_runs([run_dir])
    assert provenance_table(runs).empty
    assert device_dtype_text(runs[0]) == "cpu / float32"


def test_quantised_gguf_run_says_its_quant_type(tmp_path):
    """Issue 18: a Q4_1 GGUF read as stored said 'as stored (float32)' (its dequantised dtype)."""
    run_dir = make_weights_run(tmp_path, "m", num_layers=1)
    _set_meta(run_dir, device="cpu", dtype="stored", options={"device": "auto", "dtype": None})
    table = pd.read_parquet(run_dir / "norms_weights.parquet")
    table["dtype"] = "float32"
    table["quant_type"] = ["Q4_1"] * (len(table) - 1) + ["F32"]
    table.to_parquet(run_dir / "norms_weights.parquet")
    assert device_dtype_text(load_runs([run_dir])[0]) == "cpu / as stored (Q4_1 GGUF, dequantised to float32)"
    table["quant_type"] = "F32"
    table.to_parquet(run_dir / "norms_weights.parquet")
    assert device_dtype_text(load_runs([run_dir])[0]) == "cpu / as stored (float32)"
