"""The main job on the embedded default: scanpy's bundled pbmc68k_reduced (700 PBMCs).

It has no raw counts (``X`` is scaled, ``.raw`` is log-normalised), so the demo trains on
``.raw`` with the MSE objective, embeds, scores the embedding beside PCA against the
10 FACS-sorted ``bulk_labels``, and writes a UMAP PNG.
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import scanpy as sc

from scssl.metrics import cluster_scores, knn_macro_f1, pca_embedding
from scssl.model import SSLModel


def run(out: str | Path = "scssl_demo", epochs: int = 60, method: str = "mae", seed: int = 0) -> dict:
    """Pre-train, embed, score against PCA, write ``umap.png`` and the model under ``out``."""
    from scssl import pl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adata = sc.datasets.pbmc68k_reduced()
    labels = adata.obs["bulk_labels"]
    start = time.perf_counter()
    model = SSLModel(adata, method=method, use_raw=True)
    model.fit(max_epochs=epochs, batch_size=128, seed=seed)
    adata.obsm["X_scssl"] = model.embed(adata)
    seconds = time.perf_counter() - start
    lognorm = ad.AnnData(adata.raw.X.copy())
    adata.obsm["X_pca_baseline"] = pca_embedding(lognorm, n_comps=50, counts=False, seed=seed)

    rows = {}
    for name, key in (("scssl " + method, "X_scssl"), ("PCA (50 PCs)", "X_pca_baseline")):
        scores = cluster_scores(adata.obsm[key], labels, seed=seed)
        rows[name] = {"knn_macro_f1": knn_macro_f1(adata.obsm[key], labels, seed=seed), **scores}
    print(f"\npbmc68k_reduced: {adata.n_obs} cells × {adata.raw.n_vars} genes, labels = bulk_labels "
          f"({labels.nunique()} types); {method} trained in {seconds:.1f} s")
    print(f"{'embedding':<16} {'kNN macro-F1':>12} {'k-means ARI':>12} {'Leiden ARI':>11}")
    for name, r in rows.items():
        print(f"{name:<16} {r['knn_macro_f1']:>12.3f} {r['kmeans_ari']:>12.3f} {r['leiden_ari']:>11.3f}")
    pl.umap(adata, color="bulk_labels", use_rep="X_scssl", path=out / "umap.png", title=f"scssl {method}")
    model.save(out / "model", overwrite=True)
    print(f"wrote {out / 'umap.png'} and {out / 'model'}")
    return rows
