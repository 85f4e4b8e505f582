"""``qft sweep``: grid files, cell keys, the local / submitit / Ray executors, status, kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qft_cli.cli.app import app
from qft_cli.cli.sweep import _resolver, command_specs
from qft_cli.sweep.cells import CELL_JSON, run_dirs
from qft_cli.sweep.executors import (local_threads, make_plan, run_sweep, slurm_parameters, submitit_executor,
                                     sweep_status)
from qft_cli.sweep.grid import load_grid
from qft_cli.sweep.keys import cell_key, key_material
from qft_cli.system.errors import QftInputError

runner = CliRunner()
SPECS = command_specs()

#: Three cells: two tiny-model runs and one that fails with qft's one-line error (no layer 99).
SMALL = """\
experiments:
  - name: w
    command: norms weights
    model: tiny-gpt2
  - name: s
    command: norms inputs
    model: tiny-gpt2
    dataset: random
    max-tokens: 16
    num-samples: 2
    layers: [0, "99"]
"""


def _grid(tmp_path: Path, text: str, name: str = "grid.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_grid(path, SPECS, base=tmp_path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(QftInputError) as err:
        _grid(tmp_path, text)
    return str(err.value)


def _cells(sweep: Path) -> dict[str, dict]:
    """label -> cell.json of every cell folder."""
    out = {}
    for cj in sweep.glob(f"*/{CELL_JSON}"):
        info = json.loads(cj.read_text())
        out[info["label"]] = info
    return out


def _runs(sweep: Path) -> list[Path]:
    """Every run directory ever made in the sweep (set-aside attempts included)."""
    return sorted(p.parent for p in sweep.glob("*/*/run.json")) + sorted(p.parent for p in
                                                                          sweep.glob("*/.attempts/*/run.json"))


# ----------------------------------------------------------------------------- the grid file

def test_expansion_is_the_cartesian_product_in_key_order(tmp_path):
    grid = _grid(tmp_path, """\
experiments:
  - name: a
    command: norms inputs
    model: [tiny-gpt2, tiny-llama]
    dataset: [random, mmlu]
    max-tokens: 64
    seeds: [0, 1, 2]
  - name: t
    command: train
    norm: spectral
    trust-remote-code: true
""")
    assert len(grid.cells) == 2 * 2 * 3 + 1
    first, second = grid.cells[0], grid.cells[1]
    assert first.models == ("tiny-gpt2",) and first.option_dict() == {"dataset": "random", "max-tokens": 64, "seed": 0}
    assert second.option_dict()["seed"] == 1
    assert [c.models[0] for c in grid.cells[:12]] == ["tiny-gpt2"] * 6 + ["tiny-llama"] * 6
    assert grid.cells[0].argv(SPECS["norms inputs"]) == ["norms", "inputs", "tiny-gpt2", "--dataset", "random",
                                                         "--max-tokens", "64", "--seed", "0"]
    assert grid.cells[-1].argv(SPECS["train"]) == ["train", "--norm", "spectral", "--trust-remote-code"]
    # train's own --seeds (one run over several seeds, paired intervals) is a string, not an axis
    (one,) = _grid(tmp_path, "experiments:\n  - name: t\n    command: train\n    seeds: \"0,1,2\"\n").cells
    assert one.argv(SPECS["train"]) == ["train", "--seeds", "0,1,2"]


@pytest.mark.parametrize("text, line, words", [
    ("experiments:\n  - name: a\n    command: norms weights\n    model: tiny-gpt2\n    colour: red\n", 5,
     "unknown key 'colour'"),
    ("experiments:\n  - name: a\n    command: norms inputs\n    model: tiny-gpt2\n    max-tokens: many\n", 5,
     "max-tokens must be an integer (got 'many')"),
    ("experiments:\n  - name: a\n    command: norms wieghts\n    model: tiny-gpt2\n", 3,
     "unknown command 'norms wieghts': did you mean 'norms weights'?"),
    ("experiments:\n  - name: a\n    command: norms inputs\n    model: tiny-gpt2\n    max-tokns: 3\n", 5,
     "did you mean 'max-tokens'?"),
    ("experiments:\n  - name: a\n    command: norms weights\n    model: tiny-gpt2\n    exact: 1\n", 5,
     "exact is an on/off flag"),
    ("experiments:\n  - name: a\n    command: norms weights\n    model: tiny-gpt2\n    out: /tmp/x\n", 5,
     "out is set by qft sweep itself"),
    ("experiments:\n  - name: a\n    command: norms weights\n", 2, "needs a MODEL"),
    ("experiments:\n  - name: a\n    command: train\n    slurm: {gpus: 1}\n", 4, "unknown key 'gpus' in slurm"),
    ("experiment:\n  - name: a\n", 1, "unknown key 'experiment' in the grid file: did you mean 'experiments'?"),
    ("experiments:\n  - name: a\n    command: [norms\n", 4, "not valid YAML"),
])
def test_validation_names_file_and_line(tmp_path, text, line, words):
    message = _error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'grid.yaml'}:{line}: "), message
    assert words in message and "\n" not in message


def test_cost_is_a_grid_command(tmp_path):
    """`qft cost RUN_DIR...`: its positional arguments (the norms run directories) are the cell's
    `model` value, like the MODEL of the other commands; without one the cell is refused."""
    (tmp_path / "norms-runs").mkdir()
    text = "experiments:\n  - name: c\n    command: cost\n    model: norms-runs\n"
    (cell,) = _grid(tmp_path, text).cells
    assert cell.command == "cost" and cell.models == (str(tmp_path / "norms-runs"),)
    assert "needs a MODEL" in _error(tmp_path, "experiments:\n  - name: c\n    command: cost\n")


def test_cli_validation_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("experiments:\n  - name: a\n    command: norms weights\n    model: tiny-gpt2\n    colour: red\n")
    result = runner.invoke(app, ["sweep", "run", str(path), "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}:5: unknown key 'colour' in `qft norms weights` options")
    assert not (tmp_path / "sw").exists()


def test_presets_parse_and_dry_run(tmp_path):
    result = runner.invoke(app, ["sweep", "presets"])
    assert result.exit_code == 0, result.output
    for name in ("paper-alpha-s", "paper-alpha-w", "paper-genomic", "paper-dnabert2-gue", "paper-conll", "smoke"):
        assert name in result.output
    result = runner.invoke(app, ["sweep", "run", "--preset", "smoke", "--out", str(tmp_path / "sw"), "--dry-run",
                                 "--jobs", "2"])
    assert result.exit_code == 0, result.output
    assert "7 cells: 7 to run, 0 done" in result.output
    assert "qft norms weights tiny-gpt2 --out" in result.output and not (tmp_path / "sw").exists()


# ----------------------------------------------------------------------------- keys

def _model_dir(root: Path, payload: bytes) -> Path:
    d = root / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(payload)
    return d


def test_keys_change_with_each_input_that_matters_and_nothing_else(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("one line\nanother line\n")
    model = _model_dir(tmp_path, b"weights-1")
    text = f"""\
experiments:
  - name: a
    command: norms inputs
    model: {model}
    dataset: {data}
    max-tokens: 16
"""

    def key(t=text):
        (cell,) = _grid(tmp_path, t).cells
        return cell_key(cell, SPECS["norms inputs"], _resolver)  # qft's own model resolver, as the CLI

    k0 = key()
    assert key() == k0  # stable across parses
    # the same cell spelled with a default given explicitly and in another key order: the same key
    explicit = text.replace("    max-tokens: 16\n", "    batch-size: 8\n    max-tokens: 16\n")
    assert key(explicit) == k0
    # a new file name, experiment name or thread count does not matter
    assert key(text.replace("name: a", "name: b")) == k0
    assert key(text.replace("max-tokens: 16", "max-tokens: 17")) != k0  # an option
    data.write_text("one line\nanother line!\n")
    k_data = key()
    assert k_data != k0  # a data file's bytes
    (model / "model.safetensors").write_bytes(b"weights-2")
    k_model = key()
    assert k_model not in (k0, k_data)  # a weight file's bytes
    (model / "README.md").write_text("not a weight file")
    assert key() == k_model  # a file the run does not read
    (cell,) = _grid(tmp_path, text).cells
    material = key_material(cell, SPECS["norms inputs"])
    assert material["options"]["max-tokens"] == 16 and material["options"]["batch-size"] == 8
    assert not {"out", "quiet", "threads", "format", "resume"} & set(material["options"])


def test_local_threads_split_the_cores():
    assert local_threads(2, cores=2) == (2, 1)
    assert local_threads(2, cores=16) == (2, 8)
    assert local_threads(3, cores=16) == (3, 5)
    assert local_threads(8, cores=2) == (2, 1)  # never more workers than cores
    with pytest.raises(QftInputError):
        local_threads(0, cores=2)


# ----------------------------------------------------------------------------- local executor

def test_local_two_workers_failure_status_retry(tmp_path, monkeypatch):
    # the worker count follows qft's thread logic, which lowers the usable cores by the load average:
    # an idle machine here, so that --jobs 2 gives 2 workers whatever else the test machine runs
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    grid = _grid(tmp_path, SMALL)
    sweep = tmp_path / "sw"
    result = run_sweep(grid, SPECS, sweep, jobs=2)
    assert result.workers == 2 if os.cpu_count() >= 2 else True
    cells = _cells(sweep)
    assert len(cells) == 3
    failed = [c for c in cells.values() if c["status"] != "completed"]
    assert [c["label"] for c in failed] == ["s: tiny-gpt2 dataset=random max-tokens=16 num-samples=2 layers=99"]
    (bad,) = failed
    assert bad["status"] == "failed" and bad["exit_code"] == 2 and "99" in bad["error"]
    assert bad["error"].startswith("error: ")
    for c in cells.values():
        if c["status"] == "completed":
            assert c["seconds"] > 0 and c["peak_memory_mib"] > 50 and c["threads"] >= 1
            meta = json.loads((Path(c["run_dir"]) / "run.json").read_text())
            assert meta["status"] == "completed" and "--out" in meta["argv"]
    assert [r["key"] for r in result.failed] == [bad["key"]]

    # status: the failed cell with its error line
    rows = {r["key"]: r for r in sweep_status(sweep)}
    assert rows[bad["key"]]["status"] == "failed" and rows[bad["key"]]["error"] == bad["error"]
    assert all(r["error"] is None and r["run_dir"] and r["seconds"] > 0 for k, r in rows.items() if k != bad["key"])
    status = runner.invoke(app, ["sweep", "status", str(sweep)], env={"COLUMNS": "400"})
    assert status.exit_code == 0, status.output
    # the table folds long cells to the terminal's width (whatever an earlier test left the console at):
    # the failed cell's key, its status and its error line are in it, cell by cell
    assert bad["key"] in status.output and "failed" in status.output and "error:" in status.output
    assert "2 completed, 1 failed" in status.output

    # a rerun runs nothing and still names the failed cell (exit 1)
    again = runner.invoke(app, ["sweep", "run", str(tmp_path / "grid.yaml"), "--out", str(sweep), "--quiet"])
    assert again.exit_code == 1 and bad["key"] in again.output and "0 run now" in again.output
    assert all(c["attempts"] == 1 for c in _cells(sweep).values())

    # --retry-failed reruns only the failed cell
    retry = run_sweep(grid, SPECS, sweep, jobs=2, retry_failed=True)
    after = _cells(sweep)
    assert [r["key"] for r in retry.results] == [bad["key"]]
    assert {k: c["attempts"] for k, c in after.items()} == {k: (2 if c["key"] == bad["key"] else 1)
                                                            for k, c in cells.items()}
    assert len(_runs(sweep)) == 2  # the failing cell's bad input never leaves a run dir

    # qft report over the whole sweep folder finds the cells' run dirs
    report = runner.invoke(app, ["report", str(sweep), "-o", str(tmp_path / "r.html"), "--quiet"])
    assert report.exit_code == 0, report.output
    assert "2 runs" in report.output

    # skipped by content: renamed experiments in another order are the same cells; one changed
    # option makes exactly that cell new
    moved = tmp_path / "moved.yaml"
    moved.write_text(SMALL.replace("name: w", "name: weights").replace("name: s", "name: inputs")
                     .replace('[0, "99"]', '["99", 0]'))
    plan = make_plan(load_grid(moved, SPECS), SPECS, sweep)
    assert sorted(c.action for c in plan.cells) == ["failed", "skip", "skip"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(SMALL.replace("num-samples: 2", "num-samples: 3"))
    plan = make_plan(load_grid(changed, SPECS), SPECS, sweep)
    assert [c.action for c in plan.cells] == ["skip", "run", "run"]


def test_kill_9_then_rerun_runs_no_finished_cell_twice(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("""\
experiments:
  - name: k
    command: norms inputs
    model: tiny-gpt2
    dataset: random
    max-tokens: [12, 13, 14]
    num-samples: 2
""")
    sweep = tmp_path / "sw"
    cmd = [sys.executable, "-m", "qft_cli", "sweep", "run", str(path), "--out", str(sweep), "--jobs", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # the first cell done and the second one started
            if sum(c["status"] == "completed" for c in _cells(sweep).values()) >= 1 and \
                    any(c["status"] == "running" for c in _cells(sweep).values()):
                break
            time.sleep(0.2)
        assert len(_cells(sweep)) >= 2, "the sweep never got to its second cell"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    done_before = {label for label, c in _cells(sweep).items() if c["status"] == "completed"}
    assert done_before
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    cells = _cells(sweep)
    assert len(cells) == 3 and all(c["status"] == "completed" for c in cells.values())
    for label in done_before:
        assert cells[label]["attempts"] == 1  # not run again
        assert len(run_dirs(Path(cells[label]["run_dir"]).parent)) == 1
    completed = [r for r in _runs(sweep) if json.loads((r / "run.json").read_text())["status"] == "completed"]
    assert len(completed) == 3  # each cell completed exactly once
    # the cell killed mid-run: its interrupted run dir is set aside, where qft report does not look
    for r in _runs(sweep):
        if r not in completed:
            assert r.parent.name == ".attempts"
            assert json.loads((r / "run.json").read_text())["status"] == "interrupted"


# ----------------------------------------------------------------------------- submitit and ray

def test_submitit_local_executor_runs_the_grid(tmp_path):
    pytest.importorskip("submitit", reason="the slurm extra (submitit) is not installed")
    grid = _grid(tmp_path, SMALL.replace("max-tokens: 16", "max-tokens: 15"))
    sweep = tmp_path / "sw"
    result = run_sweep(grid, SPECS, sweep, executor="slurm", slurm_cluster="local")
    cells = _cells(sweep)
    assert sorted(c["status"] for c in cells.values()) == ["completed", "completed", "failed"]
    assert all(c["executor"] == "slurm-local" for c in cells.values())
    assert len(result.failed) == 1 and "99" in result.failed[0]["error"]
    assert list((sweep / ".submitit").iterdir())  # submitit's logs are in the sweep folder


def test_slurm_parameters_reach_submitit(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="the slurm extra (submitit) is not installed")
    grid = _grid(tmp_path, """\
slurm: {partition: gpu, account: qml, time: "01:30:00"}
experiments:
  - name: big
    command: norms weights
    model: tiny-gpt2
    slurm: {gpus_per_node: 2, cpus_per_task: 8, mem: 64G, partition: h100}
""")
    resources = dict(grid.cells[0].slurm)
    assert resources == {"partition": "h100", "account": "qml", "time": "01:30:00", "gpus_per_node": 2,
                         "cpus_per_task": 8, "mem": "64G"}
    params = slurm_parameters(resources, "qft-sweep-big")
    assert params["timeout_min"] == 90 and params["slurm_partition"] == "h100"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    executor = submitit_executor(tmp_path / "logs", resources, "qft-sweep-big", cluster="slurm")
    got = executor._executor.parameters
    assert (got["partition"], got["account"], got["time"], got["gpus_per_node"], got["cpus_per_task"], got["mem"]) == \
        ("h100", "qml", 90, 2, 8, "64G")
    assert got["job_name"] == "qft-sweep-big"


def test_ray_local_cluster_runs_the_grid(tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    grid = _grid(tmp_path, SMALL.replace("max-tokens: 16", "max-tokens: 14"))
    sweep = tmp_path / "sw"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run_sweep(grid, SPECS, sweep, executor="ray")
    finally:
        ray.shutdown()
    cells = _cells(sweep)
    assert sorted(c["status"] for c in cells.values()) == ["completed", "completed", "failed"]
    assert all(c["executor"] == "ray" and c["threads"] == 1 for c in cells.values())
    assert len(result.failed) == 1



def test_interrupted_train_cell_resumes_from_its_run_dir(tmp_path, monkeypatch):
    """A half-done train cell continues with ``--resume <its run dir>`` (a stand-in for python
    records the command line and completes the run it was given)."""
    grid = _grid(tmp_path, "experiments:\n  - name: t\n    command: train\n    norm: spectral\n    num-epochs: 2\n")
    sweep = tmp_path / "sw"
    plan = make_plan(grid, SPECS, sweep)
    (cell,) = plan.cells
    run_dir = sweep / cell.key / "20260101-000000-train-qft-1layer-d768"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"command": "train", "status": "interrupted", "options": {}}))
    plan = make_plan(grid, SPECS, sweep)
    assert [c.action for c in plan.cells] == ["resume"]
    record = tmp_path / "argv.json"
    fake = tmp_path / "python"
    fake.write_text(f"""#!{sys.executable}
import json, sys
from pathlib import Path
json.dump(sys.argv[1:], open({str(record)!r}, "w"))
d = Path(sys.argv[sys.argv.index("--resume") + 1])
meta = json.loads((d / "run.json").read_text()); meta["status"] = "completed"
(d / "run.json").write_text(json.dumps(meta))
""")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    result = run_sweep(grid, SPECS, sweep, jobs=1)
    argv = json.loads(record.read_text())
    assert argv[:5] == ["-m", "qft_cli", "train", "--norm", "spectral"]
    assert argv[argv.index("--resume") + 1] == str(run_dir)
    assert [r["status"] for r in result.results] == ["completed"]
    assert run_dirs(sweep / cell.key) == [run_dir]  # continued in place, no second run dir


def test_unknown_model_and_missing_executor_write_nothing(tmp_path, monkeypatch):
    path = tmp_path / "g.yaml"
    path.write_text("experiments:\n  - name: a\n    command: norms weights\n    model:\n      - tiny-gpt2\n"
                    "      - nosuchmodel\n")
    result = runner.invoke(app, ["sweep", "run", str(path), "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: {path}:6: unknown model 'nosuchmodel'")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    path.write_text("experiments:\n  - name: a\n    command: norms weights\n    model: tiny-gpt2\n")
    result = runner.invoke(app, ["sweep", "run", str(path), "--out", str(tmp_path / "sw"), "--executor", "slurm"])
    assert result.exit_code == 2 and ("--slurm-local" in result.output or "qft-cli[slurm]" in result.output)
    assert not (tmp_path / "sw").exists()
