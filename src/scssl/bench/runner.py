"""Run a benchmark: datasets × methods × seeds, scored on the configured tasks.

Each finished (dataset, method, seed) cell appends its rows to ``results.csv`` at once (the
file is rewritten beside itself and renamed into place), so an interrupted run loses at most
the cell in progress; rerunning with the same ``out`` skips every cell already in the CSV.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import platform
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import yaml
from sklearn.metrics import f1_score

from scssl.bench.baselines import MethodOutput, Prepared, Skip, fit_ssl, prepare, runner_for
from scssl.bench.config import BenchConfig, load_config
from scssl.checkpoint import atomic_write as _atomic_write
from scssl.metrics import cluster_scores, knn_predict_oof

log = logging.getLogger("scssl.bench")


def atomic_write(path: Path, write) -> None:
    """:func:`scssl.checkpoint.atomic_write`, leaving the file readable like any other (umask applies)."""
    _atomic_write(path, write)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

COLUMNS = ["dataset", "method", "seed", "task", "metric", "value"]
N_FOLDS = 5


@dataclass
class BenchResult:
    """What :func:`run` did: the CSV and report paths, which cells it computed, skipped or lost to errors."""

    out: Path
    csv: Path
    report: Path | None
    computed: list[tuple[str, str, int]] = field(default_factory=list)
    reused: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


# ---- CSV -----------------------------------------------------------------------------------------
def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["seed"], row["value"] = int(row["seed"]), float(row["value"])
    return rows


def append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV at ``path`` atomically (rewrite beside it, rename into place)."""
    old = path.read_text() if path.exists() else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    if not old:
        writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(float(row["value"]))})
    atomic_write(path, lambda tmp: Path(tmp).write_text(old + buf.getvalue()))


# ---- cost ----------------------------------------------------------------------------------------
class PeakMemory:
    """Peak resident memory (MiB) of this process while the block runs, sampled every 20 ms;
    when a GPU is in use, also the peak CUDA memory the block allocated on top of what was
    already held when it started (models kept from earlier cells are not charged to it)."""

    def __init__(self) -> None:
        self.peak_rss = 0.0
        self._stop = threading.Event()
        self.gpu_peak: float | None = None

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the lifetime peak is the best we have
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.rss_mb())
            self._stop.wait(0.02)

    def __enter__(self) -> Self:
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            self._gpu_held = torch.cuda.memory_allocated()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss_mb())
        if self._cuda:
            self.gpu_peak = (torch.cuda.max_memory_allocated() - self._gpu_held) / 2**20


# ---- scoring -------------------------------------------------------------------------------------
def scorable(labels: np.ndarray, n_folds: int = N_FOLDS) -> np.ndarray:
    """Cells whose type has at least ``n_folds`` cells: the only ones a stratified
    ``n_folds``-fold score can place in every fold (rarer types are left out of the F1 scores)."""
    types, counts = np.unique(labels, return_counts=True)
    return np.isin(labels, types[counts >= n_folds])


def macro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    return float(f1_score(labels, predicted, average="macro"))


def scib_scores(prep: Prepared, embedding: np.ndarray) -> dict[str, float]:
    """scib-metrics Benchmarker totals (unscaled) with the PCA as the pre-integration embedding."""
    import anndata as ad
    from scib_metrics.benchmark import Benchmarker

    adata = ad.AnnData(np.zeros((prep.counts.n_obs, 1), np.float32), obs=prep.counts.obs.copy())
    adata.obsm["X_pre"] = prep.pca
    adata.obsm["X_emb"] = np.asarray(embedding, np.float32)
    bm = Benchmarker(adata, batch_key="batch", label_key="cell_type", embedding_obsm_keys=["X_emb"],
                     pre_integrated_embedding_obsm_key="X_pre", n_jobs=1, progress_bar=False)
    bm.benchmark()
    table = bm.get_results(min_max_scale=False)
    row = table.loc["X_emb"]
    out = {"total": row["Total"], "bio_conservation": row["Bio conservation"], "batch_correction": row["Batch correction"]}
    return {k: float(v) for k, v in out.items()}


def annotation_scores(prep: Prepared, output: MethodOutput, seed: int, config: BenchConfig) -> dict[str, float]:
    """Fine-tuned annotation of a fitted SSL model through ``scssl.tl.annotate`` (80/20 stratified split)."""
    try:
        from scssl.tl import annotate
    except ImportError as err:
        raise Skip(f"scssl.tl.annotate is not available ({err})") from None
    ref = prep.counts.copy()
    result = annotate(output.model, ref, labels_key="cell_type", mode="finetune", epochs=config.annotation_epochs,
                      seed=seed, outlier_pvalue=None, unknown_threshold=0.0)
    return {"finetune_macro_f1": float(result.macro_f1), "finetune_accuracy": float(result.accuracy)}


def reconstruction_scores(prep: Prepared, method: str, seed: int,
                          config: BenchConfig) -> dict[str, float]:
    """Imputation by :func:`scssl.tl.reconstruct` (10% of genes hidden per test cell, 30% of
    cells in the test set), with a model pre-trained as configured on the other cells only:
    the cell's own model has seen every value it would be asked to impute."""
    from scssl.tl import reconstruct
    from scssl.tl._utils import random_split

    fit_cells, test_cells = random_split(prep.counts.n_obs, 0.3, seed)
    model, _ = fit_ssl(method, prep.counts[fit_cells].copy(), seed, config)
    scores = reconstruct(model, prep.counts.copy(), test_cells=test_cells, seed=seed)
    return {"pearson_r": scores["pearson"], "mean_baseline_pearson_r": scores["baseline_pearson"]}


def protein_pearson(embedding: np.ndarray, proteins: np.ndarray, seed: int) -> float:
    """Mean over proteins of the Pearson r of a ridge head on ``embedding``, on 20% held-out cells."""
    from scssl.tl._utils import random_split
    from scssl.tl.protein import heldout_protein_fit

    train, test = random_split(len(embedding), 0.2, seed)
    return float(np.nanmean(heldout_protein_fit(embedding, proteins, train, test)[1]))


def score_cell(prep: Prepared, method: str, seed: int, config: BenchConfig, output: MethodOutput,
               notes: dict[str, str]) -> list[tuple[str, str, float]]:
    """(task, metric, value) triples for one fitted cell."""
    rows: list[tuple[str, str, float]] = []
    keep = scorable(prep.labels)
    emb = output.embedding
    if "knn" in config.tasks and emb is not None:
        labels = prep.labels[keep]
        rows.append(("knn", "macro_f1", macro_f1(labels, knn_predict_oof(emb[keep], labels, k=15, n_folds=N_FOLDS, seed=seed))))
    if "cluster" in config.tasks and emb is not None:
        rows += [("cluster", k, v) for k, v in cluster_scores(emb, prep.labels, seed=seed).items()]
    if "annotation" in config.tasks:
        if output.predictions is not None:
            rows.append(("annotation", "macro_f1", macro_f1(prep.labels[keep], output.predictions[keep])))
        if output.holdout_macro_f1 is not None:
            rows.append(("annotation", "holdout_macro_f1", output.holdout_macro_f1))
        elif output.model is not None and config.annotation_epochs > 0:
            try:
                rows += [("annotation", k, v) for k, v in annotation_scores(prep, output, seed, config).items()]
            except Skip as why:
                notes["annotation"] = str(why)
    if "scib" in config.tasks and emb is not None:
        if prep.batches is None:
            pass  # scIB batch-correction needs batches; nothing to say per cell
        elif importlib.util.find_spec("scib_metrics") is None:
            notes["scib"] = "scib-metrics is not installed (pip install 'scssl[bench]')"
        else:
            rows += [("scib", k, v) for k, v in scib_scores(prep, emb).items()]
    if "reconstruction" in config.tasks and output.model is not None:
        scores = reconstruction_scores(prep, method, seed, config)
        rows += [("reconstruction", k, v) for k, v in scores.items()]
    if "protein" in config.tasks and emb is not None and prep.proteins is not None:
        rows.append(("protein", "mean_pearson_r", protein_pearson(emb, prep.proteins, seed)))
    return rows


# ---- the run -------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """Machine and package versions, for the report and the results README."""
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("scssl", "torch", "numpy", "scanpy", "anndata", "scikit-learn", "leidenalg", "harmonypy",
                "scvi-tools", "scib-metrics", "jax"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu, "versions": versions}


def _umap_coords(embedding: np.ndarray, seed: int = 0) -> np.ndarray:
    import anndata as ad
    import scanpy as sc

    a = ad.AnnData(np.zeros((embedding.shape[0], 0), np.float32))
    a.obsm["X_emb"] = np.asarray(embedding, np.float32)
    sc.pp.neighbors(a, use_rep="X_emb", n_neighbors=15, random_state=seed)
    sc.tl.umap(a, random_state=seed)
    return a.obsm["X_umap"].astype(np.float32)


def run_cell(prep: Prepared, method: str, seed: int, config: BenchConfig, out: Path,
             notes: dict[str, str]) -> list[dict[str, Any]]:
    """Fit, embed and score one (dataset, method, seed) cell; the CSV rows it produced."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    with PeakMemory() as mem:
        output = runner_for(method)(prep, seed, config)
    triples = score_cell(prep, method, seed, config, output, notes)
    if "cost" in config.tasks:
        triples.append(("cost", "wall_s", output.seconds))
        if output.train_seconds and output.epochs:
            n_train = output.notes.get("train_cells", prep.counts.n_obs)
            triples.append(("cost", "train_cells_per_s", n_train * output.epochs / output.train_seconds))
            triples.append(("cost", "epochs", float(output.epochs)))
        triples.append(("cost", "peak_rss_mb", mem.peak_rss))
        if mem.gpu_peak is not None:
            triples.append(("cost", "gpu_peak_mb", mem.gpu_peak))
    if config.umap and output.embedding is not None and seed == config.seeds[0]:
        coords = _umap_coords(output.embedding)
        folder = out / "umap"
        folder.mkdir(exist_ok=True)
        batches = np.asarray(prep.batches if prep.batches is not None else [], dtype=str)

        def save(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, xy=coords, cell_type=np.asarray(prep.labels, dtype=str), batch=batches)

        atomic_write(folder / f"{prep.spec.name}__{method}.npz", save)
    return [{"dataset": prep.spec.name, "method": method, "seed": seed, "task": t, "metric": m, "value": v}
            for t, m, v in triples]


def run(config: str | Path | dict | BenchConfig, out: str | Path, *, report: bool = True,
        data: list[str] | None = None, **overrides: Any) -> BenchResult:
    """Run (or resume) a benchmark and write ``results.csv`` and ``report.html`` under ``out``.

    Parameters
    ----------
    config
        A preset name (``"quick"``, ``"standard"``), a YAML path, a mapping or a :class:`BenchConfig`.
    out
        Output folder. Cells already in ``out/results.csv`` are not recomputed.
    report
        Write ``out/report.html`` at the end.
    data
        ``.h5ad`` files that replace the config's datasets.
    **overrides
        Config fields to replace (``seeds=[0]``, ``epochs=10``, ``methods=[...]``).

    Returns
    -------
    :class:`BenchResult`.

    Examples
    --------
    >>> from scssl import bench
    >>> result = bench.run("quick", "bench_quick/")
    >>> result.csv, result.report
    """
    config = load_config(config, data=data, **overrides)
    out = Path(out)
    csv_path = out / "results.csv"
    done = {(r["dataset"], r["method"], r["seed"]) for r in read_rows(csv_path)}
    # Checked before anything is written, and before hours of work on the datasets listed first.
    absent = [spec.path for spec in config.datasets if not Path(spec.path).exists()
              and any((spec.name, m, s) not in done for m in config.methods for s in config.seeds)]
    if absent:
        raise FileNotFoundError(f"dataset file(s) not found: {absent}; fix the paths, or set $SCSSL_DATA to "
                                "the folder that holds the named datasets")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False)))
    atomic_write(out / "environment.json", lambda tmp: Path(tmp).write_text(json.dumps(environment(), indent=2)))
    notes_path = out / "notes.json"
    notes: dict[str, str] = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    result = BenchResult(out=out, csv=csv_path, report=None)
    for spec in config.datasets:
        todo = [(m, s) for m in config.methods for s in config.seeds if (spec.name, m, s) not in done]
        result.reused += [(spec.name, m, s) for m in config.methods for s in config.seeds if (spec.name, m, s) in done]
        if not todo:
            log.info("%s: all %d cells already in %s", spec.name, len(config.methods) * len(config.seeds), csv_path)
            continue
        prep = prepare(spec, config.n_top_genes, config.n_pcs)
        for method, seed in todo:
            key = f"{spec.name}/{method}/{seed}"
            cell_notes: dict[str, str] = {}
            start = time.perf_counter()
            try:
                rows = run_cell(prep, method, seed, config, out, cell_notes)
            except Skip as why:
                log.warning("skip %s: %s", key, why)
                result.skipped[f"{spec.name}/{method}"] = notes[f"{spec.name}/{method}"] = str(why)
                continue
            except Exception as err:  # noqa: BLE001 — one broken method must not sink a long run; it is reported and retried next time
                log.error("%s failed: %s\n%s", key, err, traceback.format_exc())
                result.failed[key] = notes[f"{key} failed"] = f"{type(err).__name__}: {err}"
                continue
            finally:
                atomic_write(notes_path, lambda tmp: Path(tmp).write_text(json.dumps(notes, indent=2)))
            notes.pop(f"{key} failed", None)
            for task, why in cell_notes.items():
                notes[f"{spec.name}/{method}/{task}"] = why
                log.warning("%s: no %s rows: %s", key, task, why)
            append_rows(csv_path, rows)
            atomic_write(notes_path, lambda tmp: Path(tmp).write_text(json.dumps(notes, indent=2)))
            result.computed.append((spec.name, method, seed))
            log.info("%s done in %.1f s (%d rows)", key, time.perf_counter() - start, len(rows))
    if report:
        from scssl.bench.report import write_report

        result.report = write_report(out)
    return result


def merge_runs(sources: list[str | Path], out: str | Path, report: bool = True) -> Path:
    """Combine bench folders run separately (e.g. datasets split over processes or machines) into ``out``.

    Each measurement (dataset, method, seed, task, metric) comes from the first source that has
    it, so a later run with other ``tasks`` (or a version that adds a metric) adds its rows to
    finished cells; UMAP coordinates and notes are copied; the config lists every source's
    datasets and methods.
    """
    import shutil

    out = Path(out)
    (out / "umap").mkdir(parents=True, exist_ok=True)
    rows, seen, notes, config = [], set(), {}, None
    for src in map(Path, sources):
        for r in read_rows(src / "results.csv"):
            key = tuple(r[c] for c in COLUMNS[:-1])
            if key not in seen:
                seen.add(key)
                rows.append(r)
        for npz in (src / "umap").glob("*.npz"):
            if not (out / "umap" / npz.name).exists():
                shutil.copy(npz, out / "umap" / npz.name)
        if (src / "notes.json").exists():
            notes = {**json.loads((src / "notes.json").read_text()), **notes}
        part = yaml.safe_load((src / "config.yaml").read_text())
        if config is None:
            config = part
            shutil.copy(src / "environment.json", out / "environment.json")
        else:
            config["datasets"] += [d for d in part["datasets"] if d not in config["datasets"]]
            config["methods"] += [m for m in part["methods"] if m not in config["methods"]]
    if (out / "results.csv").exists():
        (out / "results.csv").unlink()
    append_rows(out / "results.csv", rows)
    atomic_write(out / "notes.json", lambda tmp: Path(tmp).write_text(json.dumps(notes, indent=2)))
    atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False)))
    if report:
        from scssl.bench.report import write_report

        return write_report(out)
    return out / "results.csv"
