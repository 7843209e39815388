import pytest

import scssl
from scssl.data import DataError


def test_check_reports_kind_and_rejects_scaled(counts_adata):
    assert scssl.pp.check(counts_adata) == {"n_cells": 200, "n_genes": 100, "kind": "counts"}
    scaled = counts_adata.copy()
    scaled.X = scaled.X.toarray() - 1
    with pytest.raises(DataError, match="negative values"):
        scssl.pp.check(scaled)


def test_highly_variable_keeps_raw_counts(counts_adata):
    subset = scssl.pp.highly_variable(counts_adata, n_top_genes=30)
    assert subset.n_vars == 30
    assert (subset.X != counts_adata[:, subset.var_names].X).nnz == 0
    assert counts_adata.n_vars == 100  # input untouched


def test_highly_variable_ranks_within_batches(counts_adata):
    """With a batch key the genes come from per-batch rankings; the input keeps every gene."""
    pooled = scssl.pp.highly_variable(counts_adata, n_top_genes=30)
    per_batch = scssl.pp.highly_variable(counts_adata, n_top_genes=30, batch_key="batch")
    assert per_batch.n_vars == 30 and per_batch.var["highly_variable"].all()
    assert set(per_batch.var_names) != set(pooled.var_names)
    assert (per_batch.X != counts_adata[:, per_batch.var_names].X).nnz == 0
    with pytest.raises(KeyError, match="'no_such_column' is not a column of .obs"):
        scssl.pp.highly_variable(counts_adata, n_top_genes=30, batch_key="no_such_column")
    small = scssl.pp.highly_variable(counts_adata, n_top_genes=500)  # fewer genes than asked: all kept
    assert small.n_vars == counts_adata.n_vars and small.var["highly_variable"].all()
    assert "highly_variable" not in counts_adata.var
