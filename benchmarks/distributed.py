"""Throughput and quality of distributed (DDP) pre-training against one process.

Each process count runs the same job under ``torchrun``: a method (the default ``mae``) on a real dataset,
a fixed number of epochs (no early stopping), the same effective minibatch (``--global-batch``
split over the processes), one CPU thread (or one GPU) per process. Prints one row per process
count: training seconds, cells per second, kNN macro-F1 and k-means ARI of the embedding.

    python benchmarks/distributed.py --nproc 1 2 --epochs 20            # CPU, Gloo
    python benchmarks/distributed.py --nproc 1 4 8 --device cuda         # GPUs, NCCL
    python benchmarks/distributed.py --nproc 1 2 --method simclr         # negatives span the processes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"pbmc3k": "pbmc3k_10x_seurat_hvg2000.h5ad", "pbmc4k": "pbmc4k_10x_scdcc_top2000.h5ad",
            "kidney": "human_kidney_scdcc_top2000.h5ad"}


def worker(args) -> None:
    """One process of the torchrun job; rank 0 writes the figures to ``args.out``."""
    import anndata as ad

    import scssl
    from scssl.distributed import context, shutdown
    from scssl.metrics import cluster_scores, knn_macro_f1

    adata = ad.read_h5ad(DATA / DATASETS[args.dataset])
    ctx = context()
    model = scssl.SSLModel(adata, method=args.method, seed=args.seed)
    start = time.perf_counter()
    model.fit(max_epochs=args.epochs, batch_size=args.global_batch // ctx.world_size, patience=0,
              seed=args.seed, device=args.device, num_threads=1, progress=False)
    seconds = time.perf_counter() - start
    if ctx.is_main:
        embedding = model.embed(adata, device=args.device)
        labels = adata.obs["cell_type"].to_numpy()
        n_train = round(adata.n_obs * 0.9)
        Path(args.out).write_text(json.dumps({
            "processes": ctx.world_size, "seconds": seconds, "epochs": len(model.history),
            "cells_per_s": n_train * len(model.history) / seconds,
            "knn_f1": knn_macro_f1(embedding, labels),
            "kmeans_ari": cluster_scores(embedding, labels, seed=args.seed)["kmeans_ari"],
        }))
    shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="pbmc3k")
    parser.add_argument("--method", default="mae")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.out = args.worker
        worker(args)
        return
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, device {args.device}, {args.dataset}, "
          f"{args.method}, {args.epochs} epochs, global batch {args.global_batch}")
    print("processes\tseconds\tcells/s\tknn_f1\tkmeans_ari")
    for n in args.nproc:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   __file__, "--worker", str(out), "--dataset", args.dataset, "--method", args.method,
                   "--epochs", str(args.epochs),
                   "--global-batch", str(args.global_batch), "--device", args.device, "--seed", str(args.seed)]
            subprocess.run(cmd, check=True, env=env)
            row = json.loads(out.read_text())
        print(f"{row['processes']}\t{row['seconds']:.1f}\t{row['cells_per_s']:.0f}\t"
              f"{row['knn_f1']:.3f}\t{row['kmeans_ari']:.3f}", flush=True)


if __name__ == "__main__":
    main()
