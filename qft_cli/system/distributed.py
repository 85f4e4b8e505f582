"""Several processes (``torchrun``, ``accelerate launch``) for the norms commands: shard, measure, gather.

Generic helpers, used by ``norms weights`` and meant for every command that measures independent
items (samples of ``norms inputs``, matrices of ``norms weights``, attention maps):

* :func:`process_group` joins the group torchrun describes in the environment (``WORLD_SIZE`` > 1):
  NCCL when the device is CUDA, else gloo (CPU);
* :func:`balanced_shards` splits items with costs over the ranks (largest first, each to the
  least-loaded rank: deterministic, the same on every rank);
* :func:`gather_to_main` collects one picklable object per rank on rank 0 (``None`` elsewhere).

Rank 0 then merges the pieces into the tables of the single-process run (same rows, same order)
and is the only process that writes the run directory or draws a progress bar.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence


def world_size() -> int:
    """``WORLD_SIZE`` of the launcher (1 without one)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def process_group(device_type: str = "cpu") -> tuple[int, int]:
    """``(rank, world_size)``; under a launcher, initialises ``torch.distributed`` first if needed
    (backend ``nccl`` for ``device_type == "cuda"``, else ``gloo``). Without one: ``(0, 1)``."""
    size = world_size()
    if size == 1:
        return 0, 1
    import torch.distributed as dist

    if device_type == "cuda":  # one GPU per process: cuda means cuda:LOCAL_RANK from here on
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def balanced_shards(costs: Sequence[float], world: int) -> list[list[int]]:
    """Indices of ``costs`` for each of ``world`` ranks: largest cost first, each to the rank with the
    smallest total so far (ties: lowest rank); every rank's indices in increasing order."""
    loads = [0.0] * world
    shards: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world), key=lambda k: (loads[k], k))
        shards[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shards]


def gather_to_main(obj: Any) -> Optional[list[Any]]:
    """Every rank's ``obj`` as a list on rank 0 (rank order), ``None`` on the other ranks; ``[obj]``
    without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    rank, size = dist.get_rank(), dist.get_world_size()
    box = [None] * size if rank == 0 else None
    dist.gather_object(obj, box, dst=0)
    return box
