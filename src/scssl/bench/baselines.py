"""Shared preprocessing and the baselines every SSL method is compared with.

One :func:`prepare` per dataset feeds every method the same cells and genes: raw counts
restricted to the ``n_top_genes`` highly variable genes of the library-size-normalised,
log1p data (SSL methods and scVI train on these counts), their scaled values (``hvg_knn``,
``logreg``) and the top ``n_pcs`` principal components (``pca``, ``harmony``).

A baseline is a function ``(prepared, seed, config) -> MethodOutput``; it raises
:class:`Skip` with a reason when it cannot run here (an optional package is missing, or a
batch-integration method meets data without batches).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from scssl.bench.config import BenchConfig, DatasetSpec
from scssl.train import cpu_threads

log = logging.getLogger("scssl.bench")


class Skip(Exception):
    """A method or task that does not apply here; the message says why (it is logged and reported)."""


@dataclass
class Prepared:
    """One dataset after the shared preprocessing.

    Attributes
    ----------
    counts
        AnnData of raw counts on the HVGs, ``obs["cell_type"]`` and ``obs["batch"]`` (when batched).
    scaled
        Log-normalised, scaled HVG values (cells × HVGs).
    pca
        The top principal components of ``scaled``.
    labels, batches
        Cell types as strings; batches as strings or ``None`` (no batch key, or a single batch).
    proteins
        Surface-protein levels (cells × proteins) on the scale they are scored on
        (:func:`scssl.tl.protein.normalise_proteins`), or ``None`` without proteins.
    seconds
        Preprocessing times: ``hvg`` (normalise, log1p, HVGs, scale) and ``pca``.
    """

    spec: DatasetSpec
    counts: ad.AnnData
    scaled: np.ndarray
    pca: np.ndarray
    labels: np.ndarray
    batches: np.ndarray | None
    seconds: dict[str, float]
    proteins: np.ndarray | None = None

    @property
    def n_types(self) -> int:
        return len(np.unique(self.labels))


@dataclass
class MethodOutput:
    """What a method hands to the scorers.

    ``embedding`` (cells × d) for embedding methods, ``predictions`` (out-of-fold labels)
    for supervised ones; ``seconds`` is the wall time to the embedding (preprocessing
    included); ``epochs``/``train_seconds`` give the training throughput; ``model`` is the
    fitted SSL model for tasks that need one (fine-tuned annotation); ``holdout_macro_f1`` is a
    supervised method's macro-F1 on the split that fine-tuned annotation holds out.
    """

    embedding: np.ndarray | None = None
    predictions: np.ndarray | None = None
    seconds: float = 0.0
    train_seconds: float | None = None
    epochs: int | None = None
    model: Any = None
    holdout_macro_f1: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def prepare(spec: DatasetSpec, n_top_genes: int = 2000, n_pcs: int = 50) -> Prepared:
    """Read ``spec.path`` and run the shared preprocessing (see the module docstring)."""
    adata = ad.read_h5ad(spec.path)
    if spec.label_key not in adata.obs:
        raise ValueError(f"{spec.path}: no obs[{spec.label_key!r}] with cell types (columns: {list(adata.obs)})")
    if spec.max_cells and adata.n_obs > spec.max_cells:
        keep = np.sort(np.random.default_rng(0).choice(adata.n_obs, spec.max_cells, replace=False))
        adata = adata[keep].copy()
    X = adata.X
    X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else sp.csr_matrix(np.asarray(X, np.float32))
    sample = X.data[:100_000]
    if sample.size and not np.allclose(sample, np.round(sample)):
        raise ValueError(f"{spec.path}: X does not hold raw counts (non-integral values); the bench needs counts")
    keep = np.asarray(X.sum(1)).ravel() > 0
    labels_all = adata.obs[spec.label_key]
    keep &= labels_all.notna().to_numpy()
    if not keep.all():
        log.info("%s: dropping %d cells without counts or labels", spec.name, (~keep).sum())
    adata, X = adata[keep], X[keep]

    start = time.perf_counter()
    work = ad.AnnData(X.copy())
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    if work.n_vars > n_top_genes:
        sc.pp.highly_variable_genes(work, n_top_genes=n_top_genes)
        hvg = work.var["highly_variable"].to_numpy()
    else:
        hvg = np.ones(work.n_vars, bool)
    work = work[:, hvg].copy()
    sc.pp.scale(work, max_value=10)
    scaled = np.asarray(work.X, np.float32)
    t_hvg = time.perf_counter() - start
    start = time.perf_counter()
    n_comps = min(n_pcs, scaled.shape[1] - 1, scaled.shape[0] - 1)
    pca = sc.pp.pca(scaled, n_comps=n_comps, random_state=0).astype(np.float32)
    t_pca = time.perf_counter() - start

    labels = labels_all[keep].astype(str).to_numpy()
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=adata.obs_names.astype(str))
    batches = None
    if spec.batch_key and spec.batch_key in adata.obs:
        b = adata.obs[spec.batch_key].astype(str).to_numpy()
        if len(np.unique(b)) > 1:
            batches = b
            obs["batch"] = pd.Categorical(b)
    counts = ad.AnnData(X[:, hvg], obs=obs, var=pd.DataFrame(index=adata.var_names[hvg].astype(str)))
    proteins = _proteins(adata, spec)
    log.info("%s: %d cells × %d HVGs, %d types, %s", spec.name, counts.n_obs, counts.n_vars,
             len(np.unique(labels)), "no batches" if batches is None else f"{len(np.unique(batches))} batches")
    seconds = {"hvg": t_hvg, "pca": t_pca}
    return Prepared(spec, counts, scaled, pca, labels, batches, seconds, proteins)


def _proteins(adata: ad.AnnData, spec: DatasetSpec) -> np.ndarray | None:
    """The dataset's protein levels (normalised), from ``spec.protein_key`` or the first
    ``.obsm`` key starting with ``protein``; ``None`` when it has none."""
    from scssl.tl.protein import normalise_proteins

    key = spec.protein_key or next((k for k in adata.obsm if k.startswith("protein")), None)
    if key is None:
        return None
    if key not in adata.obsm:
        raise ValueError(f"{spec.path}: protein_key {key!r} is not in .obsm "
                         f"(keys: {list(adata.obsm)})")
    return normalise_proteins(adata.obsm[key])[0]


# ---- baselines -----------------------------------------------------------------------------------
def run_pca(prep: Prepared, seed: int, config: BenchConfig) -> MethodOutput:
    """PCA on the scaled HVGs (computed once in :func:`prepare`; the seed moves only the scorers)."""
    return MethodOutput(embedding=prep.pca, seconds=prep.seconds["hvg"] + prep.seconds["pca"])


def run_hvg_knn(prep: Prepared, seed: int, config: BenchConfig) -> MethodOutput:
    """The scaled HVG matrix itself as the embedding (kNN and clustering on raw HVGs)."""
    return MethodOutput(embedding=prep.scaled, seconds=prep.seconds["hvg"])


def run_harmony(prep: Prepared, seed: int, config: BenchConfig) -> MethodOutput:
    """Harmony (harmonypy) on the PCs, batches from ``obs.batch``."""
    if prep.batches is None:
        raise Skip("no batches in this dataset (Harmony integrates batches)")
    if importlib.util.find_spec("harmonypy") is None:
        raise Skip("harmonypy is not installed (pip install 'scssl[bench]')")
    import harmonypy

    start = time.perf_counter()
    meta = pd.DataFrame({"batch": prep.batches})
    result = harmonypy.run_harmony(prep.pca, meta, ["batch"], random_state=seed, verbose=False, ncores=1)
    z = np.asarray(result.Z_corr, np.float32)
    if z.shape[0] != prep.pca.shape[0]:
        z = z.T
    return MethodOutput(embedding=np.ascontiguousarray(z),
                        seconds=prep.seconds["hvg"] + prep.seconds["pca"] + time.perf_counter() - start)


def run_logreg(prep: Prepared, seed: int, config: BenchConfig) -> MethodOutput:
    """Supervised reference: logistic regression on the scaled HVGs, out-of-fold predictions
    over the same stratified 5 folds as the kNN score, and its macro-F1 on the test cells that
    fine-tuned annotation holds out."""
    from scssl.tl._utils import stratified_split

    start = time.perf_counter()
    labels = prep.labels
    predicted = np.empty(len(labels), dtype=object)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    for train, test in folds.split(prep.scaled, labels):
        clf = LogisticRegression(max_iter=500, C=0.1)
        predicted[test] = clf.fit(prep.scaled[train], labels[train]).predict(prep.scaled[test])
    seconds = prep.seconds["hvg"] + time.perf_counter() - start
    # scssl.tl.annotate's hold-out split and score (macro-F1 over the types in the test cells),
    # so the fine-tuned SSL figure has a supervised reference on the very same cells.
    train, test = stratified_split(labels, 0.2, seed)
    clf = LogisticRegression(max_iter=500, C=0.1).fit(prep.scaled[train], labels[train])
    holdout = f1_score(labels[test], clf.predict(prep.scaled[test]), labels=np.unique(labels[test]),
                       average="macro", zero_division=0)
    return MethodOutput(predictions=predicted.astype(str), seconds=seconds, holdout_macro_f1=float(holdout))


def run_scvi(prep: Prepared, seed: int, config: BenchConfig) -> MethodOutput:
    """scVI (scvi-tools): 10-d latent on the HVG raw counts, batch-aware when batched,
    at most ``config.scvi_max_epochs`` epochs with early stopping."""
    if importlib.util.find_spec("scvi") is None:
        raise Skip("scvi-tools is not installed (pip install 'scssl[bench]')")
    import scvi
    import torch

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    gpu = torch.cuda.is_available() and config.device != "cpu"
    start = time.perf_counter()
    adata = prep.counts.copy()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch" if prep.batches is not None else None)
    model = scvi.model.SCVI(adata, n_latent=10)
    train_start = time.perf_counter()
    with cpu_threads():  # the same thread count as the SSL methods' Trainer
        model.train(max_epochs=config.scvi_max_epochs, early_stopping=True, batch_size=128,
                    accelerator="gpu" if gpu else "cpu", devices=1, enable_progress_bar=False)
        train_seconds = time.perf_counter() - train_start
        z = np.asarray(model.get_latent_representation(), np.float32)
    epochs = len(model.history["elbo_train"]) if "elbo_train" in model.history else None
    return MethodOutput(embedding=z, seconds=prep.seconds["hvg"] + time.perf_counter() - start,
                        train_seconds=train_seconds, epochs=epochs, notes={"train_cells": int(adata.n_obs * 0.9)})


def fit_ssl(method: str, counts: ad.AnnData, seed: int, config: BenchConfig) -> tuple[Any, float]:
    """An :class:`~scssl.SSLModel` of ``method`` pre-trained on ``counts`` with the config's
    settings, and the seconds its training took."""
    from scssl.model import SSLModel

    model = SSLModel(counts, method=method, batch_key="batch" if "batch" in counts.obs else None,
                     seed=seed, **config.method_params.get(method, {}))
    start = time.perf_counter()
    model.fit(max_epochs=config.epochs, batch_size=config.batch_size, seed=seed,
              device=config.device, progress=False, **config.train_options)
    return model, time.perf_counter() - start


def run_ssl(method: str) -> Callable[[Prepared, int, BenchConfig], MethodOutput]:
    """A registered scssl method: pre-train on the HVG counts, embed every cell."""

    def fit(prep: Prepared, seed: int, config: BenchConfig) -> MethodOutput:
        start = time.perf_counter()
        model, train_seconds = fit_ssl(method, prep.counts, seed, config)
        z = model.embed(device=config.device)
        n_train = len(model.data) if hasattr(model.data, "__len__") else prep.counts.n_obs
        return MethodOutput(embedding=np.asarray(z, np.float32),
                            seconds=prep.seconds["hvg"] + time.perf_counter() - start,
                            train_seconds=train_seconds, epochs=len(model.history), model=model,
                            notes={"train_cells": round(n_train * 0.9)})

    fit.__doc__ = f"scssl method {method!r}"
    return fit


BASELINE_RUNNERS: dict[str, Callable[[Prepared, int, BenchConfig], MethodOutput]] = {
    "pca": run_pca, "scvi": run_scvi, "harmony": run_harmony, "logreg": run_logreg, "hvg_knn": run_hvg_knn,
}


def runner_for(method: str) -> Callable[[Prepared, int, BenchConfig], MethodOutput]:
    return BASELINE_RUNNERS.get(method) or run_ssl(method)
