"""Device and dtype choice: the one place that decides where tensors live.

``auto`` means CUDA when present, else Apple MPS when present, else CPU.
"""

from __future__ import annotations

import torch

from qft_cli.system.errors import QftInputError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name`` in {auto, cpu, cuda, mps}.

    Raises:
        QftInputError: unknown name, or a device that is not available on this machine.
    """
    if name not in DEVICE_CHOICES:
        raise QftInputError(f"unknown device '{name}': use one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise QftInputError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise QftInputError("--device mps was asked for but MPS is not available: use --device cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str = "float32") -> torch.dtype:
    """Return the torch dtype for ``name`` in {float32, bfloat16, float16}.

    Raises:
        QftInputError: unknown name.
    """
    try:
        return DTYPES[name]
    except KeyError:
        raise QftInputError(f"unknown dtype '{name}': use one of {', '.join(DTYPES)}") from None
