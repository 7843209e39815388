"""SimCLR-style contrastive learning (``method="simclr"``).

Two augmented views per cell (gene masking + Gaussian noise by default), a projection head,
and the NT-Xent loss (Chen et al. 2020, ICML). For scRNA-seq: CLEAR (Han et al. 2022),
contrastive-sc (Ciortan & Defrance 2021). The projector is dropped for the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scssl.augment import build_augmentations
from scssl.encoders import mlp
from scssl.losses import nt_xent
from scssl.methods.base import Batch, LossOutput, MethodConfig, SSLMethod, register


@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR hyper-parameters.

    Attributes
    ----------
    temperature
        NT-Xent temperature.
    projection_dim
        Output width of the projection head.
    augmentations
        ``{name: kwargs}`` of registered augmentations (see ``scssl.augment``), applied in order.
    """

    temperature: float = 0.1
    projection_dim: int = 64
    augmentations: dict[str, dict] = field(
        default_factory=lambda: {"gene_mask": {"ratio": 0.3}, "gaussian_noise": {"std": 0.3}}
    )


@register("simclr")
class SimCLR(SSLMethod):
    """Encoder + projector trained with NT-Xent on two augmented views."""

    Config = SimCLRConfig

    def __init__(self, n_genes: int, config: SimCLRConfig, input_kind: str = "counts", n_batches: int = 0) -> None:
        super().__init__(n_genes, config, input_kind, n_batches)
        self.augment = build_augmentations(config.augmentations)
        self.projector = mlp(
            [config.latent_dim, config.latent_dim, config.projection_dim], norm=config.norm
        )

    def loss(self, batch: Batch) -> LossOutput:
        view1 = self.augment(batch.x, batch.generator)
        view2 = self.augment(batch.x, batch.generator)
        z1 = self.projector(self.encoder(view1)).float()
        z2 = self.projector(self.encoder(view2)).float()
        loss = nt_xent(z1, z2, self.config.temperature)
        return LossOutput(total=loss, parts={"nt_xent": loss.detach()})
