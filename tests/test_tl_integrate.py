"""scssl.tl.integrate_scores: scIB totals via scib-metrics (optional: the ``bench`` extra)."""

from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pytest

from scssl import tl
from scssl.metrics import pca_embedding


def test_import_error_names_the_extra(counts_adata, monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics.benchmark", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"scssl\[bench\]"):
        tl.integrate_scores(counts_adata, "batch", "group", use_rep="X_scssl")


def test_a_missing_batch_column_is_named_as_the_batch_key(counts_adata):
    pytest.importorskip("scib_metrics", reason="scib-metrics not installed (pip install 'scssl[bench]')")
    with pytest.raises(KeyError, match="batch_key 'donor' is not a column"):
        tl.integrate_scores(counts_adata, "donor", "group", use_rep="X_scssl")


def test_scores_pca_against_noise(shared_data):
    pytest.importorskip("scib_metrics", reason="scib-metrics not installed (pip install 'scssl[bench]')")
    adata = ad.read_h5ad(shared_data / "pbmc_10x_3chemistries_symphony.h5ad")
    adata.obsm["X_pca"] = pca_embedding(adata, n_comps=20)
    adata.obsm["X_noise"] = np.random.default_rng(0).normal(size=(adata.n_obs, 20)).astype(np.float32)
    table = tl.integrate_scores(adata, "batch", "cell_type", use_rep=["X_pca", "X_noise"])
    assert {"bio_conservation", "batch_correction", "total"} <= set(table.columns)
    # A PCA keeps cell types apart; noise does not (noise mixes batches perfectly, though).
    assert table.loc["X_pca", "bio_conservation"] > table.loc["X_noise", "bio_conservation"] + 0.2
    assert table.loc["X_noise", "batch_correction"] > table.loc["X_pca", "batch_correction"]
    np.testing.assert_allclose(table["total"], 0.6 * table["bio_conservation"] + 0.4 * table["batch_correction"],
                               atol=1e-6)
    assert set(adata.uns["scssl_integration"]) == {"X_pca", "X_noise"}
