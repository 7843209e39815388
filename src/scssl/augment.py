"""Composable scRNA-seq augmentations for contrastive views.

Each augmentation is a small module ``(x, generator) -> x`` acting on a batch of model inputs
(cells × genes), applied per cell with probability ``p``. Compose them with :class:`Compose`.
Augmentations with ``on_counts = True`` (binomial thinning) act on raw counts, before the input
transform; :func:`build_view_augmentations` splits a spec into the counts stage and the input
stage. Batch-aware positives (:func:`mnn_partners`) pick a second view's source cell across batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from scssl.masking import random_mask

AUGMENTATIONS: dict[str, type[Augmentation]] = {}


def register_augmentation(name: str):
    """Class decorator: make an augmentation constructible by name (configs, CLI)."""

    def wrap(cls):
        AUGMENTATIONS[name] = cls
        return cls

    return wrap


class Augmentation(nn.Module):
    """Base: applies :meth:`transform` to a random subset of cells (each with probability ``p``).

    ``on_counts`` marks augmentations that need raw counts (applied before the input transform).
    """

    on_counts: ClassVar[bool] = False

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability p must be in [0, 1], got {p}")
        self.p = p

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p == 0.0:
            return x
        out = self.transform(x, generator)
        if self.p == 1.0:
            return out
        chosen = torch.rand(x.shape[0], 1, generator=generator, device=x.device) < self.p
        return torch.where(chosen, out, x)


@register_augmentation("gene_mask")
class GeneMask(Augmentation):
    """Zero a fraction ``ratio`` of genes in each cell (exactly that fraction)."""

    def __init__(self, ratio: float = 0.2, p: float = 1.0) -> None:
        super().__init__(p)
        self.ratio = ratio

    def transform(self, x, generator):
        mask = random_mask(x.shape[0], x.shape[1], self.ratio, generator, x.device)
        return x.masked_fill(mask, 0.0)


@register_augmentation("gaussian_noise")
class GaussianNoise(Augmentation):
    """Add N(0, ``std``²) noise to every gene."""

    def __init__(self, std: float = 0.2, p: float = 1.0) -> None:
        super().__init__(p)
        self.std = std

    def transform(self, x, generator):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + self.std * noise


def random_other_cells(shape: tuple[int, ...], n_cells: int, generator, device) -> torch.Tensor:
    """Random cell indices of ``shape`` that differ from the row's own cell (needs ≥ 2 cells)."""
    if n_cells < 2:
        raise ValueError("swapping genes between cells needs at least 2 cells in a batch")
    own = torch.arange(n_cells, device=device).view(-1, *([1] * (len(shape) - 1)))
    # An offset in [1, n) never maps a cell onto itself.
    offset = torch.randint(1, n_cells, shape, generator=generator, device=device)
    return (own + offset) % n_cells


@register_augmentation("binomial_thinning")
class BinomialThinning(Augmentation):
    """Simulated dropout: keep each molecule with probability ``1 - rate`` (raw counts only).

    Binomial thinning of counts mimics a shallower library of the same cell, the sampling
    noise of droplet protocols (e.g. scVI's and CLEAR's motivation); unlike zeroing genes it
    keeps the count distribution valid. With ``per_cell_rate`` each cell's rate is drawn
    uniformly from ``[0, rate]``, so a batch spans depths from the full library down.
    """

    on_counts = True

    def __init__(self, rate: float = 0.3, p: float = 1.0, per_cell_rate: bool = False) -> None:
        super().__init__(p)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"thinning rate must be in [0, 1), got {rate}")
        self.rate, self.per_cell_rate = rate, per_cell_rate

    def transform(self, x, generator):
        if self.per_cell_rate:
            rate = self.rate * torch.rand(x.shape[0], 1, generator=generator, device=x.device)
            keep = (1.0 - rate).expand_as(x)
        else:
            keep = torch.full_like(x, 1.0 - self.rate)
        return torch.binomial(x.clamp_min(0.0).round(), keep, generator=generator)


@register_augmentation("gene_swap")
class GeneSwap(Augmentation):
    """Replace a fraction ``ratio`` of genes in each cell by the values of random other cells.

    Each chosen gene takes its value from its own, independently drawn donor cell of the batch.
    """

    def __init__(self, ratio: float = 0.1, p: float = 1.0) -> None:
        super().__init__(p)
        self.ratio = ratio

    def transform(self, x, generator):
        mask = random_mask(x.shape[0], x.shape[1], self.ratio, generator, x.device)
        donors = random_other_cells(tuple(x.shape), x.shape[0], generator, x.device)
        return torch.where(mask, x.gather(0, donors), x)


@register_augmentation("crossover")
class Crossover(Augmentation):
    """CLEAR-style crossover (Han et al. 2022): a fraction ``ratio`` of genes from one partner cell.

    Every cell draws one random partner from the batch and takes exactly ``ratio`` of its genes
    from it, as a genetic crossover of two parents.
    """

    def __init__(self, ratio: float = 0.25, p: float = 1.0) -> None:
        super().__init__(p)
        self.ratio = ratio

    def transform(self, x, generator):
        mask = random_mask(x.shape[0], x.shape[1], self.ratio, generator, x.device)
        partner = random_other_cells((x.shape[0],), x.shape[0], generator, x.device)
        return torch.where(mask, x[partner], x)


def mnn_partners(x: torch.Tensor, batch_index: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Mutual-nearest-neighbour partner of each cell in another batch (CLAIRE, Yan et al. 2023).

    Cosine similarities within the minibatch; pairs in the same batch (or with unknown batch,
    ``-1``) are excluded; ``i`` and ``j`` are partners when each is among the other's ``k``
    most similar cells. Each cell gets its most similar mutual neighbour, itself when it has none.

    Returns
    -------
    Index tensor (cells,) into the batch.
    """
    n = x.shape[0]
    z = F.normalize(x.float(), dim=1)
    sim = z @ z.T
    valid = (batch_index.view(-1, 1) != batch_index.view(1, -1)) & (batch_index >= 0).view(-1, 1)
    valid &= (batch_index >= 0).view(1, -1)
    sim = sim.masked_fill(~valid, float("-inf"))
    k = min(k, n - 1)
    top = sim.topk(k, dim=1).indices
    knn = torch.zeros(n, n, dtype=torch.bool, device=x.device).scatter_(1, top, True) & valid
    mutual = knn & knn.T
    best = sim.masked_fill(~mutual, float("-inf")).argmax(1)
    return torch.where(mutual.any(1), best, torch.arange(n, device=x.device))


class Compose(nn.Module):
    """Apply augmentations in order."""

    def __init__(self, augmentations: Sequence[nn.Module]) -> None:
        super().__init__()
        self.augmentations = nn.ModuleList(augmentations)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for augmentation in self.augmentations:
            x = augmentation(x, generator)
        return x


def build_augmentations(spec: dict[str, dict]) -> Compose:
    """``{"gene_mask": {"ratio": 0.2}, "gaussian_noise": {"std": 0.2}}`` → :class:`Compose`."""
    unknown = set(spec) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; available: {sorted(AUGMENTATIONS)}")
    return Compose([AUGMENTATIONS[name](**kwargs) for name, kwargs in spec.items()])


def build_view_augmentations(spec: dict[str, dict]) -> tuple[Compose, Compose]:
    """Split a spec into (counts stage, input stage), each in the order given.

    The counts stage (``on_counts`` augmentations) runs on raw counts before the input
    transform; the input stage on model inputs after it.
    """
    composed = build_augmentations(spec)
    on_counts = [a for a in composed.augmentations if getattr(a, "on_counts", False)]
    on_input = [a for a in composed.augmentations if not getattr(a, "on_counts", False)]
    return Compose(on_counts), Compose(on_input)
