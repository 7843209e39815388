"""Barlow Twins (``method="barlow_twins"``).

Redundancy reduction: the cross-correlation of the two views' projections is pushed to the
identity (Zbontar et al. 2021, ICML). No negatives, no momentum network; the projector is wide
relative to the embedding, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from scssl.losses import barlow_twins_loss
from scssl.methods._views import TwoViewConfig, TwoViewMethod
from scssl.methods.base import Batch, LossOutput, register


@dataclass
class BarlowTwinsConfig(TwoViewConfig):
    """Barlow Twins hyper-parameters (plus those of :class:`TwoViewConfig`).

    Attributes
    ----------
    lambd
        Weight of the off-diagonal (redundancy) term; the paper's 5e-3 is for 8192 features,
        scaled here roughly as 1/projection_dim.
    """

    projection_dim: int = 256
    projection_hidden: int = 256
    lambd: float = 0.0051


@register("barlow_twins")
class BarlowTwins(TwoViewMethod):
    """Encoder + projector trained with the Barlow Twins loss."""

    Config = BarlowTwinsConfig

    def loss(self, batch: Batch) -> LossOutput:
        view1, view2 = self.views(batch)
        z1, z2 = self.across_processes(self.project(view1), self.project(view2))
        loss = barlow_twins_loss(z1, z2, self.config.lambd)
        return LossOutput(total=loss, parts={"barlow_twins": loss.detach()})
