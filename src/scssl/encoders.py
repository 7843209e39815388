"""Cell encoders: model input (cells × genes) → embedding (cells × latent_dim).

Encoders are registered by name so that a method's config can pick one
(``encoder="mlp"``) and new architectures add one class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ENCODERS: dict[str, type[nn.Module]] = {}


def register_encoder(name: str):
    """Class decorator: make an encoder constructible by name."""

    def wrap(cls):
        ENCODERS[name] = cls
        return cls

    return wrap


def mlp(
    sizes: Sequence[int], dropout: float = 0.0, norm: str | None = "layer",
    last_activation: bool = False,
) -> nn.Sequential:
    """Linear → norm → GELU → dropout blocks between consecutive ``sizes``.

    The last linear layer is left bare unless ``last_activation``.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        is_last = i == len(sizes) - 2
        if is_last and not last_activation:
            break
        if norm == "layer":
            layers.append(nn.LayerNorm(n_out))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(n_out))
        elif norm is not None:
            raise ValueError(f"norm must be 'layer', 'batch' or None, got {norm!r}")
        layers.append(nn.GELU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register_encoder("mlp")
class MLPEncoder(nn.Module):
    """Fully connected encoder; the bottleneck is the cell embedding.

    Parameters
    ----------
    n_genes
        Input width.
    hidden
        Widths of the hidden layers (2–4 layers in the literature).
    latent_dim
        Embedding width.
    dropout
        Dropout after each hidden layer.
    input_dropout
        Dropout on the input genes (a cheap denoising regulariser).
    norm
        ``"layer"``, ``"batch"`` or ``None``.
    """

    def __init__(
        self, n_genes: int, hidden: Sequence[int] = (512, 256), latent_dim: int = 64,
        dropout: float = 0.1, input_dropout: float = 0.0, norm: str | None = "layer",
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.input_dropout = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.net = mlp([n_genes, *hidden, latent_dim], dropout=dropout, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input_dropout(x))


def build_encoder(name: str, n_genes: int, **options) -> nn.Module:
    """Construct a registered encoder; ``options`` are its keyword arguments."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {sorted(ENCODERS)}")
    return ENCODERS[name](n_genes, **options)
