"""Which cells of issue 5's target table each method or setting wins, over 3-seed means.

The targets are the best of PCA, scVI and contrastive-sc in the issue's table (kNN macro-F1,
k-means ARI, Leiden ARI on five datasets; PCA and scVI on pbmc_3chem), Harmony's pbmc_3chem
figures beside them. Results are read from a bench CSV (``dataset, method, seed, task, metric,
value``) and from ``settings_sweep.py`` JSON lines; a method or setting counts only where it has
at least three seeds.

    python benchmarks/scoreboard.py                      # the published run and every sweep
    python benchmarks/scoreboard.py --csv my_run/results.csv --sweeps my_sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("knn_f1", "kmeans_ari", "leiden_ari")
TARGETS = {
    "pbmc3k_10x_seurat_hvg2000": (0.924, 0.711, 0.682),
    "pbmc4k_10x_scdcc_top2000": (0.862, 0.762, 0.748),
    "worm_neuron_celegans_sciRNAseq": (0.950, 0.499, 0.644),
    "human_kidney_scdcc_top2000": (0.964, 0.598, 0.617),
    "pbmc_10x_3chemistries_symphony": (0.828, 0.563, 0.596),
}
HARMONY_3CHEM = (0.862, 0.712, 0.638)
BENCH_METRICS = {("knn", "macro_f1"): "knn_f1", ("cluster", "kmeans_ari"): "kmeans_ari",
                 ("cluster", "leiden_ari"): "leiden_ari"}


def bench_rows(csv: Path) -> pd.DataFrame:
    """One row per (method, dataset, seed) with the three metrics, from a bench CSV."""
    df = pd.read_csv(csv)
    df["name"] = [BENCH_METRICS.get(k) for k in zip(df.task, df.metric, strict=True)]
    df = df.dropna(subset=["name"])
    wide = df.pivot_table(index=["method", "dataset", "seed"], columns="name", values="value")
    return wide.reset_index().rename(columns={"method": "source"}).assign(
        source=lambda d: "bench:" + d.source)


def sweep_rows(paths: list[Path]) -> pd.DataFrame:
    """One row per job of ``settings_sweep.py`` files, named ``<file stem>:<setting>``."""
    rows = [{**r, "source": f"{p.stem}:{r['setting']}"} for p in paths
            for r in map(json.loads, filter(str.strip, p.read_text().splitlines()))
            if "error" not in r]
    return pd.DataFrame(rows)[["source", "dataset", "seed", *METRICS]]


def three_seed_means(rows: pd.DataFrame) -> pd.DataFrame:
    """Means per (source, dataset) over seeds, where a source has at least three seeds."""
    rows = rows[rows.dataset.isin(TARGETS)].drop_duplicates(["source", "dataset", "seed"])
    grouped = rows.groupby(["source", "dataset"])
    means = grouped[list(METRICS)].mean()
    return means[grouped.seed.nunique() >= 3].reset_index()


def board(means: pd.DataFrame) -> pd.DataFrame:
    """Per source: target cells won (of those it was measured on), Harmony's pbmc_3chem cells
    won, and the cells it loses."""
    out = []
    for source, sub in means.groupby("source"):
        beats = [(f"{r.dataset.split('_')[0]}:{m}", getattr(r, m) > t)
                 for r in sub.itertuples(index=False)
                 for m, t in zip(METRICS, TARGETS[r.dataset], strict=True)]
        chem = sub[sub.dataset.str.startswith("pbmc_10x_3chem")]
        harmony = None if chem.empty else int((chem[list(METRICS)].to_numpy()[0]
                                               > HARMONY_3CHEM).sum())
        out.append({"source": source, "won": sum(b for _, b in beats), "cells": len(beats),
                    "harmony_3chem": harmony, "lost": " ".join(c for c, b in beats if not b)})
    return pd.DataFrame(out).sort_values(["won", "source"], ascending=[False, True])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=RESULTS / "standard" / "results.csv")
    parser.add_argument("--sweeps", type=Path, nargs="*",
                        default=sorted((RESULTS / "sweeps").glob("*.jsonl")))
    args = parser.parse_args()
    means = three_seed_means(pd.concat([bench_rows(args.csv), sweep_rows(args.sweeps)]))
    print(board(means).to_string(index=False))
    print("\nbest 3-seed mean per target cell:")
    for dataset, targets in TARGETS.items():
        sub = means[means.dataset == dataset]
        if sub.empty:  # no source has three seeds on it in the files given
            print(f"  {dataset:32} no 3-seed results")
            continue
        for metric, target in zip(METRICS, targets, strict=True):
            best = sub.loc[sub[metric].idxmax()]
            print(f"  {dataset:32} {metric:10} target {target:.3f}  "
                  f"best {best[metric]:.3f} ({best.source})")


if __name__ == "__main__":
    main()
