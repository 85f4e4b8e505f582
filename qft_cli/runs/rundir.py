"""Run directories: layout, ``run.json`` metadata and atomic parquet writes.

Layout (the one place that decides it)::

    <out>/<YYYYmmdd-HHMMSS>-<command>-<model>/
        run.json                 command line, options, versions, software (versions, torch
                                 threads, device name, deterministic algorithms), device, dtype,
                                 seed, start/end time (ISO 8601, UTC), status, and the provenance
                                 fields data, data_files, model_files (qft_cli.runs.provenance)
        <table>.parquet          one file per result table (schemas in docs/results.md)

``status`` is ``running`` while the run is in progress, then ``completed``, ``failed`` or
``interrupted``. Tables are written to a temporary file in the same directory and renamed, so a
reader never sees a half-written parquet file.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qft_cli.system.errors import QftInputError
from qft_cli.runs.files import _first_missing, check_writable, write_json_atomic, write_parquet_atomic
from qft_cli.runs.provenance import software_info, versions

RUN_JSON = "run.json"


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def slug(text: str, max_len: int = 60) -> str:
    """File-system-safe short form of a model id or path (``openai-community/gpt2`` -> ``openai-community_gpt2``)."""
    text = str(text).rstrip("/\\")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return (text or "model")[:max_len]


def _software(device: Any) -> dict[str, Any]:
    try:
        return software_info(device if device not in (None, "") else None)
    except Exception:  # an unavailable device named in the options: the CPU's name, fixed by update(device=)
        return software_info("cpu")


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """Read ``run.json`` of a run directory."""
    return json.loads((Path(run_dir) / RUN_JSON).read_text())


@dataclass
class Run:
    """One run directory and its metadata.

    Use as a context manager: ``run.json`` is written with status ``running`` on entry, and with
    ``completed``/``failed``/``interrupted`` and the end time on exit (when that last write fails
    too, e.g. on a full disk, ``run.json`` keeps its previous complete state and the run's own
    error propagates). A :class:`QftInputError`
    raised inside removes the directory: bad input leaves nothing written. A ``KeyboardInterrupt``
    (Ctrl-C, or SIGTERM through ``qft``'s handler) leaves with the attribute ``qft_run_dir`` (this
    run's path, unless an inner run set it), which the CLI prints with the command to resume.
    """

    command: str
    models: list[str]
    options: dict[str, Any]
    out: Path = Path("runs")
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    is_main_process: bool = True

    def create(self) -> Path:
        """Create the run directory and return its path: ``<stamp>-<command>-<model>``, then ``-2``,
        ``-3``, ... when taken; the name is claimed by ``mkdir`` itself, so runs created at once by
        several processes (a sweep) each get their own directory."""
        self._created_root = _first_missing(Path(self.out)) if self.is_main_process else None
        out = check_writable(self.out) if self.is_main_process else Path(self.out)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        model_part = slug(self.models[0]) if self.models else "none"
        if len(self.models) > 1:
            model_part += f"-and-{len(self.models) - 1}-more"
        base = f"{stamp}-{self.command.replace(' ', '-')}-{model_part}"
        i = 1
        while True:  # mkdir itself claims the name: two processes in the same second never share one
            path = out / (base if i == 1 else f"{base}-{i}")
            if self.is_main_process:
                try:
                    path.mkdir(parents=True)
                    break
                except FileExistsError:
                    pass
            elif not path.exists():
                break
            i += 1
        self.path = path
        return path

    def _remove_created_out(self) -> None:
        # remove the (now empty) --out directories that create() made, innermost first
        root = getattr(self, "_created_root", None)
        if root is None:
            return
        d = Path(self.out)
        while True:
            try:
                d.rmdir()
            except OSError:
                return
            if d == root:
                return
            d = d.parent

    def _write(self) -> None:
        if self.is_main_process and self.path is not None:
            write_json_atomic(self.path / RUN_JSON, self.meta)

    def __enter__(self) -> "Run":
        if self.path is None:
            self.create()
        self.meta = {
            "command": self.command,
            "argv": self.argv,
            "models": self.models,
            "options": self.options,
            "versions": versions(),
            "software": _software(self.options.get("device") if isinstance(self.options, dict) else None),
            "start_time": _utc_now(),
            "end_time": None,
            "status": "running",
            **self.meta,
        }
        self._write()
        return self

    def update(self, **fields: Any) -> None:
        """Add or replace metadata fields and rewrite ``run.json`` (a ``device`` field also sets
        ``software.device_name``)."""
        self.meta.update(fields)
        if "device" in fields and isinstance(self.meta.get("software"), dict):
            from qft_cli.runs.provenance import device_name

            self.meta["software"]["device_name"] = device_name(fields["device"])
        self._write()

    def write_table(self, name: str, df: pd.DataFrame) -> Path | None:
        """Write result table ``name`` (``name.parquet``) atomically; only the main process writes."""
        if not self.is_main_process:
            return None
        assert self.path is not None
        return write_parquet_atomic(df, self.path / f"{name}.parquet")

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and issubclass(exc_type, QftInputError):
            if self.is_main_process and self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
                self._remove_created_out()
            return False
        if exc_type is None:
            status = "completed"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "interrupted"
            if exc is not None and self.is_main_process and getattr(exc, "qft_run_dir", None) is None:
                exc.qft_run_dir = self.path  # the innermost run: the CLI prints it with the resume command
        else:
            status = "failed"
            self.meta["error"] = f"{exc_type.__name__}: {exc}"
        self.meta["status"] = status
        self.meta["end_time"] = _utc_now()
        if isinstance(self.meta.get("software"), dict):  # as they were while the run worked
            import torch

            self.meta["software"].update(torch_threads=torch.get_num_threads(),
                                         deterministic_algorithms=bool(torch.are_deterministic_algorithms_enabled()))
        if exc is not None and self.is_main_process and getattr(exc, "qft_run_dir", None) is None:
            try:
                exc.qft_run_dir = self.path  # the CLI names it (a full disk: the command to resume)
            except AttributeError:  # an exception type without a __dict__
                pass
        try:
            self._write()
        except OSError:
            if exc_type is None:
                raise
            # the run already failed (a full disk fails this write too): run.json keeps its last
            # complete state (written atomically) and the original error propagates
        return False
