"""Contrastive + held-out gene prediction in one model (``method="hybrid"``).

After scRobust (Pang et al. 2024, Bioinformatics): a set of genes is held out of both views
of each cell; the encoder is trained with NT-Xent on the two views and, from each view's cell
embedding, a head predicts the held-out genes' expression. The contrastive term shapes the
embedding's neighbourhoods; the prediction term makes it carry expression information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from scssl.losses import masked_mse, nt_xent
from scssl.masking import random_mask
from scssl.methods._views import TwoViewConfig, TwoViewMethod
from scssl.methods.base import Batch, LossOutput, register


@dataclass
class HybridConfig(TwoViewConfig):
    """Hybrid hyper-parameters (plus those of :class:`TwoViewConfig`).

    Attributes
    ----------
    temperature
        NT-Xent temperature.
    holdout_ratio
        Fraction of genes held out of both views and predicted.
    prediction_weight
        Weight of the held-out-gene MSE relative to NT-Xent.
    """

    temperature: float = 0.1
    holdout_ratio: float = 0.2
    prediction_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ValueError(f"holdout_ratio must be in (0, 1), got {self.holdout_ratio}")


@register("hybrid")
class Hybrid(TwoViewMethod):
    """Encoder + projector (NT-Xent) + gene-prediction head on the embedding."""

    Config = HybridConfig

    def __init__(
        self, n_genes: int, config: HybridConfig, input_kind: str = "counts", n_batches: int = 0,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_genes, config, input_kind, n_batches, gene_names)
        self.gene_head = nn.Sequential(
            nn.Linear(config.latent_dim, config.projection_hidden), nn.GELU(),
            nn.Linear(config.projection_hidden, n_genes),
        )

    def loss(self, batch: Batch) -> LossOutput:
        cfg = self.config
        partners = self.partners(batch)
        view1, view2 = self._view(batch, None), self._view(batch, partners)
        target2 = batch.x if partners is None else batch.x[partners]
        held_out = random_mask(*batch.x.shape, cfg.holdout_ratio, batch.generator, batch.x.device)
        # Held-out genes are hidden from both views (0 = the training mean after scaling).
        h1 = self.encoder(view1.masked_fill(held_out, 0.0))
        h2 = self.encoder(view2.masked_fill(held_out, 0.0))
        z1, z2 = self.across_processes(self.projector(h1).float(), self.projector(h2).float())
        contrastive = nt_xent(z1, z2, cfg.temperature)
        # Targets are the clean values, so the head learns expression, not the augmentation noise.
        prediction = 0.5 * (
            masked_mse(self.gene_head(h1).float(), batch.x, held_out)
            + masked_mse(self.gene_head(h2).float(), target2, held_out)
        )
        total = contrastive + cfg.prediction_weight * prediction
        return LossOutput(total=total, parts={"nt_xent": contrastive.detach(), "prediction": prediction.detach()})
