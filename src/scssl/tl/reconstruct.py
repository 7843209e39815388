"""Imputation of held-out expression values from a model, beside a mean-expression baseline."""

from __future__ import annotations

from typing import Literal

import anndata as ad
import numpy as np
import torch
from sklearn.linear_model import Ridge

from scssl.masking import apply_mask, random_mask
from scssl.model import SSLModel
from scssl.tl._utils import lognorm, model_inputs, random_split


def reconstruct(
    model: SSLModel, adata: ad.AnnData, *, holdout: Literal["entries", "genes"] = "entries",
    fraction: float = 0.1, test_fraction: float = 0.3, test_cells: np.ndarray | None = None,
    decoder: Literal["auto", "model", "linear"] = "auto", alpha: float = 1.0,
    key_added: str = "scssl_reconstruct", seed: int = 0,
) -> dict[str, float]:
    """Hide expression values of test cells, predict them from the rest, score the prediction.

    A random ``test_fraction`` of cells is the test set; the other cells fit the baseline
    (and the linear decoder). In the test cells, ``holdout="entries"`` hides a random
    ``fraction`` of genes per cell, ``holdout="genes"`` hides the same random ``fraction`` of
    genes in every test cell. Hidden genes are masked in the model input exactly as a
    masked autoencoder masks during training (set to the gene mean); library sizes still
    come from all counts of the cell, as they do in training.

    Values are compared on the model's log-normalised scale (``log1p(counts / library ×
    target_sum)``, 1e4 by default, or the values themselves for ``"lognorm"`` models), on
    hidden entries only.

    Parameters
    ----------
    model
        A fitted :class:`~scssl.SSLModel`.
    adata
        Cells to evaluate on (genes aligned to the model by name).
    holdout, fraction
        What to hide, and how much.
    test_fraction
        Share of cells in the test set, drawn at random (ignored with ``test_cells``).
    test_cells
        The test set yourself: a boolean mask over ``adata``'s cells or their integer
        positions, e.g. the cells the model was not trained on (as the benchmark does: a model
        that has seen a cell has seen every value it would be asked to impute).
    decoder
        ``"model"``: the method's own decoder (``module.reconstruct``, e.g. MAE).
        ``"linear"``: a ridge regression from the embedding to the log-normalised genes,
        fitted on the non-test cells; for methods without a decoder (SimCLR…).
        ``"auto"``: the model's decoder when it has one, else linear.
    alpha
        Ridge penalty of the linear decoder.
    key_added
        ``.uns`` key for the scores, ``.obs[key_added + "_test"]`` marks the test cells.
    seed
        Seeds the split and the hidden entries.

    Returns
    -------
    ``{"decoder", "pearson", "explained_variance", "baseline_pearson",
    "baseline_explained_variance", "n_hidden"}``: Pearson r and explained variance
    (``1 - Var(truth - prediction) / Var(truth)``) over all hidden values, for the model and
    for the per-gene mean of the non-test cells.

    Writes
    ------
    ``adata.uns[key_added]`` (the scores) and ``adata.obs[key_added + "_test"]``.
    """
    if holdout not in ("entries", "genes"):
        raise ValueError(f"holdout must be 'entries' or 'genes', got {holdout!r}")
    module = model.module.cpu().eval()
    has_decoder = callable(getattr(module, "reconstruct", None))
    if decoder == "auto":
        decoder = "model" if has_decoder else "linear"
    if decoder == "model" and not has_decoder:
        raise ValueError(
            f"method {model.method_name!r} has no decoder; use decoder='linear' (a ridge decoder on the embedding)"
        )
    fit_idx, test_idx = _split(adata.n_obs, test_fraction, test_cells, seed)
    raw_fit, x_fit = model_inputs(model, adata, fit_idx)
    raw_test, x_test = model_inputs(model, adata, test_idx)
    truth = lognorm(model, raw_test)
    generator = torch.Generator().manual_seed(seed)
    n_test, n_genes = truth.shape
    if holdout == "entries":
        mask = random_mask(n_test, n_genes, fraction, generator)
    else:
        genes = torch.randperm(n_genes, generator=generator)[: max(1, round(fraction * n_genes))]
        mask = torch.zeros(n_test, n_genes, dtype=torch.bool)
        mask[:, genes] = True
    masked = apply_mask(x_test, mask)

    with torch.no_grad():
        if decoder == "model":
            codes = model.cell_data(adata).batch_codes  # batch-conditioned decoders need the batch
            batch_index = None if codes is None else torch.as_tensor(codes[test_idx])
            predicted = _decoder_to_lognorm(module, module.reconstruct(masked, batch_index))
        else:
            ridge = Ridge(alpha=alpha).fit(module.embed(x_fit).numpy(), lognorm(model, raw_fit).numpy())
            predicted = torch.as_tensor(ridge.predict(module.embed(masked).numpy()), dtype=torch.float32)
    baseline = lognorm(model, raw_fit).mean(0, keepdim=True).expand_as(truth)

    t = truth[mask].double().numpy()
    scores = {"decoder": decoder, "n_hidden": int(mask.sum())}
    for name, pred in (("", predicted), ("baseline_", baseline)):
        p = pred[mask].double().numpy()
        scores[name + "pearson"] = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 else float("nan")
        scores[name + "explained_variance"] = float(1.0 - np.var(t - p) / np.var(t))
    is_test = np.zeros(adata.n_obs, dtype=bool)
    is_test[test_idx] = True
    adata.obs[key_added + "_test"] = is_test
    adata.uns[key_added] = dict(scores, holdout=holdout, fraction=fraction)
    return scores


def _split(n_cells: int, test_fraction: float, test_cells: np.ndarray | None,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) cell positions: ``test_cells`` as given, else a random ``test_fraction``."""
    if test_cells is None:
        return random_split(n_cells, test_fraction, seed)
    test_cells = np.asarray(test_cells)
    is_test = np.zeros(n_cells, dtype=bool)
    if test_cells.dtype == bool:
        if test_cells.shape != (n_cells,):
            raise ValueError(f"test_cells is a mask of {test_cells.size} cells; adata has {n_cells}")
        is_test = test_cells
    elif np.issubdtype(test_cells.dtype, np.integer):
        if test_cells.size and (test_cells.min() < 0 or test_cells.max() >= n_cells):
            raise ValueError(f"test_cells holds positions outside 0..{n_cells - 1}")
        is_test[test_cells] = True
    else:
        raise ValueError("test_cells must be a boolean mask or integer positions of adata's cells")
    if is_test.all() or not is_test.any():
        raise ValueError("test_cells must leave cells on both sides (test, and fit for the baseline)")
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _decoder_to_lognorm(module, out: torch.Tensor) -> torch.Tensor:
    """A decoder's output on the log-normalised scale of the data."""
    transform = module.transform
    if getattr(module.config, "loss", "mse") == "mse":
        # MSE decoders predict model input: undo the gene scaling.
        return out * transform.std + transform.mean if transform.scale else out
    # Count likelihoods predict expression fractions per cell.
    return torch.log1p(out * transform.target_sum) if transform.kind == "counts" else out
