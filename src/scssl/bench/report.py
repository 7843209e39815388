"""A self-contained HTML report of a bench run (tables, heatmaps, UMAPs, quality-vs-time).

Everything is read back from the run folder (``results.csv``, ``umap/*.npz``,
``notes.json``, ``config.yaml``, ``environment.json``), so a report can be rebuilt at any time
with :func:`write_report`. Images are embedded as base64 PNG: the file can be mailed or
archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from scssl.bench.runner import atomic_write

# (task, metric) → column title; quality metrics: higher is better.
QUALITY = {
    ("knn", "macro_f1"): "kNN F1",
    ("annotation", "macro_f1"): "LogReg F1",
    ("annotation", "holdout_macro_f1"): "LogReg F1, fine-tune split",
    ("annotation", "finetune_macro_f1"): "Fine-tune F1",
    ("cluster", "leiden_ari"): "Leiden ARI",
    ("cluster", "leiden_nmi"): "Leiden NMI",
    ("cluster", "kmeans_ari"): "k-means ARI",
    ("cluster", "kmeans_nmi"): "k-means NMI",
    ("scib", "bio_conservation"): "scIB bio",
    ("scib", "batch_correction"): "scIB batch",
    ("scib", "total"): "scIB total",
    ("reconstruction", "pearson_r"): "Recon r",
    ("reconstruction", "mean_baseline_pearson_r"): "Recon r, gene means",
    ("protein", "mean_pearson_r"): "Protein r",
}
COST = {
    ("cost", "wall_s"): "time to embedding (s)",
    ("cost", "train_cells_per_s"): "train cells/s",
    ("cost", "peak_rss_mb"): "peak RSS (MiB)",
    ("cost", "gpu_peak_mb"): "GPU peak (MiB)",
}
LOWER_IS_BETTER = {("cost", "wall_s"), ("cost", "peak_rss_mb"), ("cost", "gpu_peak_mb")}
# Reference figures shown beside a method's own, not competed on: no best mark.
REFERENCE = {("reconstruction", "mean_baseline_pearson_r")}
# The unsupervised score methods are ranked by: the mean of these (those the dataset has).
OVERALL = [("knn", "macro_f1"), ("cluster", "leiden_ari"), ("cluster", "leiden_nmi"),
           ("cluster", "kmeans_ari"), ("cluster", "kmeans_nmi"), ("scib", "total")]
BASELINE_NAMES = ("pca", "scvi", "harmony", "logreg", "hvg_knn")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    # A 256-colour palette is lossless to the eye for these plots and makes each PNG about 3x
    # smaller (the published standard report: 1.56 MB of images → 0.51 MB).
    buf.seek(0)
    small = io.BytesIO()
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
        small, format="png", optimize=True)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(small.getvalue()).decode()}">'


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and count over seeds per (dataset, method, task, metric)."""
    return (df.groupby(["dataset", "method", "task", "metric"], sort=False)["value"]
            .agg(["mean", "std", "count"]).reset_index())


def overall_scores(summary: pd.DataFrame, dataset: str) -> pd.Series:
    """Per method: the mean of the :data:`OVERALL` metrics the dataset has (methods lacking any are left out)."""
    sub = summary[summary.dataset == dataset]
    present = [k for k in OVERALL if ((sub.task == k[0]) & (sub.metric == k[1])).any()]
    wide = sub.assign(key=list(zip(sub.task, sub.metric, strict=True))).pivot_table(index="method", columns="key", values="mean")
    if not present:
        return pd.Series(dtype=float)
    wide = wide.reindex(columns=present).dropna()
    return wide.mean(axis=1).sort_values(ascending=False)


def _seed_labels(summary: pd.DataFrame, dataset: str) -> dict[str, str]:
    """Per method: its name, with its number of seeds when the dataset's methods ran different
    numbers of seeds (a one-seed mean ranked beside three-seed means is less certain)."""
    seeds = summary[summary.dataset == dataset].groupby("method")["count"].max()
    if seeds.nunique() <= 1:
        return {m: html.escape(m) for m in seeds.index}
    return {m: f"{html.escape(m)} ({n} seed{'s' if n > 1 else ''})" for m, n in seeds.items()}


def _fmt(mean: float, sd: float, n: int, metric: tuple[str, str]) -> str:
    big = metric in COST
    m = f"{mean:,.0f}" if big and abs(mean) >= 100 else (f"{mean:.1f}" if big else f"{mean:.3f}")
    if n > 1 and np.isfinite(sd):
        m += f" ± {sd:,.0f}" if big and abs(mean) >= 100 else (f" ± {sd:.1f}" if big else f" ± {sd:.3f}")
    return m


def _table(summary: pd.DataFrame, dataset: str, methods: list[str]) -> str:
    sub = summary[summary.dataset == dataset]
    columns = [k for k in list(QUALITY) + list(COST) if ((sub.task == k[0]) & (sub.metric == k[1])).any()]
    overall = overall_scores(summary, dataset)
    label = _seed_labels(summary, dataset)
    head = "".join(f"<th>{html.escape(({**QUALITY, **COST})[c])}</th>" for c in columns)
    best = {}
    for c in columns:
        vals = sub[(sub.task == c[0]) & (sub.metric == c[1])].set_index("method")["mean"]
        if len(vals) > 1 and c not in REFERENCE:
            best[c] = vals.idxmin() if c in LOWER_IS_BETTER else vals.idxmax()
    lines = []
    for method in methods:
        if not (sub.method == method).any():
            continue
        cells = []
        o = overall.get(method)
        top = len(overall) > 1 and o is not None and method == overall.index[0]
        cells.append(f'<td class="{"best" if top else ""}">{"" if o is None else f"{o:.3f}"}{" ★" if top else ""}</td>')
        for c in columns:
            r = sub[(sub.method == method) & (sub.task == c[0]) & (sub.metric == c[1])]
            if r.empty:
                cells.append('<td class="na">–</td>')
                continue
            r = r.iloc[0]
            mark = best.get(c) == method
            cells.append(f'<td class="{"best" if mark else ""}">{_fmt(r["mean"], r["std"], int(r["count"]), c)}{" ★" if mark else ""}</td>')
        kind = "baseline" if method in BASELINE_NAMES else "ssl"
        lines.append(f'<tr><th class="{kind}">{label[method]}</th>{"".join(cells)}</tr>')
    return (f'<table class="scores"><thead><tr><th>method</th><th>overall</th>{head}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')


def _verdict(summary: pd.DataFrame, dataset: str) -> str:
    overall = overall_scores(summary, dataset)
    sub = summary[summary.dataset == dataset]
    label = _seed_labels(summary, dataset)
    parts = []
    if len(overall) >= 2:
        win, second = overall.index[0], overall.index[1]
        gap = overall.iloc[0] - overall.iloc[1]
        text = (f"<b>{label[win]}</b> wins with an overall score of {overall.iloc[0]:.3f}, "
                f"{gap:+.3f} ahead of {label[second]} ({overall.iloc[1]:.3f})")
        if "pca" in overall and "pca" not in (win, second):
            text += f" and {overall.iloc[0] - overall['pca']:+.3f} ahead of PCA ({overall['pca']:.3f})"
        parts.append(text + ".")
        ssl = [m for m in overall.index if m not in BASELINE_NAMES]
        base = [m for m in overall.index if m in BASELINE_NAMES]
        if ssl and base and win not in ssl:
            parts.append(f"The best SSL method, {label[ssl[0]]} ({overall[ssl[0]]:.3f}), trails "
                         f"the best baseline {label[base[0]]} by "
                         f"{overall[base[0]] - overall[ssl[0]]:.3f}.")
    knn = sub[(sub.task == "knn") & (sub.metric == "macro_f1")].set_index("method")["mean"]
    if len(knn) > 1:
        parts.append(f"Best kNN macro-F1: {label[knn.idxmax()]} ({knn.max():.3f}).")
    sup = sub[(sub.method == "logreg") & (sub.task == "annotation") & (sub.metric == "macro_f1")]
    if not sup.empty:
        parts.append(f"Supervised reference (logistic regression on HVGs): macro-F1 {sup['mean'].iloc[0]:.3f}.")
    return " ".join(parts) or "Too few methods to compare."


def _heatmap(summary: pd.DataFrame, dataset: str, methods: list[str]) -> str | None:
    sub = summary[summary.dataset == dataset]
    keys = [k for k in QUALITY if ((sub.task == k[0]) & (sub.metric == k[1])).any()]
    rows = [m for m in methods if (sub.method == m).any()]
    if not keys or not rows:
        return None
    grid = np.full((len(rows), len(keys)), np.nan)
    for i, m in enumerate(rows):
        for j, k in enumerate(keys):
            r = sub[(sub.method == m) & (sub.task == k[0]) & (sub.metric == k[1])]
            if not r.empty:
                grid[i, j] = r["mean"].iloc[0]
    fig = Figure(figsize=(1.0 * len(keys) + 2.5, 0.45 * len(rows) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(keys)), [QUALITY[k] for k in keys], rotation=35, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(keys)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title(f"{dataset}: metric by method")
    return _png(fig)


def _overview_heatmap(summary: pd.DataFrame, datasets: list[str], methods: list[str]) -> str | None:
    scores = {d: overall_scores(summary, d) for d in datasets}
    rows = [m for m in methods if any(m in s for s in scores.values())]
    if not rows:
        return None
    grid = np.array([[scores[d].get(m, np.nan) for d in datasets] for m in rows])
    fig = Figure(figsize=(1.3 * len(datasets) + 3, 0.45 * len(rows) + 2))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(datasets)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8, color="w")
    fig.colorbar(im, ax=ax, fraction=0.03, label="overall score")
    ax.set_title("Overall score by method and dataset")
    return _png(fig)


def _tradeoff(summary: pd.DataFrame, datasets: list[str], methods: list[str]) -> str | None:
    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colours = {m: palette(i % 20) for i, m in enumerate(methods)}
    panels = []
    for d in datasets:
        overall = overall_scores(summary, d)
        sub = summary[(summary.dataset == d) & (summary.task == "cost") & (summary.metric == "wall_s")]
        wall = sub.set_index("method")["mean"]
        pts = [(m, wall[m], overall[m]) for m in overall.index if m in wall.index]
        if pts:
            panels.append((d, pts))
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (d, pts) in zip(axes[0], panels, strict=True):
        for m, x, y in pts:
            ax.scatter(max(x, 1e-2), y, s=60, color=colours[m], label=m, edgecolor="k", zorder=3)
            ax.annotate(m, (max(x, 1e-2), y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("time to embedding (s, log)")
        ax.set_title(d, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("overall score (higher is better)")
    fig.suptitle("Quality vs. time (up and to the left is better)")
    fig.tight_layout()
    return _png(fig)


def _umaps(folder: Path, dataset: str, methods: list[str], per_row: int = 6) -> str | None:
    """UMAPs of every stored embedding, coloured by cell type (and by batch on the row below)."""
    found = [(m, folder / f"{dataset}__{m}.npz") for m in methods if (folder / f"{dataset}__{m}.npz").exists()]
    if not found:
        return None
    data = {m: np.load(p, allow_pickle=False) for m, p in found}
    has_batch = any(d["batch"].size for d in data.values())
    per_method = 2 if has_batch else 1
    n_cols = min(per_row, len(found))
    n_rows = per_method * int(np.ceil(len(found) / n_cols))
    fig = Figure(figsize=(2.9 * n_cols + 1.8, 2.8 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    types = sorted(np.unique(next(iter(data.values()))["cell_type"]))
    cmap = colormaps["tab20" if len(types) > 10 else "tab10"]
    tcol = {t: cmap(i % 20) for i, t in enumerate(types)}
    batches = sorted(np.unique(np.concatenate([d["batch"] for d in data.values()]))) if has_batch else []
    bcol = {b: colormaps["Set1"](i % 9) for i, b in enumerate(batches)}
    for i, (m, _) in enumerate(found):
        d = data[m]
        xy = d["xy"]
        order = np.random.default_rng(0).permutation(len(xy))
        row, col = per_method * (i // n_cols), i % n_cols
        panels = [(axes[row][col], [tcol[t] for t in d["cell_type"][order]], f"{m}: cell type")]
        if has_batch and d["batch"].size:
            panels.append((axes[row + 1][col], [bcol[b] for b in d["batch"][order]], f"{m}: batch"))
        for ax, colours, title in panels:
            ax.axis("on")
            ax.scatter(xy[order, 0], xy[order, 1], s=2, c=colours, rasterized=True)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    handles = [Line2D([], [], marker="o", ls="", color=tcol[t], label=t) for t in types]
    axes[0][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
                       title="cell type", title_fontsize=8)
    if has_batch:
        handles = [Line2D([], [], marker="o", ls="", color=bcol[b], label=b) for b in batches]
        axes[1][-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False,
                           title="batch", title_fontsize=8)
    fig.suptitle(f"{dataset}: UMAP of each embedding (first seed)")
    fig.tight_layout()
    return _png(fig)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1300px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table.scores{border-collapse:collapse;margin:1em 0;font-size:13px}
table.scores th,table.scores td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
table.scores thead th{background:#f3f3f3;text-align:center}
table.scores th.ssl{text-align:left;color:#1a5fb4} table.scores th.baseline{text-align:left;color:#555;font-weight:normal}
td.best{font-weight:bold;background:#e6f4ea} td.na{color:#aaa;text-align:center}
.verdict{background:#f6f8fa;border-left:4px solid #1a5fb4;padding:.6em 1em;margin:1em 0}
img{max-width:100%;display:block;margin:1em 0} .meta{color:#555;font-size:13px}
details{margin:1em 0} pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}
"""

CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-tables', String(document.querySelectorAll('table.scores').length));
});
</script>"""


def write_report(out: str | Path, path: str | Path | None = None) -> Path:
    """Build ``report.html`` (or ``path``) from the bench run folder ``out``; returns its path."""
    out = Path(out)
    path = Path(path) if path else out / "report.html"
    df = pd.read_csv(out / "results.csv") if (out / "results.csv").exists() else pd.DataFrame(
        columns=["dataset", "method", "seed", "task", "metric", "value"])
    config = {}
    if (out / "config.yaml").exists():
        import yaml

        config = yaml.safe_load((out / "config.yaml").read_text()) or {}
    env = json.loads((out / "environment.json").read_text()) if (out / "environment.json").exists() else {}
    notes = json.loads((out / "notes.json").read_text()) if (out / "notes.json").exists() else {}
    summary = summarise(df) if len(df) else pd.DataFrame(columns=["dataset", "method", "task", "metric", "mean", "std", "count"])
    datasets = [d["name"] for d in config.get("datasets", [])] or list(dict.fromkeys(df.dataset))
    datasets = [d for d in datasets if (df.dataset == d).any()]
    methods = list(dict.fromkeys(list(config.get("methods", [])) + list(df.method.unique())))
    seeds = sorted(df.seed.unique().tolist()) if len(df) else []

    body = [f"<h1>scssl benchmark{': ' + html.escape(str(config.get('name'))) if config.get('name') else ''}</h1>"]
    machine = f"{env.get('cpu_count', '?')} CPU cores, {'GPU ' + env['gpu'] if env.get('gpu') else 'no GPU'}"
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    body.append(f'<p class="meta">{len(datasets)} datasets × {len(methods)} methods × {len(seeds)} seeds '
                f"(seeds {', '.join(map(str, seeds))}); {len(df)} measurements. Machine: {html.escape(machine)}. "
                f"{html.escape(versions)}</p>")
    body.append("<p>Protocol: library-size normalisation, log1p, 2,000 highly variable genes, scaling; "
                "PCA 50 PCs. SSL methods and scVI train on the raw counts of the same genes. kNN: 5-fold "
                "macro-F1 with k=15 (cell types with fewer than 5 cells are left out of F1 scores); "
                "Leiden (resolution searched to the number of labelled types) and k-means ARI/NMI. "
                "<b>Overall</b> = mean of kNN F1, Leiden ARI/NMI, k-means ARI/NMI and scIB total where present. "
                "Tables give mean ± sd over seeds; ★ marks the best value per column.</p>")
    if datasets:
        body.append("<h2>Summary</h2><ul>")
        for d in datasets:
            body.append(f"<li><b>{html.escape(d)}</b>: {_verdict(summary, d)}</li>")
        body.append("</ul>")
        for img in (_overview_heatmap(summary, datasets, methods), _tradeoff(summary, datasets, methods)):
            if img:
                body.append(img)
    for d in datasets:
        body.append(f'<h2 id="{html.escape(d)}">{html.escape(d)}</h2>')
        body.append(f'<div class="verdict">{_verdict(summary, d)}</div>')
        body.append(_table(summary, d, methods))
        for img in (_heatmap(summary, d, methods), _umaps(out / "umap", d, methods)):
            if img:
                body.append(img)
    if notes:
        body.append("<h2>Skipped and failed</h2><ul>")
        body += [f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in sorted(notes.items())]
        body.append("</ul>")
    body.append(f"<details><summary>Configuration</summary><pre>{html.escape(json.dumps(config, indent=2))}</pre></details>")
    body.append(f"<details><summary>Environment</summary><pre>{html.escape(json.dumps(env, indent=2))}</pre></details>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>scssl benchmark</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}{CHECK}</body></html>")
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return path
