"""Gene masks for masked autoencoders: pure functions of (shape, ratio, generator).

Random masking, gene-programme masking (whole gene sets at once) and isolated masking
(reconstruct one gene set from a disjoint one), after Richter et al. 2024, "Delineating the
effective use of self-supervised learning in single-cell genomics" (Nature Machine
Intelligence). Gene sets come from a GMT file (:func:`read_gmt`) or from co-expression modules
of the training data (:func:`coexpression_modules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def random_mask(
    n_cells: int, n_genes: int, ratio: float, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean mask with exactly ``round(ratio * n_genes)`` genes set per cell.

    Exact counts (rather than Bernoulli draws) keep the masked fraction equal to the one asked
    for in every cell, which the loss normalisation and the tests rely on.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    n_masked = max(1, round(ratio * n_genes))
    scores = torch.rand(n_cells, n_genes, generator=generator, device=device)
    chosen = scores.topk(n_masked, dim=1).indices
    mask = torch.zeros(n_cells, n_genes, dtype=torch.bool, device=device)
    return mask.scatter_(1, chosen, True)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x`` with masked entries replaced by ``fill`` (0 = the gene mean after scaling)."""
    return x.masked_fill(mask, fill)


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Gene sets from a GMT file: one set per line, ``name<TAB>description<TAB>gene1<TAB>gene2…``.

    Empty gene fields are skipped; a set named twice is an error (MSigDB files never do this,
    hand-made ones sometimes do).
    """
    sets: dict[str, list[str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\n\r").split("\t")
        if len(fields) < 3:
            raise ValueError(f"{path}:{number}: a GMT line needs name, description and at least one gene")
        name = fields[0]
        if name in sets:
            raise ValueError(f"{path}:{number}: gene set {name!r} appears twice")
        sets[name] = [g.strip() for g in fields[2:] if g.strip()]
    return sets


def membership_matrix(
    gene_sets: dict[str, Sequence[str]], gene_names: Sequence[str],
) -> tuple[list[str], torch.Tensor]:
    """Boolean (sets × genes) membership of each named set's genes in the vocabulary ``gene_names``."""
    position = {g: i for i, g in enumerate(gene_names)}
    names = list(gene_sets)
    members = torch.zeros(len(names), len(gene_names), dtype=torch.bool)
    for row, name in enumerate(names):
        columns = [position[g] for g in gene_sets[name] if g in position]
        members[row, columns] = True
    return names, members


def coexpression_modules(x: torch.Tensor, n_modules: int, seed: int = 0) -> torch.Tensor:
    """Data-driven gene programmes: k-means of genes on their co-expression profiles.

    Genes (columns of log-normalised ``x``, cells × genes) are described by their row of the
    gene–gene Pearson correlation matrix and clustered into ``n_modules`` groups, so genes that
    rise and fall together across cells share a module.

    Returns
    -------
    Boolean (n_modules × genes) membership; every gene is in exactly one module.
    """
    from sklearn.cluster import KMeans

    n_genes = x.shape[1]
    if not 1 <= n_modules <= n_genes:
        raise ValueError(f"n_modules must be in [1, {n_genes}], got {n_modules}")
    x = x.double()
    z = x - x.mean(0)
    z = z / z.norm(dim=0).clamp_min(1e-12)
    correlation = (z.T @ z).float().cpu().numpy()
    labels = KMeans(n_clusters=n_modules, n_init=3, random_state=seed).fit_predict(correlation)
    labels = torch.as_tensor(labels, device=x.device)
    return labels.view(1, -1) == torch.arange(n_modules, device=x.device).view(-1, 1)


def programme_mask(
    members: torch.Tensor, n_cells: int, ratio: float, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mask whole gene programmes per cell, in random order, until ``ratio`` of genes is reached.

    Each cell masks its first programmes of a random permutation while the genes masked so far
    are below ``round(ratio · n_genes)``; the masked fraction overshoots by at most one programme.
    Genes outside every programme are never masked.
    """
    n_sets, n_genes = members.shape
    target = max(1, round(ratio * n_genes))
    order = torch.rand(n_cells, n_sets, generator=generator, device=members.device).argsort(1)
    sizes = members.sum(1).to(torch.float32)[order]
    before = sizes.cumsum(1) - sizes
    chosen_in_order = before < target
    chosen = torch.zeros_like(chosen_in_order).scatter_(1, order, chosen_in_order)
    return (chosen.float() @ members.float()) > 0


def isolated_masks(
    members: torch.Tensor, n_cells: int, source: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Isolated masking (Richter et al. 2024): see only a source set, predict a disjoint target set.

    Each cell draws a target programme and a different source programme (``source`` fixes it,
    e.g. transcription factors: GP→TF; otherwise a random other programme: GP→GP). Genes shared
    by both belong to the target only, so the two are disjoint.

    Returns
    -------
    ``(visible, target)`` boolean (cells × genes): the encoder's only input and the loss genes.
    """
    n_sets = members.shape[0]
    if n_sets < 2:
        raise ValueError("isolated masking needs at least 2 gene sets")
    device = members.device
    scores = torch.rand(n_cells, n_sets, generator=generator, device=device)
    if source is not None:
        scores[:, source] = -1.0
    target_set = scores.argmax(1)
    if source is None:
        scores = torch.rand(n_cells, n_sets, generator=generator, device=device)
        scores.scatter_(1, target_set.view(-1, 1), -1.0)
        source_set = scores.argmax(1)
    else:
        source_set = torch.full_like(target_set, source)
    target = members[target_set]
    visible = members[source_set] & ~target
    return visible, target
