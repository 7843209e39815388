"""Helpers shared by the downstream tools: embeddings, labels and counts of an AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from scssl.model import SSLModel


def get_rep(adata: ad.AnnData, use_rep: str) -> np.ndarray:
    """``adata.obsm[use_rep]`` as float32, with a message naming how to create it."""
    if use_rep not in adata.obsm:
        raise KeyError(
            f"adata.obsm[{use_rep!r}] not found; embed first (adata.obsm[{use_rep!r}] = model.embed(adata)); "
            f"available: {list(adata.obsm)}"
        )
    return np.asarray(adata.obsm[use_rep], dtype=np.float32)


def get_labels(adata: ad.AnnData, key: str, argument: str = "labels_key") -> np.ndarray:
    """``adata.obs[key]`` as strings; the error names the ``argument`` that chose the column."""
    if key not in adata.obs:
        raise KeyError(f"{argument} {key!r} is not a column of adata.obs; columns: {list(adata.obs)}")
    labels = adata.obs[key]
    if labels.isna().any():
        raise ValueError(f"adata.obs[{key!r}] has {int(labels.isna().sum())} missing labels; drop those cells first")
    return labels.astype(str).to_numpy()


@torch.no_grad()
def model_inputs(model: SSLModel, adata: ad.AnnData, index: np.ndarray | None = None,
                 batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw values, model input) of ``adata``'s cells in the model's gene order, on the CPU.

    Dense tensors of all chosen cells: the downstream tools work on test sets of a few
    thousand cells, where this is small and keeps every later step a whole-batch op.
    """
    data = model.cell_data(adata)
    module = model.module.cpu().eval()
    raws = [x for _, x in data.batches(batch_size, index)]
    raw = torch.cat(raws) if raws else torch.zeros(0, len(model.genes))
    return raw, module.transform(raw)


def lognorm(model: SSLModel, raw: torch.Tensor) -> torch.Tensor:
    """Log-normalised values (the model's normalisation, without gene scaling)."""
    return model.module.transform.normalise(raw)


def is_counts(matrix) -> bool:
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    return bool(np.all(values >= 0) and np.all(np.mod(values, 1) == 0))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/test cell indices with every label in both parts when it has ≥ 2 cells."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(cells) * test_fraction)
        n_test = min(max(n_test, 1 if len(cells) >= 2 else 0), len(cells) - 1)
        test.append(cells[:n_test])
        train.append(cells[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def random_split(n_cells: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n_cells)
    n_test = max(1, round(n_cells * test_fraction))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def pearson_columns(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``pred`` with the same column of ``truth`` (NaN if constant)."""
    p = pred - pred.mean(0)
    t = truth - truth.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (p * t).sum(0) / denom, np.nan)
