"""VICReg (``method="vicreg"``).

Variance-invariance-covariance regularisation of two views' projections (Bardes et al. 2022,
ICLR), weights 25/25/1 as in the paper. Collapse is prevented by the variance hinge rather than
by negatives or a momentum network.
"""

from __future__ import annotations

from dataclasses import dataclass

from scssl.losses import vicreg_loss
from scssl.methods._views import TwoViewConfig, TwoViewMethod
from scssl.methods.base import Batch, LossOutput, register


@dataclass
class VICRegConfig(TwoViewConfig):
    """VICReg hyper-parameters (plus those of :class:`TwoViewConfig`).

    Attributes
    ----------
    sim_weight, var_weight, cov_weight
        Weights of invariance, variance and covariance terms (25, 25, 1 in the paper).
    """

    projection_dim: int = 256
    projection_hidden: int = 256
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0


@register("vicreg")
class VICReg(TwoViewMethod):
    """Encoder + projector trained with the VICReg loss."""

    Config = VICRegConfig

    def loss(self, batch: Batch) -> LossOutput:
        view1, view2 = self.views(batch)
        cfg = self.config
        z1, z2 = self.across_processes(self.project(view1), self.project(view2))
        total, parts = vicreg_loss(z1, z2, cfg.sim_weight, cfg.var_weight, cfg.cov_weight)
        return LossOutput(total=total, parts={k: v.detach() for k, v in parts.items()})
