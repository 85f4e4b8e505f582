"""A cell's key: what its result depends on, hashed, so that done cells are skipped by content.

The key is the first :data:`KEY_HEX` hex digits of the SHA-256 (FIPS 180-4) of the canonical JSON
(sorted keys, no spaces) of::

    {"command": "norms inputs", "models": [...], "options": {every option of the command that
     shapes the result: the file's value, else the CLI's default}, "qft_version": "...",
     "inputs": {"models": [model_files_record of each MODEL], "files": [file_record of every
     option value naming a file, or each file under a directory]}}

Options the sweep sets itself (``--out``, ``--threads``, ``--quiet``, ``--format``, ``--resume``)
are not part of it: a thread count or an output folder does not change what a cell computes.
Model fingerprints are those ``run.json`` records (:func:`qft_cli.runs.provenance.model_files_record`:
the SHA-256 of local weight files, the cached hub revision of a hub id, the name of a tiny
model); file hashes come from :func:`qft_cli.runs.provenance.file_record` (the cached SHA-256 of
:mod:`qft_cli.runs.files`), so a 13 GB checkpoint is hashed once, not at every plan.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional

from qft_cli import __version__
from qft_cli.runs.provenance import file_record, model_files_record
from qft_cli.system.errors import QftInputError
from qft_cli.sweep.grid import RESERVED_OPTIONS, Cell, CommandSpec

#: Hex digits of a cell key (64 bits: a collision needs ~4e9 cells).
KEY_HEX = 16
#: ``name -> (kind, location)`` of a model name (the CLI passes qft's model resolver).
ModelResolver = Callable[[str], tuple[str, str]]


def default_resolver(name: str) -> tuple[str, str]:
    """``(kind, location)`` of a model name without qft's alias table: an existing ``.gguf`` file
    or directory is ``local``/``gguf``, ``owner/name`` a ``hub`` id, anything else a name whose
    meaning qft's version fixes (``tiny``)."""
    path = Path(name).expanduser()
    if path.is_file():
        return ("gguf", str(path.resolve()))
    if path.is_dir():
        return ("local", str(path.resolve()))
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return ("hub", name)
    return ("tiny", name)


def model_fingerprint(name: str, resolve: Optional[ModelResolver] = None) -> dict[str, Any]:
    """The ``model_files`` entry ``run.json`` would record for model ``name`` (its weight-file
    SHA-256s or hub revision; see :func:`qft_cli.runs.provenance.model_files_record`).

    Raises:
        QftInputError: an unknown model name (from ``resolve``) or an unreadable weight file.
    """
    kind, location = (resolve or default_resolver)(name)
    record = model_files_record(name, kind, location)
    return {"model": record["model"], "kind": record["kind"], "revision": record["revision"],
            "files": [{"sha256": f["sha256"], "size_bytes": f["size_bytes"]} for f in record["files"]]}


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                         p.relative_to(path).parts))


def input_files(cell: Cell) -> list[Path]:
    """Every existing file an option of ``cell`` names (a file, or the files under a directory,
    hidden ones skipped), in option order."""
    out: list[Path] = []
    for _, value in cell.options:
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v.startswith("/"):
                p = Path(v)
                if p.exists():
                    out += _files_under(p)
    return out


def resolved_options(cell: Cell, spec: CommandSpec) -> dict[str, Any]:
    """Every option of the command but the sweep's own: the file's value, else the CLI default."""
    given = cell.option_dict()
    out = {}
    for name, opt in spec.options.items():
        if name in RESERVED_OPTIONS:
            continue
        value = given.get(name, opt.default)
        out[name] = str(value) if opt.kind == "path" and value is not None else value
    return out


def key_material(cell: Cell, spec: CommandSpec, resolve: Optional[ModelResolver] = None) -> dict[str, Any]:
    """What a cell's key hashes (module docstring).

    Raises:
        QftInputError: an unknown model or unreadable input file, named with the experiment's line.
    """
    try:
        models = [model_fingerprint(m, resolve) for m in cell.models]
    except QftInputError as err:
        raise QftInputError(f"{cell.model_source or cell.source}: {err}") from None
    try:
        files = [{"sha256": r["sha256"], "size_bytes": r["size_bytes"]}
                 for r in (file_record(p) for p in input_files(cell))]
    except QftInputError as err:
        raise QftInputError(f"{cell.source}: {err}") from None
    return {"command": cell.command, "models": list(cell.models), "options": resolved_options(cell, spec),
            "qft_version": __version__, "inputs": {"models": models, "files": files}}


def cell_key(cell: Cell, spec: CommandSpec, resolve: Optional[ModelResolver] = None) -> str:
    """The cell's key: :data:`KEY_HEX` hex digits of the SHA-256 of :func:`key_material`'s JSON."""
    text = json.dumps(key_material(cell, spec, resolve), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_HEX]
