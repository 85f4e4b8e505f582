"""Loading model weights: one module for every command.

The streaming reader (:class:`TensorStore`, :func:`open_weights`) reads named tensors one at a time
from safetensors shards or ``pytorch_model*.bin`` files (``torch.load(mmap=True,
weights_only=True)``), so peak memory stays near the largest single tensor; tiny models (built in
memory) are read from their parameters.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from qft_cli.errors import QftInputError
from qft_cli.models import ModelSource, build_tiny_model, hub_snapshot


@dataclass
class TensorStore:
    """Read access to named tensors without loading a whole model.

    Attributes:
        shapes: parameter name -> shape, in checkpoint order.
        config: the model's ``config.json`` as a dict (may be empty).
        read: function name -> tensor (on CPU, stored dtype).
    """

    shapes: dict[str, tuple[int, ...]]
    config: dict
    read: Callable[[str], torch.Tensor]
    _stack: ExitStack = field(default_factory=ExitStack)

    def close(self) -> None:
        self._stack.close()


def _store_from_module(module: torch.nn.Module) -> TensorStore:
    params = dict(module.named_parameters())
    config = module.config.to_dict() if hasattr(module, "config") else {}
    return TensorStore({n: tuple(p.shape) for n, p in params.items()}, config, lambda n: params[n].detach())


def _damaged(path: Path, err: BaseException) -> QftInputError:
    first = " ".join(str(err).strip().split("\n", 1)[0].split())
    return QftInputError(f"could not read weights file {path} ({type(err).__name__}: {first}): "
                         "the file is damaged or not a checkpoint; download it again")


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


def _store_from_dir(directory: Path) -> TensorStore:
    from safetensors import safe_open

    config_path = directory / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    stack = ExitStack()
    files = checkpoint_files(directory)
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, object] = {}
    if not files:
        raise QftInputError(f"no *.safetensors or pytorch_model*.bin weights in {directory}: "
                            "pass a Hugging Face model directory")
    if files[0].suffix == ".safetensors":
        for f in files:
            try:
                handle = stack.enter_context(safe_open(str(f), framework="pt"))
            except Exception as err:  # SafetensorError: truncated download, not a safetensors file
                stack.close()
                raise _damaged(f, err) from None
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
                where[name] = handle
        return TensorStore(shapes, config, lambda n: where[n].get_tensor(n), stack)
    for f in files:
        try:
            try:
                state = torch.load(str(f), map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:  # legacy (pre-zip) format cannot be memory-mapped: read it whole
                if "mmap" not in str(err):
                    raise
                state = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, not a checkpoint, or pickled objects beyond tensors
            raise _damaged(f, err) from None
        for name, tensor in state.items():
            shapes[name] = tuple(tensor.shape)
            where[name] = state
    return TensorStore(shapes, config, lambda n: where[n][n], stack)


def open_weights(source: ModelSource) -> TensorStore:
    """Open the weights of ``source`` for streaming.

    Hub models: only ``*.json`` and ``model*.safetensors`` files are fetched (any ``*.safetensors``
    when there is no ``model*`` file, ``pytorch_model*.bin`` when there is no safetensors file);
    see :func:`checkpoint_files` for the files that are read.

    Raises:
        QftInputError: the hub is unreachable and the files are not cached; no weight files.
    """
    if source.kind == "tiny":
        return _store_from_module(build_tiny_model(source.location))
    if source.kind == "hub":
        directory = hub_snapshot(source, ["*.json", "model*.safetensors"])  # not consolidated.* copies
        if not list(directory.glob("*.safetensors")):
            directory = hub_snapshot(source, ["*.json", "*.safetensors"])
        if not list(directory.glob("*.safetensors")):
            directory = hub_snapshot(source, ["*.json", "pytorch_model*.bin"])
        return _store_from_dir(directory)
    return _store_from_dir(Path(source.location))
