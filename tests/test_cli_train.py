"""``qft train`` through the CLI: bad input is one line and exit 2; a tiny run end to end; resume."""

from __future__ import annotations

import csv
import json
import random

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner


def _app():
    try:
        from qft_cli.cli.app import app

        return app, ["train"]
    except ModuleNotFoundError:  # a branch without the other sub-commands: register train alone
        from qft_cli.cli.train import train_command

        app = typer.Typer()

        @app.callback()
        def root() -> None:
            """qft"""

        app.command("train")(train_command)
        return app, ["train"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _invoke(args):
    app, prefix = _app()
    return CliRunner().invoke(app, [*prefix, *args])


def _dna_dir(tmp_path, n=64, bad_letter=False, bad_label=False):
    rng = random.Random(0)
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for split, size in (("train", n), ("dev", n // 4), ("test", n // 4)):
        with open(d / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sequence", "label"])
            for i in range(size):
                label = i % 2
                seq = "".join(rng.choice("ACGT") for _ in range(20)) + ("GGGG" if label else "AAAA")
                w.writerow([seq, label])
            if split == "test" and bad_letter:
                w.writerow(["ACGU", 0])
            if split == "dev" and bad_label:
                w.writerow(["ACGT", 5])
    return d


TINY = ["--dataset", "gue", "--task", "prom_core_notata", "--tokenizer", "char", "--d-model", "16", "--num-heads", "2",
        "--d-ff", "32", "--batch-size", "16", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("case, match", [
    (["--norm", "spectal"], "unknown --norm 'spectal'"),
    (["--targets", "attention,fnn"], "unknown target 'fnn'"),
    (["--targets", "ffn_gate"], "ffn_gate"),  # the qft transformer has none: refused before vanilla trains
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "gue", "--task", "prom_400"], "unknown GUE task"),
    (["--eval-strategy", "no"], "needs evaluation"),
    (["--freeze-embedding"], "no --embedding-from"),
    (["--embedding-from", "minilm", "--tokenizer", "char"], "contradicts --embedding-from"),
    (["--lr-scheduler-type", "cosinus"], "lr-scheduler-type"),
    (["--max-gamma", "-1"], "max-gamma"),
    (["--max-gamma", "inf"], "max-gamma"),  # refused before vanilla trains, not when spectral starts
    (["--dataset", "conll2003"], "text task"),
    (["--tokenizer", "kmer3"], "unknown DNA tokenizer"),
    (["--seed", "1", "--seeds", "0,1"], "--seed and --seeds are exclusive"),
    (["--seeds", "0,0"], "repeats a seed"),
    (["--seeds", "0,x"], "not a list of integers"),
    (["--seeds", "-1,2"], "must lie in"),
    (["--norm", "vanilla,none"], "twice"),
    (["--norm", "none", "--subnormalised"], "--subnormalised"),
    (["--norm", "vanilla", "--max-gamma", "1"], "max-gamma"),
])
def test_bad_options_one_line_exit_2(tmp_path, case, match):
    result = _invoke([*case, "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("kind, match", [
    ("empty", "no train.csv"),
    ("letters", "invalid DNA letters 'U'"),
    ("label", "labels outside [0, 1]"),
])
def test_bad_data_one_line_exit_2_and_no_run_dir(tmp_path, kind, match):
    if kind == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    else:
        data = _dna_dir(tmp_path, bad_letter=kind == "letters", bad_label=kind == "label")
    out = tmp_path / "runs"
    result = _invoke([*TINY, "--data-dir", str(data), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], result.stderr
    assert not out.exists() or not any(out.iterdir())  # bad input leaves nothing written


def test_tiny_run_end_to_end_then_resume(tmp_path):
    data = _dna_dir(tmp_path)
    out = tmp_path / "runs"
    result = _invoke([*TINY, "--data-dir", str(data), "--out", str(out), "--num-epochs", "2", "--early-stopping", "1",
                      "--norm", "all", "--learning-rate", "3e-3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    for word in ("vanilla", "spectral", "frobenius", "Δ F1 (pp)"):
        assert word in result.stdout
    for variant in ("vanilla", "spectral", "frobenius"):  # on a CPU: steps and time before training goes on
        assert f"{variant} (seed 42): 8 steps, about " in result.stderr  # 2 epochs x 64 / 16
    (run_dir,) = list(out.iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["options"]["norm"] == "all"
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert set(metrics["variant"]) == {"vanilla", "spectral", "frobenius", "baseline_kmer"}
    assert (metrics[metrics.split == "test"].groupby("variant").size() == 1).all()
    for variant in ("vanilla", "spectral", "frobenius"):
        assert (run_dir / "best" / variant / "model.safetensors").is_file()
    # resuming a finished run retrains nothing and prints the same table
    again = _invoke(["--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 0, again.output + str(again.exception)
    assert len(pd.read_parquet(run_dir / "metrics.parquet")) == len(metrics)
    assert result.stdout.split("results:")[0].strip().splitlines()[-3:] == again.stdout.split("results:")[0].strip().splitlines()[-3:]


def test_resume_of_a_non_run_dir(tmp_path):
    result = _invoke(["--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.stderr


def test_help_lists_the_research_options():
    result = _invoke(["--help"])
    assert result.exit_code == 0
    for option in ("--learning-rate", "--num-epochs", "--early-stopping", "--weight-decay", "--lr-scheduler-type",
                   "--norm", "--targets", "--embedding-from", "--resume", "--max-steps", "--seeds", "--subnormalised"):
        assert option in result.stdout


def test_max_eval_samples_subsamples_validation_and_test(tmp_path, monkeypatch):
    import qft_cli.data.tasks as tasks

    sizes = {}
    real = tasks.subsample

    def spy(data, split, max_samples, seed):
        out = real(data, split, max_samples, seed)
        sizes[split] = len(out.splits[split]["inputs"])
        return out

    monkeypatch.setattr(tasks, "subsample", spy)
    data = _dna_dir(tmp_path, n=64)
    result = _invoke([*TINY, "--data-dir", str(data), "--out", str(tmp_path / "runs"), "--max-steps", "2",
                      "--norm", "none", "--max-train-samples", "40", "--max-eval-samples", "5"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert sizes == {"train": 40, "validation": 5, "test": 5}
    bad = _invoke([*TINY, "--data-dir", str(data), "--out", str(tmp_path / "r2"), "--max-eval-samples", "0"])
    assert bad.exit_code == 2 and "--max-eval-samples 0 must be at least 1" in bad.stderr

def test_resume_with_bad_input_keeps_the_earlier_work(tmp_path):
    import shutil

    data = _dna_dir(tmp_path)
    out = tmp_path / "runs"
    result = _invoke([*TINY, "--data-dir", str(data), "--out", str(out), "--norm", "none", "--max-steps", "1",
                      "--early-stopping", "0"])
    assert result.exit_code == 0, result.output + str(result.exception)
    (run_dir,) = list(out.iterdir())
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    shutil.rmtree(data)  # e.g. the data moved since the interrupted run
    again = _invoke(["--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 2 and "not a directory" in again.stderr, again.output
    assert run_dir.is_dir() and set(before) <= set(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("content", ['{"command": "norms", "options": {"models": ["tiny-bert"]}}',
                                     '{"command": "train"}', '{not json'])
def test_resume_of_a_run_dir_of_another_command_or_broken_json(tmp_path, content):
    (tmp_path / "run.json").write_text(content)
    result = _invoke(["--resume", str(tmp_path), "--quiet"])
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "qft train" in lines[0], result.stderr
    assert (tmp_path / "run.json").read_text() == content  # left as it was


def test_final_table_in_points_and_warns_on_one_class_models(capsys, monkeypatch):
    import pandas as pd

    from qft_cli.cli import common
    from qft_cli.cli.common import print_test_table
    from qft_cli.train import stats

    monkeypatch.setattr(common.console, "width", 200)  # one line per row, whatever the terminal

    metrics = pd.DataFrame([
        {"variant": v, "seed": seed, "split": "test", "step": 9, "epoch": 3.0, "accuracy": acc, "f1": f1}
        for v, seed, acc, f1 in (("vanilla", 0, 0.8, 0.75), ("vanilla", 1, 0.82, 0.77),
                                 ("spectral", 0, 0.476, 0.0), ("spectral", 1, 0.5, 0.0))])
    print_test_table("t", stats.test_summary(metrics), "runs/x", epochs={"vanilla": 3.0, "spectral": 2.5})
    out = capsys.readouterr()
    # accuracy 81.00 (mean of 80, 82); spectral - vanilla paired by seed: -32.4 and -32.0 -> -32.20
    assert "81.00 [" in out.out and "-32.20 [" in out.out and "-76.00 [" in out.out and "results: runs/x" in out.out
    assert "t over seeds" in out.out and "2.5" in out.out
    assert out.err.count("warning:") == 1 and "spectral has test F1 0.000" in out.err


def test_data_dir_of_one_task_is_named_by_it_and_verifiable(tmp_path):
    """Issue 12: DIR holding GUE prom_core_tata's split files, no --task: the table and run.json say
    prom_core_tata (never the unused default prom_300_notata); run.json records every file read
    (SHA-256 = hashlib's) and the software; `qft runs verify` passes, then fails once a file changed."""
    import hashlib

    from qft_cli.cli.app import app

    data = _dna_dir(tmp_path).rename(tmp_path / "prom_core_tata")
    out = tmp_path / "runs"
    args = [a for a in TINY if a not in ("--task", "prom_core_notata", "char")]
    args[args.index("--tokenizer") + 1:args.index("--tokenizer") + 1] = ["kmer:3"]
    result = _invoke([*args, "--data-dir", str(data), "--out", str(out), "--norm", "none", "--max-steps", "2"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "gue/prom_core_tata" in result.stdout and "prom_300_notata" not in result.stdout
    (run_dir,) = list(out.iterdir())
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["data"]["task"] == "prom_core_tata" and meta["data"]["dataset"] == "gue"
    assert meta["data"]["source"] == "local" and meta["options"]["task"] is None
    assert sorted(f["path"] for f in meta["data_files"]) == sorted(str(data.resolve() / f"{s}.csv")
                                                                   for s in ("train", "dev", "test"))
    for f in meta["data_files"]:
        raw = open(f["path"], "rb").read()
        assert f["sha256"] == hashlib.sha256(raw).hexdigest() and f["size_bytes"] == len(raw)
    assert meta["model_files"] == []  # a model built from a seed: no weight files
    assert {"torch_threads", "device_name", "deterministic_algorithms"} <= set(meta["software"])
    runner = CliRunner()
    ok = runner.invoke(app, ["runs", "verify", str(run_dir)])
    assert ok.exit_code == 0, ok.output
    with open(data / "dev.csv", "a") as f:
        f.write("ACGTACGT,1\n")
    bad = runner.invoke(app, ["runs", "verify", str(run_dir)])
    assert bad.exit_code == 2 and "dev.csv changed" in bad.stderr.replace("\n", "")
    # resuming on changed data is refused (the run is marked failed, its directory kept)
    resumed = _invoke(["--resume", str(run_dir), "--quiet"])
    assert resumed.exit_code == 2 and "data files differ from those the run started with (dev.csv" in resumed.stderr
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "failed" and meta["data_files_before_resume"][0]["sha256"]
    # a --task that disagrees with the folder's task is one line, exit 2, nothing written
    out2 = tmp_path / "runs2"
    result = _invoke([*args, "--task", "prom_300_notata", "--data-dir", str(data), "--out", str(out2)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds the files of GUE task prom_core_tata" in lines[0]
    assert not out2.exists() or not any(out2.iterdir())


def test_resume_keeps_the_finished_variant_and_trains_the_unfinished_one(tmp_path):
    """One seed, --norm vanilla,frobenius: vanilla finished, frobenius interrupted before its first
    checkpoint -> the resume keeps vanilla's rows as they are (not retrained, not dropped) and trains
    frobenius once, to the numbers of the uninterrupted run."""
    import shutil

    from qft_cli.runs.files import write_parquet_atomic

    data = _dna_dir(tmp_path)
    out = tmp_path / "runs"
    result = _invoke([*TINY, "--data-dir", str(data), "--out", str(out), "--num-epochs", "1", "--early-stopping", "0",
                      "--norm", "vanilla,frobenius", "--seed", "3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    (run_dir,) = list(out.iterdir())
    before = pd.read_parquet(run_dir / "metrics.parquet")
    assert sorted(before.variant.unique()) == ["baseline_kmer", "frobenius", "vanilla"]
    for folder in ("checkpoints", "best"):
        shutil.rmtree(run_dir / folder / "frobenius")
    for table in ("metrics", "predictions", "norms_during_training"):
        path = run_dir / f"{table}.parquet"
        if path.is_file():
            frame = pd.read_parquet(path)
            write_parquet_atomic(frame[frame.variant == "vanilla"], path)
    again = _invoke(["--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 0, again.output + str(again.exception)
    after = pd.read_parquet(run_dir / "metrics.parquet")
    keep = ["variant", "seed", "split", "step", "epoch", "accuracy", "f1"]
    pd.testing.assert_frame_equal(after[after.variant == "vanilla"][keep].reset_index(drop=True),
                                  before[before.variant == "vanilla"][keep].reset_index(drop=True))
    resumed = after[after.variant == "frobenius"]
    assert (resumed.split == "test").sum() == 1
    pd.testing.assert_frame_equal(resumed[keep].reset_index(drop=True),
                                  before[before.variant == "frobenius"][keep].reset_index(drop=True))
    summary = pd.read_parquet(run_dir / "test_summary.parquet")
    assert set(summary.variant) == {"vanilla", "frobenius", "baseline_kmer"}  # the baseline refitted on resume


def test_multi_seed_run_resumes_the_unfinished_seed(tmp_path):
    """--seeds 0,1: seed 0 finished, seed 1 interrupted before its first checkpoint -> the resume
    keeps seed 0 as it is and trains seed 1 once; the summary is over both seeds."""
    import shutil

    from qft_cli.runs.files import write_parquet_atomic

    data = _dna_dir(tmp_path)
    out = tmp_path / "runs"
    result = _invoke([*TINY, "--data-dir", str(data), "--out", str(out), "--num-epochs", "1", "--early-stopping", "0",
                      "--norm", "vanilla", "--seeds", "0,1"])
    assert result.exit_code == 0, result.output + str(result.exception)
    (run_dir,) = list(out.iterdir())
    before = pd.read_parquet(run_dir / "metrics.parquet")
    assert sorted(before.seed.unique()) == [0, 1]
    shutil.rmtree(run_dir / "checkpoints" / "vanilla" / "seed-1")
    shutil.rmtree(run_dir / "best" / "vanilla" / "seed-1")
    write_parquet_atomic(before[before.seed == 0], run_dir / "metrics.parquet")
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    write_parquet_atomic(preds[preds.seed == 0], run_dir / "predictions.parquet")
    again = _invoke(["--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 0, again.output + str(again.exception)
    after = pd.read_parquet(run_dir / "metrics.parquet")
    pd.testing.assert_frame_equal(after[after.seed == 0].reset_index(drop=True),
                                  before[before.seed == 0].reset_index(drop=True))
    assert (after[after.seed == 1].split == "test").sum() == 1
    pd.testing.assert_frame_equal(after[after.seed == 1].drop(columns="samples_per_second").reset_index(drop=True),
                                  before[before.seed == 1].drop(columns="samples_per_second").reset_index(drop=True))
    assert (run_dir / "best" / "vanilla" / "seed-1" / "config.json").is_file()
    summary = pd.read_parquet(run_dir / "test_summary.parquet")
    trained = summary[summary.variant != "baseline_kmer"]  # the baseline: one fit per split seed
    assert set(trained.num_seeds) == {2} and set(trained.interval) == {"t over seeds"}


def test_num_labels_overrides_the_task_label_set(tmp_path):
    """Issue 21, item 4: labels {0, 1, 2} in the binary prom_core_notata are refused naming the rows
    (no 3-class model, no run directory); --num-labels 3 trains a 3-class model."""
    data = _dna_dir(tmp_path)
    train = data / "train.csv"
    lines = train.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",2"
    train.write_text("\n".join(lines) + "\n")
    out = tmp_path / "runs"
    args = [*TINY, "--data-dir", str(data), "--out", str(out), "--norm", "vanilla", "--max-steps", "1",
            "--num-epochs", "1", "--early-stopping", "0"]
    refused = _invoke(args)
    assert refused.exit_code == 2, refused.output
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.csv: 1 row(s) (row 5 label 2)" in lines[0] and "--num-labels" in lines[0]
    assert not out.exists() or not any(out.iterdir())
    result = _invoke([*args, "--num-labels", "3"])
    assert result.exit_code == 0, result.output + str(result.exception)
    (run_dir,) = list(out.iterdir())
    assert len(json.loads((run_dir / "best" / "vanilla" / "config.json").read_text())["id2label"]) == 3


@pytest.mark.parametrize("run_json_too", [False, True])
def test_disk_full_during_train_is_one_line_and_resumable(tmp_path, monkeypatch, run_json_too):
    """Issue 21, item 1: the disk fills inside a checkpoint (and, with run_json_too, the final write
    of run.json fails as well): one line naming the run directory and the resume command, exit 2;
    run.json keeps its last complete state; --resume finishes the run once space is back."""
    import errno
    from pathlib import Path

    from transformers import Trainer

    import qft_cli.runs.rundir as rundir

    data = _dna_dir(tmp_path)
    out = tmp_path / "runs"
    real_save, real_write = Trainer._save_optimizer_and_scheduler, rundir.write_json_atomic
    full = {"now": False}

    def save(self, output_dir):
        if self.state.global_step == 8:  # 4 steps per epoch: the checkpoint of epoch 2
            full["now"] = True
            (Path(output_dir) / "optimizer.pt").write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.pt"))
        return real_save(self, output_dir)

    def write(path, meta):
        if full["now"] and run_json_too:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, meta)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_optimizer_and_scheduler", save)
        patch.setattr(rundir, "write_json_atomic", write)
        result = _invoke([*TINY, "--data-dir", str(data), "--out", str(out), "--norm", "vanilla", "--num-epochs", "3",
                          "--early-stopping", "0", "--learning-rate", "3e-3"])
    assert result.exit_code == 2, result.output + repr(result.exception)
    # the CPU time estimate of the first steps may stand before it; the error itself is one line
    lines = [line for line in result.stderr.strip().splitlines() if " steps, about " not in line]
    (run_dir,) = list(out.iterdir())
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: no space left on the device writing "), result.stderr
    assert f"--resume {run_dir}" in lines[0]
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == ("running" if run_json_too else "failed")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints" / "vanilla").iterdir())
    assert checkpoints == ["checkpoint-4"]  # the half-written checkpoint-8 is gone
    again = _invoke(["--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 0, again.output + repr(again.exception)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed"
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    assert metrics[(metrics.split == "validation") & (metrics.variant == "vanilla")]["epoch"].tolist() == [1.0, 2.0, 3.0]
