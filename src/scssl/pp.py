"""Preprocessing helpers (``scssl.pp``): checks and selections that keep raw counts intact."""

from __future__ import annotations

import anndata as ad
import scanpy as sc

from scssl.data import CellData


def check(adata: ad.AnnData, layer: str | None = None, use_raw: bool = False, require_counts: bool = False) -> dict:
    """Validate the matrix scssl would train on; raises :class:`~scssl.data.DataError` with the fix.

    Parameters
    ----------
    adata
        The cells.
    layer, use_raw
        Which matrix: a layer, ``.raw`` or (default) ``.X``, as :class:`~scssl.SSLModel` takes them.
    require_counts
        Insist on raw counts (needed for the NB and ZINB losses).

    Returns
    -------
    ``{"n_cells", "n_genes", "kind"}`` of the matrix that would be used.
    """
    data = CellData(adata, layer=layer, use_raw=use_raw, require_counts=require_counts)
    return {"n_cells": data.n_cells, "n_genes": data.n_genes, "kind": data.spec.kind}


def highly_variable(adata: ad.AnnData, n_top_genes: int = 2000, layer: str | None = None,
                    batch_key: str | None = None) -> ad.AnnData:
    """A copy of ``adata`` restricted to ``n_top_genes`` highly variable genes, counts untouched.

    Genes are ranked by scanpy's default (``seurat``) dispersion on a log-normalised scratch
    copy, the same selection as the PCA baseline; the returned copy keeps the raw counts.
    Writes ``.var["highly_variable"]`` on the returned copy only.

    Parameters
    ----------
    adata
        Cells with raw counts in ``.X`` or in ``layer``.
    n_top_genes
        Genes to keep; with no more genes than this, all are kept.
    layer
        Layer with the raw counts (default ``.X``).
    batch_key
        ``.obs`` column of batches: genes are ranked within each batch and the ranks combined,
        as ``sc.pp.highly_variable_genes(batch_key=...)`` does, so one batch's technical
        genes do not fill the selection.
    """
    if batch_key is not None and batch_key not in adata.obs:
        raise KeyError(f"batch_key {batch_key!r} is not a column of .obs; "
                       f"pass one of {list(adata.obs.columns)} or batch_key=None")
    if adata.n_vars <= n_top_genes:
        subset = adata.copy()
    else:
        obs = adata.obs[[batch_key]] if batch_key else None
        scratch = ad.AnnData(adata.layers[layer] if layer else adata.X, obs=obs).copy()
        sc.pp.normalize_total(scratch, target_sum=1e4)
        sc.pp.log1p(scratch)
        hvg = sc.pp.highly_variable_genes(scratch, n_top_genes=n_top_genes, batch_key=batch_key, inplace=False)
        subset = adata[:, hvg["highly_variable"].to_numpy()].copy()
    subset.var["highly_variable"] = True
    return subset
