"""Preprocessing helpers (``scssl.pp``): checks and selections that keep raw counts intact."""

from __future__ import annotations

import anndata as ad
import scanpy as sc

from scssl.data import CellData


def check(adata: ad.AnnData, layer: str | None = None, use_raw: bool = False, require_counts: bool = False) -> dict:
    """Validate the matrix scssl would train on; raises :class:`~scssl.data.DataError` with the fix.

    Returns
    -------
    ``{"n_cells", "n_genes", "kind"}`` of the matrix that would be used.
    """
    data = CellData(adata, layer=layer, use_raw=use_raw, require_counts=require_counts)
    return {"n_cells": data.n_cells, "n_genes": data.n_genes, "kind": data.spec.kind}


def highly_variable(adata: ad.AnnData, n_top_genes: int = 2000, layer: str | None = None) -> ad.AnnData:
    """A copy of ``adata`` restricted to ``n_top_genes`` highly variable genes, counts untouched.

    Genes are ranked by scanpy's default (``seurat``) dispersion on a log-normalised scratch
    copy, the same selection as the PCA baseline; the returned copy keeps the raw counts.
    Writes ``.var["highly_variable"]`` on the returned copy only.
    """
    if adata.n_vars <= n_top_genes:
        return adata.copy()
    scratch = ad.AnnData(adata.layers[layer] if layer else adata.X).copy()
    sc.pp.normalize_total(scratch, target_sum=1e4)
    sc.pp.log1p(scratch)
    hvg = sc.pp.highly_variable_genes(scratch, n_top_genes=n_top_genes, inplace=False)
    subset = adata[:, hvg["highly_variable"].to_numpy()].copy()
    subset.var["highly_variable"] = True
    return subset
