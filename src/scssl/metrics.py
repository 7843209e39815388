"""Scores of an embedding against known labels: kNN macro-F1, k-means and Leiden ARI/NMI.

The definitions follow the benchmark protocol used throughout scssl: 5-fold kNN (k=15)
macro-F1, and clustering with as many clusters as labelled types (Leiden's resolution is
searched until it yields that many).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier


def knn_predict_oof(embedding: np.ndarray, labels, k: int = 15, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold kNN label predictions (each cell predicted by a model that never saw it)."""
    labels = np.asarray(labels).astype(str)
    predicted = np.empty_like(labels, dtype=object)
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train, test in folds.split(embedding, labels):
        clf = KNeighborsClassifier(n_neighbors=min(k, len(train)))
        predicted[test] = clf.fit(embedding[train], labels[train]).predict(embedding[test])
    return predicted.astype(str)


def knn_macro_f1(embedding: np.ndarray, labels, k: int = 15, n_folds: int = 5, seed: int = 0) -> float:
    """Macro-F1 of ``n_folds``-fold kNN classification with ``k`` neighbours."""
    labels = np.asarray(labels).astype(str)
    return float(f1_score(labels, knn_predict_oof(embedding, labels, k, n_folds, seed), average="macro"))


def kmeans_labels(embedding: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means cluster of every cell, best of 10 k-means++ starts."""
    return KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(embedding)


def leiden_labels(
    embedding: np.ndarray, n_clusters: int | None = None, resolution: float = 1.0,
    n_neighbors: int = 15, seed: int = 0, max_iter: int = 20,
) -> np.ndarray:
    """Leiden clusters on a kNN graph of ``embedding``.

    With ``n_clusters`` the resolution is bisected until Leiden returns that many clusters
    (or the closest count found in ``max_iter`` tries).
    """
    adata = ad.AnnData(np.zeros((embedding.shape[0], 0), np.float32))
    adata.obsm["X_emb"] = np.asarray(embedding, np.float32)
    sc.pp.neighbors(adata, use_rep="X_emb", n_neighbors=n_neighbors, random_state=seed)

    def run(res: float) -> np.ndarray:
        sc.tl.leiden(adata, resolution=res, random_state=seed, key_added="_leiden",
                     flavor="igraph", n_iterations=2, directed=False)
        return adata.obs["_leiden"].to_numpy()

    if n_clusters is None:
        return run(resolution)
    low, high = 0.01, 5.0
    best, best_gap = None, np.inf
    for _ in range(max_iter):
        mid = (low + high) / 2
        clusters = run(mid)
        found = len(np.unique(clusters))
        if abs(found - n_clusters) < best_gap:
            best, best_gap = clusters, abs(found - n_clusters)
        if found == n_clusters:
            break
        low, high = (mid, high) if found < n_clusters else (low, mid)
    return best


def cluster_scores(embedding: np.ndarray, labels, seed: int = 0) -> dict[str, float]:
    """ARI and NMI of k-means and Leiden with k = number of label categories."""
    labels = np.asarray(labels).astype(str)
    k = len(np.unique(labels))
    km, ld = kmeans_labels(embedding, k, seed), leiden_labels(embedding, k, seed=seed)
    return {
        "kmeans_ari": float(adjusted_rand_score(labels, km)),
        "kmeans_nmi": float(normalized_mutual_info_score(labels, km)),
        "leiden_ari": float(adjusted_rand_score(labels, ld)),
        "leiden_nmi": float(normalized_mutual_info_score(labels, ld)),
    }


def pca_embedding(adata: ad.AnnData, n_comps: int = 50, n_top_genes: int = 2000, layer: str | None = None,
                  counts: bool = True, seed: int = 0) -> np.ndarray:
    """The standard baseline: normalise + log1p (when ``counts``), HVGs, scale, PCA."""
    work = ad.AnnData(adata.layers[layer] if layer else adata.X)
    work = work.copy()
    if counts:
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
    if work.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes, subset=True)
    if hasattr(work.X, "toarray"):
        work.X = work.X.toarray()  # scaling densifies anyway; doing it here keeps scanpy quiet
    sc.pp.scale(work, max_value=10)
    n_comps = min(n_comps, work.n_vars - 1, work.n_obs - 1)
    return sc.pp.pca(work.X, n_comps=n_comps, random_state=seed).astype(np.float32)
