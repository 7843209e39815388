"""Simulated extra dropout: binomial thinning of counts, for robustness checks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp


def add_dropout(adata: ad.AnnData, rate: float, seed: int = 0, layer: str | None = None) -> ad.AnnData:
    """A copy of ``adata`` with each molecule kept with probability ``1 - rate``.

    Binomial thinning (``x → Binomial(x, 1 - rate)``) is what a shallower sequencing of the
    same library gives: it lowers depth and turns low counts into zeros, unlike zeroing
    whole entries. The input is never modified.

    Parameters
    ----------
    adata
        Cells with raw integer counts in ``.X`` (or ``layer``).
    rate
        Expected fraction of counts removed, in [0, 1).
    seed
        Seeds the thinning.
    layer
        Thin this layer instead of ``.X``.

    Returns
    -------
    The thinned copy; ``.uns["scssl_dropout"] = {"rate", "seed"}``. Cells may end up with
    no counts at high rates: drop them (``sc.pp.filter_cells(out, min_genes=1)``) before
    embedding.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    matrix = adata.layers[layer] if layer is not None else adata.X
    if adata.isbacked:
        raise ValueError("add_dropout needs the data in memory; read it without backed='r'")
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if (values < 0).any() or not np.equal(np.mod(values, 1), 0).all():
        raise ValueError("add_dropout thins raw counts; this matrix holds negative or non-integer values")
    rng = np.random.default_rng(seed)
    out = adata.copy()
    if sp.issparse(matrix):
        thinned = sp.csr_matrix(matrix, copy=True)
        thinned.data = rng.binomial(thinned.data.astype(np.int64), 1.0 - rate).astype(matrix.dtype)
        thinned.eliminate_zeros()
    else:
        thinned = rng.binomial(np.asarray(matrix).astype(np.int64), 1.0 - rate).astype(matrix.dtype)
    if layer is not None:
        out.layers[layer] = thinned
    else:
        out.X = thinned
    out.uns["scssl_dropout"] = {"rate": float(rate), "seed": int(seed)}
    return out
