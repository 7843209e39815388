"""Shared fixtures: a small synthetic count matrix and the real datasets in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (see the README: ../shared/data)")
    return SHARED_DATA


def median_library(adata: ad.AnnData) -> float:
    """The library size of the middle cell (the lower of the two middle ones for an even count),
    the one ``InputTransform.set_target`` finds to within its histogram's 0.25% bins."""
    libraries = np.sort(np.asarray(adata.X.sum(1)).ravel())
    return float(libraries[(len(libraries) - 1) // 2])


def make_counts(n_cells: int = 200, n_genes: int = 100, n_groups: int = 3, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts with ``n_groups`` cell groups that differ in a block of genes."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, n_cells)
    base = rng.gamma(2.0, 1.0, n_genes)
    profile = np.tile(base, (n_groups, 1))
    block = n_genes // (n_groups + 1)
    for g in range(n_groups):
        profile[g, g * block : (g + 1) * block] *= 6.0
    mu = profile[groups] * rng.lognormal(0, 0.3, (n_cells, 1))
    counts = rng.negative_binomial(5, 5 / (5 + mu)).astype(np.float32)
    counts[counts.sum(1) == 0, 0] = 1  # every cell needs one non-zero gene
    adata = ad.AnnData(
        sp.csr_matrix(counts),
        obs=pd.DataFrame({"group": pd.Categorical([f"g{g}" for g in groups]),
                          "batch": pd.Categorical(rng.choice(["b0", "b1"], n_cells))},
                         index=[f"cell{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)]),
    )
    return adata


def seeded(seed: int = 0) -> torch.Generator:
    """A CPU generator with a fixed seed, for masks and augmentations in tests."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from a second thread, and spinning threads crawl on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts()


# ---- shared by the scssl.tl tests ----------------------------------------------------------------
@pytest.fixture(scope="session")
def pbmc3k(shared_data) -> ad.AnnData:
    """PBMC 3k (2,638 cells × 2,000 HVGs, raw counts, 9 Seurat types). Copy it before writing to it."""
    return ad.read_h5ad(shared_data / "pbmc3k_10x_seurat_hvg2000.h5ad")


@pytest.fixture(scope="session")
def pbmc3k_mae(pbmc3k):
    """A small MAE pre-trained once on PBMC 3k (about 10 s on 2 cores), shared by the tl tests."""
    from scssl import SSLModel

    model = SSLModel(pbmc3k, method="mae", hidden=(128,), latent_dim=32)
    return model.fit(max_epochs=12, batch_size=128, progress=False, seed=0, patience=0)
