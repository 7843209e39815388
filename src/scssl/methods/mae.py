"""Masked autoencoder (``method="mae"``).

Masks a fraction of genes per cell, encodes the masked cell and reconstructs the
masked genes only (He et al. 2022, CVPR; for scRNA-seq, Richter et al. 2024,
"Delineating the effective use of self-supervised learning in single-cell genomics").
The reconstruction loss is MSE on model-input values, or a negative binomial /
zero-inflated NB likelihood on raw counts (Lopez et al. 2018, scVI).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scssl.encoders import mlp
from scssl.losses import masked_mse, nb_nll, zinb_nll
from scssl.masking import apply_mask, random_mask
from scssl.methods.base import Batch, LossOutput, MethodConfig, SSLMethod, register

LOSSES = ("mse", "nb", "zinb")


@dataclass
class MAEConfig(MethodConfig):
    """Masked-autoencoder hyper-parameters.

    Attributes
    ----------
    mask_ratio
        Fraction of genes masked per cell (the literature uses 15–50%).
    loss
        ``"mse"`` on model-input values, ``"nb"`` or ``"zinb"`` on raw counts.
    """

    mask_ratio: float = 0.3
    loss: str = "mse"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")

    @property
    def needs_counts(self) -> bool:
        return self.loss in ("nb", "zinb")


@register("mae")
class MAE(SSLMethod):
    """Masked autoencoder: encoder → embedding → decoder, loss on masked genes."""

    Config = MAEConfig

    def __init__(self, n_genes: int, config: MAEConfig, input_kind: str = "counts", n_batches: int = 0) -> None:
        super().__init__(n_genes, config, input_kind, n_batches)
        widths = [config.latent_dim, *reversed(config.hidden)]
        self.decoder = mlp(widths, dropout=0.0, norm=config.norm, last_activation=True)
        self.output = nn.Linear(widths[-1], n_genes)
        if config.loss in ("nb", "zinb"):
            self.log_theta = nn.Parameter(torch.zeros(n_genes))  # gene-wise inverse dispersion
        if config.loss == "zinb":
            self.dropout_head = nn.Linear(widths[-1], n_genes)

    def mask(self, batch: Batch) -> torch.Tensor:
        return random_mask(*batch.x.shape, self.config.mask_ratio, batch.generator, batch.x.device)

    def reconstruction_loss(self, batch: Batch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of the decoder's output on the ``mask``ed genes."""
        out = self.output(hidden).float()
        if self.config.loss == "mse":
            return masked_mse(out, batch.x, mask)
        mu = torch.softmax(out, dim=1) * batch.library
        theta = self.log_theta.exp()
        if self.config.loss == "nb":
            return nb_nll(batch.counts, mu, theta, mask)
        return zinb_nll(batch.counts, mu, theta, self.dropout_head(hidden).float(), mask)

    def loss(self, batch: Batch) -> LossOutput:
        mask = self.mask(batch)
        z = self.encoder(apply_mask(batch.x, mask))
        recon = self.reconstruction_loss(batch, self.decoder(z), mask)
        return LossOutput(total=recon, parts={"reconstruction": recon.detach()})

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output for unmasked input: model-input values (mse) or expected fractions (nb/zinb)."""
        out = self.output(self.decoder(self.encoder(x)))
        return out if self.config.loss == "mse" else torch.softmax(out, dim=1)
