"""Batch-integration scores of embeddings with scib-metrics (Luecken et al. 2022, Nat Methods)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from scssl.metrics import pca_embedding
from scssl.tl._utils import get_labels, get_rep, is_counts


def integrate_scores(
    adata: ad.AnnData, batch_key: str, labels_key: str, use_rep: str | list[str] = "X_scssl", *,
    pre_integrated_rep: str | None = None, fast: bool = True, key_added: str = "scssl_integration",
) -> pd.DataFrame:
    """scIB bio-conservation and batch-correction scores of one or more embeddings.

    Runs scib-metrics' ``Benchmarker`` on a scratch AnnData, so ``adata`` only gains the
    result table.

    Parameters
    ----------
    adata
        Cells with the embeddings in ``.obsm``, batch and label columns in ``.obs``.
    batch_key, labels_key
        ``.obs`` columns with the batch (technology, donor…) and the cell type.
    use_rep
        One ``.obsm`` key or a list of them, scored side by side.
    pre_integrated_rep
        The unintegrated embedding for the PCR-comparison metric. Default: a PCA of
        ``.X`` (normalised and log1p first when ``.X`` holds counts).
    fast
        Skip kBET-per-label (slow, and undefined for labels seen in one batch only).
    key_added
        ``.uns`` key for the table.

    Returns
    -------
    One row per embedding: the individual metrics, ``"bio_conservation"``,
    ``"batch_correction"`` and ``"total"`` (0.6 × bio + 0.4 × batch, scIB's weighting),
    unscaled (``min_max_scale=False``) so rows of separate calls compare.

    Writes
    ------
    ``adata.uns[key_added]``: the table as ``{embedding: {metric: value}}``.

    Raises
    ------
    ImportError
        When scib-metrics is not installed: ``pip install 'scssl[bench]'``.
    """
    try:
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as err:
        raise ImportError(
            "integrate_scores needs scib-metrics (and jax); install the extra: pip install 'scssl[bench]'"
        ) from err
    reps = [use_rep] if isinstance(use_rep, str) else list(use_rep)
    batches, labels = get_labels(adata, batch_key, "batch_key"), get_labels(adata, labels_key)
    if len(np.unique(labels)) < 2 or len(np.unique(batches)) < 2:
        raise ValueError("integration scores need at least two labels and two batches")
    work = ad.AnnData(obs=pd.DataFrame({
        "batch": pd.Categorical(batches), "label": pd.Categorical(labels),
    }, index=adata.obs_names))
    for rep in reps:
        work.obsm[rep] = get_rep(adata, rep).astype(np.float32)
    if pre_integrated_rep is None:
        work.obsm["X_pre"] = pca_embedding(adata, n_comps=50, counts=is_counts(adata.X))
    else:
        work.obsm["X_pre"] = get_rep(adata, pre_integrated_rep)
    bench = Benchmarker(
        work, batch_key="batch", label_key="label", embedding_obsm_keys=reps,
        pre_integrated_embedding_obsm_key="X_pre", progress_bar=False,
        bio_conservation_metrics=BioConservation(),
        batch_correction_metrics=BatchCorrection(kbet_per_label=not fast),
    )
    bench.benchmark()
    table = bench.get_results(min_max_scale=False, clean_names=True)
    table = table.drop(index="Metric Type", errors="ignore").apply(pd.to_numeric, errors="coerce")
    table = table.rename(columns={"Bio conservation": "bio_conservation", "Batch correction": "batch_correction",
                                  "Total": "total"})
    table.index.name = "embedding"
    adata.uns[key_added] = {rep: {col: float(v) for col, v in row.items()} for rep, row in table.iterrows()}
    return table
