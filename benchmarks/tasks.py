"""Downstream tasks (``scssl.tl``) for every registered SSL method beside PCA.

One table per task, method × dataset:

1. zero-shot   kNN macro-F1 (5-fold), Leiden/k-means ARI and NMI, silhouette of the labels
2. annotation  fine-tune / linear probe / kNN, macro-F1 on a held-out split (pbmc3k)
3. ref→query   leave-one-chemistry-out on the 3-chemistry PBMCs; CEL-seq2 → Drop-seq cell lines
4. integration scib-metrics bio-conservation / batch-correction totals (needs ``scssl[bench]``)
5. imputation  Pearson r of hidden entries (10% per test cell) beside the per-gene mean
6. protein     mean Pearson r per protein on held-out cells (ECCITE-seq, CBMC CITE-seq)
7. robustness  annotation macro-F1 and Leiden ARI of a test set thinned by 30% and 50%

Every SSL model is pre-trained on unlabelled cells only (for ref→query: the reference's);
labels are used by the annotation heads and the scores. PCA rows use the same heads:
kNN (k=15) and a class-balanced logistic regression for "linear".

Run small, one thread per process::

    OMP_NUM_THREADS=1 python benchmarks/tasks.py --epochs 20 --methods mae simclr
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, f1_score
from sklearn.neighbors import KNeighborsClassifier

import scssl
from scssl import tl
from scssl.methods import METHODS
from scssl.metrics import knn_macro_f1, leiden_labels, pca_embedding
from scssl.tl._utils import stratified_split

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TABLES: dict[str, list[dict]] = {}


def add(task: str, method: str, dataset: str, **scores: float) -> None:
    TABLES.setdefault(task, []).append({"method": method, "dataset": dataset, **scores})


def read(name: str, n_genes: int | None = 2000, n_cells: int | None = None, seed: int = 0) -> ad.AnnData:
    """A shared dataset, subsampled, restricted to highly variable genes (raw counts kept)."""
    adata = ad.read_h5ad(DATA / name)
    if n_cells is not None and adata.n_obs > n_cells:
        adata = adata[np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False)].copy()
    if n_genes is not None and adata.n_vars > n_genes:
        work = adata.copy()
        sc.pp.normalize_total(work, target_sum=1e4)
        sc.pp.log1p(work)
        sc.pp.highly_variable_genes(work, n_top_genes=n_genes)
        adata = adata[:, work.var["highly_variable"].to_numpy()].copy()
    sc.pp.filter_cells(adata, min_genes=1)
    return adata


def pretrain(adata: ad.AnnData, method: str, args) -> scssl.SSLModel:
    torch.manual_seed(args.seed)
    size = {} if args.hidden is None else {"hidden": tuple(args.hidden)}
    if args.latent_dim is not None:
        size["latent_dim"] = args.latent_dim
    batched = "batch" in adata.obs and adata.obs["batch"].nunique() > 1
    # Batch-aware methods use the batch key (the MAE's batch decoder + MMD; MNN positives only
    # when a two-view method is asked for them), as a user integrating batches would.
    model = scssl.SSLModel(adata, method=method, batch_key="batch" if batched else None,
                           seed=args.seed, **size)
    return model.fit(max_epochs=args.epochs, batch_size=128, seed=args.seed, progress=False, patience=0)


def pca_heads(train_rep, y_train, test_rep, y_test) -> dict[str, float]:
    """kNN and linear (logistic) macro-F1 of a PCA embedding, the baseline of ``tl.annotate``."""
    out = {}
    knn = KNeighborsClassifier(n_neighbors=min(15, len(y_train))).fit(train_rep, y_train)
    out["knn"] = f1_score(y_test, knn.predict(test_rep), average="macro")
    logit = LogisticRegression(max_iter=2000, class_weight="balanced").fit(train_rep, y_train)
    out["linear"] = f1_score(y_test, logit.predict(test_rep), average="macro")
    return out


def annotate_all(model, ref, query, args, modes=("knn", "linear", "finetune")) -> dict[str, float]:
    # Closed-set scores (no "unknown" calls) so that the SSL heads compare with the PCA heads.
    return {m: tl.annotate(model, ref, query, mode=m, unknown_threshold=0.0, outlier_pvalue=None,
                           seed=args.seed).macro_f1 for m in modes}


# ---- tasks ---------------------------------------------------------------------------------------
def zero_shot_and_integration(name: str, adata: ad.AnnData, methods, args, models: dict) -> None:
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    k = len(np.unique(labels))
    adata.obsm["X_pca"] = pca_embedding(adata, n_comps=50, seed=args.seed)
    for method in methods:
        key = "X_pca" if method == "pca" else f"X_{method}"
        if method != "pca":
            adata.obsm[key] = models[method].embed(adata)
        scores = {"knn_f1": knn_macro_f1(adata.obsm[key], labels, seed=args.seed)}
        for algo in ("leiden", "kmeans"):
            s = tl.cluster(adata, use_rep=key, n_clusters=k, method=algo, labels_key="cell_type", seed=args.seed)
            scores[f"{algo}_ari"], scores[f"{algo}_nmi"] = s["ari"], s["nmi"]
        scores["silhouette_label"] = s["silhouette_label"]
        add("1. zero-shot (cells pre-trained on, labels only for scores)", method, name, **scores)
    if adata.obs["batch"].nunique() > 1:
        keys = ["X_pca" if m == "pca" else f"X_{m}" for m in methods]
        try:
            table = tl.integrate_scores(adata, "batch", "cell_type", use_rep=keys, pre_integrated_rep="X_pca")
        except ImportError as err:
            print(f"skipping integration scores: {err}")
            return
        for method, key in zip(methods, keys, strict=True):
            row = table.loc[key]
            add("4. integration (scib-metrics, unscaled)", method, name, bio=row["bio_conservation"],
                batch=row["batch_correction"], total=row["total"])


def annotation_pbmc3k(methods, args) -> None:
    adata = read("pbmc3k_10x_seurat_hvg2000.h5ad")
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = stratified_split(labels, 0.2, args.seed)
    ref, query = adata[train].copy(), adata[test].copy()
    rep = pca_embedding(adata, n_comps=50, seed=args.seed)
    shots = _shots(labels[train], 10, args.seed)
    for method in methods:
        if method == "pca":
            full = pca_heads(rep[train], labels[train], rep[test], labels[test])
            few = pca_heads(rep[train][shots], labels[train][shots], rep[test], labels[test])
            add("2. annotation, pbmc3k 80/20 split (macro-F1)", method, "pbmc3k", **full,
                linear_10shot=few["linear"], knn_10shot=few["knn"])
            continue
        model = pretrain(ref, method, args)  # pre-trained on the reference cells only
        scores = annotate_all(model, ref, query, args)
        scores["linear_10shot"] = tl.annotate(model, ref, query, mode="linear", n_shots=10, unknown_threshold=0.0,
                                              outlier_pvalue=None, seed=args.seed).macro_f1
        scores["knn_10shot"] = tl.annotate(model, ref, query, mode="knn", n_shots=10, unknown_threshold=0.0,
                                           outlier_pvalue=None, seed=args.seed).macro_f1
        add("2. annotation, pbmc3k 80/20 split (macro-F1)", method, "pbmc3k", **scores)
        robustness(method, model, ref, query, args)
    robustness("pca", None, ref, query, args)


def _shots(labels, k, seed):
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]))


def robustness(method, model, ref, query, args) -> None:
    labels_q = query.obs["cell_type"].astype(str).to_numpy()
    labels_r = ref.obs["cell_type"].astype(str).to_numpy()
    scores = {}
    for rate in (0.0, 0.3, 0.5):
        thinned = tl.add_dropout(query, rate, seed=args.seed) if rate else query.copy()
        keep = np.asarray(thinned.X.sum(1)).ravel() > 0
        thinned, y = thinned[keep].copy(), labels_q[keep]
        if method == "pca":
            both = ad.concat([ref, thinned])
            rep = pca_embedding(both, n_comps=50, seed=args.seed)
            f1 = pca_heads(rep[: ref.n_obs], labels_r, rep[ref.n_obs :], y)["linear"]
            emb = rep[ref.n_obs :]
        else:
            f1 = tl.annotate(model, ref, thinned, mode="linear", unknown_threshold=0.0, outlier_pvalue=None,
                             seed=args.seed).macro_f1
            emb = model.embed(thinned)
        ari = adjusted_rand_score(y, leiden_labels(emb, len(np.unique(y)), seed=args.seed))
        scores[f"linear_f1@{int(rate * 100)}%"] = f1
        scores[f"leiden_ari@{int(rate * 100)}%"] = ari
    add("7. robustness: pbmc3k test cells thinned (binomial), reference untouched", method, "pbmc3k", **scores)


def ref_query(methods, args) -> None:
    sym = read("pbmc_10x_3chemistries_symphony.h5ad", n_genes=None)
    for held in sorted(sym.obs["batch"].unique()):
        is_q = (sym.obs["batch"] == held).to_numpy()
        ref, query = sym[~is_q].copy(), sym[is_q].copy()
        _ref_query_one(f"3chem → {held}", ref, query, methods, args)
    cl = read("cellline_mixology_3lines_celseq2_dropseq.h5ad")
    is_q = (cl.obs["batch"] == "sc_dropseq").to_numpy()
    _ref_query_one("celseq2 → dropseq", cl[~is_q].copy(), cl[is_q].copy(), methods, args)


def _ref_query_one(name, ref, query, methods, args) -> None:
    y_ref, y_q = ref.obs["cell_type"].astype(str).to_numpy(), query.obs["cell_type"].astype(str).to_numpy()
    for method in methods:
        if method == "pca":
            rep = pca_embedding(ad.concat([ref, query]), n_comps=50, seed=args.seed)
            scores = pca_heads(rep[: ref.n_obs], y_ref, rep[ref.n_obs :], y_q)
        else:
            model = pretrain(ref, method, args)
            scores = annotate_all(model, ref, query, args)
        add("3. reference → query (macro-F1 on the query technology)", method, name, **scores)


def imputation(name: str, adata: ad.AnnData, methods, models, args) -> None:
    for method in methods:
        if method == "pca":
            continue
        s = tl.reconstruct(models[method], adata, holdout="entries", fraction=0.1, seed=args.seed)
        add("5. imputation of hidden entries (log-normalised, 30% test cells, 10% entries)", method, name,
            decoder=s["decoder"], pearson=s["pearson"], expl_var=s["explained_variance"],
            mean_pearson=s["baseline_pearson"], mean_expl_var=s["baseline_explained_variance"])


def protein(methods, args) -> None:
    for name, file, key, n_cells in (("eccite", "citeseq_eccite_pbmc_citefuse.h5ad", "protein_counts", None),
                                     ("cbmc", "citeseq_cbmc_scdcc_top2000.h5ad", "protein_normalized", 2000)):
        adata = read(file, n_cells=n_cells, seed=args.seed)
        pca_done = False
        for method in methods:
            if method == "pca":
                continue
            model = pretrain(adata, method, args)
            result = tl.predict_protein(model, adata, key, seed=args.seed)
            add("6. RNA → protein (mean Pearson r over proteins, 20% held-out cells)", method, name,
                pearson=result["mean_pearson"])
            if not pca_done:
                add("6. RNA → protein (mean Pearson r over proteins, 20% held-out cells)", "pca", name,
                    pearson=result["baseline_mean_pearson"])
                pca_done = True


def print_tables(done: set[str]) -> None:
    """Print the tables not printed yet (each stage prints its own, so a late failure loses nothing)."""
    for task in sorted(set(TABLES) - done):
        done.add(task)
        frame = pd.DataFrame(TABLES[task])
        value_cols = [c for c in frame.columns if c not in ("method", "dataset")]
        wide = frame.pivot_table(index="method", columns="dataset", values=value_cols, aggfunc="first")
        wide = wide.swaplevel(0, 1, axis=1).sort_index(axis=1, level=0, sort_remaining=False)
        wide = wide.reindex(columns=[(d, c) for d in frame["dataset"].unique() for c in value_cols])
        wide.columns = [f"{d}: {c}" for d, c in wide.columns]
        print(f"\n## {task}\n")
        print(wide.to_markdown(floatfmt=".3f") if _has_tabulate() else wide.round(3).to_string(), flush=True)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), help="registered methods (PCA is always added)")
    parser.add_argument("--tasks", nargs="+", default=["zero_shot", "annotation", "ref_query", "protein"],
                        help="zero_shot (with integration + imputation), annotation (with robustness), ref_query, protein")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="encoder widths (default: the method's)")
    parser.add_argument("--latent-dim", type=int, default=None, help="embedding width (default: the method's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # Trainer.fit keeps torch at this count
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    warnings.filterwarnings("ignore")
    methods = [*args.methods, "pca"]
    start = time.perf_counter()
    printed: set[str] = set()
    print(f"settings: methods={args.methods} epochs={args.epochs} hidden={args.hidden} "
          f"latent_dim={args.latent_dim} seed={args.seed}", flush=True)
    if "zero_shot" in args.tasks:
        for name, file in (("3chem", "pbmc_10x_3chemistries_symphony.h5ad"),
                           ("cellline", "cellline_mixology_3lines_celseq2_dropseq.h5ad")):
            adata = read(file)
            models = {m: pretrain(adata, m, args) for m in args.methods}
            zero_shot_and_integration(name, adata, methods, args, models)
            imputation(name, adata, methods, models, args)
            print(f"[{time.perf_counter() - start:.0f} s] zero-shot {name} done", flush=True)
        print_tables(printed)
    if "annotation" in args.tasks:
        annotation_pbmc3k(methods, args)
        print(f"[{time.perf_counter() - start:.0f} s] annotation done", flush=True)
        print_tables(printed)
    if "ref_query" in args.tasks:
        ref_query(methods, args)
        print(f"[{time.perf_counter() - start:.0f} s] ref→query done", flush=True)
        print_tables(printed)
    if "protein" in args.tasks:
        protein(methods, args)
    print_tables(printed)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
