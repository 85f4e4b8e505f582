"""Checks that need a CUDA GPU (marker ``cuda``; skipped without one). benchmarks/gpu_check.sh runs them."""

import pytest
import torch

from qft_cli.measure.norms import krylov_spectral_norm, matrix_stats

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_fast_and_exact_paths_on_cuda_equal_float64_svd_on_cpu():
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(3000, 1024, generator=gen) * 0.02).to(torch.bfloat16)
    ref = torch.linalg.matrix_norm(a.double(), ord=2).item()
    gpu = a.cuda()
    fast = matrix_stats(gpu)
    exact = matrix_stats(gpu, exact=True)
    assert fast.method == "krylov" and abs(fast.spectral_norm - ref) / ref <= 1e-6
    assert exact.spectral_norm == pytest.approx(ref, rel=1e-12)
    torch.testing.assert_close(fast.row_norms.cpu(), torch.linalg.vector_norm(a.double(), dim=1), rtol=1e-12, atol=0)
    assert krylov_spectral_norm(gpu.T).bound <= 1e-6


def test_weight_norms_on_cuda_equal_cpu():
    from qft_cli.measure.weights import weight_norms
    from qft_cli.models.names import resolve_model

    source = resolve_model("tiny-llama")
    cpu = weight_norms(source, device=torch.device("cpu")).table
    gpu = weight_norms(source, device=torch.device("cuda")).table
    for col in ("spectral_norm", "frobenius_norm", "row_norm_max", "column_norm_max"):
        torch.testing.assert_close(torch.tensor(gpu[col].to_numpy()), torch.tensor(cpu[col].to_numpy()),
                                   rtol=1e-10, atol=0)


def test_hidden_state_norms_on_cuda_equal_cpu():
    from qft_cli.measure.inputs import hidden_state_norms
    from qft_cli.models.loading import load_model
    from qft_cli.models.names import resolve_model

    source = resolve_model("tiny-gpt2")
    samples = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    cpu = hidden_state_norms(load_model(source), samples, [0, 1, 2], pad_token_id=0).table
    gpu = hidden_state_norms(load_model(source, device=torch.device("cuda")), samples, [0, 1, 2], pad_token_id=0).table
    torch.testing.assert_close(torch.tensor(gpu["spectral_norm"].to_numpy()),
                               torch.tensor(cpu["spectral_norm"].to_numpy()), rtol=1e-5, atol=0)
