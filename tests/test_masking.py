"""Masks: random (exact fraction), gene programmes (GMT or co-expression), isolated, mask head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scssl
from scssl.masking import (
    coexpression_modules, isolated_masks, membership_matrix, programme_mask, random_mask, read_gmt,
)
from scssl.methods.base import Batch
from scssl.methods.mae import MAE, MAEConfig

from conftest import seeded as _gen


pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks(n_genes: int = 30, size: int = 10) -> torch.Tensor:
    """Three disjoint programmes of 10 genes each."""
    return (torch.arange(n_genes) // size).view(1, -1) == torch.arange(n_genes // size).view(-1, 1)


def test_random_mask_exact_fraction():
    mask = random_mask(50, 200, 0.15, _gen())
    assert (mask.sum(1) == 30).all()
    assert mask.float().mean(0).std() > 0  # different genes in different cells


def test_read_gmt(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("TF\thttp://x\tgene1\tgene2\t\tgene3\nP1\tdesc\tgene4\tgene5\n\n")
    assert read_gmt(path) == {"TF": ["gene1", "gene2", "gene3"], "P1": ["gene4", "gene5"]}
    path.write_text("TF\tdesc\tgene1\nTF\tdesc\tgene2\n")
    with pytest.raises(ValueError, match="twice"):
        read_gmt(path)
    path.write_text("TF\tdesc\n")
    with pytest.raises(ValueError, match="at least one gene"):
        read_gmt(path)


def test_membership_matrix_ignores_unknown_genes():
    names, members = membership_matrix({"a": ["g2", "g0", "zzz"], "b": ["g1"]}, ["g0", "g1", "g2"])
    assert names == ["a", "b"]
    assert members.tolist() == [[True, False, True], [False, True, False]]


def test_programme_mask_masks_whole_sets():
    members = _blocks()
    mask = programme_mask(members, 200, 0.3, _gen())
    per_set = mask.view(200, 3, 10)
    assert (per_set.all(2) | ~per_set.any(2)).all()  # each set all-or-nothing
    # Target 9 genes: the first programme (10 genes) already reaches it → exactly one set per cell.
    assert (mask.sum(1) == 10).all()
    assert mask.float().mean(0).std() < 0.1 and mask.any(0).all()  # all sets get masked over cells
    two = programme_mask(members, 50, 0.4, _gen())  # 12 genes → 2 programmes
    assert (two.sum(1) == 20).all()


def test_isolated_masks_are_disjoint_sets():
    members = _blocks()
    members[0, 10] = True  # overlap between sets 0 and 1: the target keeps the shared gene
    visible, target = isolated_masks(members, 300, None, _gen())
    assert not (visible & target).any()
    assert visible.any(1).all() and target.any(1).all()
    rows = [set(np.flatnonzero(r.numpy())) for r in members]
    for v, t in zip(visible[:20], target[:20], strict=True):
        assert set(np.flatnonzero(t.numpy())) in rows
        assert any(set(np.flatnonzero(v.numpy())) <= row for row in rows)
    fixed_visible, fixed_target = isolated_masks(members, 100, source=2, generator=_gen())
    assert (fixed_visible == members[2]).all()
    assert not (fixed_target & members[2]).any()


def test_coexpression_modules_recover_planted_programmes():
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(500, 3))
    x = np.repeat(factors, 8, axis=1) + 0.3 * rng.normal(size=(500, 24))
    modules = coexpression_modules(torch.tensor(x, dtype=torch.float32), 3)
    assert (modules.sum(0) == 1).all()  # a partition of the genes
    blocks = {frozenset(np.flatnonzero(m.numpy())) for m in modules}
    assert blocks == {frozenset(range(i * 8, (i + 1) * 8)) for i in range(3)}


def _batch(n_cells: int = 32, n_genes: int = 30) -> Batch:
    x = torch.randn(n_cells, n_genes, generator=_gen(3))
    return Batch(counts=x.exp(), x=x, generator=_gen(4))


def test_mae_isolated_loss_only_on_target_and_input_only_source():
    names = [f"g{i}" for i in range(30)]
    sets = {f"P{i}": names[i * 10:(i + 1) * 10] for i in range(3)}
    config = MAEConfig(hidden=(16,), latent_dim=4, masking="isolated", gene_sets=sets, isolated_source="P0")
    mae = MAE(30, config, gene_names=names)
    batch = _batch()
    hidden, scored = mae.masks(batch)
    assert (~hidden[:, :10]).all() and hidden[:, 10:].all()  # only P0 is visible
    assert (scored.sum(1) == 10).all() and not scored[:, :10].any()
    assert (mae.corrupt(batch, hidden)[:, 10:] == 0).all()


def test_mask_prediction_head_adds_weighted_loss():
    batch = _batch()
    plain = MAE(30, MAEConfig(hidden=(16,), latent_dim=4))
    headed = MAE(30, MAEConfig(hidden=(16,), latent_dim=4, mask_prediction_weight=2.0, mask_value="shuffle"))
    headed.load_state_dict(plain.state_dict(), strict=False)
    a = plain.loss(Batch(batch.counts, batch.x, generator=_gen(5)))
    b = headed.loss(Batch(batch.counts, batch.x, generator=_gen(5)))
    assert "mask_prediction" in b.parts and "mask_prediction" not in a.parts
    assert b.total.item() == pytest.approx(b.parts["reconstruction"].item() + 2.0 * b.parts["mask_prediction"].item(), rel=1e-5)
    hidden, _ = headed.masks(Batch(batch.counts, batch.x, generator=_gen(6)))
    shuffled = headed.corrupt(Batch(batch.counts, batch.x, generator=_gen(7)), hidden)
    assert (shuffled[hidden] != 0).all() and torch.equal(shuffled[~hidden], batch.x[~hidden])


def test_mae_gmt_sets_are_kept_in_config_and_survive_save_load(tmp_path, counts_adata):
    gmt = tmp_path / "sets.gmt"
    lines = [f"P{i}\tdesc\t" + "\t".join(f"gene{j}" for j in range(i * 20, (i + 1) * 20)) for i in range(5)]
    gmt.write_text("\n".join(lines + ["TINY\tdesc\tgene1\tnot_a_gene"]) + "\n")
    model = scssl.SSLModel(counts_adata, method="mae", masking="gene_programme", gmt=str(gmt),
                           hidden=(32,), latent_dim=8)
    assert sorted(model.config.gene_sets) == [f"P{i}" for i in range(5)]  # TINY dropped (< 5 genes)
    model.fit(max_epochs=1, batch_size=64, progress=False)
    model.save(tmp_path / "m")
    gmt.unlink()  # the saved model must not need the file
    loaded = scssl.SSLModel.load(tmp_path / "m")
    assert torch.equal(loaded.module.programmes, model.module.programmes)
    np.testing.assert_array_equal(loaded.embed(counts_adata), model.embed(counts_adata))


def test_gmt_without_matching_genes_is_explained(tmp_path, counts_adata):
    gmt = tmp_path / "ens.gmt"
    gmt.write_text("P\tdesc\t" + "\t".join(f"ENSG{j}" for j in range(10)) + "\n")
    with pytest.raises(ValueError, match="symbols vs Ensembl"):
        scssl.SSLModel(counts_adata, method="mae", masking="gene_programme", gmt=str(gmt))


def test_data_driven_modules_are_computed_once_and_saved(tmp_path, counts_adata):
    model = scssl.SSLModel(counts_adata, method="mae", masking="gene_programme", n_programmes=4,
                           hidden=(32,), latent_dim=8)
    placeholder = model.module.programmes.clone()
    model.fit(max_epochs=1, batch_size=64, progress=False)
    modules = model.module.programmes
    assert not torch.equal(modules, placeholder) and (modules.sum(0) == 1).all()
    # The synthetic data plants 3 co-expressed blocks of 25 genes (see conftest.make_counts).
    block_of_gene0 = modules[:, 0].nonzero().item()
    assert modules[block_of_gene0, :25].float().mean() > 0.8
    model.save(tmp_path / "m")
    assert torch.equal(scssl.SSLModel.load(tmp_path / "m").module.programmes, modules)
