import anndata as ad
import numpy as np
import pytest
import torch

from scssl.data import CellData, DataError


def test_reads_x_and_layer_and_detects_kind(counts_adata):
    data = CellData(counts_adata)
    assert data.spec.kind == "counts" and data.n_genes == 100
    counts_adata.layers["counts"] = counts_adata.X.copy()
    counts_adata.X = counts_adata.X.astype(np.float32) * 0.5 + 0.25 * (counts_adata.X > 0)
    assert CellData(counts_adata).spec.kind == "lognorm"
    assert CellData(counts_adata, layer="counts").spec.kind == "counts"


def test_missing_layer_names_available(counts_adata):
    counts_adata.layers["spliced"] = counts_adata.X
    with pytest.raises(DataError, match=r"layer 'counts' not found; available layers: 'spliced'"):
        CellData(counts_adata, layer="counts")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda X: X - 1.0, "negative values"),
        (lambda X: np.where(X > 5, np.nan, X), "NaN or infinite"),
    ],
)
def test_bad_values_are_named(counts_adata, corrupt, message):
    counts_adata.X = corrupt(counts_adata.X.toarray())
    with pytest.raises(DataError, match=message):
        CellData(counts_adata)


def test_non_integer_values_rejected_for_count_losses(counts_adata):
    counts_adata.X = counts_adata.X * 0.5
    with pytest.raises(DataError, match="non-integer values.*loss='mse'"):
        CellData(counts_adata, require_counts=True)


def test_empty_cells_and_duplicate_genes_rejected(counts_adata):
    dense = counts_adata.X.toarray()
    dense[3] = 0
    broken = ad.AnnData(dense, var=counts_adata.var)
    with pytest.raises(DataError, match="1 cells have no non-zero gene.*filter_cells"):
        CellData(broken)
    dup = counts_adata.copy()
    dup.var_names = ["g"] * 2 + list(dup.var_names[2:])
    with pytest.raises(DataError, match="not unique.*var_names_make_unique"):
        CellData(dup)


def test_alignment_reorders_zero_fills_and_drops(counts_adata):
    model_genes = ["gene5", "gene1", "absent_a", "gene99", "absent_b"]
    with pytest.warns(UserWarning, match="2 of 5 model genes are missing"):
        data = CellData(counts_adata, genes=model_genes)
    x = data.to_tensor(np.array([7, 2, 11])).numpy()
    dense = counts_adata.X.toarray()
    expected = np.zeros((3, 5), np.float32)
    expected[:, 0], expected[:, 1], expected[:, 3] = dense[[7, 2, 11], 5], dense[[7, 2, 11], 1], dense[[7, 2, 11], 99]
    assert np.array_equal(x, expected)


def test_no_shared_genes_is_an_error(counts_adata):
    with pytest.raises(DataError, match="no shared genes between model and data"):
        CellData(counts_adata, genes=["x", "y"])


def test_batches_cover_every_cell_once_and_keep_order(counts_adata):
    data = CellData(counts_adata)
    seen = np.concatenate([idx for idx, _ in data.batches(64, shuffle=True, generator=torch.Generator().manual_seed(1))])
    assert sorted(seen) == list(range(counts_adata.n_obs))
    _, x = next(data.batches(64, index=np.array([9, 4, 150])))
    assert np.array_equal(x.numpy(), counts_adata.X[[9, 4, 150]].toarray())


def test_backed_file_gives_the_same_rows(tmp_path, counts_adata):
    path = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    data = CellData(backed)
    rows = np.array([150, 3, 77])
    assert np.array_equal(data.to_tensor(rows).numpy(), counts_adata.X[rows].toarray())


def test_batch_key_codes_and_missing_labels(counts_adata):
    data = CellData(counts_adata, batch_key="batch")
    assert data.batch_categories == ["b0", "b1"]
    assert set(np.unique(data.batch_codes)) == {0, 1}
    counts_adata.obs["batch"] = counts_adata.obs["batch"].astype(object)
    counts_adata.obs.iloc[5, counts_adata.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(DataError, match="1 missing values"):
        CellData(counts_adata, batch_key="batch")
    with pytest.raises(DataError, match="not a column"):
        CellData(counts_adata, batch_key="donor")


def test_user_matrix_is_never_modified(counts_adata):
    before = counts_adata.X.copy()
    data = CellData(counts_adata, genes=list(counts_adata.var_names[::-1]))
    for _, x in data.batches(50):
        x.mul_(0)
    assert (counts_adata.X != before).nnz == 0
