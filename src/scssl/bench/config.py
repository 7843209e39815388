"""Benchmark configuration: a small YAML file (or a named preset) → :class:`BenchConfig`.

A config crosses datasets × methods × seeds; each (dataset, method, seed) *cell* is scored on
the configured tasks. Methods are SSL methods from the registry (``scssl.methods.METHODS``)
and the baselines in :mod:`scssl.bench.baselines`; ``methods: all`` means every registered
method plus every baseline, so newly registered methods join the benchmark automatically.

Example ``bench.yaml``::

    datasets:
      - pbmc_10x_3chemistries_symphony          # a file in data_dir (".h5ad" optional)
      - {name: mine, path: /data/mine.h5ad, label_key: celltype, batch_key: donor, max_cells: 5000}
      - {name: cite, path: /data/cite.h5ad, protein_key: adt}   # proteins in .obsm["adt"]
    methods: [mae, simclr, pca, harmony, logreg, hvg_knn]   # or: all
    tasks: [knn, cluster, annotation, scib, cost]   # also: reconstruction, protein
    seeds: [0, 1, 2]
    epochs: 50               # SSL pre-training epochs (early stopping still applies)
    method_params:           # per-method hyper-parameters (SSLModel(**params))
      mae: {mask_ratio: 0.5}
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BASELINES = ("pca", "scvi", "harmony", "logreg", "hvg_knn")
TASKS = ("knn", "cluster", "annotation", "scib", "reconstruction", "protein", "cost")
STANDARD_DATASETS = (
    "pbmc3k_10x_seurat_hvg2000",
    "pbmc4k_10x_scdcc_top2000",
    "worm_neuron_celegans_sciRNAseq",
    "human_kidney_scdcc_top2000",
    "pbmc_10x_3chemistries_symphony",
    "citeseq_cbmc_scdcc_top2000",
)


def default_data_dir() -> Path:
    """``$SCSSL_DATA``, else the repository's ``../shared/data``, else ``./shared/data``."""
    if os.environ.get("SCSSL_DATA"):
        return Path(os.environ["SCSSL_DATA"])
    repo = Path(__file__).resolve().parents[3]  # src/scssl/bench/config.py → repository root
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return repo.parent / "shared" / "data"


@dataclass
class DatasetSpec:
    """One dataset: an ``.h5ad`` with raw counts in ``X``, labels and (optionally) batches in ``.obs``.

    ``max_cells`` subsamples (stratified by nothing: a seeded uniform draw, fixed across seeds).
    ``protein_key`` names the ``.obsm`` matrix of surface-protein levels (CITE-seq) for the
    ``protein`` task; ``None`` takes the first ``.obsm`` key that starts with ``protein``.
    """

    name: str
    path: str
    label_key: str = "cell_type"
    batch_key: str | None = "batch"
    max_cells: int | None = None
    protein_key: str | None = None


@dataclass
class BenchConfig:
    """Everything a bench run needs; see the module docstring for the YAML form.

    Attributes
    ----------
    datasets
        Datasets to score on.
    methods
        Registered SSL method names and baseline names (``pca``, ``scvi``, ``harmony``,
        ``logreg``, ``hvg_knn``), in report order.
    tasks
        ``knn`` (5-fold kNN macro-F1, k=15), ``cluster`` (Leiden and k-means ARI/NMI with
        k = number of labelled types), ``annotation`` (supervised / fine-tuned macro-F1),
        ``scib`` (scib-metrics totals; batched datasets only), ``reconstruction`` (Pearson r of
        hidden expression values of held-out cells, SSL methods only: a second model is
        pre-trained without those cells), ``protein`` (mean Pearson r per protein of a ridge
        head on the embedding, held-out cells; datasets with proteins only), ``cost`` (time,
        throughput, memory).
    seeds
        One cell per (dataset, method, seed).
    epochs, batch_size
        SSL pre-training length (early stopping with the trainer's patience) and minibatch size.
    method_params
        Per-method hyper-parameters passed to ``SSLModel``.
    train_options
        Further :class:`~scssl.train.TrainConfig` fields for every SSL method (``lr``, ``warmup_epochs``…).
    n_top_genes, n_pcs
        The shared preprocessing: library-size normalise, log1p, ``n_top_genes`` HVGs, scale, ``n_pcs`` PCs.
    scvi_max_epochs
        Upper bound for scVI (early stopping on the validation ELBO).
    annotation_epochs
        Fine-tuning epochs for SSL annotation through ``scssl.tl.annotate`` (``0``: no
        fine-tuned annotation; the ``quick`` preset sets 0 to stay within CI time).
    umap
        Store 2-D UMAP coordinates of the first seed's embedding for the report.
    device
        Training device for SSL methods and scVI (``auto``: CUDA when available).
    """

    datasets: list[DatasetSpec]
    methods: list[str]
    tasks: list[str] = field(default_factory=lambda: ["knn", "cluster", "annotation", "scib", "cost"])
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: int = 100
    batch_size: int = 256
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    n_top_genes: int = 2000
    n_pcs: int = 50
    scvi_max_epochs: int = 200
    annotation_epochs: int = 20
    umap: bool = True
    device: str = "auto"
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def all_methods() -> list[str]:
    """Every registered SSL method (sorted) followed by every baseline."""
    from scssl.methods import METHODS

    return sorted(METHODS) + list(BASELINES)


def _dataset(entry: str | dict, data_dir: Path, label_key: str, batch_key: str | None) -> DatasetSpec:
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = dict(entry)
    if "name" not in entry and "path" not in entry:
        raise ValueError(f"a dataset needs a name or a path: {entry}")
    path = Path(entry.get("path") or data_dir / entry["name"])
    if path.suffix != ".h5ad" and not path.exists():
        path = path.with_name(path.name + ".h5ad")
    name = entry.get("name") or path.name.removesuffix(".h5ad")
    unknown = set(entry) - {"name", "path", "label_key", "batch_key", "max_cells", "protein_key"}
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown keys {sorted(unknown)}")
    return DatasetSpec(
        name=name.removesuffix(".h5ad"), path=str(path), label_key=entry.get("label_key", label_key),
        batch_key=entry.get("batch_key", batch_key), max_cells=entry.get("max_cells"),
        protein_key=entry.get("protein_key"),
    )


def from_dict(values: dict[str, Any], data_dir: str | Path | None = None) -> BenchConfig:
    """Build a config from the YAML mapping (unknown keys are errors, not silently ignored)."""
    values = dict(values)
    data_dir = Path(values.pop("data_dir", None) or data_dir or default_data_dir())
    label_key = values.pop("label_key", "cell_type")
    batch_key = values.pop("batch_key", "batch")
    datasets = [_dataset(d, data_dir, label_key, batch_key) for d in values.pop("datasets", [])]
    if not datasets:
        raise ValueError("the config lists no datasets")
    methods = values.pop("methods", "all")
    if methods == "all":
        methods = all_methods()
    elif isinstance(methods, str):
        methods = [methods]
    methods = list(dict.fromkeys(x for m in methods for x in (all_methods() if m == "all" else [m])))
    known = set(all_methods())
    bad = [m for m in methods if m not in known]
    if bad:
        raise ValueError(f"unknown methods {bad}; available: {sorted(known)}")
    fields = {f.name for f in dataclasses.fields(BenchConfig)} - {"datasets", "methods"}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(fields | {'datasets', 'methods', 'data_dir', 'label_key', 'batch_key'})}")
    config = BenchConfig(datasets=datasets, methods=methods, **values)
    bad_tasks = [t for t in config.tasks if t not in TASKS]
    if bad_tasks:
        raise ValueError(f"unknown tasks {bad_tasks}; available: {list(TASKS)}")
    config.seeds = [int(s) for s in config.seeds]
    return config


PRESETS: dict[str, dict[str, Any]] = {
    # CI: one small real dataset with three batches (1,200 PBMCs), a few epochs, one seed.
    "quick": {
        "name": "quick",
        "datasets": ["pbmc_10x_3chemistries_symphony"],
        "methods": ["mae", "pca", "logreg", "hvg_knn"],
        "tasks": ["knn", "cluster", "annotation", "cost"],
        "seeds": [0],
        "epochs": 5,
        "batch_size": 128,
        "annotation_epochs": 0,
    },
    # The published table: six real datasets, every registered method and baseline, 3 seeds.
    "standard": {
        "name": "standard",
        "datasets": list(STANDARD_DATASETS),
        "methods": "all",
        "tasks": list(TASKS),
        "seeds": [0, 1, 2],
        "epochs": 100,
        "batch_size": 256,
    },
}


def load_config(source: str | Path | dict | BenchConfig, data: list[str] | None = None,
                data_dir: str | Path | None = None, **overrides: Any) -> BenchConfig:
    """A :class:`BenchConfig` from a preset name, a YAML path, a mapping or a config.

    Parameters
    ----------
    source
        ``"quick"``, ``"standard"``, a path to a YAML file, a dict or a :class:`BenchConfig`.
    data
        ``.h5ad`` paths that replace the config's datasets (run a preset on your own files).
    data_dir
        Folder that dataset names resolve against (default :func:`default_data_dir`).
    **overrides
        Config fields to replace (e.g. ``seeds=[0]``, ``epochs=10``).
    """
    if isinstance(source, BenchConfig):
        values = source.to_dict()
        values["datasets"] = [dataclasses.asdict(d) for d in source.datasets]
    elif isinstance(source, dict):
        values = dict(source)
    elif str(source) in PRESETS:
        values = dict(PRESETS[str(source)])
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"bench config {path} not found (presets: {sorted(PRESETS)})")
        values = yaml.safe_load(path.read_text()) or {}
        values.setdefault("name", path.stem)
    if data:
        values["datasets"] = [{"path": str(Path(p).resolve())} for p in data]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values, data_dir)
