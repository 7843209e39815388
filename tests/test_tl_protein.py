"""scssl.tl.predict_protein on ECCITE-seq PBMCs (49 named proteins, raw ADT counts)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scssl import SSLModel, tl
from scssl.tl.protein import clr


@pytest.fixture(scope="module")
def eccite(shared_data):
    return ad.read_h5ad(shared_data / "citeseq_eccite_pbmc_citefuse.h5ad")


def test_predict_protein(eccite):
    adata = eccite.copy()
    model = SSLModel(adata, method="mae", hidden=(64,), latent_dim=16)
    model.fit(max_epochs=10, batch_size=64, progress=False, seed=0, patience=0)
    result = tl.predict_protein(model, adata, "protein_counts", seed=0)
    table = result["per_protein"]
    assert result["normalize"] == "clr"
    assert list(table.index) == list(eccite.obsm["protein_counts"].columns) and len(table) == 49
    assert list(table.columns) == ["scssl", "pca"]
    # benchmarks/tasks.py (20-epoch 256-32 MAE on 2,000 HVGs) measured mean r 0.375 beside 0.384
    # for PCA over the 49 proteins on these 100 held-out cells; predicting from shuffled
    # cells gives ~0. This smaller 10-epoch model passes the floor (its CD19 r was 0.36).
    assert result["mean_pearson"] > 0.25
    assert result["baseline_mean_pearson"] > 0.25
    pred = adata.obsm["scssl_protein"]
    assert isinstance(pred, pd.DataFrame) and pred.shape == (adata.n_obs, 49)
    assert adata.obs["scssl_protein_test"].sum() == 100
    assert adata.uns["scssl_protein"]["normalize"] == "clr"


def test_clr_centres_each_cell():
    values = np.array([[0, 3, 10], [5, 5, 5]], dtype=float)
    out = clr(values)
    np.testing.assert_allclose(out.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(out[1], 0, atol=1e-12)


def test_missing_key(eccite):
    model = SSLModel(eccite[:100].copy(), method="mae", hidden=(16,), latent_dim=4)
    with pytest.raises(KeyError, match="protein_counts_typo"):
        tl.predict_protein(model, eccite[:100].copy(), "protein_counts_typo")
