"""Augmentations: exact fractions, counts-stage thinning, gene swap, crossover, MNN positives."""

from __future__ import annotations

import pytest
import torch

from scssl.augment import (
    AUGMENTATIONS, BinomialThinning, Crossover, GaussianNoise, GeneMask, GeneSwap,
    build_view_augmentations, mnn_partners,
)

from conftest import seeded as _gen


pytestmark = pytest.mark.usefixtures("one_thread")


def _labelled(n_cells: int = 16, n_genes: int = 50) -> torch.Tensor:
    """Value = 1000·(cell + 1) + gene: every entry says which cell and gene it came from."""
    return 1000.0 * (torch.arange(n_cells).view(-1, 1) + 1) + torch.arange(n_genes).view(1, -1)


def test_registered_by_name():
    assert {"gene_mask", "gaussian_noise", "binomial_thinning", "gene_swap", "crossover"} <= set(AUGMENTATIONS)


def test_gene_mask_zeroes_exactly_the_fraction_asked():
    x = torch.rand(40, 200) + 1.0  # no natural zeros
    out = GeneMask(ratio=0.3)(x, _gen())
    assert ((out == 0).sum(1) == 60).all()
    assert torch.equal(out[out != 0], x[out != 0])


def test_probability_selects_cells():
    x = torch.rand(2000, 10) + 1.0
    out = GaussianNoise(std=1.0, p=0.25)(x, _gen())
    changed = (out != x).any(1).float().mean().item()
    assert 0.2 < changed < 0.3
    assert torch.equal(GaussianNoise(std=1.0, p=0.0)(x, _gen()), x)


def test_binomial_thinning_is_a_counts_augmentation():
    assert BinomialThinning.on_counts and not GeneMask.on_counts
    counts = torch.randint(0, 50, (200, 100)).float()
    thinned = BinomialThinning(rate=0.4)(counts, _gen())
    assert torch.equal(thinned, thinned.round()) and (thinned <= counts).all() and (thinned >= 0).all()
    # Each molecule survives with probability 0.6.
    assert thinned.sum().item() / counts.sum().item() == pytest.approx(0.6, abs=0.01)


def test_view_augmentations_split_counts_stage_first():
    counts_stage, input_stage = build_view_augmentations(
        {"gene_mask": {"ratio": 0.1}, "binomial_thinning": {"rate": 0.2}, "gaussian_noise": {}})
    assert [type(a) for a in counts_stage.augmentations] == [BinomialThinning]
    assert [type(a) for a in input_stage.augmentations] == [GeneMask, GaussianNoise]
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_view_augmentations({"flip": {}})


def test_gene_swap_takes_values_from_other_cells_same_gene():
    x = _labelled()
    out = GeneSwap(ratio=0.2)(x, _gen())
    changed = out != x
    assert (changed.sum(1) == 10).all()  # exactly 20% of 50 genes per cell
    donor_cell = (out // 1000 - 1).long()
    gene = out % 1000
    assert torch.equal(gene, x % 1000)  # a gene's value only moves within its column
    own = torch.arange(16).view(-1, 1).expand_as(donor_cell)
    assert (donor_cell[changed] != own[changed]).all()


def test_crossover_takes_genes_from_one_partner():
    x = _labelled()
    out = Crossover(ratio=0.3)(x, _gen(1))
    changed = out != x
    assert (changed.sum(1) == 15).all()
    donor_cell = (out // 1000 - 1).long()
    for cell in range(16):  # (a check over a handful of cells, not model code)
        donors = donor_cell[cell][changed[cell]].unique()
        assert len(donors) == 1 and donors.item() != cell
    assert torch.equal(out % 1000, x % 1000)


def test_swaps_need_two_cells():
    with pytest.raises(ValueError, match="at least 2 cells"):
        GeneSwap()(torch.rand(1, 5), _gen())


def test_mnn_partners_cross_batches_mutually():
    # Batch 0: cells 0 (type A), 1 (type B); batch 1: cells 2 (type B'), 3 (type A'); cell 4 unknown.
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    x = torch.stack([a, b, b + 0.1, a + 0.1, a + 0.05])
    batch = torch.tensor([0, 0, 1, 1, -1])
    partners = mnn_partners(x, batch, k=1)
    assert partners.tolist() == [3, 2, 1, 0, 4]


def test_mnn_without_mutual_neighbour_keeps_the_cell():
    # Both batch-1 cells' nearest batch-0 neighbour is cell 0, so cell 1 has no mutual partner.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [1.0, 0.2]])
    partners = mnn_partners(x, torch.tensor([0, 0, 1, 1]), k=1)
    assert partners[1].item() == 1 and partners[0].item() == 2 and partners[2].item() == 0
