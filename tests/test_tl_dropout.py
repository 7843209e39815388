"""scssl.tl.add_dropout: binomial thinning at the asked rate, input untouched."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scssl import tl


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_thins_by_rate_and_keeps_input(pbmc3k, rate):
    adata = pbmc3k[:500].copy()
    original = adata.X.copy()
    out = tl.add_dropout(adata, rate, seed=0)
    assert (adata.X != original).nnz == 0, "add_dropout modified its input"
    assert out is not adata and out.shape == adata.shape
    kept = out.X.sum() / adata.X.sum()
    # ~10^6 molecules: the binomial standard error of the kept share is ~5e-4.
    assert kept == pytest.approx(1 - rate, abs=0.005)
    assert (out.X <= adata.X).toarray().all()  # thinning never adds counts
    assert np.equal(np.mod(out.X.data, 1), 0).all() and out.X.nnz < adata.X.nnz
    assert out.uns["scssl_dropout"] == {"rate": rate, "seed": 0}


def test_seeded_dense_and_layer(counts_adata):
    dense = counts_adata.copy()
    dense.X = dense.X.toarray()
    a, b = tl.add_dropout(dense, 0.5, seed=3), tl.add_dropout(dense, 0.5, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, tl.add_dropout(dense, 0.5, seed=4).X)
    layered = counts_adata.copy()
    layered.layers["counts"] = layered.X.copy()
    out = tl.add_dropout(layered, 0.5, layer="counts")
    assert (out.X != layered.X).nnz == 0 and out.layers["counts"].sum() < layered.layers["counts"].sum()
    assert tl.add_dropout(counts_adata, 0.0).X.sum() == counts_adata.X.sum()


def test_rejects_non_counts(counts_adata):
    adata = counts_adata.copy()
    adata.X = sp.csr_matrix(adata.X.multiply(0.5))
    with pytest.raises(ValueError, match="raw counts"):
        tl.add_dropout(adata, 0.3)
    with pytest.raises(ValueError, match="rate"):
        tl.add_dropout(counts_adata, 1.0)
