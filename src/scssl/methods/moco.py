"""Momentum contrast (``method="moco"``).

A query network is trained with InfoNCE against the key of the other view, computed by a
momentum copy of the encoder and projector, and against a FIFO queue of earlier keys as
negatives (He et al. 2020, CVPR; MoCo v2 projector, Chen et al. 2020). For scRNA-seq: CLEAR
(Han et al. 2022), CLAIRE (Yan et al. 2023) and scCM use the same queue of negatives.
The queue and its pointer are buffers, so checkpoints and saved models carry them; in a
distributed fit every process enqueues the keys of the whole distributed minibatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scssl.losses import info_nce_queue
from scssl.methods._views import TwoViewConfig, TwoViewMethod, ema_update, momentum_copy
from scssl.methods.base import Batch, LossOutput, register


@dataclass
class MoCoConfig(TwoViewConfig):
    """MoCo hyper-parameters (plus those of :class:`TwoViewConfig`).

    Attributes
    ----------
    projection_norm
        ``"layer"`` by default, not batch norm: with batch norm a query and its positive key share
        their batch's statistics while the queued negatives do not, a shortcut that MoCo blocks
        with shuffled batch norm across devices (He et al. 2020, section 3.3).
    temperature
        InfoNCE temperature (0.2 in MoCo v2).
    momentum
        EMA decay of the key network (0.999 in the paper for ImageNet's many steps; a few
        thousand cells give few steps, so the default is lower).
    queue_size
        Negative keys kept; keep it below the number of training cells so that a cell's own
        stale key rarely acts as its negative.
    """

    projection_norm: str | None = "layer"
    temperature: float = 0.2
    momentum: float = 0.99
    queue_size: int = 1024

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {self.queue_size}")


@register("moco")
class MoCo(TwoViewMethod):
    """Query encoder + projector, momentum key encoder + projector, queue of negative keys."""

    Config = MoCoConfig
    sample_buffers = ("queue",)

    def __init__(
        self, n_genes: int, config: MoCoConfig, input_kind: str = "counts", n_batches: int = 0,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_genes, config, input_kind, n_batches, gene_names)
        self.key_network = momentum_copy(self.encoder, self.projector)
        # Random unit vectors, as in MoCo, until real keys replace them.
        queue = F.normalize(torch.randn(config.queue_size, config.projection_dim), dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: torch.Tensor | None = None

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            encoder, projector = self.key_network
            return F.normalize(projector(encoder(x)).float(), dim=1)

    def loss(self, batch: Batch) -> LossOutput:
        view1, view2 = self.views(batch)
        q1, q2 = self.project(view1), self.project(view2)
        k1, k2 = self.keys(view1), self.keys(view2)
        t = self.config.temperature
        loss = 0.5 * (info_nce_queue(q1, k2, self.queue, t) + info_nce_queue(q2, k1, self.queue, t))
        if self.training:
            # The queue is in this step's graph: enqueue only after the optimiser step. Every
            # process enqueues every process's keys, so the queues stay one queue.
            self._pending_keys = torch.cat(self.across_processes(k1, k2))
        return LossOutput(total=loss, parts={"info_nce": loss.detach()})

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` over the oldest queue rows (FIFO), wrapping the pointer; no host sync."""
        size, n = self.queue.shape[0], keys.shape[0]
        # More keys than rows: the oldest would be overwritten within this call, so skip them,
        # keeping rows and pointer exactly where writing them one by one would leave them.
        skip = max(0, n - size)
        rows = (self.queue_ptr + skip + torch.arange(n - skip, device=keys.device)) % size
        self.queue.index_copy_(0, rows, keys[skip:].to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def after_optimizer_step(self, progress: float) -> None:
        ema_update(self.key_network, (self.encoder, self.projector), self.config.momentum)
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None
