"""A run stopped with SIGTERM (``timeout``, batch schedulers) records status ``interrupted``."""

import json
import signal
import subprocess
import sys
import time

import pytest


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_marks_run_interrupted(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "qft_cli", "norms", "inputs", "tiny-llama", "--dataset", "random",
                             "--max-tokens", "1000", "--batch-size", "1", "--layers", "all", "--out", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list(out.glob("*/run.json")):
            time.sleep(0.2)
        assert list(out.glob("*/run.json")), "the run never started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    (run_json,) = out.glob("*/run.json")
    meta = json.loads(run_json.read_text())
    assert meta["status"] == "interrupted" and meta["end_time"]
    assert not list(run_json.parent.glob("*.parquet"))
    assert proc.returncode != 0
    # stderr names the run directory and the exact command to run it again (norms have no --resume)
    err = proc.stderr.read().decode().splitlines()
    assert f"interrupted: run directory {run_json.parent} (status interrupted; this command has no --resume)" in err
    assert (f"re-run with: qft norms inputs tiny-llama --dataset random --max-tokens 1000 --batch-size 1 "
            f"--layers all --out {out} -q") in err
