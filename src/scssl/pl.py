"""Plots (``scssl.pl``): embeddings and training curves as matplotlib figures, written as PNGs
when given a path. The user's matplotlib backend is left as it is (a notebook keeps showing
figures inline)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import scanpy as sc

from scssl.tl.cluster import umap as compute_umap


def umap(adata: ad.AnnData, color: str | list[str], use_rep: str = "X_scssl", path: str | Path | None = None,
         n_neighbors: int = 15, seed: int = 0, title: str | None = None):
    """UMAP of ``adata.obsm[use_rep]`` coloured by ``color``; written to ``path`` when given.

    Computes the UMAP with :func:`scssl.tl.umap` into ``.obsm["X_umap_<use_rep>"]`` unless it
    already exists.
    """
    key = f"X_umap_{use_rep}"
    if key not in adata.obsm:
        compute_umap(adata, use_rep=use_rep, n_neighbors=n_neighbors, seed=seed, key_added=key)
    colors = [color] if isinstance(color, str) else list(color)
    view = ad.AnnData(obs=adata.obs[colors].copy(), obsm={"X_umap": adata.obsm[key]})
    fig = sc.pl.embedding(view, basis="umap", color=colors, show=False, return_fig=True, title=title)
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
    return fig


def history(model, path: str | Path | None = None):
    """Training and validation loss per epoch (per round, with the nodes' evaluation loss, for
    a federated model)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    federated = bool(model.history) and "round" in model.history[0]
    step, second, label = ("round", "eval_loss", "evaluation") if federated else ("epoch", "val_loss", "validation")
    epochs = [h[step] for h in model.history]
    ax.plot(epochs, [h["train_loss"] for h in model.history], label="train")
    if any(h[second] is not None for h in model.history):
        ax.plot(epochs, [h[second] for h in model.history], label=label)
    ax.set_xlabel(step)
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
