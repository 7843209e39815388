"""Benchmark every registered SSL method with its default settings beside PCA.

For each dataset and seed: pre-train, embed the training cells, score kNN macro-F1
(5-fold, k=15) and Leiden ARI (resolution searched for as many clusters as cell types).
Prints a method × dataset table of mean ± sd over seeds, with fit seconds.

Run with one thread per process so it shares a small machine::

    OMP_NUM_THREADS=1 python benchmarks/methods.py --epochs 60 --seeds 0 1 2

Rows are appended to ``--out`` as they finish; ``--table a.jsonl b.jsonl`` reprints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import scssl
from scssl.methods import METHODS
from scssl.metrics import cluster_scores, knn_macro_f1, pca_embedding

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "pbmc3k": ("pbmc3k_10x_seurat_hvg2000.h5ad", "cell_type"),
    "pbmc_3chem": ("pbmc_10x_3chemistries_symphony.h5ad", "cell_type"),
}


def score(embedding: np.ndarray, labels, seed: int) -> dict[str, float]:
    return {"knn_f1": knn_macro_f1(embedding, labels, seed=seed),
            "leiden_ari": cluster_scores(embedding, labels, seed=seed)["leiden_ari"]}


def run_one(adata: ad.AnnData, method: str, seed: int, epochs: int, labels) -> dict[str, float]:
    torch.manual_seed(seed)
    start = time.perf_counter()
    if method == "pca":
        embedding = pca_embedding(adata, seed=seed)
    else:
        model = scssl.SSLModel(adata, method=method, seed=seed)
        model.fit(max_epochs=epochs, seed=seed, progress=False)
        embedding = model.embed()
    seconds = time.perf_counter() - start
    return {**score(embedding, labels, seed), "seconds": seconds}


def table(results: list[dict], datasets: list[str], methods: list[str]) -> str:
    lines = ["| method | " + " | ".join(f"{d} kNN-F1 | {d} Leiden ARI | {d} s" for d in datasets) + " |",
             "|---|" + "---|---|---|" * len(datasets)]
    for method in methods:
        cells = []
        for d in datasets:
            rows = [r for r in results if r["method"] == method and r["dataset"] == d]
            if not rows:
                cells += ["-", "-", "-"]
                continue
            for key in ("knn_f1", "leiden_ari"):
                v = np.array([r[key] for r in rows])
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
            cells.append(f"{np.mean([r['seconds'] for r in rows]):.0f} (n={len(rows)}, {'-' if method == 'pca' else rows[0]['epochs']} ep)")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["pca", *sorted(METHODS)])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/methods_results.jsonl"))
    parser.add_argument("--table", type=Path, nargs="+", metavar="JSONL",
                        help="only print the table of earlier results (first row per dataset/method/seed wins)")
    args = parser.parse_args()
    if args.table:
        seen, results = set(), []
        for path in args.table:
            for line in path.read_text().splitlines():
                row = json.loads(line)
                key = (row["dataset"], row["method"], row["seed"])
                if key not in seen and row["dataset"] in args.datasets and row["method"] in args.methods:
                    seen.add(key)
                    results.append(row)
        print(table(results, args.datasets, args.methods))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results = []
    for name in args.datasets:
        path, label_key = DATASETS[name]
        adata = ad.read_h5ad(DATA / path)
        labels = adata.obs[label_key].astype(str).to_numpy()
        for method in args.methods:
            for seed in args.seeds:
                row = {"dataset": name, "method": method, "seed": seed, "epochs": args.epochs,
                       **run_one(adata, method, seed, args.epochs, labels)}
                results.append(row)
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(table(results, args.datasets, args.methods))


if __name__ == "__main__":
    main()
