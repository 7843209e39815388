"""Bootstrap Your Own Latent (``method="byol"``).

An online network (encoder → projector → predictor) regresses the projection of a slowly
moving target network on the other view; no negatives (Grill et al. 2020, NeurIPS). The
target is an exponential moving average of the online encoder and projector with a cosine
schedule of the decay ``tau`` from ``tau_base`` to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scssl.encoders import mlp
from scssl.losses import byol_loss
from scssl.methods._views import TwoViewConfig, TwoViewMethod, cosine_tau, ema_update, momentum_copy
from scssl.methods.base import Batch, LossOutput, register


@dataclass
class BYOLConfig(TwoViewConfig):
    """BYOL hyper-parameters (plus those of :class:`TwoViewConfig`).

    Attributes
    ----------
    tau_base
        Initial EMA decay of the target network (0.99 in the paper), annealed to 1.
    predictor_hidden
        Hidden width of the predictor.
    """

    tau_base: float = 0.99
    predictor_hidden: int = 256

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau_base <= 1.0:
            raise ValueError(f"tau_base must be in [0, 1], got {self.tau_base}")


@register("byol")
class BYOL(TwoViewMethod):
    """Online encoder + projector + predictor; EMA target encoder + projector."""

    Config = BYOLConfig

    def __init__(
        self, n_genes: int, config: BYOLConfig, input_kind: str = "counts", n_batches: int = 0,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_genes, config, input_kind, n_batches, gene_names)
        self.predictor = mlp(
            [config.projection_dim, config.predictor_hidden, config.projection_dim],
            norm=config.projection_norm,
        )
        self.target = momentum_copy(self.encoder, self.projector)
        self.tau = config.tau_base

    def target_project(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            encoder, projector = self.target
            return projector(encoder(x)).float()

    def loss(self, batch: Batch) -> LossOutput:
        view1, view2 = self.views(batch)
        p1 = self.predictor(self.projector(self.encoder(view1))).float()
        p2 = self.predictor(self.projector(self.encoder(view2))).float()
        loss = byol_loss(p1, self.target_project(view2)) + byol_loss(p2, self.target_project(view1))
        return LossOutput(total=loss, parts={"byol": loss.detach()})

    def after_optimizer_step(self, progress: float) -> None:
        # The decay for this step follows the cosine schedule over training progress.
        self.tau = cosine_tau(self.config.tau_base, progress)
        ema_update(self.target, (self.encoder, self.projector), self.tau)
