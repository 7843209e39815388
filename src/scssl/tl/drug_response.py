"""Bulk → single-cell drug-response transfer in the manner of scDEAL (Chen et al. 2022, Nat Commun).

Drug screens (GDSC; Yang et al. 2013, Iorio et al. 2016) measure response on bulk cell lines.
A predictor trained on bulk expression is carried over to single cells with

1. a denoising autoencoder per domain (Vincent et al. 2008) over the genes both share,
2. alignment of the two latent spaces by multi-kernel maximum mean discrepancy
   (:func:`scssl.losses.mmd`; Long et al. 2015), and
3. a term that keeps single-cell cluster structure (cells of one Louvain cluster stay close),

while the bulk encoder and predictor keep fitting the bulk labels.

Genes: the shared genes most variable across the bulk training lines, united with those most
correlated with the drug's response across the same lines (:func:`select_genes`), so that
drug-specific markers can enter the model; the number (200) was chosen by cross-validation on
held-out bulk lines, not on single cells. A drug-specific label (:func:`relative_response_table`)
is available but not the default: it lost 0.06–0.21 bulk-CV AUROC against the absolute label.

Cells are kNN-smoothed (:func:`smooth_cells`, 30 cells) before standardisation: on GDSC2 drugs
outside the benchmark it raised how well the unadapted model's cell scores agree with what it
says of the cells' lines' own bulk profiles (mean Spearman over 12 drugs 0.28 → 0.53, over 40
drugs 0.19 → 0.30; see ``benchmarks/drug_response.md``).

Each gene is then standardised within each domain (``scaling="domain"``), which centres a few
lines' cells as if they spanned the bulk's ~900 lines. ``scaling="rank"`` instead replaces
every profile, bulk line or (smoothed) cell, by its genes' ranks within itself and puts it on
the bulk training lines' per-gene scale (:func:`within_profile_ranks`), so a cell's input depends
on the cell and its smoothing neighbours alone, not on which other cells were sequenced with it.
On the same 40 drugs, two seeds, ranks raised that agreement from 0.30 to 0.40 (unadapted) and
from 0.29 to 0.38 (adapted), but the cells then keep the platform's offset from the bulk and
nearly all score near probability 0: their calls are unusable, and on the benchmark's five drugs
(ten seeds) the better order did not show, so ``"domain"`` stays the default.

One deliberate departure from scDEAL: the single-cell encoder starts as a copy of the trained
bulk encoder rather than from an independently pre-trained autoencoder. Both domains are
standardised per gene, so the copy is already a sensible map into the predictor's latent
space, and adaptation refines it instead of having MMD alone discover which single-cell
direction means "sensitive".

A second departure: MMD aligns the cells with the bulk lines nearest them in the bulk model's
latent space, not with every line (partial domain adaptation, Cao et al. 2018; ``TransferConfig.
align_neighbors``). A few lines' cells pulled over the spread of hundreds of lines lose their
order; on 40 GDSC2 drugs outside the benchmark the partial target kept the cells' scores closer
to what the bulk model says of their own lines (mean Spearman 0.27 vs 0.21).
"""

from __future__ import annotations

import copy
import difflib
import logging
import random
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from scssl.encoders import MLPEncoder, mlp
from scssl.losses import masked_mse, mmd
from scssl.train import cpu_threads, seeded
from scssl.transforms import normalize_log1p

log = logging.getLogger("scssl")

# Defaults of :func:`prepare` / :func:`drug_response`, chosen by bulk cross-validation (held-out
# GDSC2 lines, the benchmark's three test lines excluded; see ``benchmarks/drug_response.md``).
N_RESPONSE_GENES = 200
LABEL = "absolute"
# Chosen by transfer fidelity on drugs other than the benchmark's five (``--fidelity``).
SMOOTH_NEIGHBORS = 30
SCALINGS = ("domain", "rank")
SCALING = "domain"


# ---- response table ------------------------------------------------------------------------------
def line_key(name: str) -> str:
    """Cell-line matching key: upper-case alphanumerics (``"NCI-H1975"`` → ``"NCIH1975"``)."""
    return re.sub(r"[^0-9A-Z]", "", str(name).upper())


def _check_response_columns(response: pd.DataFrame, dataset: str | None, metric: str,
                            cell_line_key: str) -> None:
    needed = ["drug_name", metric, cell_line_key] + (["dataset"] if dataset is not None else [])
    missing = [c for c in needed if c not in response]
    if missing:
        raise ValueError(f"the response table has no column(s) {missing}; its columns are "
                         f"{list(response.columns)} (name the line column with cell_line_key=, "
                         "shell --cell-line-key, and the response with metric=)")


def _no_drug_error(response: pd.DataFrame, drug: str, dataset: str | None, metric: str) -> ValueError:
    screened = response.dropna(subset=[metric])
    elsewhere = [] if dataset is None else \
        sorted(screened.loc[screened["drug_name"].str.lower() == drug.lower(), "dataset"].unique())
    if elsewhere:
        hint = (f"; it is screened in {elsewhere}: pass one as dataset= (shell --dataset), "
                "or None (shell 'all') to pool")
    else:
        names = {name.lower(): name for name in screened["drug_name"].dropna().unique()}
        close = [names[n] for n in difflib.get_close_matches(drug.lower(), list(names), cutoff=0.75)]
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return ValueError(f"no {metric} for drug {drug!r} in dataset {dataset!r}{hint}")


def response_table(
    response: pd.DataFrame, drug: str, dataset: str | None = "GDSC2", metric: str = "ln_ic50",
    cell_line_key: str = "cell_line_key",
) -> pd.Series:
    """One response value per cell line for ``drug``.

    Duplicate (line, drug) rows — replicate screens or several compound IDs — are averaged.
    Drug names match case-insensitively. ``dataset=None`` pools GDSC1 and GDSC2.
    """
    _check_response_columns(response, dataset, metric, cell_line_key)
    rows = response[response["drug_name"].str.lower() == drug.lower()]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    rows = rows.dropna(subset=[metric])
    if rows.empty:
        raise _no_drug_error(response, drug, dataset, metric)
    keys = rows[cell_line_key].map(line_key)
    return rows[metric].groupby(keys.values).mean().rename(metric)


def relative_response_table(
    response: pd.DataFrame, drug: str, dataset: str | None = "GDSC2", metric: str = "ln_ic50",
    cell_line_key: str = "cell_line_key", min_drugs: int = 20,
) -> pd.Series:
    """Drug-specific response: how much more (negative) or less sensitive a line is to ``drug``
    than to drugs in general.

    Every drug's metric is z-scored over the lines screened with it; a line's score for
    ``drug`` is its z-score for ``drug`` minus its mean z-score over all drugs of ``dataset``.
    A line that responds to everything (fast growth, fragile) thus no longer counts as
    sensitive to this particular drug, and one that resists most drugs but not this one does.
    Lines with fewer than ``min_drugs`` screened drugs are dropped (too noisy a baseline).
    """
    _check_response_columns(response, dataset, metric, cell_line_key)
    rows = response if dataset is None else response[response["dataset"] == dataset]
    rows = rows.dropna(subset=[metric])
    keys = rows[cell_line_key].map(line_key)
    wide = rows[metric].groupby([keys.values, rows["drug_name"].str.lower().values]).mean().unstack()
    if drug.lower() not in wide.columns:
        raise _no_drug_error(response, drug, dataset, metric)
    z = (wide - wide.mean()) / wide.std().replace(0.0, 1.0)
    general = z.mean(axis=1)
    enough = z.notna().sum(axis=1) >= min_drugs
    rel = (z[drug.lower()] - general)[enough].dropna()
    return rel.rename(f"relative_{metric}")


def binarize(
    values: pd.Series, rule: str = "quantile", quantile: float = 0.25, threshold: float | None = None,
) -> tuple[pd.Series, float]:
    """Sensitive (``True``) when the response is *below* a cut-off.

    Lower ln IC50 and lower AUC both mean more sensitive.

    Parameters
    ----------
    values
        One response per line (:func:`response_table`), over *all* screened lines — the
        cut-off is a property of the drug's screen, not of which lines we train on.
    rule
        ``"quantile"``: cut at ``values.quantile(quantile)`` (linear interpolation, pandas'
        default); ``"threshold"``: cut at ``threshold``.

    Returns
    -------
    labels, cutoff
    """
    if rule == "quantile":
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {quantile}")
        cutoff = float(values.quantile(quantile))
    elif rule == "threshold":
        if threshold is None:
            raise ValueError("rule='threshold' needs a threshold")
        cutoff = float(threshold)
    else:
        raise ValueError(f"rule must be 'quantile' or 'threshold', got {rule!r}")
    return values < cutoff, cutoff


# ---- expression ----------------------------------------------------------------------------------
def shared_genes(
    bulk: ad.AnnData, sc_adata: ad.AnnData, min_cells: int = 0, layer: str | None = None,
) -> list[str]:
    """Gene symbols in both domains, in bulk order; single-cell genes seen in fewer than
    ``min_cells`` cells are dropped (by default none: an all-zero gene standardises to 0)."""
    for name, adata in (("bulk", bulk), ("single-cell", sc_adata)):
        if not adata.var_names.is_unique:
            raise ValueError(f"{name} gene names are not unique; call .var_names_make_unique() first")
    counts = sc_adata.layers[layer] if layer else sc_adata.X
    detected = np.asarray((counts > 0).sum(axis=0)).ravel() >= min_cells
    sc_names = set(sc_adata.var_names[detected])
    genes = [g for g in pd.unique(bulk.var_names) if g in sc_names]
    if len(genes) == 0:
        raise ValueError("bulk and single-cell data share no gene symbols")
    return genes


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def _standardize(x: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None,
                 clip: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if mean is None:
        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-6, std, 1.0)  # constant genes stay at zero
    return np.clip((x - mean) / std, -clip, clip).astype(np.float32), mean, std


def within_profile_ranks(x: np.ndarray) -> np.ndarray:
    """Each row's values replaced by their ranks within the row, scaled to (0, 1) (ties share
    their mean rank): a profile's own gene ordering, free of its platform's value scale."""
    from scipy.stats import rankdata

    return ((rankdata(x, axis=1) - 0.5) / x.shape[1]).astype(np.float32)


def scale_profiles(x: np.ndarray, scaling: str, mean: np.ndarray | None = None,
                   std: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profiles (rows) per-gene standardised, after :func:`within_profile_ranks` when
    ``scaling="rank"``; with ``mean`` and ``std`` on those statistics, else on the rows' own.
    Returns the scaled rows and the statistics used."""
    if scaling == "rank":
        x = within_profile_ranks(x)
    return _standardize(x, mean, std)


def sc_lognorm(sc_adata: ad.AnnData, genes: Sequence[str], layer: str | None = None) -> np.ndarray:
    """log1p(counts per 10k) of ``genes``; library sizes count *all* genes, not only shared ones."""
    counts = sc_adata.layers[layer] if layer else sc_adata.X
    library = np.asarray(counts.sum(axis=1)).ravel().astype(np.float32)
    idx = sc_adata.var_names.get_indexer(genes)
    x = _dense(counts[:, idx]) / np.maximum(library, 1.0)[:, None] * 1e4
    return np.log1p(x).astype(np.float32)


def pseudobulk(
    sc_adata: ad.AnnData, groupby: str, genes: Sequence[str], layer: str | None = None,
) -> pd.DataFrame:
    """Summed counts per group → log1p(CPM/100) of ``genes`` (groups × genes)."""
    counts = sc_adata.layers[layer] if layer else sc_adata.X
    groups = sc_adata.obs[groupby].astype(str).to_numpy()
    names = np.unique(groups)
    totals = np.stack([np.asarray(counts[groups == g].sum(axis=0)).ravel() for g in names]).astype(np.float32)
    x = normalize_log1p(torch.from_numpy(totals))  # library over all genes, as for cells
    idx = sc_adata.var_names.get_indexer(genes)
    return pd.DataFrame(x.numpy()[:, idx], index=names, columns=list(genes))


def select_genes(
    x: np.ndarray, y: np.ndarray | None = None, n_top_genes: int | None = 2000, n_response_genes: int = 0,
) -> np.ndarray:
    """Column indices (sorted) of the genes to model, chosen on the training lines alone.

    The ``n_top_genes`` most variable columns of ``x`` (``None``: all), united with the
    ``n_response_genes`` columns whose Pearson correlation with the continuous response ``y``
    is largest in absolute value. The supervised part brings in response-correlated genes that
    need not be among the most variable ones, mostly lineage markers: for crizotinib on GDSC2
    the top ones mark blood versus adherent lines (SDC4, MYOF, CD53, MYB; |r| ≈ 0.45), while its
    target ``ALK`` (r = −0.32: only a handful of lines express it) misses the 200. It must be
    computed on training lines only (call it inside each cross-validation fold).
    """
    n = x.shape[1]
    chosen = np.zeros(n, dtype=bool)
    if n_top_genes is None or n_top_genes >= n:
        chosen[:] = True
    else:
        chosen[np.argsort(-x.var(0), kind="stable")[:n_top_genes]] = True
    if n_response_genes > 0 and not chosen.all():
        if y is None:
            raise ValueError("n_response_genes > 0 needs the response y")
        xc = x - x.mean(0)
        yc = np.asarray(y, dtype=np.float64) - np.mean(y)
        denom = np.sqrt((xc ** 2).sum(0) * (yc ** 2).sum())
        r = np.abs(xc.T @ yc) / np.where(denom > 0, denom, np.inf)
        chosen[np.argsort(-r, kind="stable")[:n_response_genes]] = True
    return np.flatnonzero(chosen)


def _pca_neighbors(x: np.ndarray, n_neighbors: int, n_pcs: int = 30, seed: int = 0) -> np.ndarray:
    """Indices of each row's ``n_neighbors`` nearest rows (itself first) on the top principal
    components of ``x``."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    n_pcs = min(n_pcs, x.shape[0] - 1, x.shape[1])
    pcs = PCA(n_pcs, random_state=seed).fit_transform(x)
    k = min(n_neighbors, x.shape[0])
    return NearestNeighbors(n_neighbors=k).fit(pcs).kneighbors(pcs, return_distance=False)


def smooth_cells(x_log: np.ndarray, n_neighbors: int = 30, seed: int = 0) -> np.ndarray:
    """kNN smoothing (Wagner et al. 2018): each cell's log-expression averaged over itself and
    its ``n_neighbors - 1`` nearest cells (PCA of the per-gene standardised profiles).

    Single-cell profiles are mostly dropout noise next to a bulk profile; averaging over a
    neighbourhood makes a cell's score reflect its state rather than its sampling noise, at the
    cost of blurring subpopulations smaller than the neighbourhood.
    """
    nbrs = _pca_neighbors(_standardize(x_log)[0], n_neighbors, seed=seed)
    return x_log[nbrs].mean(axis=1).astype(np.float32)


def _louvain(x: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """Louvain communities (Blondel et al. 2008) of a kNN graph on the top principal components."""
    import igraph

    nbrs = _pca_neighbors(x, n_neighbors + 1, seed=seed)
    edges = {(min(i, j), max(i, j)) for i, row in enumerate(nbrs) for j in row[1:] if i != j}
    graph = igraph.Graph(n=x.shape[0], edges=sorted(edges))
    # Louvain visits nodes in random order: a private seeded generator, then igraph's default back.
    igraph.set_random_number_generator(random.Random(seed))
    try:
        return np.asarray(graph.community_multilevel().membership)
    finally:
        igraph.set_random_number_generator(random)


# ---- the module ----------------------------------------------------------------------------------
def _cluster_compactness(z: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance between cells of the same cluster: scDEAL's term that keeps
    single-cell heterogeneity while MMD pulls the domain onto the bulk one."""
    zn = F.normalize(z, dim=1)
    same = (clusters[:, None] == clusters[None, :]).float()
    same.fill_diagonal_(0.0)
    return ((1.0 - zn @ zn.T) * same).sum() / same.sum().clamp_min(1.0)


class TransferModule(nn.Module):
    """Bulk and single-cell denoising autoencoders over shared genes plus one response head.

    Parameters
    ----------
    n_genes
        Shared genes.
    hidden, latent_dim, dropout
        :class:`~scssl.encoders.MLPEncoder` shape; decoders mirror it.
    n_outputs
        1 (a logit, or a continuous response).
    head_hidden
        Hidden widths of the response head; ``()`` (default) is one linear layer on the latent.
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (256,), latent_dim: int = 64,
                 dropout: float = 0.1, n_outputs: int = 1, head_hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.bulk_encoder = MLPEncoder(n_genes, hidden, latent_dim, dropout=dropout)
        self.bulk_decoder = mlp([latent_dim, *reversed(hidden), n_genes], dropout=dropout)
        self.sc_encoder = MLPEncoder(n_genes, hidden, latent_dim, dropout=dropout)
        self.sc_decoder = mlp([latent_dim, *reversed(hidden), n_genes], dropout=dropout)
        self.head = mlp([latent_dim, *head_hidden, n_outputs], dropout=dropout)

    def predict_bulk_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bulk_encoder(x)).squeeze(-1)

    def predict_sc_encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.sc_encoder(x)).squeeze(-1)


def _corrupt(x: torch.Tensor, noise: float, drop: float, generator: torch.Generator) -> torch.Tensor:
    """Denoising-autoencoder input: Gaussian noise plus masking noise."""
    keep = torch.rand(x.shape, generator=generator) >= drop
    return (x + noise * torch.randn(x.shape, generator=generator)) * keep


@dataclass
class TransferConfig:
    """Hyper-parameters, chosen once for all drugs (see ``benchmarks/drug_response.md``).

    Attributes
    ----------
    hidden, latent_dim, dropout
        Encoder shape (decoders mirror it).
    head_hidden
        Hidden widths of the response head. Linear by default: a hidden GELU layer floored every
        line it deemed resistant at one logit (≈ −5.1 for osimertinib, NCI-H1975 and NCI-H2228
        within 0.005 of each other), so cells could not be ranked among the resistant-looking
        ones; the linear head keeps that ranking and scored 0.764 vs 0.759 mean bulk-CV AUROC.
    noise, input_drop
        Denoising corruption: Gaussian σ and fraction of genes zeroed.
    pretrain_epochs
        Bulk denoising-autoencoder epochs before the predictor is fitted.
    bulk_epochs
        Predictor epochs (bulk encoder + head, reconstruction kept as a regulariser).
    adapt_epochs
        Joint adaptation epochs.
    mmd_weight, cluster_weight, recon_weight
        Weights of MMD alignment (0.05; scDEAL publishes 0.25), single-cell cluster
        compactness, and reconstruction. The MMD weight was chosen by transfer fidelity on 12
        GDSC2 drugs outside the benchmark (Spearman of cell scores with the bulk model's score
        of the cells' own lines, smoothed cells): weight 0 0.454, 0.05 0.370, 0.25 0.104; no
        adaptation 0.531 (on 40 drugs: 0 0.302, 0.05 0.207, no adaptation 0.303). Aligning a
        few lines' cells with the spread of hundreds of bulk lines scrambles them.
    align_neighbors
        Partial alignment (after partial domain adaptation, Cao et al. 2018, ECCV): MMD pulls
        the cells towards the bulk lines that are among some cell's ``align_neighbors`` nearest
        lines in the bulk model's latent space (drawn as often as they are hit), not towards
        every line; ``0`` aligns with all lines, as scDEAL. Transfer fidelity (as above, MMD
        0.05) on 40 drugs: 5 neighbours 0.274, all lines 0.206 (paired +0.068 ± 0.034 s.e.,
        better on 25 of 40 drugs); on 12 drugs 0.446 vs 0.418 (20 neighbours 0.432).
    batch_size, lr, weight_decay
        AdamW on minibatches (bulk and single cells drawn side by side).
    """

    hidden: tuple[int, ...] = (256,)
    latent_dim: int = 64
    dropout: float = 0.1
    head_hidden: tuple[int, ...] = ()
    noise: float = 0.5
    input_drop: float = 0.2
    pretrain_epochs: int = 20
    bulk_epochs: int = 40
    adapt_epochs: int = 30
    mmd_weight: float = 0.05
    align_neighbors: int = 5
    cluster_weight: float = 0.1
    recon_weight: float = 1.0
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4


class DrugTransfer:
    """Trains the bulk model, then adapts it to single cells; each stage can be scored alone.

    Parameters
    ----------
    x_bulk
        Training lines × shared genes, standardised per gene.
    y_bulk
        Labels (0/1) or a continuous response per line.
    x_sc
        Cells × shared genes, standardised per gene within the single-cell domain.
    binary
        Classification (class-balanced BCE, so probability 0.5 is the balanced call) or
        regression (MSE on the standardised response).
    """

    def __init__(self, x_bulk: np.ndarray, y_bulk: np.ndarray, x_sc: np.ndarray, binary: bool = True,
                 config: TransferConfig | None = None, seed: int = 0) -> None:
        self.config = config or TransferConfig()
        self.binary, self.seed = binary, seed
        self.x_bulk = torch.as_tensor(x_bulk, dtype=torch.float32)
        y = torch.as_tensor(np.asarray(y_bulk, dtype=np.float32))
        if binary:
            n_pos = float(y.sum())
            if n_pos == 0 or n_pos == len(y):
                raise ValueError("the bulk labels have a single class; change the binarisation rule")
            self.pos_weight = torch.tensor((len(y) - n_pos) / n_pos)
            self.y_mean, self.y_std = 0.0, 1.0
        else:
            self.y_mean, self.y_std = float(y.mean()), float(y.std().clamp_min(1e-6))
            y = (y - self.y_mean) / self.y_std
        self.y_bulk = y
        self.x_sc = torch.as_tensor(x_sc, dtype=torch.float32)
        torch.manual_seed(seed)
        cfg = self.config
        self.module = TransferModule(self.x_bulk.shape[1], cfg.hidden, cfg.latent_dim, cfg.dropout,
                                     head_hidden=cfg.head_hidden)
        self.generator = torch.Generator().manual_seed(seed)
        self.history: dict[str, list[float]] = {"pretrain": [], "bulk": [], "adapt": []}

    # ---- helpers ---------------------------------------------------------------------------------
    def _batches(self, n: int) -> Iterable[torch.Tensor]:
        order = torch.randperm(n, generator=self.generator)
        bs = self.config.batch_size
        n_full = max(1, n // bs)  # drop the ragged tail: tiny batches make MMD noisy
        for i in range(n_full):
            yield order[i * bs:(i + 1) * bs]

    def _optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)

    def _recon(self, encoder, decoder, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return masked_mse(decoder(encoder(_corrupt(x, cfg.noise, cfg.input_drop, self.generator))), x)

    def _response_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return F.binary_cross_entropy_with_logits(pred, y, pos_weight=self.pos_weight)
        return F.mse_loss(pred, y)

    # ---- stages ----------------------------------------------------------------------------------
    @cpu_threads()
    def fit_bulk(self) -> DrugTransfer:
        """Denoising-autoencoder pre-training, then the response predictor on bulk lines."""
        m, cfg = self.module, self.config
        m.train()
        opt = self._optimizer([*m.bulk_encoder.parameters(), *m.bulk_decoder.parameters()])
        for _ in range(cfg.pretrain_epochs):
            for idx in self._batches(len(self.x_bulk)):
                loss = self._recon(m.bulk_encoder, m.bulk_decoder, self.x_bulk[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.history["pretrain"].append(float(loss.detach()))
        opt = self._optimizer(
            [*m.bulk_encoder.parameters(), *m.bulk_decoder.parameters(), *m.head.parameters()]
        )
        for _ in range(cfg.bulk_epochs):
            for idx in self._batches(len(self.x_bulk)):
                x = self.x_bulk[idx]
                loss = self._response_loss(m.predict_bulk_encoder(x), self.y_bulk[idx])
                loss = loss + cfg.recon_weight * self._recon(m.bulk_encoder, m.bulk_decoder, x)
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.history["bulk"].append(float(loss.detach()))
        m.eval()
        return self

    @cpu_threads()
    def adapt(self) -> DrugTransfer:
        """Align the single-cell encoder to the bulk latent space (MMD towards the bulk lines
        nearest the cells, :meth:`_alignment_weights`) while the bulk predictor keeps fitting its
        labels and the single-cell autoencoder keeps reconstructing."""
        m, cfg = self.module, self.config
        m.sc_encoder.load_state_dict(m.bulk_encoder.state_dict())
        m.sc_decoder.load_state_dict(m.bulk_decoder.state_dict())
        align_weights = self._alignment_weights()
        # Clusters of the single-cell data itself, as scDEAL (Louvain on the cells).
        self.clusters = _louvain(self.x_sc.numpy(), seed=self.seed)
        clusters = torch.as_tensor(self.clusters)
        m.train()
        opt = self._optimizer(m.parameters())
        n_bulk, n_sc = len(self.x_bulk), len(self.x_sc)
        for _ in range(cfg.adapt_epochs):
            # One pass over the larger domain; the smaller one is resampled alongside.
            n_steps = max(1, max(n_bulk, n_sc) // cfg.batch_size)
            for _ in range(n_steps):
                b = torch.randint(n_bulk, (min(cfg.batch_size, n_bulk),), generator=self.generator)
                s = torch.randint(n_sc, (min(cfg.batch_size, n_sc),), generator=self.generator)
                xb, xs = self.x_bulk[b], self.x_sc[s]
                zb, zs = m.bulk_encoder(xb), m.sc_encoder(xs)
                pred = m.head(zb).squeeze(-1)
                if align_weights is None:
                    z_target = zb
                else:
                    near = torch.multinomial(align_weights, len(s), replacement=True,
                                             generator=self.generator)
                    z_target = m.bulk_encoder(self.x_bulk[near])
                parts = {
                    "response": self._response_loss(pred, self.y_bulk[b]),
                    "mmd": mmd(z_target, zs),
                    "cluster": _cluster_compactness(zs, clusters[s]),
                    "recon": self._recon(m.bulk_encoder, m.bulk_decoder, xb)
                    + self._recon(m.sc_encoder, m.sc_decoder, xs),
                }
                loss = (parts["response"] + cfg.mmd_weight * parts["mmd"]
                        + cfg.cluster_weight * parts["cluster"] + cfg.recon_weight * parts["recon"])
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.history["adapt"].append(float(loss.detach()))
        m.eval()
        return self

    @torch.no_grad()
    def _alignment_weights(self) -> torch.Tensor | None:
        """Sampling weights of the bulk lines the cells are aligned with: how often each line is
        among a cell's ``align_neighbors`` nearest lines in the bulk model's latent space
        (``None``: every line alike)."""
        k = self.config.align_neighbors
        if k <= 0:
            return None
        m = self.module
        was_training = m.training
        m.eval()
        zb, zs = m.bulk_encoder(self.x_bulk), m.bulk_encoder(self.x_sc)
        m.train(was_training)
        nearest = torch.cdist(zs, zb).topk(min(k, len(zb)), dim=1, largest=False).indices
        return torch.bincount(nearest.flatten(), minlength=len(zb)).float()

    # ---- predictions -----------------------------------------------------------------------------
    @torch.no_grad()
    def _out(self, raw: torch.Tensor) -> np.ndarray:
        if self.binary:
            # float64: in float32 every logit below about −104 becomes probability 0, and cells
            # the model finds clearly resistant would tie instead of keeping their order.
            return torch.sigmoid(raw.double()).numpy()
        return (raw * self.y_std + self.y_mean).numpy()

    @torch.no_grad()
    def predict_bulk_model(self, x: np.ndarray) -> np.ndarray:
        """The bulk encoder + head on any input standardised like the bulk (no adaptation)."""
        self.module.eval()
        return self._out(self.module.predict_bulk_encoder(torch.as_tensor(x, dtype=torch.float32)))

    @torch.no_grad()
    def predict_adapted(self, x: np.ndarray | None = None) -> np.ndarray:
        """The adapted single-cell encoder + head (default: the training cells)."""
        self.module.eval()
        x = self.x_sc if x is None else torch.as_tensor(x, dtype=torch.float32)
        return self._out(self.module.predict_sc_encoder(x))


# ---- preparing both domains ----------------------------------------------------------------------
@dataclass
class PreparedData:
    """Both domains over shared genes, standardised, with the bulk labels."""

    genes: list[str]
    x_bulk: np.ndarray
    y_bulk: np.ndarray
    bulk_lines: list[str]
    x_sc: np.ndarray
    sc_mean: np.ndarray
    sc_std: np.ndarray
    bulk_mean: np.ndarray
    bulk_std: np.ndarray
    """Per-gene statistics of the training lines (of their within-profile ranks with
    ``scaling="rank"``), to standardise other bulk profiles alike."""
    n_shared_genes: int
    cutoff: float | None
    excluded_lines: list[str]
    n_response_lines: int
    response: np.ndarray | None = None
    """Continuous response behind ``y_bulk`` (absolute or relative, per ``label``)."""
    scaling: str = "domain"
    """How profiles were put on one scale (see :func:`prepare`)."""

    def standardize_bulk(self, profiles: np.ndarray) -> np.ndarray:
        """Other bulk profiles (× :attr:`genes`, on the bulk file's scale) as the training lines
        were standardised."""
        return scale_profiles(profiles, self.scaling, self.bulk_mean, self.bulk_std)[0]

    def standardize_cells(self, x_log: np.ndarray) -> np.ndarray:
        """Other single-cell or pseudo-bulk log-expression (× :attr:`genes`) as the cells were
        standardised."""
        return scale_profiles(x_log, self.scaling, self.sc_mean, self.sc_std)[0]


def prepare(
    bulk: ad.AnnData, response: pd.DataFrame, sc_adata: ad.AnnData, drug: str, *,
    dataset: str | None = "GDSC2", metric: str = "ln_ic50", target: str = "binary",
    rule: str = "quantile", quantile: float = 0.25, threshold: float | None = None,
    cell_line_key: str = "cell_line_key", exclude_lines: Iterable[str] = (), layer: str | None = None,
    min_cells: int = 0, n_top_genes: int | None = 2000, n_response_genes: int = N_RESPONSE_GENES,
    label: str = LABEL, smooth_neighbors: int = SMOOTH_NEIGHBORS, scaling: str = SCALING,
) -> PreparedData:
    """Align genes, join the response to bulk lines, apply the leakage guard and binarise.

    Genes: of the shared genes, the ``n_top_genes`` most variable across the bulk training
    lines (``None``: all), plus the ``n_response_genes`` most correlated with the drug's
    response across the training lines (:func:`select_genes`) — both blind to the single
    cells and to the excluded lines.

    Single cells are log-normalised and, with ``smooth_neighbors > 1``, averaged over their
    nearest cells (:func:`smooth_cells`) before the per-gene standardisation.

    ``scaling="domain"`` standardises each gene within each domain (bulk over the training
    lines, cells over the cells given), so a cell's input depends on which other cells are in
    ``sc_adata``. ``"rank"`` first replaces every profile, line or cell, by its genes' ranks
    within itself (:func:`within_profile_ranks`) and standardises both domains with the bulk
    training lines' statistics of those ranks, so a cell's input depends on the cell alone (and
    its smoothing neighbours).

    ``label="absolute"`` models the drug's metric itself; ``"relative"`` models the
    drug-specific part of it (:func:`relative_response_table`). The binarisation cut-off
    is computed over every line the drug was screened on in ``dataset`` *before* any line
    is excluded, so excluding test lines does not move it.
    """
    if target not in ("binary", "continuous"):
        raise ValueError(f"target must be 'binary' or 'continuous', got {target!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    if label == "absolute":
        values = response_table(response, drug, dataset, metric, cell_line_key)
    elif label == "relative":
        values = relative_response_table(response, drug, dataset, metric, cell_line_key)
    else:
        raise ValueError(f"label must be 'absolute' or 'relative', got {label!r}")
    continuous = values
    cutoff = None
    if target == "binary":
        labels, cutoff = binarize(values, rule, quantile, threshold)
        values = labels.astype(np.float32)

    genes = shared_genes(bulk, sc_adata, min_cells, layer)
    bulk_keys = bulk.obs[cell_line_key].map(line_key).to_numpy() if cell_line_key in bulk.obs \
        else np.array([line_key(n) for n in bulk.obs_names])
    excluded = {line_key(k) for k in exclude_lines}
    missing = excluded - set(bulk_keys)
    if missing:
        warnings.warn(f"exclude_lines not among the bulk lines (nothing to exclude): {sorted(missing)}",
                      stacklevel=2)
    keep = np.isin(bulk_keys, values.index) & ~np.isin(bulk_keys, list(excluded))
    if keep.sum() < 10:
        raise ValueError(f"only {keep.sum()} bulk lines have a {drug} response after exclusions")
    n_shared = len(genes)
    x_bulk_raw = _dense(bulk.X[keep][:, bulk.var_names.get_indexer(genes)])
    y_cont = continuous.loc[bulk_keys[keep]].to_numpy(np.float64)
    top = select_genes(x_bulk_raw, y_cont, n_top_genes, n_response_genes)
    if len(top) < n_shared:
        genes, x_bulk_raw = [genes[i] for i in top], x_bulk_raw[:, top]
    x_log = sc_lognorm(sc_adata, genes, layer)
    if smooth_neighbors > 1:
        x_log = smooth_cells(x_log, smooth_neighbors)
    # Per-gene statistics from training lines only: the bulk file is z-scored over the whole
    # matrix, not per gene, so genes still differ in level and spread.
    x_bulk, bulk_mean, bulk_std = scale_profiles(x_bulk_raw, scaling)
    # ranks put the cells on the bulk lines' scale: no statistic of the cells' own population
    cell_stats = (bulk_mean, bulk_std) if scaling == "rank" else (None, None)
    x_sc, sc_mean, sc_std = scale_profiles(x_log, scaling, *cell_stats)
    return PreparedData(
        genes=genes, x_bulk=x_bulk, y_bulk=values.loc[bulk_keys[keep]].to_numpy(np.float32),
        bulk_lines=list(bulk_keys[keep]), x_sc=x_sc, sc_mean=sc_mean, sc_std=sc_std,
        bulk_mean=bulk_mean, bulk_std=bulk_std,
        n_shared_genes=n_shared, cutoff=cutoff,
        excluded_lines=sorted(excluded & set(bulk_keys)), n_response_lines=len(values),
        response=y_cont.astype(np.float32), scaling=scaling,
    )


def pseudobulk_inputs(sc_adata: ad.AnnData, groupby: str, data: PreparedData,
                      layer: str | None = None) -> pd.DataFrame:
    """Per-group pseudo-bulk profiles standardised with the single cells' gene statistics, so
    they sit on the same per-gene scale as the cells the bulk model is applied to.

    (Matching pseudo-bulk to the microarray value distribution instead, rank for rank, put it
    outside the bulk model's range: every line scored the same.)"""
    pb = pseudobulk(sc_adata, groupby, data.genes, layer)
    return pd.DataFrame(data.standardize_cells(pb.to_numpy()), index=pb.index, columns=pb.columns)


# ---- the user-facing tool ------------------------------------------------------------------------
@dataclass
class DrugResponseResult:
    """What :func:`drug_response` did (the per-cell predictions are in ``.obs``)."""

    drug: str
    dataset: str | None
    target: str
    n_shared_genes: int
    n_genes: int
    n_train_lines: int
    n_sensitive_lines: int | None
    cutoff: float | None
    excluded_lines: list[str]
    obs_keys: list[str]
    history: dict[str, list[float]] = field(repr=False, default_factory=dict)


def drug_response(
    bulk: ad.AnnData, response: pd.DataFrame, sc_adata: ad.AnnData, drug: str = "Gefitinib", *,
    dataset: str | None = "GDSC2", metric: str = "ln_ic50", target: str = "binary",
    rule: str = "quantile", quantile: float = 0.25, threshold: float | None = None,
    cell_line_key: str = "cell_line_key", exclude_lines: Iterable[str] = (), layer: str | None = None,
    n_top_genes: int | None = 2000, n_response_genes: int = N_RESPONSE_GENES, label: str = LABEL,
    smooth_neighbors: int = SMOOTH_NEIGHBORS, scaling: str = SCALING, adapt: bool = True,
    call_threshold: float = 0.5, config: TransferConfig | None = None, seed: int = 0,
) -> DrugResponseResult:
    """Predict single-cell drug sensitivity from a bulk screen (scDEAL; Chen et al. 2022).

    Parameters
    ----------
    bulk
        Cell lines × genes (symbols in ``var_names``), log-scale expression (any global
        scaling; genes are standardised here over the training lines).
    response
        Long table with ``drug_name``, ``dataset``, ``cell_line_key`` and ``metric`` columns
        (the GDSC table in ``shared/data``); joined to ``bulk.obs[cell_line_key]``.
    sc_adata
        Cells × genes (symbols), raw counts in ``.X`` or ``layer``. Gets the predictions.
    drug
        Drug name as in ``response`` (case-insensitive).
    dataset
        ``"GDSC1"``, ``"GDSC2"`` or ``None`` (both; duplicates averaged).
    metric
        ``"ln_ic50"`` or ``"auc"`` (lower = more sensitive for both).
    target
        ``"binary"``: sensitive when the metric is below the cut-off given by ``rule``
        (default: the drug's lower quartile over all screened lines); ``"continuous"``:
        regress the metric itself.
    rule, quantile, threshold
        See :func:`binarize`.
    n_top_genes
        Shared genes kept, the most variable across bulk training lines (``None``: all).
    n_response_genes
        Added to those: the shared genes most correlated with the drug's response across the
        bulk training lines (:func:`select_genes`; ``0``: variance only).
    label
        ``"absolute"``: the drug's metric itself; ``"relative"``: its drug-specific part, the
        line's z-scored metric minus its mean over all drugs (:func:`relative_response_table`).
    smooth_neighbors
        Average each cell's log-expression over this many nearest cells (itself included) before
        predicting (:func:`smooth_cells`); ``0`` or ``1``: raw cells. Smoothing makes the
        scores track a cell's state rather than its dropout noise, but blurs subpopulations
        smaller than the neighbourhood: lower it when looking for small resistant clones.
    scaling
        ``"domain"``: genes standardised within each domain, the cells over the cells given;
        ``"rank"``: every profile ranked within itself and put on the bulk lines' scale, so a
        cell's score does not depend on which other cells are in ``sc_adata`` (see
        :func:`prepare`). Ranks order cells more faithfully, but the cells keep the platform's
        offset and score far below the bulk lines: compare cells by their sensitivity score,
        not by the binary call.
    exclude_lines
        Lines to drop from bulk training — the lines the single cells come from, when the
        cells are used for evaluation. Matched on :func:`line_key`.
    adapt
        Train the single-cell autoencoder with MMD alignment; ``False`` applies the bulk
        model to the standardised cells as they are.
    call_threshold
        Probability (binary) at which a cell is called sensitive; for ``"continuous"`` the
        call is ``prediction < threshold`` (or the quantile cut-off).
    config, seed
        Hyper-parameters and seed.

    Returns
    -------
    DrugResponseResult
        Writes ``.obs["<drug>_sensitivity"]`` (probability of sensitivity; for a continuous
        target the predicted metric, in ``.obs["<drug>_<metric>"]`` instead) and
        ``.obs["<drug>_sensitive"]`` (bool).

    Examples
    --------
    >>> res = scssl.tl.drug_response(bulk, gdsc, cells, drug="Gefitinib",
    ...                              exclude_lines=["HCC827", "NCI-H1975", "NCI-H2228"])
    >>> cells.obs.groupby("cell_type")["Gefitinib_sensitivity"].mean()
    """
    data = prepare(bulk, response, sc_adata, drug, dataset=dataset, metric=metric, target=target,
                   rule=rule, quantile=quantile, threshold=threshold, cell_line_key=cell_line_key,
                   exclude_lines=exclude_lines, layer=layer, n_top_genes=n_top_genes,
                   n_response_genes=n_response_genes, label=label,
                   smooth_neighbors=smooth_neighbors, scaling=scaling)
    binary = target == "binary"
    with seeded(seed):  # the training draws on torch's global stream; the caller gets theirs back
        model = DrugTransfer(data.x_bulk, data.y_bulk, data.x_sc, binary=binary, config=config,
                             seed=seed)
        model.fit_bulk()
        if adapt:
            model.adapt()
            pred = model.predict_adapted()
        else:
            pred = model.predict_bulk_model(data.x_sc)
    if binary:
        score_key = f"{drug}_sensitivity"
        sc_adata.obs[score_key] = pred
        sc_adata.obs[f"{drug}_sensitive"] = pred >= call_threshold
    else:
        score_key = f"{drug}_{metric}"
        sc_adata.obs[score_key] = pred
        if threshold is None:
            table = response_table if label == "absolute" else relative_response_table
            _, cut = binarize(table(response, drug, dataset, metric, cell_line_key), "quantile", quantile)
        else:
            cut = threshold
        sc_adata.obs[f"{drug}_sensitive"] = pred < cut
    log.info("%s: %d shared genes (%d used), %d training lines", drug, data.n_shared_genes,
             len(data.genes), len(data.bulk_lines))
    return DrugResponseResult(
        drug=drug, dataset=dataset, target=target, n_shared_genes=data.n_shared_genes,
        n_genes=len(data.genes),
        n_train_lines=len(data.bulk_lines),
        n_sensitive_lines=int(data.y_bulk.sum()) if binary else None,
        cutoff=data.cutoff if binary else None, excluded_lines=data.excluded_lines,
        obs_keys=[score_key, f"{drug}_sensitive"], history=copy.deepcopy(model.history),
    )
