"""One process of a torchrun job for tests/test_distributed.py (not a test module itself).

Usage: ``torchrun --standalone --nproc-per-node 2 tests/ddp_gather_worker.py OUT``.
For each method whose loss spans the batch, one DDP step on this process's half of a fixed
batch against the same method, same weights, on the whole batch in one process; writes per
rank a JSON of the largest loss and gradient differences, with and without gathering rows.
Views carry no augmentation and the projector no batch norm, so the two computations see the
same inputs and only the span of the loss can differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from scssl.methods import get_method
from scssl.train import _LossStep

N_CELLS, N_GENES = 16, 30


def one_step(name: str, counts: torch.Tensor, spans_processes: bool) -> tuple[float, float]:
    """(|loss difference|, largest |gradient difference|) of one distributed step against the whole batch."""
    cls = get_method(name)
    config = cls.Config(hidden=(16,), latent_dim=4, dropout=0.0, augmentations={}, projection_norm=None,
                        projection_hidden=8, projection_dim=6)
    methods = []
    for _ in range(2):  # identical weights: the reference and the distributed copy
        torch.manual_seed(1)
        method = cls(N_GENES, config)
        method.transform.set_stats(*method.transform.moments([counts]))
        method.train()
        methods.append(method)
    whole, shared = methods
    whole_loss = whole.loss(whole.prepare(counts)).total
    whole_loss.backward()

    rank, world = dist.get_rank(), dist.get_world_size()
    share = counts.chunk(world)[rank]
    shared.spans_processes = spans_processes
    step = DistributedDataParallel(_LossStep(shared))
    loss = step(share, None, None)
    loss.backward()
    gradient_gap = max(
        (a.grad - b.grad).abs().max().item()
        for a, b in zip(whole.parameters(), shared.parameters(), strict=True) if a.grad is not None
    )
    return abs(loss.item() - whole_loss.item()), gradient_gap


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    torch.manual_seed(0)  # the same batch on every process
    counts = torch.poisson(torch.rand(N_CELLS, N_GENES) * 4)
    result = {
        name: {"gathered": one_step(name, counts, True), "per_process": one_step(name, counts, False)}
        for name in ("simclr", "barlow_twins", "vicreg")
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
