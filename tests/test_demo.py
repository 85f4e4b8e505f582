"""``qft demo`` orchestration: steps, synthetic data, report; library steps stubbed where noted.

The real norms/training libraries are exercised by their own tests; here the adapters are
replaced by writers of synthetic run directories (tests/test_report.py) so the orchestration is
tested in a second. ``test_demo_end_to_end`` runs the real pipeline where the libraries exist.
"""

from __future__ import annotations

import json
import time

import pytest
import typer
from test_report import make_inputs_run, make_train_run, make_weights_run
from typer.testing import CliRunner

import qft_cli.demo as demo
from qft_cli.cli.demo import demo_command
from qft_cli.demo import DemoConfig, run_demo


@pytest.fixture
def stubbed(monkeypatch):
    monkeypatch.setattr(demo, "_norms_weights_step", lambda c, out, p: make_weights_run(out, "minilm", num_layers=2))
    monkeypatch.setattr(demo, "_norms_inputs_step", lambda c, out, p: make_inputs_run(out, models=("minilm",)))

    def train(config, data_dir, out, progress):
        assert (data_dir / "train.csv").is_file() and "synthetic-dna" in data_dir.name
        return make_train_run(out)

    monkeypatch.setattr(demo, "_train_step", train)


def test_demo_runs_every_step_and_reports(stubbed, tmp_path):
    result = run_demo(DemoConfig(out=tmp_path))
    assert result.ok, result.steps
    assert [s.status for s in result.steps] == ["completed"] * 3
    assert result.report == result.directory / "report.html" and result.report.is_file()
    assert result.directory.parent == tmp_path and result.directory.name.endswith("-demo")
    text = result.report.read_text()
    assert "Synthetic data" in text and "qft demo report" in text


def test_demo_records_failed_steps_and_goes_on(stubbed, monkeypatch, tmp_path):
    def broken(config, out, progress):
        make_weights_run(out, "minilm", num_layers=1)
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "_norms_weights_step", broken)
    result = run_demo(DemoConfig(out=tmp_path))
    assert [s.status for s in result.steps] == ["failed", "completed", "completed"]
    assert "boom" in result.steps[0].message and result.steps[0].run_dir is not None
    assert result.report is not None and not result.ok


def test_demo_cli_prints_runs_and_report(stubbed, tmp_path):
    app = typer.Typer()
    app.command("demo")(demo_command)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and res.output.count("run:") == 3 and "synthetic-dna-seed0" in res.output


def test_demo_bad_out_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    app = typer.Typer()
    app.command("demo")(demo_command)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "file"), "--quiet"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.minilm
def test_demo_end_to_end(minilm_source, tmp_path):
    for module in ("qft_cli.measure.workflows", "qft_cli.train.training"):
        pytest.importorskip(module, reason=f"{module} not in this build yet")
    start = time.perf_counter()
    result = run_demo(DemoConfig(out=tmp_path))
    elapsed = time.perf_counter() - start
    assert result.ok, [(s.name, s.status, s.message) for s in result.steps]
    assert elapsed < 300, f"demo took {elapsed:.0f} s"


def test_printed_train_command_reruns(tmp_path):
    """The train command the demo prints is a real `qft train` command line."""
    from qft_cli.cli.app import app
    from qft_cli.data.synthetic import SyntheticSpec, write_synthetic_promoters

    config = DemoConfig(out=tmp_path, synthetic=SyntheticSpec(num_train=64, num_dev=16, num_test=16))
    data_dir = write_synthetic_promoters(tmp_path / "data", config.synthetic)
    argv = demo.train_argv(config, data_dir, tmp_path / "runs")
    assert argv[:4] == ["qft", "train", "--dataset", "synthetic-dna"]
    result = CliRunner().invoke(app, [*argv[1:], "--max-steps", "2", "--tokenizer", "char", "--quiet"])
    assert result.exit_code == 0, result.output + str(result.exception)
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    data = json.loads((run_dir / "run.json").read_text())["data"]
    assert data["dataset"] == "synthetic-dna" and data["source"] == "synthetic" and data["task"] is None


def test_demo_ends_with_the_headline_numbers(stubbed, tmp_path):
    """The fitted exponents (with their intervals) and the accuracy table, not only paths."""
    import io

    import pandas as pd

    from qft_cli.measure.fits import fit_table

    result = run_demo(DemoConfig(out=tmp_path))
    inputs_dir = result.steps[1].run_dir
    expected = fit_table(pd.read_parquet(inputs_dir / "norms_inputs.parquet"),
                         ["model", "model_alias", "dataset", "layer"], quantity="hidden_states")
    assert result.fits["exponent"].tolist() == expected["exponent"].tolist()
    assert result.fits["exponent_ci_high"].tolist() == expected["exponent_ci_high"].tolist()
    acc = result.accuracy.set_index("variant")  # scripted: accuracy 0.85 - 0.01 i, F1 0.84 - 0.02 i
    assert list(acc.index) == ["vanilla", "spectral", "frobenius"]
    assert acc["accuracy_diff_pp"].tolist()[1:] == pytest.approx([-1.0, -2.0])
    assert acc["f1_diff_pp"].tolist()[1:] == pytest.approx([-2.0, -4.0])
    assert acc["accuracy_diff_pp"].isna().tolist() == [True, False, False] and (acc["num_seeds"] == 1).all()

    app = typer.Typer()
    app.command("demo")(demo_command)
    app.command("other")(lambda: None)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "cli"), "--quiet"])
    assert res.exit_code == 0, res.output
    tail = res.stdout[res.stdout.index("synthetic data:"):]
    assert "N^b" in tail and "-2.00" in tail and "-4.00" in tail and "b 95% low" in tail
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "csv"), "--quiet", "--format", "csv"])
    blocks = res.stdout.strip().split("\n\n")
    assert len(blocks) == 2 and "report:" in res.stderr
    fits = pd.read_csv(io.StringIO(blocks[0]), comment="#")
    assert fits["b"].tolist() == pytest.approx(expected["exponent"].tolist(), rel=1e-12)
