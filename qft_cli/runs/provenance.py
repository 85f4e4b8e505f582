"""Provenance: which bytes a run used (data files, weight files, hub revisions) and the software.

Everything here is a pure function of the files and the environment; the workflows put the
results into ``run.json`` (schema in docs/results.md):

* ``data``: ``{"dataset", "task", "source": "local"|"hub"|"random"|"synthetic", "hub_id",
  "config", "split", "revision"}`` (:func:`data_record`), ``task`` being the task actually read;
* ``data_files``: ``[{"path", "size_bytes", "sha256"}]`` for every data file read (:func:`file_records`);
* ``model_files``: ``[{"model", "kind", "revision", "files": [{"path", "size_bytes", "sha256"}]}]``
  (:func:`model_files_record`): the hub commit hash for hub models, the SHA-256 of every weight
  file for local directories, GGUF files and the embedded MiniLM;
* ``software``: library versions, ``torch_threads``, ``device_name``, ``deterministic_algorithms``
  (:func:`software_info`).

SHA-256 (FIPS 180-4, :mod:`hashlib`) of a file of at least :data:`CACHE_MIN_BYTES` is cached by
``(absolute path, size, mtime_ns)`` in ``<cache>/sha256.json`` (:func:`cache_dir`), so that a
13 GB checkpoint is hashed once, not on every run. A file rewritten in place with the same size and
modification time would be missed by the cache: :func:`verify_run` therefore always rehashes.
"""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from qft_cli import __version__
from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn
from qft_cli.runs.files import cached_sha256, checkpoint_files, sha256_file

#: Weight files hashed for a local model directory (the checkpoint formats qft and transformers read).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "*.pth")
#: ``data.source`` values.
DATA_SOURCES = ("local", "hub", "random", "synthetic")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ----------------------------------------------------------------------------- hashing

def file_record(path: Path, sha256: Optional[str] = None, progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """``{"path": absolute path, "size_bytes": int, "sha256": hex}`` of one file (``sha256`` given:
    trusted, e.g. the blob name of a Hugging Face cache file).

    Raises:
        QftInputError: the file does not exist or cannot be read.
    """
    path = Path(path).resolve()
    try:
        return {"path": str(path), "size_bytes": path.stat().st_size,
                "sha256": sha256 or cached_sha256(path, progress=progress)}
    except OSError as err:
        raise QftInputError(f"{path} could not be read to record its SHA-256 ({err.strerror}): check the file") from None


def file_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """:func:`file_record` of each distinct path, in the given order."""
    seen, out = set(), []
    for p in paths:
        key = str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            out.append(file_record(Path(p)))
    return out


# ----------------------------------------------------------------------------- data

def data_record(dataset: str, *, task: Optional[str] = None, source: str = "local", hub_id: Optional[str] = None,
                config: Optional[str] = None, split: Optional[list[str]] = None,
                revision: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    """The ``data`` field of ``run.json`` (``extra`` keys such as ``sizes`` or ``notes`` are kept after
    the schema keys).

    Raises:
        ValueError: ``source`` is not one of :data:`DATA_SOURCES` (a programming error).
    """
    if source not in DATA_SOURCES:
        raise ValueError(f"data source {source!r} is not one of {DATA_SOURCES}")
    return {"dataset": dataset, "task": task, "source": source, "hub_id": hub_id, "config": config,
            "split": list(split) if split is not None else None, "revision": revision, **extra}


def hub_dataset_revision(ds: Any) -> Optional[str]:
    """The resolved commit hash of a dataset loaded by :func:`datasets.load_dataset` from the hub,
    read from its cache files: ``datasets`` caches a hub dataset under
    ``<owner>___<name>/<config>/<version>/<commit hash>/``. ``None`` when it cannot be told (an
    in-memory dataset, a cache layout without a 40-hex directory).

    Args:
        ds: a ``datasets.Dataset`` or ``DatasetDict`` (anything with ``cache_files``).
    """
    files = getattr(ds, "cache_files", None)
    if isinstance(files, dict):  # DatasetDict: {split: [{"filename": ...}]}
        files = [f for split_files in files.values() for f in split_files]
    for f in files or []:
        name = f.get("filename") if isinstance(f, dict) else None
        if name:
            for part in reversed(Path(name).parent.parts):
                if _HEX40.match(part):
                    return part
    return None


def hub_dataset_files(ds: Any) -> list[Path]:
    """The cache files (arrow) a hub dataset was read from."""
    files = getattr(ds, "cache_files", None)
    if isinstance(files, dict):
        files = [f for split_files in files.values() for f in split_files]
    return [Path(f["filename"]) for f in files or [] if isinstance(f, dict) and f.get("filename")]


# ----------------------------------------------------------------------------- models

def _hub_blob_sha256(path: Path) -> Optional[str]:
    """The SHA-256 of a Hugging Face cache file from its blob name (LFS blobs are named by it)."""
    if path.is_symlink():
        name = Path(os.path.realpath(path)).name
        if _HEX64.match(name):
            return name
    return None


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a model directory: those qft reads (:func:`qft_cli.runs.files.checkpoint_files`:
    the index's shards, ``model.safetensors``, ...); where that rule finds none or cannot choose,
    every file matching :data:`WEIGHT_PATTERNS` (sorted, not recursive)."""

    directory = Path(directory)
    try:
        files = checkpoint_files(directory)
    except QftInputError:
        files = []
    if files:
        return sorted(files)
    found = {p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern) if p.is_file()}
    return sorted(found)


def hub_model_revision(repo_id: str) -> Optional[tuple[str, Path]]:
    """``(commit hash, snapshot directory)`` of a hub model in the local Hugging Face cache, from
    its ``config.json`` (no network); ``None`` when it is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid id, no huggingface_hub
        return None
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return (snapshot.name, snapshot) if _HEX40.match(snapshot.name) else None


def model_files_record(name: str, kind: str, location: str, *, revision: Optional[str] = None,
                       progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """One entry of ``model_files``: the weights a model named ``name`` was read from.

    Args:
        kind: the :class:`qft_cli.models.names.ModelSource` kind: ``tiny`` (built from a seed: no files),
            ``hub`` (``location`` a hub id: the cached revision, and the weight files of that
            snapshot with the SHA-256 their blob names carry), ``local``/``minilm`` (a directory:
            SHA-256 of each weight file) or ``gguf`` (a ``.gguf`` file, or a directory holding it).
        revision: the commit hash when the caller knows it (``model.config._commit_hash``).
        progress: reports the hashing of large files (:func:`sha256_file`).

    Raises:
        QftInputError: a weight file cannot be read.
    """
    files: list[dict[str, Any]] = []
    if kind == "hub":
        cached = hub_model_revision(location)
        if cached is not None:
            revision = revision or cached[0]
            if cached[0] == revision:
                files = [file_record(p, _hub_blob_sha256(p)) for p in weight_files(cached[1])]
    elif kind != "tiny":
        path = Path(location)
        paths = [path] if path.is_file() else weight_files(path) if path.is_dir() else []
        files = [file_record(p, progress=progress) for p in paths]
    return {"model": name, "kind": kind, "revision": revision, "files": files}


def model_files_for(source: Any, model: Any = None, progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """:func:`model_files_record` of a :class:`qft_cli.models.names.ModelSource` (``model``: the loaded
    model, whose ``config._commit_hash`` names the hub revision it was loaded from)."""
    revision = getattr(getattr(model, "config", None), "_commit_hash", None) if source.kind == "hub" else None
    return model_files_record(source.name, source.kind, source.location, revision=revision, progress=progress)


# ----------------------------------------------------------------------------- software

def device_name(device: Any = None) -> str:
    """A human name of ``device`` (``torch.device`` or its string; ``None``/``auto``: CUDA when
    present, else CPU): the GPU model for CUDA (``torch.cuda.get_device_name``), ``Apple MPS``, or
    the CPU model (``/proc/cpuinfo`` model name, else :func:`platform.processor`)."""
    import torch

    text = str(device) if device is not None else "auto"
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and torch.cuda.is_available():
        index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
        return torch.cuda.get_device_name(index)
    if text.startswith("mps"):
        return "Apple MPS"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return "CPU: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU: " + (platform.processor() or platform.machine() or "unknown")


def software_info(device: Any = None) -> dict[str, Any]:
    """The ``software`` field of ``run.json``: :func:`qft_cli.runs.provenance.versions` plus ``torch_threads``
    (``torch.get_num_threads()``), ``device_name`` (:func:`device_name`) and
    ``deterministic_algorithms`` (``torch.are_deterministic_algorithms_enabled()``)."""
    import torch

    return {**versions(), "torch_threads": torch.get_num_threads(), "device_name": device_name(device),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled())}


# ----------------------------------------------------------------------------- resume

#: ``run.json`` key holding the data files a resumed run recorded before it was interrupted.
RESUMED_KEY = "data_files_before_resume"


def resume_meta(run_dir: Path) -> dict[str, Any]:
    """The starting metadata of a resumed run: ``{"resumed": True}`` and, when the interrupted
    run recorded them, its data files under :data:`RESUMED_KEY` (checked by :func:`check_resumed_data`)."""
    meta: dict[str, Any] = {"resumed": True}
    try:
        before = json.loads((Path(run_dir) / "run.json").read_text())
    except (OSError, ValueError):
        return meta
    if isinstance(before, dict) and isinstance(before.get("data_files"), list):
        meta[RESUMED_KEY] = before[RESUMED_KEY] if isinstance(before.get(RESUMED_KEY), list) else before["data_files"]
    return meta


def check_resumed_data(meta: dict[str, Any], data_files: list[dict[str, Any]]) -> None:
    """Refuse to resume a run on other data than it started with.

    Args:
        meta: the run's metadata (``run.meta``; see :func:`resume_meta`).
        data_files: the :func:`file_records` of the data just read.

    Raises:
        QftInputError: the set of data-file hashes differs from the one recorded before the interruption.
    """
    before = meta.get(RESUMED_KEY)
    if not isinstance(before, list):
        return
    old = {str(f.get("sha256")): f.get("path") for f in before if isinstance(f, dict)}
    new = {str(f.get("sha256")): f.get("path") for f in data_files}
    if set(old) != set(new):
        changed = sorted({str(p) for h, p in {**old, **new}.items() if (h in old) != (h in new)})
        raise QftInputError(f"--resume: the data files differ from those the run started with "
                            f"({', '.join(Path(p).name for p in changed[:3])}{' ...' if len(changed) > 3 else ''} "
                            "changed sha256): resume with the same data, or start a new run")


# ----------------------------------------------------------------------------- verify

def recorded_files(meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(what, file entry)`` of every file a ``run.json`` records (``what``: ``data`` or
    ``model <name>``)."""
    out = [("data", f) for f in meta.get("data_files") or [] if isinstance(f, dict)]
    for m in meta.get("model_files") or []:
        if isinstance(m, dict):
            out += [(f"model {m.get('model')}", f) for f in m.get("files") or [] if isinstance(f, dict)]
    return out


def verify_files(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Rehash (never from the cache) every file recorded in ``meta`` (a ``run.json``).

    Returns:
        One row per file: ``what, path, status`` (``unchanged``, ``changed`` or ``missing``),
        ``recorded_sha256``, ``sha256`` (``None`` when missing), ``recorded_size_bytes``, ``size_bytes``.
    """
    rows = []
    for what, entry in recorded_files(meta):
        path = Path(str(entry.get("path")))
        row = {"what": what, "path": str(path), "recorded_sha256": entry.get("sha256"),
               "recorded_size_bytes": entry.get("size_bytes"), "sha256": None, "size_bytes": None}
        if not path.is_file():
            row["status"] = "missing"
        else:
            row["size_bytes"] = path.stat().st_size
            try:
                row["sha256"] = sha256_file(path)
            except OSError:
                row["status"] = "missing"
                rows.append(row)
                continue
            row["status"] = "unchanged" if row["sha256"] == entry.get("sha256") else "changed"
        rows.append(row)
    return rows


def verify_run(run_dir: Path) -> list[dict[str, Any]]:
    """:func:`verify_files` of the ``run.json`` in ``run_dir``.

    Raises:
        QftInputError: no readable ``run.json``, or one that records no files.
    """
    run_json = Path(run_dir) / "run.json"
    if not run_json.is_file():
        raise QftInputError(f"{run_dir} is not a run directory (no run.json): pass a directory written by qft")
    try:
        meta = json.loads(run_json.read_text())
    except ValueError as err:
        raise QftInputError(f"{run_json} is not valid JSON ({err}): pass a directory written by qft") from None
    if not isinstance(meta, dict):
        raise QftInputError(f"{run_json} is not a run.json object: pass a directory written by qft")
    if not recorded_files(meta):
        raise QftInputError(f"{run_json} records no data or model files (a run from before qft recorded them, or "
                            "one without files): nothing to verify")
    return verify_files(meta)


# ----------------------------------------------------------------------------- display

def short_hash(digest: Optional[str], n: int = 12) -> str:
    """The first ``n`` hex digits of a hash (``–`` for none)."""
    return str(digest)[:n] if digest else "–"


def versions() -> dict[str, str]:
    """Versions of qft and the libraries that shape its numbers."""
    import torch
    import transformers

    out = {"qft": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__}
    for name in ("datasets", "accelerate", "tokenizers"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # pragma: no cover - optional
            pass
    return out
