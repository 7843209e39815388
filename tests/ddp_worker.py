"""One process of a torchrun job for tests/test_distributed.py (not a test module itself).

Usage: ``torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py OUT METHOD EPOCHS [MODE]``,
MODE ``stop@K`` (exit at the start of epoch K, as if the job were killed) or ``resume``.
Trains on the synthetic counts of ``conftest.make_counts`` and writes, per rank, a JSON with
hashes of the final parameters and buffers, the history and the embedding's kNN F1 on the groups.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_counts

from scssl import SSLModel
from scssl.distributed import context, shutdown
from scssl.metrics import knn_macro_f1
from scssl.train import Trainer


def stop_at(epoch_to_stop: int) -> None:
    """Make every process exit when it reaches ``epoch_to_stop`` (a killed job, reproducibly)."""
    train_epoch = Trainer.train_epoch

    def interrupted(self, epoch, *args, **kwargs):
        if epoch == epoch_to_stop:
            raise SystemExit(3)
        return train_epoch(self, epoch, *args, **kwargs)

    Trainer.train_epoch = interrupted


def digest(named_tensors) -> str:
    sha = hashlib.sha256()
    for name, tensor in sorted(named_tensors):
        sha.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def main() -> None:
    out, method, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else ""
    if mode.startswith("stop@"):
        stop_at(int(mode[5:]))
    adata = make_counts(n_cells=400, n_genes=60, seed=3)
    # The median library comes from every process's shard: a per-shard median would differ
    # between the ranks, and the buffer digest below would show it.
    model = SSLModel(adata, method=method, hidden=(64,), latent_dim=8, target_sum=None)
    model.fit(max_epochs=epochs, batch_size=32, patience=0, num_threads=1, progress=False,
              checkpoint_dir=out / "checkpoints", resume=mode == "resume")
    ctx = context()
    embedding = model.embed(adata)
    result = {
        "rank": ctx.rank, "world_size": ctx.world_size,
        "weights": digest(model.module.named_parameters()), "buffers": digest(model.module.named_buffers()),
        "history": model.history, "knn_f1": float(knn_macro_f1(embedding, adata.obs["group"].to_numpy())),
    }
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(result))
    shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
