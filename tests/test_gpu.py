"""CUDA path: sparse batches densified on the device, bf16 autocast, embeddings back on the host."""

import numpy as np
import pytest
import torch

import scssl
from scssl.data import CellData

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_batches_are_densified_on_the_device(counts_adata):
    _, x = next(CellData(counts_adata).batches(32, device="cuda"))
    assert x.is_cuda and np.array_equal(x.cpu().numpy(), counts_adata.X[:32].toarray())


@pytest.mark.parametrize("method", ["mae", "simclr"])
def test_fit_on_gpu_matches_cpu_quality(counts_adata, method):
    from scssl.metrics import knn_macro_f1

    model = scssl.SSLModel(counts_adata, method=method, hidden=(64,), latent_dim=8)
    model.fit(max_epochs=30, batch_size=64, device="cuda", progress=False)
    emb = model.embed(counts_adata, device="cuda")
    assert np.isfinite(emb).all()
    assert knn_macro_f1(emb, counts_adata.obs["group"]) > 0.9


def test_bench_charges_a_cell_only_the_gpu_memory_it_allocates():
    from scssl.bench.runner import PeakMemory

    held = torch.zeros(64 * 2**20 // 4, device="cuda")  # 64 MiB kept from an "earlier cell"
    with PeakMemory() as mem:
        block = torch.ones(16 * 2**20 // 4, device="cuda")  # 16 MiB allocated inside the block
        del block
    assert 15.9 < mem.gpu_peak < 17, mem.gpu_peak
    del held
