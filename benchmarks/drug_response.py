"""Bulk → single-cell drug-response transfer on three lung-cancer lines (scDEAL-style).

Train on GDSC2 bulk lines (the three test lines excluded), predict every single cell of
HCC-827, NCI-H1975 and NCI-H2228 (CellBench mixology, CEL-seq2 + Drop-seq), and score the
cells against their line's measured response (sensitive: ln IC50 below the drug's lower
quartile over all GDSC2 lines). Results, and how every default was chosen, are in
``benchmarks/drug_response.md``; keep that file true when the defaults move.

Variants
--------
naive        logistic regression on bulk, per-gene z-scoring within each domain (the issue's
             yardstick)
naive_own_bulk  the yardstick's regression on the three lines' own GDSC profiles (held out of
             training; every cell scored as its line): what a perfect transfer would give it
naive_sim    (with ``--similar-lines N``) the same yardstick fitted on the N lines most like the
             cells
own_bulk     our bulk model on the three lines' own GDSC profiles: what a perfect transfer gives
bulk_sc      (b) our bulk model applied to the (kNN-smoothed, standardised) cells, no adaptation
pseudobulk   (c) our bulk model applied to per-line pseudo-bulk (every cell gets its line's score)
scdeal       (a) bulk + single-cell denoising autoencoders, MMD alignment (weight 0.05) with the
             bulk lines nearest the cells (partial alignment), cluster term

Run: ``OMP_NUM_THREADS=1 python benchmarks/drug_response.py --seeds 0 1 2 [--out results.csv]``
(about 20 s per drug and seed on one thread; ``--drugs`` to split the five over processes,
``--merge a.csv b.csv`` for one table); ``--cv`` for the bulk cross-validation of genes,
label and target, ``--fidelity N`` for the label-free transfer-fidelity check on N other drugs,
``--similar-lines N`` for the similar-lines experiment, ``--target continuous`` to regress ln IC50
(all described in the markdown file).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from scssl.tl.drug_response import (
    SCALING, SCALINGS, SMOOTH_NEIGHBORS, DrugTransfer, PreparedData, TransferConfig,
    binarize, line_key, prepare, pseudobulk_inputs, relative_response_table,
    response_table, sc_lognorm, scale_profiles, select_genes, shared_genes,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DRUGS = ["Gefitinib", "Erlotinib", "Osimertinib", "Afatinib", "Crizotinib"]
# CellBench names → GDSC cell_line_key
LINES = {"HCC827": "HCC827", "H1975": "NCIH1975", "H2228": "NCIH2228"}


def load() -> tuple[ad.AnnData, pd.DataFrame, ad.AnnData]:
    """GDSC bulk expression, GDSC response table, the three lines' single cells."""
    return (ad.read_h5ad(DATA / "gdsc_bulk_expression_975lines.h5ad"),
            pd.read_csv(DATA / "gdsc_drug_response.csv.gz"),
            ad.read_h5ad(DATA / "cellline_mixology_3lines_celseq2_dropseq.h5ad"))


def scores(truth: np.ndarray, prob: np.ndarray, call: float = 0.5) -> dict[str, float]:
    return {"auroc": roc_auc_score(truth, prob), "ap": average_precision_score(truth, prob),
            "f1": f1_score(truth, prob >= call, zero_division=0.0)}


def sensitivity(output: np.ndarray, binary: bool) -> np.ndarray:
    """Our model's output as a score that grows with sensitivity: the probability, or minus the
    predicted ln IC50."""
    return output if binary else -output


def model_scores(truth: np.ndarray, output: np.ndarray, binary: bool,
                 cutoff: float) -> dict[str, float]:
    """:func:`scores` of our model's output (:func:`sensitivity`); a regression calls a cell
    sensitive below the binarisation ``cutoff``."""
    return scores(truth, sensitivity(output, binary), call=0.5 if binary else -cutoff)


def all_genes(bulk: ad.AnnData, gdsc: pd.DataFrame, cells: ad.AnnData, drug: str,
              exclude_lines) -> PreparedData:
    """The yardstick's inputs: every shared gene, absolute label, raw (unsmoothed) cells, genes
    standardised within each domain, the given lines left out."""
    return prepare(bulk, gdsc, cells, drug, exclude_lines=exclude_lines, n_top_genes=None,
                   n_response_genes=0, label="absolute", smooth_neighbors=0, scaling="domain")


def own_bulk_inputs(bulk: ad.AnnData, data: PreparedData) -> pd.DataFrame:
    """The test lines' own GDSC profiles (never trained on), standardised over the model's genes
    with the training lines' statistics, as :func:`prepare` standardised those: what a perfect
    single-cell → bulk transfer would hand the bulk model."""
    keys = bulk.obs["cell_line_key"].map(line_key).to_numpy()
    test = np.isin(keys, list(LINES.values()))
    profiles = np.asarray(bulk.X[test][:, bulk.var_names.get_indexer(data.genes)], dtype=np.float32)
    return pd.DataFrame(data.standardize_bulk(profiles), index=keys[test])


def line_scores(score, profiles: pd.DataFrame) -> pd.Series:
    """``score`` (a function of standardised profiles) applied to one profile per line (own bulk,
    :func:`own_bulk_inputs`, or pseudo-bulk), indexed like ``profiles``; ``.loc`` on each cell's
    line gives it per cell."""
    return pd.Series(score(profiles.to_numpy()), index=profiles.index)


def naive_scores(data: PreparedData, truth: np.ndarray, own_bulk: pd.DataFrame,
                 line_of_cell: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """The issue's naive transfer (logistic regression on bulk, applied to the cells) and the same
    regression on the lines' own bulk profiles (every cell scored as its line)."""
    naive = LogisticRegression(max_iter=2000).fit(data.x_bulk, data.y_bulk)
    own = line_scores(naive.decision_function, own_bulk)
    return (scores(truth, naive.predict_proba(data.x_sc)[:, 1]),
            scores(truth, own.loc[line_of_cell].to_numpy(), call=0.0))


def bulk_cv(drugs: list[str], settings: list[tuple[int, str, str, str]], config: TransferConfig,
            n_folds: int = 3, seed: int = 0) -> pd.DataFrame:
    """Model selection without the single cells: k-fold AUROC of the bulk model on held-out
    GDSC2 lines (the three test lines never enter). Settings are (response genes, label,
    target, scaling); label ``"auc"`` is the drug's absolute AUC instead of its ln IC50. Genes
    are selected and standardised inside each fold from its training lines' bulk values, as
    :func:`prepare` does on all training lines; held-out lines are always scored
    against the *absolute* binary label (the truth the cells are scored against), whichever
    label and target the model was trained on (a regression by minus its output)."""
    from sklearn.model_selection import StratifiedKFold

    bulk, gdsc, cells = load()
    row_of_line = {k: i for i, k in enumerate(bulk.obs["cell_line_key"].map(line_key))}
    rows = []
    for drug in drugs:
        full = all_genes(bulk, gdsc, cells, drug, LINES.values())
        tables = {"absolute": response_table(gdsc, drug),
                  "relative": relative_response_table(gdsc, drug),
                  "auc": response_table(gdsc, drug, metric="auc")}
        lines = np.array(full.bulk_lines)
        ok = np.logical_and.reduce([np.isin(lines, t.index) for t in tables.values()])
        lines = lines[ok]  # same lines for all labels
        # the bulk file's values: full.x_bulk is standardised per gene over all training lines,
        # which would leave the variance ranking of select_genes to noise
        genes = bulk.var_names.get_indexer(full.genes)
        x = np.asarray(bulk.X[[row_of_line[k] for k in lines]][:, genes], dtype=np.float32)
        cont = {label: t.loc[lines].to_numpy() for label, t in tables.items()}
        y = {label: binarize(t)[0].loc[lines].to_numpy(np.float32) for label, t in tables.items()}
        y_abs = y["absolute"]
        folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, y_abs))
        for n_resp, label, target, scaling in settings:
            binary = target == "binary"
            aucs = []
            for tr, te in folds:
                idx = select_genes(x[tr], cont[label][tr], 2000, n_resp)
                xtr, mean, std = scale_profiles(x[tr][:, idx], scaling)
                xte, _, _ = scale_profiles(x[te][:, idx], scaling, mean, std)
                model = DrugTransfer(xtr, (y if binary else cont)[label][tr], xtr[:8], binary,
                                     config, seed)
                model.fit_bulk()
                aucs.append(roc_auc_score(y_abs[te],
                                          sensitivity(model.predict_bulk_model(xte), binary)))
            rows.append({"drug": drug, "n_response_genes": n_resp, "label": label,
                         "target": target, "scaling": scaling, "cv_auroc": float(np.mean(aucs)),
                         "cv_sd": float(np.std(aucs))})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows)


def transfer_fidelity(n_drugs: int, config: TransferConfig, seed: int = 0,
                      smooth_neighbors: int = SMOOTH_NEIGHBORS,
                      scaling: str = SCALING) -> pd.DataFrame:
    """A label-free check of the single-cell transfer, on GDSC2 drugs other than the five.

    Per drug: Spearman correlation, over cells, between the model's per-cell scores (bulk model
    on the cells, and after adaptation) and the score the same bulk model gives each cell's line
    through its own GDSC profile (:func:`own_bulk_inputs`). A faithful transfer reproduces the
    latter. It uses the three lines' expression, never their drug response, so transfer settings
    can be compared on it without looking at the test truth."""
    bulk, gdsc, cells = load()
    line_of_cell = cells.obs["cell_type"].astype(str).map(LINES).to_numpy()
    others = sorted(set(gdsc.loc[gdsc["dataset"] == "GDSC2", "drug_name"]) - set(DRUGS))
    rows = []
    for drug in np.random.default_rng(0).choice(others, n_drugs, replace=False):
        data = prepare(bulk, gdsc, cells, drug, exclude_lines=LINES.values(),
                       smooth_neighbors=smooth_neighbors, scaling=scaling)
        model = DrugTransfer(data.x_bulk, data.y_bulk, data.x_sc, config=config, seed=seed)
        model.fit_bulk()
        own = line_scores(model.predict_bulk_model, own_bulk_inputs(bulk, data))
        rows.append({"drug": drug, "variant": "bulk_sc", "seed": seed,
                     "rho": spearmanr(model.predict_bulk_model(data.x_sc),
                                      own.loc[line_of_cell]).statistic})
        model.adapt()
        rows.append({"drug": drug, "variant": "scdeal", "seed": seed,
                     "rho": spearmanr(model.predict_adapted(), own.loc[line_of_cell]).statistic})
        print(rows[-2], rows[-1], flush=True)
    return pd.DataFrame(rows)


def line_similarity(bulk: ad.AnnData, cells: ad.AnnData) -> pd.Series:
    """Spearman correlation, across the shared genes, of each bulk line's profile (centred on
    the mean profile of all non-test lines) with the cells' pseudo-bulk (mean log-normalised
    expression over all cells). Indexed by line key, in bulk order."""
    genes = shared_genes(bulk, cells)
    keys = bulk.obs["cell_line_key"].map(line_key).to_numpy()
    x = np.asarray(bulk[:, genes].X, dtype=np.float32)
    ranks = rankdata(x - x[~np.isin(keys, list(LINES.values()))].mean(0), axis=1)
    profile = rankdata(sc_lognorm(cells, genes).mean(0))
    ranks -= ranks.mean(axis=1, keepdims=True)
    profile -= profile.mean()
    corr = ranks @ profile / np.sqrt((ranks ** 2).sum(axis=1) * (profile ** 2).sum())
    return pd.Series(corr, index=keys)


def dissimilar_lines(similarity: pd.Series, screened: pd.Index, n_lines: int) -> list[str]:
    """The test lines and every screened line outside the ``n_lines`` most similar non-test
    ones: as ``exclude_lines``, this leaves :func:`prepare` those ``n_lines`` to train on."""
    candidates = similarity[similarity.index.isin(screened)
                            & ~similarity.index.isin(list(LINES.values()))]
    chosen = set(candidates.index[np.argsort(-candidates.to_numpy(), kind="stable")[:n_lines]])
    return list(LINES.values()) + [k for k in candidates.index if k not in chosen]


def matched_steps(config: TransferConfig, n_lines: int, n_all: int, n_cells: int) -> TransferConfig:
    """Epochs scaled so that training on ``n_lines`` lines takes as many optimiser steps per
    stage as training on ``n_all`` (full minibatches per epoch; adaptation: the larger domain)."""
    bs = config.batch_size
    bulk = max(1, n_all // bs) / max(1, n_lines // bs)
    adapt = max(1, max(n_all, n_cells) // bs) / max(1, max(n_lines, n_cells) // bs)
    return dataclasses.replace(config, pretrain_epochs=round(config.pretrain_epochs * bulk),
                               bulk_epochs=round(config.bulk_epochs * bulk),
                               adapt_epochs=round(config.adapt_epochs * adapt))


def run(seeds: list[int], drugs: list[str], config: TransferConfig,
        n_similar_lines: int | None = None, match_steps: bool = False,
        smooth_neighbors: int = SMOOTH_NEIGHBORS, target: str = "binary",
        scaling: str = SCALING) -> pd.DataFrame:
    """Every variant on every drug and seed. With ``target="continuous"`` our models regress
    ln IC50 and a cell's sensitivity score is minus its predicted ln IC50 (called sensitive below
    the binarisation cut-off); the yardstick stays the binary regression."""
    bulk, gdsc, cells = load()
    line_of_cell = cells.obs["cell_type"].astype(str).map(LINES).to_numpy()
    similarity = None if n_similar_lines is None else line_similarity(bulk, cells)
    rows = []
    binary = target == "binary"
    for drug in drugs:
        values = response_table(gdsc, drug, "GDSC2")
        labels, cutoff = binarize(values)
        truth_line = {k: bool(labels[k]) for k in LINES.values()}
        truth = np.array([truth_line[k] for k in line_of_cell])
        exclude = list(LINES.values()) if n_similar_lines is None else \
            dissimilar_lines(similarity, values.index, n_similar_lines)
        data = prepare(bulk, gdsc, cells, drug, exclude_lines=exclude,
                       smooth_neighbors=smooth_neighbors, target=target, scaling=scaling)
        sensitive = [k for k, v in truth_line.items() if v]
        print(f"{drug}: cutoff {cutoff:.2f}, sensitive lines {sensitive}, "
              f"{data.n_shared_genes} shared genes ({len(data.genes)} used), "
              f"{len(data.bulk_lines)} training lines "
              f"({int((data.response < cutoff).sum())} sensitive)", flush=True)

        # The yardstick uses every shared gene.
        full = all_genes(bulk, gdsc, cells, drug, LINES.values())
        naive, naive_own = naive_scores(full, truth, own_bulk_inputs(bulk, full), line_of_cell)
        rows.append({"drug": drug, "variant": "naive", "seed": -1, **naive})
        rows.append({"drug": drug, "variant": "naive_own_bulk", "seed": -1, **naive_own})
        if n_similar_lines is not None:  # the same yardstick on the similar lines only
            sim = all_genes(bulk, gdsc, cells, drug, exclude)
            rows.append({"drug": drug, "variant": "naive_sim", "seed": -1,
                         **naive_scores(sim, truth, own_bulk_inputs(bulk, sim), line_of_cell)[0]})

        cfg = config
        if match_steps and n_similar_lines is not None:
            cfg = matched_steps(config, len(data.bulk_lines), len(full.bulk_lines), cells.n_obs)
            print(f"  matched steps: pretrain/bulk/adapt epochs {cfg.pretrain_epochs}/"
                  f"{cfg.bulk_epochs}/{cfg.adapt_epochs}", flush=True)
        pb = pseudobulk_inputs(cells, "cell_type", data)
        own_bulk = own_bulk_inputs(bulk, data)
        for seed in seeds:
            t0 = time.time()
            model = DrugTransfer(data.x_bulk, data.y_bulk, data.x_sc, binary, cfg, seed)
            model.fit_bulk()
            rows.append({"drug": drug, "variant": "bulk_sc", "seed": seed,
                         **model_scores(truth, model.predict_bulk_model(data.x_sc), binary,
                                        cutoff)})
            pb_prob = line_scores(model.predict_bulk_model, pb)
            pb_cells = pb_prob.loc[cells.obs["cell_type"].astype(str)].to_numpy()
            rows.append({"drug": drug, "variant": "pseudobulk", "seed": seed,
                         **model_scores(truth, pb_cells, binary, cutoff)})
            own_prob = line_scores(model.predict_bulk_model, own_bulk)
            rows.append({"drug": drug, "variant": "own_bulk", "seed": seed,
                         **model_scores(truth, own_prob.loc[line_of_cell].to_numpy(), binary,
                                       cutoff)})
            model.adapt()
            prob = model.predict_adapted()
            rows.append({"drug": drug, "variant": "scdeal", "seed": seed,
                         **model_scores(truth, prob, binary, cutoff)})
            per_line = pd.Series(prob, dtype=float).groupby(line_of_cell).mean().round(2).to_dict()
            output = "prob" if binary else "ln IC50"
            print(f"  seed {seed}: {time.time() - t0:.0f}s; scDEAL mean {output} per line "
                  f"{per_line}; "
                  f"pseudo-bulk {pb_prob.astype(float).round(2).to_dict()}; "
                  f"own bulk {own_prob.astype(float).round(3).to_dict()}", flush=True)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    order = {"naive": 0, "naive_own_bulk": 1, "naive_sim": 2, "own_bulk": 3, "bulk_sc": 4,
             "pseudobulk": 5, "scdeal": 6}
    out = results.groupby(["drug", "variant"])[["auroc", "ap", "f1"]].agg(["mean", "std"])
    def cell(mean: float, sd: float) -> str:
        return f"{mean:.3f} ± {0.0 if np.isnan(sd) else sd:.3f}"

    table = pd.DataFrame({m: [cell(a, s) for a, s in zip(out[(m, "mean")], out[(m, "std")],
                                                         strict=True)]
                          for m in ("auroc", "ap", "f1")}, index=out.index).reset_index()
    table["_d"] = table["drug"].map({d: i for i, d in enumerate(DRUGS)})
    table["_v"] = table["variant"].map(order)
    return table.sort_values(["_d", "_v"]).drop(columns=["_d", "_v"])


def config_with(overrides: list[str]) -> TransferConfig:
    """``TransferConfig`` with ``FIELD=VALUE`` overrides (values parsed as Python literals)."""
    import ast

    known = {f.name for f in dataclasses.fields(TransferConfig)}
    fields = {}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in known:
            raise SystemExit(f"--set {item!r}: no TransferConfig field {name!r}; "
                             f"fields: {sorted(known)}")
        try:
            fields[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {item!r}: {value!r} is not a Python literal "
                             "(e.g. 0.1, (256,), True)") from None
    return dataclasses.replace(TransferConfig(), **fields)


def cv_setting(text: str) -> tuple[int, str, str, str]:
    """``N:LABEL[:TARGET[:SCALING]]`` → (response genes, label, target, scaling); target
    defaults to binary, scaling to the library's default."""
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or not parts[0].isdigit() \
            or parts[1] not in ("absolute", "relative", "auc") \
            or parts[2:3] not in ([], ["binary"], ["continuous"]) \
            or parts[3:] not in ([], *([s] for s in SCALINGS)):
        raise SystemExit(f"--cv {text!r}: expected N:LABEL[:TARGET[:SCALING]], e.g. 200:absolute "
                         "or 200:absolute:binary:rank (LABEL absolute|relative|auc, TARGET "
                         f"binary|continuous, SCALING {'|'.join(SCALINGS)})")
    return (int(parts[0]), parts[1], parts[2] if len(parts) > 2 else "binary",
            parts[3] if len(parts) > 3 else SCALING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--drugs", nargs="+", default=DRUGS)
    parser.add_argument("--out", default=None, help="CSV of per-seed scores")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="only print the table of these CSVs")
    parser.add_argument("--cv", nargs="+", default=None,
                        metavar="N_RESPONSE_GENES:LABEL[:TARGET]",
                        help="bulk cross-validation of these settings instead, "
                             "e.g. 0:absolute 200:relative 200:absolute:continuous")
    parser.add_argument("--similar-lines", type=int, default=None, metavar="N",
                        help="train only on the N GDSC2 lines most like the cells "
                             "(line_similarity); adds variant naive_sim, the yardstick on them")
    parser.add_argument("--fidelity", type=int, default=None, metavar="N_DRUGS",
                        help="transfer fidelity on N other GDSC2 drugs (transfer_fidelity) instead")
    parser.add_argument("--smooth", type=int, default=SMOOTH_NEIGHBORS, metavar="K",
                        help="kNN-smooth the cells over K cells (0: raw cells)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override TransferConfig fields, e.g. mmd_weight=1.0 adapt_epochs=60")
    parser.add_argument("--scaling", choices=SCALINGS, default=SCALING,
                        help="our models' inputs: genes standardised within each domain, or "
                             "profiles ranked within themselves on the bulk lines' scale")
    parser.add_argument("--target", choices=["binary", "continuous"], default="binary",
                        help="our models: classify the binarised response or regress ln IC50")
    parser.add_argument("--match-steps", action="store_true",
                        help="with --similar-lines: scale epochs to the optimiser steps of "
                             "all lines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = config_with(args.set)
    if args.fidelity:
        fid = pd.concat([transfer_fidelity(args.fidelity, config, seed, args.smooth, args.scaling)
                         for seed in args.seeds])
        if args.out:
            fid.to_csv(args.out, index=False)
        print(fid.groupby("variant")["rho"].agg(["mean", "std", "count"]).round(3).to_string())
        return
    if args.cv:
        settings = [cv_setting(s) for s in args.cv]
        cv = bulk_cv(args.drugs, settings, config)
        if args.out:
            cv.to_csv(args.out, index=False)
        print(cv.pivot_table(index=["n_response_genes", "label", "target", "scaling"],
                             columns="drug", values="cv_auroc")
              .assign(mean=lambda t: t.mean(axis=1)).round(3).to_string())
        return
    if args.merge:
        results = pd.concat([pd.read_csv(f) for f in args.merge])
    else:
        results = run(args.seeds, args.drugs, config, args.similar_lines,
                      args.match_steps, args.smooth, args.target, args.scaling)
    if args.out:
        results.to_csv(args.out, index=False)
    table = summarise(results)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
