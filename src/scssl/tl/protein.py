"""RNA → protein: a ridge head on the frozen embedding predicting surface-protein levels."""

from __future__ import annotations

from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV

from scssl.metrics import pca_embedding
from scssl.model import SSLModel
from scssl.tl._utils import is_counts, pearson_columns, random_split

_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def clr(counts: np.ndarray) -> np.ndarray:
    """Centred log-ratio per cell over proteins: ``log1p(x) - mean(log1p(x))`` (as Seurat/CiteFuse for ADTs)."""
    logged = np.log1p(np.asarray(counts, dtype=np.float64))
    return logged - logged.mean(1, keepdims=True)


def normalise_proteins(
    values, normalize: Literal["auto", "clr", "log1p", "none"] = "auto",
) -> tuple[np.ndarray, str]:
    """Protein levels on the scale they are predicted and scored on, and the rule applied.

    ``"auto"`` is CLR for raw ADT counts (non-negative integers), the values as they are
    otherwise (already normalised).
    """
    values = np.asarray(values, dtype=np.float64)
    if normalize == "auto":
        normalize = "clr" if is_counts(values) else "none"
    if normalize == "clr":
        return clr(values), normalize
    if normalize == "log1p":
        return np.log1p(values), normalize
    if normalize == "none":
        return values, normalize
    raise ValueError(f"normalize must be 'auto', 'clr', 'log1p' or 'none', got {normalize!r}")


def heldout_protein_fit(
    rep: np.ndarray, target: np.ndarray, train: np.ndarray, test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge head from ``rep`` to every protein, fitted on the ``train`` rows.

    Returns the predictions for every row and the Pearson r per protein on the ``test`` rows.
    """
    head = RidgeCV(alphas=_ALPHAS).fit(rep[train], target[train])
    predicted = head.predict(rep)
    return predicted, pearson_columns(predicted[test], target[test])


def predict_protein(
    model: SSLModel, adata: ad.AnnData, protein_key: str, *,
    normalize: Literal["auto", "clr", "log1p", "none"] = "auto", test_fraction: float = 0.2,
    baseline: bool = True, n_pcs: int = 50, key_added: str = "scssl_protein", seed: int = 0,
) -> dict:
    """Learn protein levels from the frozen RNA embedding, score on held-out cells.

    A ridge regression (penalty chosen by efficient leave-one-out over
    ``(0.1, 1, 10, 100, 1000)``) maps ``model.embed(adata)`` to every protein at once; the
    same head on a PCA of the RNA (normalise, log1p, HVGs, scale, ``n_pcs`` PCs) is the
    baseline.

    Parameters
    ----------
    model
        A fitted :class:`~scssl.SSLModel`; RNA in ``adata`` is read as it reads its data.
    adata
        CITE-seq cells: RNA in ``.X``, proteins in ``.obsm[protein_key]`` (DataFrame with
        protein names, or an array).
    protein_key
        The ``.obsm`` key with the protein matrix.
    normalize
        ``"clr"`` (per cell, for raw ADT counts), ``"log1p"``, ``"none"``, or ``"auto"``:
        CLR when the values are non-negative integers, else as they are.
    test_fraction
        Share of cells held out for scoring.
    baseline
        Also score the PCA baseline.
    n_pcs
        Components of the baseline PCA.
    key_added
        Keys written (below).
    seed
        Seeds the split and the PCA.

    Returns
    -------
    ``{"normalize", "mean_pearson", "baseline_mean_pearson", "per_protein"}``, where
    ``per_protein`` is a DataFrame (protein × ``scssl``/``pca``) of Pearson r on the held-out cells.

    Writes
    ------
    ``adata.obsm[key_added]`` (DataFrame of predicted, normalised levels for every cell),
    ``adata.obs[key_added + "_test"]`` (held-out cells) and ``adata.uns[key_added]``
    (the scores).
    """
    if protein_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{protein_key!r}] not found; available: {list(adata.obsm)}")
    raw = adata.obsm[protein_key]
    names = list(raw.columns) if isinstance(raw, pd.DataFrame) else [f"protein_{i}" for i in range(raw.shape[1])]
    target, normalize = normalise_proteins(raw, normalize)

    train, test = random_split(adata.n_obs, test_fraction, seed)
    reps = {"scssl": model.embed(adata, device="cpu")}
    if baseline:
        reps["pca"] = pca_embedding(adata, n_comps=n_pcs, counts=is_counts(adata.X), seed=seed)
    per_protein, predictions = {}, None
    for name, rep in reps.items():
        predicted, per_protein[name] = heldout_protein_fit(rep, target, train, test)
        if name == "scssl":
            predictions = predicted
    table = pd.DataFrame(per_protein, index=pd.Index(names, name="protein"))
    adata.obsm[key_added] = pd.DataFrame(predictions.astype(np.float32), index=adata.obs_names, columns=names)
    is_test = np.zeros(adata.n_obs, dtype=bool)
    is_test[test] = True
    adata.obs[key_added + "_test"] = is_test
    result = {
        "normalize": normalize,
        "mean_pearson": float(np.nanmean(table["scssl"])),
        "baseline_mean_pearson": float(np.nanmean(table["pca"])) if baseline else float("nan"),
        "per_protein": table,
    }
    adata.uns[key_added] = {
        "normalize": normalize, "mean_pearson": result["mean_pearson"],
        "baseline_mean_pearson": result["baseline_mean_pearson"],
        "pearson": {p: float(r) for p, r in table["scssl"].items()},
    }
    return result
