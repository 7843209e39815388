"""Composable scRNA-seq augmentations for contrastive views.

Each augmentation is a small module ``(x, generator) -> x`` acting on a batch of model inputs
(cells × genes), applied per cell with probability ``p``. Compose them with :class:`Compose`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
    """Base: applies :meth:`transform` to a random subset of cells (each with probability ``p``)."""

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
