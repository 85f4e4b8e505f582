"""Report section "Runs": failed runs, unreadable tables, recorded warnings and the table of runs."""

from __future__ import annotations

import datetime as _dt
import shlex
from typing import Any

from qft_cli.provenance import provenance_rows
from qft_cli.report.page import _Page, _Raw, _e, _is_synthetic
from qft_cli.report.reading import RunRecord


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
        page.html(f'<div class="warn"><b>{len(bad)} run(s) did not complete</b> (their tables, if any, are shown '
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
        device = meta.get("device") or opts.get("device") or "–"
        argv = meta.get("argv")
        cmdline = shlex.join(str(a) for a in argv) if isinstance(argv, list) else str(argv or "–")
        models = meta.get("models") or []
        rows.append([r.name, r.command, ", ".join(str(m) for m in models) if isinstance(models, list) else str(models),
                     str(opts.get("dataset", meta.get("dataset", "–"))) + (" (synthetic)" if _is_synthetic(meta)
                                                                             and "synthetic" not in str(opts.get("dataset", "")) else ""),
                     r.status, _short_time(meta.get("start_time")), _duration(meta), f"{device} / {opts.get('dtype', '–')}",
                     ", ".join(f"{k} {v}" for k, v in vers.items() if k in ("qft", "torch", "transformers", "python")),
                     _Raw(f"<code>{_e(cmdline)}</code>")])
    page.table(["run", "command", "models", "dataset", "status", "start (UTC)", "duration", "device / dtype",
                "versions", "command line"], rows, cls="runs")
    _provenance_table(page, runs)


def _hashes(short: str, full: str) -> Any:
    """Short hashes with the full ones in a tooltip (``title``)."""
    if short == "–":
        return "–"
    return _Raw(f'<code title="{_e(full)}">{_e(short)}</code>')


def _provenance_table(page: _Page, runs: list[RunRecord]) -> None:
    """Per run: the data (the task actually read, source, hub revision, SHA-256 of each data file)
    and the weights (hub revision, SHA-256 of each weight file) it came from (``run.json`` fields
    ``data``, ``data_files``, ``model_files``; docs/results.md)."""
    metas = {r.name: r.meta for r in runs if r.meta}
    if not metas:
        return
    frame = provenance_rows(metas)
    page.heading(3, "Provenance: data and weights of each run", "provenance")
    page.para("Short SHA-256 hashes (first 12 hex digits; hover for the full hash) of the files each run read, "
              "and the resolved Hugging Face revisions. <code>qft runs verify RUN_DIR</code> rehashes the files "
              "a run recorded and says which changed.")
    rows = [[r["run"], r["data"], r["data_source"], r["data_revision"],
             _hashes(r["data_sha256"], r["data_sha256_full"]), r["model"], r["model_revision"],
             _hashes(r["model_sha256"], r["model_sha256_full"])] for _, r in frame.iterrows()]
    page.table(["run", "data", "data source", "data revision", "data files (sha256)", "models", "model revision",
                "weight files (sha256)"], rows, cls="runs provenance")
