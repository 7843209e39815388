"""Cost and quality of each registered method on real PBMCs, beside PCA (one table).

Each (dataset, method) runs in its own process so that peak RSS is that run's alone.

    python benchmarks/core.py                      # pbmc3k + pbmc4k, every method, 100 epochs
    python benchmarks/core.py --methods mae --epochs 30
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"pbmc3k": "pbmc3k_10x_seurat_hvg2000.h5ad", "pbmc4k": "pbmc4k_10x_scdcc_top2000.h5ad"}


def run_one(dataset: str, method: str, epochs: int, seed: int) -> dict:
    import anndata as ad
    import numpy as np

    import scssl
    from scssl.metrics import cluster_scores, knn_macro_f1, pca_embedding

    adata = ad.read_h5ad(DATA / DATASETS[dataset])
    labels = adata.obs["cell_type"].to_numpy()
    start = time.perf_counter()
    if method == "pca":
        embedding, n_epochs, train_seconds = pca_embedding(adata, seed=seed), 0, 0.0
    else:
        model = scssl.SSLModel(adata, method=method, seed=seed)
        fit_start = time.perf_counter()
        model.fit(max_epochs=epochs, seed=seed, progress=False)
        train_seconds = time.perf_counter() - fit_start
        n_epochs = len(model.history)
        embedding = model.embed(adata)
    seconds = time.perf_counter() - start
    train_cells = round(adata.n_obs * 0.9)
    return {
        "dataset": dataset, "method": method, "epochs": n_epochs,
        "cells_per_s": train_cells * n_epochs / train_seconds if train_seconds else float("nan"),
        "seconds_to_embedding": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "knn_macro_f1": knn_macro_f1(embedding, labels, seed=seed),
        "leiden_ari": cluster_scores(embedding, labels, seed=seed)["leiden_ari"],
        "embedding_finite": bool(np.isfinite(embedding).all()),
    }


def main() -> None:
    from scssl.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=["pca", *sorted(METHODS)])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", nargs=2, metavar=("DATASET", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.epochs, args.seed)))
        return

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"device {'cuda' if torch.cuda.is_available() else 'cpu'}; python {platform.python_version()}, torch {torch.__version__}")
    header = f"{'dataset':<8} {'method':<14} {'epochs':>6} {'cells/s':>9} {'s to emb':>9} {'peak RSS MiB':>12} {'kNN F1':>7} {'Leiden ARI':>10}"
    print(header)
    for dataset in args.datasets:
        for method in args.methods:
            out = subprocess.run(
                [sys.executable, __file__, "--one", dataset, method, "--epochs", str(args.epochs), "--seed", str(args.seed)],
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                print(f"{dataset:<8} {method:<14} failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{dataset:<8} {method:<14} {r['epochs']:>6} {r['cells_per_s']:>9.0f} {r['seconds_to_embedding']:>9.1f} "
                  f"{r['peak_rss_mib']:>12.0f} {r['knn_macro_f1']:>7.3f} {r['leiden_ari']:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
