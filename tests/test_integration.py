"""The default MAE on real PBMCs, scored beside PCA with the benchmark protocol."""

import anndata as ad
import numpy as np

import scssl
from scssl.metrics import knn_macro_f1, pca_embedding


def test_default_mae_on_pbmc3k_matches_pca(shared_data):
    adata = ad.read_h5ad(shared_data / "pbmc3k_10x_seurat_hvg2000.h5ad")
    labels = adata.obs["cell_type"]
    model = scssl.SSLModel(adata, method="mae")
    model.fit(max_epochs=100, progress=False)
    mae_f1 = knn_macro_f1(model.embed(adata), labels)
    pca_f1 = knn_macro_f1(pca_embedding(adata), labels)
    print(f"pbmc3k 5-fold kNN(k=15) macro-F1: scssl mae {mae_f1:.3f}, PCA {pca_f1:.3f}")
    # PCA's 0.92 is favoured: these labels came from a PCA-based clustering
    assert pca_f1 > 0.9
    assert mae_f1 >= 0.88
    assert np.array_equal(adata.X.toarray(), ad.read_h5ad(shared_data / "pbmc3k_10x_seurat_hvg2000.h5ad").X.toarray())
