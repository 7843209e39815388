"""scssl.tl.cluster / umap: documented keys, the requested number of clusters, scores."""

from __future__ import annotations

import numpy as np
import pytest

from scssl import tl


@pytest.fixture(scope="module")
def embedded(pbmc3k, pbmc3k_mae):
    adata = pbmc3k[np.random.default_rng(0).permutation(pbmc3k.n_obs)[:1000]].copy()
    adata.obsm["X_scssl"] = pbmc3k_mae.embed(adata)
    return adata


@pytest.mark.parametrize("method", ["leiden", "kmeans"])
def test_cluster_finds_requested_number(embedded, method):
    adata = embedded.copy()
    scores = tl.cluster(adata, n_clusters=7, method=method, labels_key="cell_type")
    clusters = adata.obs["scssl_cluster"]
    assert clusters.dtype == "category" and clusters.nunique() == 7 == scores["n_clusters"]
    assert adata.uns["scssl_cluster"]["method"] == method
    # With a 15-epoch MAE on all 2,638 cells and 9 clusters we measured ARI 0.51-0.54 and
    # NMI 0.68-0.72 (Leiden, k-means); random clusters give ARI ~0, NMI ~0.01.
    assert scores["ari"] > 0.4 and scores["nmi"] > 0.5
    assert -1 <= scores["silhouette"] <= 1 and scores["silhouette"] > 0


def test_cluster_without_labels_and_key_added(embedded):
    adata = embedded.copy()
    scores = tl.cluster(adata, method="kmeans", n_clusters=3, key_added="km3")
    assert set(scores) == {"n_clusters", "silhouette"}
    assert adata.obs["km3"].nunique() == 3
    with pytest.raises(ValueError, match="n_clusters"):
        tl.cluster(adata, method="kmeans")
    with pytest.raises(KeyError, match="X_missing"):
        tl.cluster(adata, use_rep="X_missing")
    with pytest.raises(ValueError, match="n_clusters must be between 1 and the 1000 cells, got 5000"):
        tl.cluster(adata, n_clusters=5000)
    with pytest.warns(UserWarning, match=r"Leiden found \d+ clusters, the closest .* to 1000; try method='kmeans'"):
        tl.cluster(adata, n_clusters=1000)  # one cluster per cell is beyond any resolution searched


def test_umap_writes_obsm(embedded):
    adata = embedded[:300].copy()
    tl.umap(adata)
    assert adata.obsm["X_umap"].shape == (300, 2)
    assert "neighbors" not in adata.uns  # the graph stays on a scratch object
