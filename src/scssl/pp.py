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

    Uses scanpy's ``seurat_v3`` flavour on raw counts, so no normalised matrix replaces ``X``.
    Writes ``.var["highly_variable"]`` on the returned copy only.
    """
    if adata.n_vars <= n_top_genes:
        return adata.copy()
    hvg = sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat_v3", layer=layer, inplace=False)
    keep = hvg["highly_variable"].to_numpy()
    subset = adata[:, keep].copy()
    subset.var["highly_variable"] = True
    return subset
