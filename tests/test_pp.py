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
