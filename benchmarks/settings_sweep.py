"""Sweep SSL settings over the standard datasets: many small trainings in parallel workers.

Each job pre-trains one method with one setting on one dataset and seed, exactly as
``scssl bench benchmarks/results/standard_cpu.yaml`` would (same preprocessing, 60 epochs, 100 on
pbmc_3chem, batch 256), embeds every cell and scores it as the results README's "scored outside
the bench" tables do: 5-fold kNN macro-F1 (fold seed 0, rare types left out), k-means and Leiden
ARI with k = number of types (clustering seed 0). One JSON line per job goes to ``--out``; a
table of means over seeds is printed at the end.

Made for a GPU machine with many cores: workers share the GPU for training and train with one
CPU thread each, scoring too. On the 2-core CPU machine two workers train side by side at one
process's speed each.

    python benchmarks/settings_sweep.py --out sweep.jsonl --workers 14 --budget 230
    python benchmarks/settings_sweep.py --out sweep.jsonl --settings def do5 --seeds 0 --workers 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from collections import defaultdict
from pathlib import Path

CONFIG = Path(__file__).resolve().parent / "results" / "standard_cpu.yaml"

# name: (method, method parameters, training overrides, factor on the config's epochs)
SETTINGS: dict[str, tuple[str, dict, dict, float]] = {
    "def": ("mae", {}, {}, 1.0),
    "bn": ("mae", {"norm": "batch"}, {}, 1.0),
    "nonorm": ("mae", {"norm": None}, {}, 1.0),
    "ep150": ("mae", {}, {}, 2.5),
    "bs64": ("mae", {}, {"batch_size": 64}, 1.0),
    "do5": ("mae", {"dropout": 0.5}, {}, 1.0),
    "lr3e-4": ("mae", {}, {"lr": 3e-4}, 1.0),
    "wd005": ("mae", {}, {"weight_decay": 0.05}, 1.0),
    "wd05": ("mae", {}, {"weight_decay": 0.5}, 1.0),
    "vae01": ("mae", {"variational_weight": 0.1}, {}, 1.0),
    "vae03": ("mae", {"variational_weight": 0.3}, {}, 1.0),
    "vae1": ("mae", {"variational_weight": 1.0}, {}, 1.0),
    "vae4": ("mae", {"variational_weight": 4.0}, {}, 1.0),
    "thin05_vae03": ("mae", {"thinning": 0.5, "variational_weight": 0.3}, {}, 1.0),
    "thin05_vae1": ("mae", {"thinning": 0.5, "variational_weight": 1.0}, {}, 1.0),
    "nb_vae1_l10": ("mae", {"loss": "nb", "variational_weight": 1.0, "latent_dim": 10}, {}, 1.0),
    "cpu_bf16": ("mae", {}, {"amp": True}, 1.0),
    "tsmed": ("mae", {"target_sum": None}, {}, 1.0),
    "mr075": ("mae", {"mask_ratio": 0.75}, {}, 1.0),
    "scmae": ("mae", {"mask_value": "shuffle", "mask_prediction_weight": 0.7}, {}, 1.0),
    "gp": ("mae", {"masking": "gene_programme"}, {}, 1.0),
    "hyb_t05": ("hybrid", {"hidden": [1024, 256], "dropout": 0.3, "temperature": 0.5}, {}, 1.0),
}
_prepared: dict = {}  # per worker: dataset name -> scssl.bench.baselines.Prepared


def _init_worker() -> None:
    import os

    import numba
    import torch

    # Trainer.fit keeps torch at OMP_NUM_THREADS, which scanpy's scoring would otherwise raise;
    # numba (scanpy's scoring kernels) would start one thread per CPU in every worker.
    os.environ["OMP_NUM_THREADS"] = "1"
    numba.set_num_threads(1)  # first: starting numba's pool resets the OpenMP thread count
    torch.set_num_threads(1)


def _job(args: tuple) -> dict | None:
    try:
        return _run(*args)
    except Exception as err:  # one failing setting must not stop the sweep
        return {"setting": args[0], "dataset": args[1], "seed": args[2], "error": repr(err)[:300]}


def _run(setting: str, dataset: str, seed: int, deadline: float, device: str) -> dict | None:
    if time.time() > deadline:
        return None
    import numpy as np

    from scssl.bench.baselines import fit_ssl, prepare
    from scssl.bench.config import load_config
    from scssl.bench.runner import scorable
    from scssl.metrics import cluster_scores, knn_macro_f1

    config = load_config(CONFIG)
    if dataset not in _prepared:
        _prepared[dataset] = prepare(next(d for d in config.datasets if d.name == dataset))
    prep = _prepared[dataset]
    method, params, train, epoch_factor = SETTINGS[setting]
    config.epochs = round((100 if "3chem" in dataset else config.epochs) * epoch_factor)
    config.device = device
    config.batch_size = train.get("batch_size", config.batch_size)
    optimiser = {k: v for k, v in train.items() if k != "batch_size"}
    config.train_options = {**config.train_options, **optimiser}
    config.method_params[method] = {**config.method_params.get(method, {}), **params}
    model, train_seconds = fit_ssl(method, prep.counts, seed, config)
    z = np.asarray(model.embed(device=device), np.float32)
    labels = np.asarray(prep.labels)
    keep = scorable(labels)
    scores = {"knn_f1": knn_macro_f1(z[keep], labels[keep]), **cluster_scores(z, labels, seed=0)}
    return {"setting": setting, "dataset": dataset, "seed": seed,
            "train_s": round(train_seconds, 1), "epochs": len(model.history),
            **{k: round(v, 4) for k, v in scores.items()}}


def summarise(rows: list[dict]) -> str:
    """Mean kNN F1 / k-means ARI / Leiden ARI per setting and dataset over the seeds present,
    and each setting's mean over its cells."""
    cells = defaultdict(list)
    for r in rows:
        if "error" not in r:
            scores = (r["knn_f1"], r["kmeans_ari"], r["leiden_ari"])
            cells[r["setting"], r["dataset"]].append(scores)
    cell_lines, per_setting = [], defaultdict(list)
    for (setting, dataset), scores in cells.items():
        means = [sum(v) / len(v) for v in zip(*scores, strict=True)]
        per_setting[setting] += means
        shown = " / ".join(f"{m:.3f}" for m in means)
        cell_lines.append(f"{setting:10} {dataset:32} seeds {len(scores)}  {shown}")
    mean_lines = [f"{setting:10} mean of its cells {sum(v) / len(v):.3f}"
                  for setting, v in per_setting.items()]
    return "\n".join(sorted(cell_lines) + mean_lines)


def main() -> None:
    from scssl.bench.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON-lines file (appended to)")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--datasets", nargs="+",
                        default=[d.name for d in load_config(CONFIG).datasets])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds after which no new job starts (running ones finish)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    deadline = time.time() + args.budget
    # seeds outermost, so a sweep cut short by its budget still compares every setting
    jobs = [(setting, dataset, seed, deadline, args.device)
            for seed in args.seeds for setting in args.settings for dataset in args.datasets]
    rows = []
    pool = mp.get_context("spawn").Pool(args.workers, initializer=_init_worker)
    with pool, open(args.out, "a") as fh:
        for row in pool.imap_unordered(_job, jobs):
            if row is not None:
                rows.append(row)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(json.dumps(row), flush=True)
    print(summarise(rows))


if __name__ == "__main__":
    main()
