"""Per-batch input transform: library-size normalisation, log1p and per-gene scaling.

It runs on the device after a batch is densified, so the user's matrix stays raw. Its
statistics are buffers, saved with the weights, so a loaded model transforms new data
exactly as it did the training data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

LIBRARY_BIN = 0.005
"""Width of the log-library histogram's bins: the median library is found to within 0.25%."""
LIBRARY_BINS = 4200
"""Bins of the histogram, up to e^21 ≈ 1.3e9 counts per cell."""


def normalize_log1p(counts: torch.Tensor, target_sum: float | torch.Tensor = 1e4) -> torch.Tensor:
    """``log1p(counts / library * target_sum)`` per cell (scanpy's normalize_total + log1p)."""
    library = counts.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.log1p(counts / library * target_sum)


class InputTransform(nn.Module):
    """Raw values → model input.

    Parameters
    ----------
    n_genes
        Number of genes in the model's vocabulary.
    kind
        ``"counts"`` normalises and log-transforms; ``"lognorm"`` takes values as they are.
    scale
        Standardise each gene with the training mean and standard deviation (like
        ``sc.pp.scale``), clipped to ``±clip``.
    target_sum
        Counts per cell after normalisation; ``None``: the median library size of the cells
        the statistics are fitted on (scanpy's ``normalize_total`` default), found by
        :meth:`library_histogram` and :meth:`set_target`.
    """

    def __init__(
        self, n_genes: int, kind: str = "counts", scale: bool = True,
        target_sum: float | None = 1e4, clip: float = 10.0,
    ) -> None:
        super().__init__()
        if target_sum is not None and not (isinstance(target_sum, (int, float)) and target_sum > 0):
            raise ValueError(
                "target_sum must be a positive number of counts, or None for the training cells' "
                f"median library (null on the shell); got {target_sum!r}"
            )
        self.kind, self.scale, self.clip = kind, scale, clip
        self.target_from_data = target_sum is None and kind == "counts"
        self.register_buffer("mean", torch.zeros(n_genes))
        self.register_buffer("std", torch.ones(n_genes))
        # A buffer, so that saving, loading, resuming and federated rounds carry it; 1e4 stands
        # in until set_target() when it comes from the data, as mean 0 and sd 1 do for the genes.
        initial = 1e4 if target_sum is None else float(target_sum)
        self.register_buffer("target_sum", torch.tensor(initial))

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        """Log-normalised values (no scaling)."""
        return normalize_log1p(raw, self.target_sum) if self.kind == "counts" else raw

    @torch.no_grad()
    def library_histogram(self, batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """Cells per bin of log library size (width :data:`LIBRARY_BIN`), in float64.

        Histograms of disjoint sets of cells add up, so processes and federated nodes can pool
        them (as :meth:`moments`) and agree on one median.
        """
        hist = torch.zeros(LIBRARY_BINS, dtype=torch.float64, device=self.mean.device)
        for raw in batches:
            log_library = raw.to(hist.device).sum(1).double().clamp_min(1.0).log()
            bins = (log_library / LIBRARY_BIN).long().clamp_max(LIBRARY_BINS - 1)
            hist += torch.bincount(bins, minlength=LIBRARY_BINS).double()
        return hist

    @torch.no_grad()
    def set_target(self, histogram: torch.Tensor) -> None:
        """Set the target sum to the median library of a (pooled) :meth:`library_histogram`."""
        cumulative = torch.cumsum(histogram.double().cpu(), 0)
        if cumulative[-1] <= 0:
            raise ValueError("no cells to compute the median library size from")
        middle = int(torch.searchsorted(cumulative, cumulative[-1] / 2))
        self.target_sum.fill_(math.exp((middle + 0.5) * LIBRARY_BIN))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = self.normalise(raw)
        if self.scale:
            x = ((x - self.mean) / self.std).clamp(-self.clip, self.clip)
        return x

    @torch.no_grad()
    def fit_stats(self, batches: Iterable[torch.Tensor]) -> None:
        """The target sum (when it comes from the data), then the per-gene mean and standard
        deviation of the normalised values. A target from the data needs two passes, so the
        batches are then held in memory; the trainer instead reads its cells twice."""
        if self.target_from_data:
            batches = list(batches)  # two passes: the median library first
            self.set_target(self.library_histogram(batches))
        self.set_stats(*self.moments(batches))

    @torch.no_grad()
    def moments(self, batches: Iterable[torch.Tensor]) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Per-gene moments of the normalised values: ``(n, Σx, Σx²)``, the sums in float64.

        Moments of disjoint sets of cells add up, so several holders of cells (federated
        nodes) can pool them without sharing a cell; :meth:`set_stats` turns them into the
        input statistics.

        Parameters
        ----------
        batches
            Raw minibatches (cells × genes, in the vocabulary's order).

        Returns
        -------
        The number of cells and the two per-gene sums (on this module's device).
        """
        total = sq_total = None
        n = 0
        for raw in batches:
            x = self.normalise(raw.to(self.mean.device)).double()
            total = x.sum(0) if total is None else total + x.sum(0)
            sq_total = (x * x).sum(0) if sq_total is None else sq_total + (x * x).sum(0)
            n += x.shape[0]
        if n == 0:
            raise ValueError("no cells to compute input statistics from")
        return n, total, sq_total

    @torch.no_grad()
    def set_stats(self, n: int, total: torch.Tensor, sq_total: torch.Tensor) -> None:
        """Set the per-gene mean and standard deviation from moments (see :meth:`moments`).

        Parameters
        ----------
        n
            Number of cells the sums run over.
        total, sq_total
            Per-gene Σx and Σx² of the normalised values (float64 keeps the variance, a
            difference of two large numbers, accurate over millions of cells).
        """
        if n <= 0:
            raise ValueError("no cells to compute input statistics from")
        if total.shape != self.mean.shape or sq_total.shape != self.mean.shape:
            raise ValueError(
                f"moments cover {tuple(total.shape)} / {tuple(sq_total.shape)} genes, the "
                f"vocabulary has {self.mean.shape[0]}; compute them on the model's genes"
            )
        total = total.to(self.mean.device, torch.float64)
        sq_total = sq_total.to(self.mean.device, torch.float64)
        mean = total / n
        var = (sq_total / n - mean * mean).clamp_min(0.0)
        self.mean.copy_(mean.float())
        # Genes that never vary get std 1: they stay at zero after centring instead of exploding.
        std = var.sqrt().float()
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
