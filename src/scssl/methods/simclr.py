"""SimCLR-style contrastive learning (``method="simclr"``).

Two augmented views per cell (gene masking + Gaussian noise by default), a projection head,
and the NT-Xent loss (Chen et al. 2020, ICML). For scRNA-seq: CLEAR (Han et al. 2022),
contrastive-sc (Ciortan & Defrance 2021). The projector is dropped for the embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

from scssl.losses import nt_xent
from scssl.methods._views import TwoViewConfig, TwoViewMethod
from scssl.methods.base import Batch, LossOutput, register


@dataclass
class SimCLRConfig(TwoViewConfig):
    """SimCLR hyper-parameters (plus those of :class:`TwoViewConfig`).

    Attributes
    ----------
    temperature
        NT-Xent temperature.
    """

    temperature: float = 0.1


@register("simclr")
class SimCLR(TwoViewMethod):
    """Encoder + projector trained with NT-Xent on two augmented views."""

    Config = SimCLRConfig

    def loss(self, batch: Batch) -> LossOutput:
        view1, view2 = self.views(batch)
        z1, z2 = self.across_processes(self.project(view1), self.project(view2))
        loss = nt_xent(z1, z2, self.config.temperature)
        return LossOutput(total=loss, parts={"nt_xent": loss.detach()})
