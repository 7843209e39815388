"""How far do the PCA baseline's k-means and Leiden ARI move when its input moves by ~1e-6?

For each dataset of ``results/standard_cpu.yaml``: the bench's preprocessing (normalise, log1p,
2,000 HVGs, scale), then, ``--repeats`` times, Gaussian noise of sd ``--noise`` added to the
scaled values (float32 rounding is ~1e-7 relative), 50 principal components and the bench's
scorers (k-means with 10 starts, Leiden with its resolution searched to the number of types;
clustering seed 0). The spread says how much of a single run's figure is chance.

    OMP_NUM_THREADS=1 python benchmarks/leiden_stability.py --datasets pbmc3k worm
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import scanpy as sc

from scssl.bench.baselines import prepare
from scssl.bench.config import load_config
from scssl.metrics import cluster_scores

CONFIG = Path(__file__).resolve().parent / "results" / "standard_cpu.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="*", default=[], help="name prefixes (default: all)")
    parser.add_argument("--noise", type=float, default=1e-6)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="zero-centering a sparse array")
    for spec in load_config(CONFIG).datasets:
        if args.datasets and not spec.name.startswith(tuple(args.datasets)):
            continue
        prep = prepare(spec)
        base = cluster_scores(prep.pca, prep.labels, seed=0)
        scores = []
        for repeat in range(args.repeats):
            noise = np.random.default_rng(repeat).normal(0, args.noise, prep.scaled.shape)
            pca = sc.pp.pca(prep.scaled + noise.astype(np.float32), n_comps=prep.pca.shape[1],
                            random_state=0)
            s = cluster_scores(pca.astype(np.float32), prep.labels, seed=0)
            scores.append((s["kmeans_ari"], s["leiden_ari"]))
        spread = [f"{name} {v.mean():.3f} ± {v.std(ddof=1):.3f} [{v.min():.3f}, {v.max():.3f}]"
                  for name, v in zip(("k-means", "Leiden"), np.array(scores).T, strict=True)]
        print(f"{spec.name}: as is k-means {base['kmeans_ari']:.3f}, Leiden {base['leiden_ari']:.3f}; "
              f"{args.repeats} perturbed: " + ", ".join(spread), flush=True)


if __name__ == "__main__":
    main()
