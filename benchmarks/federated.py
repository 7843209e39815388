"""Federated pre-training (Flower, FedAvg) against pooled training and each site alone.

The sites are the batches of one real dataset (default: pbmc_3chem's three 10x chemistries, so
each "institution" has its own chemistry). Three embeddings of every cell, the default ``mae``
each time and no batch key anywhere:

- ``pooled``: one model trained on all cells together (what the sites could do if they shared
  their data), ``--epochs`` epochs without early stopping;
- ``federated``: ``scssl.federated.simulate`` over the sites, ``--epochs`` rounds of one local
  epoch each (so every cell is seen as often as in ``pooled``);
- ``site <name>``: a model trained on that site's cells alone, embedding every cell.

Prints kNN macro-F1 / k-means ARI / Leiden ARI of the cell types on all cells (every type, the
3 HSCs too), how well the site can be told from the embedding (kNN macro-F1 of the site labels:
lower is better mixed), and the wall seconds to the embedding (the simulation's include starting
ray).

    python benchmarks/federated.py --epochs 30
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {"pbmc_3chem": "pbmc_10x_3chemistries_symphony.h5ad"}


def scores(embedding, labels, sites, seed: int) -> str:
    from scssl.metrics import cluster_scores, knn_macro_f1

    clusters = cluster_scores(embedding, labels, seed=seed)
    return (f"{knn_macro_f1(embedding, labels):.3f}\t{clusters['kmeans_ari']:.3f}\t{clusters['leiden_ari']:.3f}\t"
            f"{knn_macro_f1(embedding, sites):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="pbmc_3chem")
    parser.add_argument("--site-key", default="batch", help=".obs column whose values are the sites")
    parser.add_argument("--epochs", type=int, default=30, help="epochs (pooled, each site) = rounds (federated)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import anndata as ad

    import scssl
    import scssl.federated

    adata = ad.read_h5ad(DATA / DATASETS[args.dataset])
    labels, site_labels = adata.obs["cell_type"].to_numpy(), adata.obs[args.site_key].to_numpy()
    sites = {str(name): adata[adata.obs[args.site_key] == name].copy()
             for name in adata.obs[args.site_key].unique()}
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, {args.dataset}: {adata.n_obs} cells, sites "
          + ", ".join(f"{name} {site.n_obs}" for name, site in sites.items())
          + f"; {args.epochs} epochs / rounds, seed {args.seed}")
    print("embedding\tknn_f1\tkmeans_ari\tleiden_ari\tsite_knn_f1\tseconds")

    def local(cells):
        model = scssl.SSLModel(cells, method="mae", seed=args.seed)
        return model.fit(max_epochs=args.epochs, patience=0, seed=args.seed, progress=False, num_threads=1)

    trainings = {
        "pooled": lambda: local(adata),
        "federated": lambda: scssl.federated.simulate(
            list(sites.values()), method="mae", rounds=args.epochs, local_epochs=1, seed=args.seed),
        **{f"site {name}": (lambda site=site: local(site)) for name, site in sites.items()},
    }
    for name, train in trainings.items():
        start = time.perf_counter()
        embedding = train().embed(adata)
        seconds = time.perf_counter() - start
        print(f"{name}\t{scores(embedding, labels, site_labels, args.seed)}\t{seconds:.0f}", flush=True)


if __name__ == "__main__":
    main()
