"""Zero-shot clustering of an embedding: Leiden (resolution searched) or k-means, plus UMAP."""

from __future__ import annotations

import warnings
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from scssl.metrics import kmeans_labels, leiden_labels
from scssl.tl._utils import get_labels, get_rep

_SILHOUETTE_CELLS = 5000  # silhouette is quadratic in cells: score a random subsample beyond this


def cluster(
    adata: ad.AnnData, use_rep: str = "X_scssl", n_clusters: int | None = None,
    method: Literal["leiden", "kmeans"] = "leiden", labels_key: str | None = None, *,
    resolution: float = 1.0, n_neighbors: int = 15, key_added: str = "scssl_cluster", seed: int = 0,
) -> dict[str, float]:
    """Cluster cells on an embedding and score the clusters.

    Parameters
    ----------
    adata
        Cells with an embedding in ``.obsm[use_rep]``.
    use_rep
        The embedding (e.g. ``"X_scssl"`` from ``model.embed``).
    n_clusters
        Number of clusters wanted. Leiden bisects its resolution until it finds this many
        (:func:`scssl.metrics.leiden_labels`); k-means needs it (default: the number of
        categories in ``labels_key``).
    method
        ``"leiden"`` or ``"kmeans"``.
    labels_key
        Optional ``.obs`` column with known labels, to score ARI, NMI and label silhouette.
    resolution
        Leiden resolution when ``n_clusters`` is ``None``.
    n_neighbors
        kNN graph size for Leiden.
    key_added
        ``.obs`` column for the clusters.
    seed
        Seeds Leiden, k-means and the silhouette subsample.

    Returns
    -------
    ``{"n_clusters", "silhouette"}`` and, with ``labels_key``, ``"ari"``, ``"nmi"``,
    ``"silhouette_label"``. Silhouettes are on the embedding's Euclidean distances, in [-1, 1].

    Writes
    ------
    ``adata.obs[key_added]`` (categorical cluster ids) and ``adata.uns[key_added]``
    (``{"method", "use_rep", "scores"}``).
    """
    embedding = get_rep(adata, use_rep)
    labels = get_labels(adata, labels_key) if labels_key is not None else None
    if n_clusters is not None and not 1 <= n_clusters <= adata.n_obs:
        raise ValueError(f"n_clusters must be between 1 and the {adata.n_obs} cells, got {n_clusters}")
    if method == "kmeans":
        if n_clusters is None:
            if labels is None:
                raise ValueError("method='kmeans' needs n_clusters (or labels_key to take it from)")
            n_clusters = len(np.unique(labels))
        clusters = kmeans_labels(embedding, n_clusters, seed=seed)
    elif method == "leiden":
        clusters = leiden_labels(embedding, n_clusters, resolution=resolution, n_neighbors=n_neighbors, seed=seed)
    else:
        raise ValueError(f"method must be 'leiden' or 'kmeans', got {method!r}")
    clusters = np.asarray(clusters).astype(str)
    # Order categories by size so cluster "0" is the largest, as scanpy does.
    order = pd.Series(clusters).value_counts().index
    renamed = pd.Series(clusters).map({old: str(i) for i, old in enumerate(order)}).to_numpy()
    adata.obs[key_added] = pd.Categorical(renamed, categories=[str(i) for i in range(len(order))])

    found = len(order)
    if method == "leiden" and n_clusters is not None and found != n_clusters:
        warnings.warn(f"Leiden found {found} clusters, the closest its resolution search came to "
                      f"{n_clusters}; try method='kmeans' for exactly {n_clusters}", stacklevel=2)
    scores: dict[str, float] = {"n_clusters": float(found)}
    scores["silhouette"] = _silhouette(embedding, renamed, seed) if found > 1 else float("nan")
    if labels is not None:
        scores["ari"] = float(adjusted_rand_score(labels, renamed))
        scores["nmi"] = float(normalized_mutual_info_score(labels, renamed))
        scores["silhouette_label"] = _silhouette(embedding, labels, seed) if len(np.unique(labels)) > 1 else float("nan")
    adata.uns[key_added] = {"method": method, "use_rep": use_rep, "scores": scores}
    return scores


def _silhouette(embedding: np.ndarray, groups: np.ndarray, seed: int) -> float:
    size = _SILHOUETTE_CELLS if len(groups) > _SILHOUETTE_CELLS else None
    return float(silhouette_score(embedding, groups, sample_size=size, random_state=seed))


def umap(adata: ad.AnnData, use_rep: str = "X_scssl", n_neighbors: int = 15, seed: int = 0,
         key_added: str = "X_umap") -> np.ndarray:
    """UMAP of an embedding, for plotting (``scssl.pl.umap`` or ``sc.pl.embedding``).

    Writes
    ------
    ``adata.obsm[key_added]`` (cells × 2). The kNN graph is built on a scratch AnnData, so
    ``adata.obsp``/``adata.uns["neighbors"]`` are left as they were.
    """
    work = ad.AnnData(np.zeros((adata.n_obs, 0), np.float32))
    work.obsm["rep"] = get_rep(adata, use_rep)
    sc.pp.neighbors(work, use_rep="rep", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(work, random_state=seed)
    adata.obsm[key_added] = work.obsm["X_umap"]
    return adata.obsm[key_added]
