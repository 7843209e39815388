"""Gene masks for masked autoencoders: pure functions of (shape, ratio, generator)."""

from __future__ import annotations

import torch


def random_mask(
    n_cells: int, n_genes: int, ratio: float, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean mask with exactly ``round(ratio * n_genes)`` genes set per cell.

    Exact counts (rather than Bernoulli draws) keep the masked fraction equal to the one asked
    for in every cell, which the loss normalisation and the tests rely on.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    n_masked = max(1, round(ratio * n_genes))
    scores = torch.rand(n_cells, n_genes, generator=generator, device=device)
    chosen = scores.topk(n_masked, dim=1).indices
    mask = torch.zeros(n_cells, n_genes, dtype=torch.bool, device=device)
    return mask.scatter_(1, chosen, True)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x`` with masked entries replaced by ``fill`` (0 = the gene mean after scaling)."""
    return x.masked_fill(mask, fill)
