"""One process of a torchrun job for tests/test_distributed.py (not a test module itself).

Usage: ``torchrun --standalone --nproc-per-node 2 tests/ddp_gather_worker.py OUT``.
For each method whose loss spans the batch, one DDP step on this process's half of a fixed
batch against the same method, same weights, on the whole batch in one process; writes per
rank a JSON of the largest loss, gradient and buffer differences, with and without gathering rows.
Views carry no augmentation, so the two computations see the same inputs and only the span of
the loss and of the projector's batch norm can differ. mae's random masks depend on the batch's
shape, so its batch-wide term (the batch MMD) is checked on its own, through an encoder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from scssl.distributed import shutdown
from scssl.losses import batch_mmd
from scssl.methods import get_method
from scssl.train import _LossStep, span_processes

N_CELLS, N_GENES = 16, 30


def gaps(loss: torch.Tensor, whole_loss: torch.Tensor, whole: torch.nn.Module, shared: torch.nn.Module) -> list[float]:
    """Largest |difference| of the losses, of the gradients and of the buffers (batch norm's
    running statistics among them) between the distributed copy and the whole-batch reference."""
    pairs = zip(whole.parameters(), shared.parameters(), strict=True)
    gradient = max((a.grad - b.grad).abs().max().item() for a, b in pairs if a.grad is not None)
    buffer = max((a.float() - b.float()).abs().max().item()
                 for a, b in zip(whole.buffers(), shared.buffers(), strict=True))
    return [abs(loss.item() - whole_loss.item()), gradient, buffer]


def twins(cls, counts: torch.Tensor, config, **kwargs) -> list:
    """Two copies of a method with identical weights and input statistics, in training mode:
    the whole batch's reference and the distributed copy."""
    methods = []
    for _ in range(2):
        torch.manual_seed(1)
        method = cls(N_GENES, config, **kwargs)
        method.transform.set_stats(*method.transform.moments([counts]))
        methods.append(method.train())
    return methods


def one_step(name: str, counts: torch.Tensor, spans_processes: bool) -> list[float]:
    """:func:`gaps` of one distributed step against the same step on the whole batch."""
    cls = get_method(name)
    config = cls.Config(hidden=(16,), latent_dim=4, dropout=0.0, augmentations={}, projection_norm="batch",
                        projection_hidden=8, projection_dim=6)
    whole, shared = twins(cls, counts, config)
    whole_loss = whole.loss(whole.prepare(counts)).total
    whole_loss.backward()

    rank, world = dist.get_rank(), dist.get_world_size()
    share = counts.chunk(world)[rank]
    span_processes(shared, spans_processes)
    step = DistributedDataParallel(_LossStep(shared))
    loss = step(share, None, None)
    loss.backward()
    return gaps(loss, whole_loss, whole, shared)


class _BatchMMDStep(torch.nn.Module):
    """mae's batch MMD term on the embeddings of one encoder, as a DDP forward."""

    def __init__(self, method, n_batches: int) -> None:
        super().__init__()
        self.method, self.n_batches = method, n_batches

    def forward(self, counts: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        z = self.method.embed(self.method.transform(counts))
        return batch_mmd(*self.method.across_processes(z, batch_index), self.n_batches)


def batch_mmd_step(counts: torch.Tensor, spans_processes: bool) -> list[float]:
    """As :func:`one_step`, for mae's batch MMD term (two batches, interleaved cells)."""
    config = get_method("mae").Config(hidden=(16,), latent_dim=4, dropout=0.0)
    batch_index = torch.arange(N_CELLS) % 2
    whole, shared = (_BatchMMDStep(m, 2) for m in twins(get_method("mae"), counts, config, n_batches=2))
    whole_loss = whole(counts, batch_index)
    whole_loss.backward()
    rank, world = dist.get_rank(), dist.get_world_size()
    span_processes(shared.method, spans_processes)
    step = DistributedDataParallel(shared, find_unused_parameters=True)  # the decoder sits out
    loss = step(counts.chunk(world)[rank], batch_index.chunk(world)[rank])
    loss.backward()
    return gaps(loss, whole_loss, whole, shared)


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same batch on every process
    counts = torch.poisson(torch.rand(N_CELLS, N_GENES) * 4)
    result = {
        name: {"gathered": one_step(name, counts, True), "per_process": one_step(name, counts, False)}
        for name in ("simclr", "barlow_twins", "vicreg")
    }
    result["mae_batch_mmd"] = {"gathered": batch_mmd_step(counts, True), "per_process": batch_mmd_step(counts, False)}
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
