"""File utilities every stage needs: atomic JSON/parquet writes, the cache directory, cached
SHA-256 hashing, and the weight files of a checkpoint directory.

This module imports nothing else of qft but :mod:`qft_cli.system`, so loading (models), provenance
and the run directory can all use it without an import circle (docs/architecture.md).

SHA-256 (FIPS 180-4, :mod:`hashlib`) of a file of at least :data:`CACHE_MIN_BYTES` is cached by
``(absolute path, size, mtime_ns)`` in ``<cache>/sha256.json`` (:func:`cache_dir`), so that a
13 GB checkpoint is hashed once, not on every run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qft_cli.system.errors import QftInputError
from qft_cli.system.progress import ProgressFn, report


def check_writable(out: Path, create: bool = True) -> Path:
    """Make sure ``out`` exists (creating it) and accepts new files.

    With ``create=False`` nothing is created: a missing ``out`` passes when its nearest existing
    parent directory accepts new files (bad input found later must leave nothing written).

    Raises:
        QftInputError: ``out`` is a file, or cannot be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QftInputError(f"--out {out} is a file, not a directory: pass a directory path")
    try:
        if create:
            out.mkdir(parents=True, exist_ok=True)
            target = out
        else:
            target = out
            while not target.exists() and target != target.parent:
                target = target.parent
            if not target.is_dir():
                raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=target, prefix=".qft-write-test-"):
            pass
    except OSError as err:
        raise QftInputError(f"--out {out} is not writable ({err.strerror}): pass a directory you can write to") from None
    return out


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (None when ``path`` exists)."""
    missing = None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def read_json_file(path: Path) -> Any:
    """The JSON value in ``path`` (a model's ``config.json``, a checkpoint index).

    Raises:
        QftInputError: the file is not valid JSON (truncated, damaged), naming the file and where
            the parser stopped; or it cannot be read.
    """
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except json.JSONDecodeError as err:
        raise QftInputError(f"{path} is not valid JSON ({err.msg}: line {err.lineno} column {err.colno}): "
                            "the file is damaged or truncated; download or write it again") from None
    except (OSError, UnicodeDecodeError) as err:
        raise QftInputError(f"{path} could not be read ({type(err).__name__}: {err}): check the file") from None


#: errno values of a full filesystem: no space left (ENOSPC), disk quota exceeded (EDQUOT).
DISK_FULL_ERRNOS = tuple(e for e in (getattr(errno, "ENOSPC", None), getattr(errno, "EDQUOT", None)) if e)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")


def disk_full_error(err: Optional[BaseException]) -> Optional[BaseException]:
    """The exception in ``err``'s chain (itself, ``__cause__``, ``__context__``) that says the
    filesystem is full: an ``OSError`` with errno ENOSPC/EDQUOT, or another library's wrapper of one
    (safetensors' ``SafetensorError: ... No space left on device (os error 28)``); ``None`` if none."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        if any(text in str(err) for text in _DISK_FULL_TEXT):
            return err
        err = err.__cause__ or err.__context__
    return None


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp would leave 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """A torch tensor or NumPy value as a plain Python value (0-d: a scalar, else a list)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, (np.generic, np.ndarray)):
        return value.item() if np.ndim(value) == 0 else value.tolist()
    return value


def arrow_table(df: pd.DataFrame, name: str = "table") -> pa.Table:
    """``df`` as a pyarrow table; values of object columns that are torch tensors or NumPy
    scalars/arrays are converted to plain Python values first (0-d: a scalar, else a list).

    Raises:
        TypeError: a column still holds values parquet cannot store in one column (numbers mixed with
            strings, unknown objects), naming the column and the Python types found.
    """
    objects = [c for c in df.columns if df[c].dtype == object]
    if objects:
        df = df.copy()
        for col in objects:
            df[col] = df[col].map(_plain)
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        for col in objects:
            try:
                pa.array(df[col], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                kinds = sorted({type(v).__name__ for v in df[col] if v is not None})
                raise TypeError(f"column {col!r} of {name} cannot be written to parquet: it mixes "
                                f"{', '.join(kinds)} values (one type per column)") from err
        raise


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` as parquet through a temporary file and a rename (values converted
    by :func:`arrow_table`; nothing is written when it raises).

    Raises:
        TypeError: a column parquet cannot store (see :func:`arrow_table`).
        OSError: the directory cannot be written (a full disk: ``errno.ENOSPC``).
    """
    path = Path(path)
    table = arrow_table(df, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


#: Files smaller than this are hashed directly (cheap), larger ones through the cache.
CACHE_MIN_BYTES = 1 << 20


#: Hashing a file at least this large reports progress.
PROGRESS_MIN_BYTES = 256 << 20


#: Name of the hash cache file in :func:`cache_dir`.
CACHE_FILE = "sha256.json"


#: At most this many entries are kept in the cache (entries of vanished files are dropped first).
CACHE_MAX_ENTRIES = 2000


_CHUNK = 1 << 20


def sha256_file(path: Path, chunk_size: int = _CHUNK, progress: Optional[ProgressFn] = None) -> str:
    """SHA-256 of the bytes of ``path`` as 64 lower-case hex digits (read in ``chunk_size`` blocks).

    ``progress`` is told ``("sha256 <name> (MiB)", MiB read, MiB total)`` for files of at least
    :data:`PROGRESS_MIN_BYTES` (a first hash of a 13 GB checkpoint takes about a minute).

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    path = Path(path)
    total = path.stat().st_size if progress is not None else 0
    show = progress is not None and total >= PROGRESS_MIN_BYTES
    label, done, blocks = f"sha256 {path.name} (MiB)", 0, 0
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            digest.update(block)
            done, blocks = done + len(block), blocks + 1
            if show and blocks % 64 == 0:
                report(progress, label, done >> 20, total >> 20)
    if show:
        report(progress, label, total >> 20, total >> 20)
    return digest.hexdigest()


def cache_dir() -> Path:
    """qft's cache directory: ``$QFT_CACHE``, else ``$XDG_CACHE_HOME/qft``, else ``~/.cache/qft``."""
    if os.environ.get("QFT_CACHE"):
        return Path(os.environ["QFT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "qft"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing or damaged cache: start afresh
        return {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:

    if len(entries) > CACHE_MAX_ENTRIES:
        entries = {k: v for k, v in entries.items() if Path(k).exists()}
        entries = dict(list(entries.items())[-CACHE_MAX_ENTRIES:])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, entries)
    except OSError:  # a read-only home: hashing still works, only uncached
        pass


def cached_sha256(path: Path, *, min_bytes: int = CACHE_MIN_BYTES, cache: Optional[Path] = None,
                  progress: Optional[ProgressFn] = None) -> str:
    """SHA-256 of ``path``; files of at least ``min_bytes`` are looked up in (and added to) the cache
    keyed by absolute path, size and ``st_mtime_ns``, so an unchanged file is not read again.

    Args:
        cache: the cache file (default ``cache_dir() / "sha256.json"``).
        progress: see :func:`sha256_file` (called only when the file is actually read).

    Raises:
        OSError: the file cannot be read.
    """
    path = Path(path).resolve()
    stat = path.stat()
    if stat.st_size < min_bytes:
        return sha256_file(path)
    cache = Path(cache) if cache is not None else cache_dir() / CACHE_FILE
    entries = _read_cache(cache)
    entry = entries.get(str(path))
    if (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("sha256"), str)):
        return entry["sha256"]
    digest = sha256_file(path, progress=progress)
    entries = _read_cache(cache)  # another process may have added entries meanwhile
    entries.pop(str(path), None)
    entries[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    _write_cache(cache, entries)
    return digest


_SHARD = re.compile(r"^(?P<stem>model|pytorch_model)-(?P<i>\d+)-of-(?P<n>\d+)\.(?P<ext>safetensors|bin)$")


def _weight_files(directory: Path, stem: str, ext: str) -> list[Path]:
    """The files of one checkpoint format in ``directory`` by the rule of :func:`checkpoint_files`."""
    index = directory / f"{stem}.{ext}.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise QftInputError(f"{index} is not a checkpoint index ({type(err).__name__}): "
                                "download it again, or delete it to read the single weights file") from None
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise QftInputError(f"{index.name} names {len(missing)} shard(s) missing from {directory} "
                                f"({', '.join(missing[:3])}): download the whole checkpoint")
        return [directory / n for n in names]
    single = directory / f"{stem}.{ext}"
    if single.is_file():
        return [single]
    shards = sorted(f for f in directory.glob(f"{stem}-*-of-*.{ext}") if _SHARD.match(f.name))
    if shards:
        totals = {int(_SHARD.match(f.name)["n"]) for f in shards}
        if len(totals) != 1 or len(shards) != totals.pop():
            raise QftInputError(f"incomplete sharded checkpoint in {directory} ({len(shards)} {stem}-*-of-* files "
                                "and no index): download the whole checkpoint with its index")
        return shards
    others = sorted(directory.glob(f"*.{ext}"))
    if len(others) > 1:
        raise QftInputError(f"{len(others)} .{ext} files and no {stem}.{ext}.index.json in {directory} "
                            f"({', '.join(f.name for f in others[:4])}): qft cannot tell which is the model; "
                            f"keep only its own weights file or add its index")
    return others


def checkpoint_files(directory: Path) -> list[Path]:
    """The weight files that make up the Hugging Face checkpoint in ``directory``.

    Safetensors first, then ``.bin``; for each format, in order (docs/conventions.md):

    1. ``model.safetensors.index.json`` (``pytorch_model.bin.index.json``): the shards its
       ``weight_map`` names (all must exist);
    2. ``model.safetensors`` (``pytorch_model.bin``) alone;
    3. a complete set of ``model-XXXXX-of-NNNNN.safetensors`` shards;
    4. the one ``*.safetensors`` (``*.bin``) file there is.

    Other copies of the weights beside a checkpoint (Mistral's ``consolidated.safetensors``, a
    stray ``model_copy.safetensors``) are never read, so no parameter is counted twice or taken
    from the wrong file.

    Returns:
        The files, possibly empty when the directory holds no weights.

    Raises:
        QftInputError: several candidate files and no rule above picks one; an index naming
            missing shards; an incomplete shard set.
    """
    return _weight_files(directory, "model", "safetensors") or _weight_files(directory, "pytorch_model", "bin")
