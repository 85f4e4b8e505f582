"""Report section "Runs": failed runs, unreadable tables, recorded warnings and the table of runs."""

from __future__ import annotations

import datetime as _dt
import math
import shlex
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from qft_cli.report.page import _e, _is_synthetic, _Page, _Raw, plural
from qft_cli.report.reading import RunRecord, dataset_and_task


def _short_time(iso: Any) -> str:
    try:
        t = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return str(iso) if iso else "–"
    if t.tzinfo is not None:
        t = t.astimezone(_dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def _duration(meta: dict[str, Any]) -> str:
    try:
        start = _dt.datetime.fromisoformat(str(meta["start_time"]))
        end = _dt.datetime.fromisoformat(str(meta["end_time"]))
    except (KeyError, TypeError, ValueError):
        return "–"
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _metadata_section(page: _Page, runs: list[RunRecord]) -> None:
    page.heading(2, "Runs", "runs")
    bad = [r for r in runs if r.status != "completed" or not r.meta]
    if bad:
        items = []
        for r in bad:
            reason = r.meta.get("error") or "; ".join(r.problems) or (
                "still running, or killed before it could record its end" if r.status == "running" else "")
            items.append(f"<li><b>{_e(r.status)}</b>: <code>{_e(r.path)}</code>"
                         + (f" — {_e(reason)}" if reason else "") + "</li>")
        page.html(f'<div class="warn"><b>{plural(len(bad), "run")} did not complete</b> (their tables, if any, are shown '
                  f"above where readable):<ul>{''.join(items)}</ul></div>")
    problems = [(r, p) for r in runs if r.meta for p in r.problems]
    if problems:
        page.html('<div class="warn"><b>Tables that could not be read:</b><ul>' + "".join(
            f"<li><code>{_e(r.name)}</code>: {_e(p)}</li>" for r, p in problems) + "</ul></div>")
    warned = [(r, w) for r in runs if r.meta for w in (r.meta.get("warnings") or [])]
    if warned:
        page.html(f'<div class="warn"><b>Warnings recorded by the runs ({len(warned)}):</b><ul>' + "".join(
            f"<li><code>{_e(r.name)}</code>: {_e(w)}</li>" for r, w in warned[:50]) + "</ul>"
            + (f"<p>… and {len(warned) - 50} more in the runs' run.json.</p>" if len(warned) > 50 else "") + "</div>")
    rows = []
    for r in runs:
        meta, opts = r.meta, r.meta.get("options") or {}
        vers = meta.get("versions") or {}
        argv = meta.get("argv")
        cmdline = shlex.join(str(a) for a in argv) if isinstance(argv, list) else str(argv or "–")
        models = meta.get("models") or []
        rows.append([r.name, r.command, ", ".join(str(m) for m in models) if isinstance(models, list) else str(models),
                     str(opts.get("dataset", meta.get("dataset", "–"))) + (" (synthetic)" if _is_synthetic(meta)
                                                                             and "synthetic" not in str(opts.get("dataset", "")) else ""),
                     r.status, _short_time(meta.get("start_time")), _duration(meta), device_dtype_text(r),
                     ", ".join(f"{k} {v}" for k, v in vers.items() if k in ("qft", "torch", "transformers", "python")),
                     _Raw(f"<code>{_e(cmdline)}</code>")])
    page.table(["run", "command", "models", "dataset", "status", "start (UTC)", "duration", "device / dtype",
                "versions", "command line"], rows, cls="runs")
    files = provenance_table(runs)
    if len(files):
        page.html("<h4>Data and weights each run read</h4>")
        page.para("The first characters of each file's sha256 (or of the hub revision); hover for the full hash, "
                  "path and size, or open the list below.",
                  "muted")
        page.table(["run", "data read (sha256)", "weights (revision or sha256)"],
                   [[r.name, _Raw(_data_cell(r.meta)), _Raw(_model_cell(r.meta))] for r in runs
                    if r.meta and (r.meta.get("data_files") or r.meta.get("model_files") or r.meta.get("data"))],
                   cls="provenance-short")
        page.html(f"<details><summary>Every recorded file with its full sha256 ({plural(len(files), 'file')})"
                  "</summary>")
        page.table(["run", "kind", "model / dataset", "path", "size (bytes)", "sha256 or revision"],
                   [[f["run"], f["kind"], f["name"], _Raw(f"<code>{_e(f['path'])}</code>"), f["size_bytes"],
                     _Raw(f"<code>{_e(f['sha256'])}</code>")] for _, f in files.iterrows()], cls="provenance")
        page.html("</details>")


#: Characters of a sha256 or commit hash shown in the run table (the full hash is in the tooltip).
SHORT_HASH = 10


#: Storage types that are plain floats (ggml's and torch's names), not a quantisation.
_FLOAT_STORAGE = ("F32", "F16", "BF16", "F64", "float32", "float16", "bfloat16", "float64")


def device_dtype_text(run: RunRecord) -> str:
    """``device / dtype`` of a run for the Runs table.

    ``norms weights`` without ``--dtype`` reads every tensor as stored: shown as
    ``as stored (bfloat16)`` with the dtypes found in its ``norms_weights`` table (``dtype`` column;
    plain ``as stored`` for runs older than that column); a quantised GGUF says its types
    (``as stored (Q4_1 GGUF, dequantised to float32)``, from ``quant_type``). The device gains the GPU's name where
    run.json records ``software.device_name``.
    """
    meta, opts = run.meta, run.meta.get("options") or {}
    device = str(meta.get("device") or opts.get("device") or "–")
    name = (meta.get("software") or {}).get("device_name")
    if name and str(name) not in device:
        device += f" ({name})"
    dtype = meta.get("dtype") if meta.get("dtype") is not None else opts.get("dtype")
    if dtype in (None, "stored", "as stored"):
        table = run.tables.get("norms_weights")
        found = (sorted({str(d) for d in table["dtype"].dropna()}) if table is not None and "dtype" in table.columns
                 else [])
        quant = (sorted({str(q) for q in table["quant_type"].dropna()} - set(_FLOAT_STORAGE))
                 if table is not None and "quant_type" in table.columns else [])
        if quant:  # a quantised GGUF: say its types, and what the norms were taken of
            found = [f"{', '.join(quant)} GGUF, dequantised to {', '.join(found) or 'float32'}"]
        dtype = "as stored" + (f" ({', '.join(found)})" if found else "") if run.command == "norms weights" or found \
            else "–"
    return f"{device} / {dtype}"


def _hash_span(label: str, full: str, tooltip: str) -> str:
    short = str(full)[:SHORT_HASH]
    return (f'<span class="hash" title="{_e(tooltip)}">{_e(label)}{" " if label else ""}'
            f"<code>{_e(short)}</code></span>")


def _data_cell(meta: dict[str, Any]) -> str:
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    parts = []
    if data:
        name = "/".join(str(data[k]) for k in ("dataset", "task") if data.get(k))
        where = str(data.get("source") or "")
        if data.get("hub_id"):
            where += f" {data['hub_id']}" + (f" ({data['config']})" if data.get("config") else "")
        parts.append(f"{_e(name)}" + (f' <span class="muted">{_e(where.strip())}</span>' if where.strip() else ""))
        if data.get("revision"):
            parts.append(_hash_span("rev", str(data["revision"]), f"revision {data['revision']}"))
    for f in meta.get("data_files") or []:
        if isinstance(f, dict) and f.get("sha256"):
            path = str(f.get("path", ""))
            parts.append(_hash_span(Path(path).name, str(f["sha256"]),
                                    f"{path}\n{f.get('size_bytes', '?')} bytes\nsha256 {f['sha256']}"))
    return "<br>".join(parts) if parts else "–"


def _model_cell(meta: dict[str, Any]) -> str:
    parts = []
    for m in meta.get("model_files") or []:
        if not isinstance(m, dict):
            continue
        model = str(m.get("model", "?"))
        if m.get("revision"):
            parts.append(_hash_span(f"{model} rev", str(m["revision"]), f"{model}: hub revision {m['revision']}"))
        for f in m.get("files") or []:
            if isinstance(f, dict) and f.get("sha256"):
                path = str(f.get("path", ""))
                parts.append(_hash_span(f"{model} {Path(path).name}", str(f["sha256"]),
                                        f"{path}\n{f.get('size_bytes', '?')} bytes\nsha256 {f['sha256']}"))
        if not m.get("revision") and not m.get("files"):
            parts.append(f"{_e(model)} <span class=\"muted\">({_e(m.get('kind') or 'no files recorded')})</span>")
    return "<br>".join(parts) if parts else "–"


def provenance_table(runs: list[RunRecord]) -> pd.DataFrame:
    """Every data and weight file recorded in the runs' run.json (issue 12), with full hashes.

    Returns:
        Columns ``run, kind`` (``data``/``weights``), ``name`` (dataset/task or model), ``path``,
        ``size_bytes`` (NaN where not recorded), ``sha256`` (or ``revision <hash>`` for hub revisions).
    """
    rows: list[dict[str, Any]] = []
    for r in runs:
        meta = r.meta
        data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        name = "/".join(str(data[k]) for k in ("dataset", "task") if data.get(k))
        if data.get("revision"):
            rows.append({"run": r.name, "kind": "data", "name": name, "path": str(data.get("hub_id") or ""),
                         "size_bytes": math.nan, "sha256": f"revision {data['revision']}"})
        for f in meta.get("data_files") or []:
            if isinstance(f, dict):
                rows.append({"run": r.name, "kind": "data", "name": name, "path": str(f.get("path", "")),
                             "size_bytes": _float(f.get("size_bytes")), "sha256": str(f.get("sha256", ""))})
        for m in meta.get("model_files") or []:
            if not isinstance(m, dict):
                continue
            if m.get("revision"):
                rows.append({"run": r.name, "kind": "weights", "name": str(m.get("model", "")), "path": "",
                             "size_bytes": math.nan, "sha256": f"revision {m['revision']}"})
            for f in m.get("files") or []:
                if isinstance(f, dict):
                    rows.append({"run": r.name, "kind": "weights", "name": str(m.get("model", "")),
                                 "path": str(f.get("path", "")), "size_bytes": _float(f.get("size_bytes")),
                                 "sha256": str(f.get("sha256", ""))})
    return pd.DataFrame(rows, columns=["run", "kind", "name", "path", "size_bytes", "sha256"])


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def data_name(meta: dict[str, Any]) -> str:
    """``dataset/task`` a run says it read (:func:`qft_cli.report.reading.dataset_and_task`); '' when unknown."""
    return "/".join(x for x in dataset_and_task(meta) if x)


def data_file_mismatches(runs: Iterable[RunRecord]) -> list[tuple[str, list[list[str]]]]:
    """Dataset/task names under which runs read different data files (issue 12).

    Runs are compared by the sorted sha256 values of their ``data_files``; runs that recorded no
    hashes are not compared. Returns ``(name, groups)`` per such name, each group the run names
    that read the same files, groups in order of first appearance.
    """
    by_name: dict[str, dict[tuple[str, ...], list[str]]] = {}
    for r in runs:
        hashes = tuple(sorted(str(f.get("sha256")) for f in (r.meta.get("data_files") or [])
                              if isinstance(f, dict) and f.get("sha256")))
        name = data_name(r.meta)
        if not hashes or not name:
            continue
        by_name.setdefault(name, {}).setdefault(hashes, []).append(r.name)
    return [(name, list(groups.values())) for name, groups in by_name.items() if len(groups) > 1]


def _mismatch_text(name: str, groups: list[list[str]]) -> str:
    listed = "; ".join(", ".join(f"<code>{_e(n)}</code>" for n in g) for g in groups)
    return (f"runs named <b>{_e(name)}</b> read {len(groups)} different sets of data files (sha256), so charts "
            f"that put them side by side compare different data: {listed} (one group per set; see the data column "
            "of the Runs table).")
