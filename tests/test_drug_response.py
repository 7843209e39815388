"""Bulk → single-cell drug-response transfer (scDEAL-style) on the real GDSC and CellBench files."""

from __future__ import annotations

import importlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scssl.cli import main
from scssl.losses import mmd
from scssl.tl.drug_response import (
    DrugTransfer, TransferConfig, binarize, drug_response, line_key, prepare,
    relative_response_table, response_table, select_genes, smooth_cells, within_profile_ranks,
)

TEST_LINES = ["HCC-827", "NCI-H1975", "nci_h2228"]  # spelled loosely on purpose: keys must match


# ---- pure functions ------------------------------------------------------------------------------
def test_mmd_zero_for_identical_samples_and_grows_with_shift():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert mmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert mmd(x, x, relative=False).item() == pytest.approx(0.0, abs=1e-6)
    y = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    values = [mmd(x, y + shift, relative=False, bandwidths=(1.0, 4.0, 16.0)).item()
              for shift in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[-1] > 10 * values[0]
    assert mmd(x, y + 2.0).item() > mmd(x, y).item()  # relative bandwidths too


def test_mmd_gradient_pulls_samples_together(one_thread):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    y = (x + 3.0).clone().requires_grad_(True)
    opt = torch.optim.SGD([y], lr=5.0)
    start = mmd(x, y).item()
    for _ in range(20):
        opt.zero_grad()
        mmd(x, y).backward()
        opt.step()
    assert mmd(x, y).item() < 0.5 * start


def test_line_key():
    assert line_key("NCI-H1975") == "NCIH1975"
    assert line_key("hcc 827") == "HCC827"


def test_binarization_rule_hand_checked():
    response = pd.DataFrame({
        "dataset": ["GDSC2"] * 6 + ["GDSC1"],
        "drug_name": ["Gefitinib"] * 5 + ["Other", "Gefitinib"],
        "cell_line_key": ["A", "B", "C", "D", "A", "A", "E"],
        "ln_ic50": [1.0, 2.0, 4.0, 5.0, 3.0, -9.0, -9.0],
    })
    values = response_table(response, "gefitinib", "GDSC2")
    # A is screened twice (1.0, 3.0) → mean 2.0; the other drug and GDSC1 rows do not count.
    assert values.to_dict() == {"A": 2.0, "B": 2.0, "C": 4.0, "D": 5.0}
    # Lower quartile of [2, 2, 4, 5] with linear interpolation: position 0.75 → 2.0.
    labels, cutoff = binarize(values)
    assert cutoff == pytest.approx(2.0)
    assert not labels.any()  # strictly below the cut-off: nothing at 2.0 is sensitive
    labels, cutoff = binarize(values, quantile=0.5)  # median of [2, 2, 4, 5] = 3.0
    assert cutoff == pytest.approx(3.0) and labels.to_dict() == {"A": True, "B": True, "C": False, "D": False}
    labels, cutoff = binarize(values, rule="threshold", threshold=4.5)
    assert labels.to_dict() == {"A": True, "B": True, "C": True, "D": False}
    with pytest.raises(ValueError, match="threshold"):
        binarize(values, rule="threshold")


def test_response_table_errors_name_the_fix():
    response = pd.DataFrame({
        "dataset": ["GDSC2", "GDSC2", "GDSC1"], "drug_name": ["Gefitinib", "Erlotinib", "Nutlin-3a"],
        "cell_line_key": ["A", "B", "C"], "ln_ic50": [1.0, 2.0, 3.0],
    })
    with pytest.raises(ValueError, match="did you mean 'Gefitinib'"):
        response_table(response, "Gefitnib")
    with pytest.raises(ValueError, match=r"screened in \['GDSC1'\]: pass one as dataset="):
        response_table(response, "nutlin-3a")
    assert response_table(response, "nutlin-3a", dataset=None).to_dict() == {"C": 3.0}
    with pytest.raises(ValueError, match=r"no column\(s\) \['line'\].*cell_line_key="):
        response_table(response, "Gefitinib", cell_line_key="line")
    with pytest.raises(ValueError, match=r"no column\(s\) \['auc'\]"):
        relative_response_table(response, "Gefitinib", metric="auc")
    pooled = response.drop(columns="dataset")  # a table of one screen needs no dataset column
    assert response_table(pooled, "Gefitinib", dataset=None).to_dict() == {"A": 1.0}
    with pytest.raises(ValueError, match="did you mean 'Gefitinib'"):
        response_table(pooled, "Gefitnib", dataset=None)


def test_relative_response_hand_checked():
    # Two drugs, three lines. Drug X: A 1, B 2, C 3 → z -1, 0, 1. Drug Y: A 3, B 4, C 5 → z -1, 0, 1
    # except C resists Y less than X: Y for C = 4 → Y = (3, 4, 4), z = (-1.155, 0.577, 0.577).
    response = pd.DataFrame({
        "dataset": ["GDSC2"] * 6, "drug_name": ["X"] * 3 + ["Y"] * 3,
        "cell_line_key": ["A", "B", "C"] * 2, "ln_ic50": [1.0, 2.0, 3.0, 3.0, 4.0, 4.0],
    })
    rel = relative_response_table(response, "x", min_drugs=2)
    zx = np.array([-1.0, 0.0, 1.0])
    zy = (np.array([3.0, 4.0, 4.0]) - 11 / 3) / np.std([3.0, 4.0, 4.0], ddof=1)
    assert rel.loc[["A", "B", "C"]].to_numpy() == pytest.approx(zx - (zx + zy) / 2)
    assert relative_response_table(response, "x", min_drugs=3).empty  # too few drugs per line
    with pytest.raises(ValueError, match="no ln_ic50"):
        relative_response_table(response, "Z", min_drugs=2)


def test_select_genes_adds_response_correlated_low_variance_gene():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    x = rng.normal(size=(200, 50)) * np.linspace(3.0, 1.0, 50)  # variance falls with column index
    x[:, 49] = 0.5 * y + 0.1 * rng.normal(size=200)  # least variable, but tracks the response
    assert 49 not in select_genes(x, y, n_top_genes=10)
    idx = select_genes(x, y, n_top_genes=10, n_response_genes=1)
    assert list(idx) == sorted(idx) and 49 in idx and len(idx) == 11
    assert len(select_genes(x, y, n_top_genes=None, n_response_genes=5)) == 50


def test_far_out_cells_keep_their_order():
    """Probabilities of clearly resistant cells must not underflow into ties (AUROC needs order),
    and the default response head is linear, so it has no floor of its own either."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    model = DrugTransfer(x, (x[:, 0] > 0).astype(np.float32), x[:8])
    assert [type(m) for m in model.module.head] == [torch.nn.Linear]
    prob = model._out(torch.tensor([-300.0, -200.0, -120.0, 0.0]))
    assert np.all(np.diff(prob) > 0) and prob[-1] == 0.5


def test_partial_alignment_targets_the_lines_near_the_cells(one_thread):
    """Bulk lines in two groups 8 sd apart, cells like the first group only: with
    ``align_neighbors`` the MMD target is drawn (almost) only from the first group, not half
    and half; ``0`` keeps all lines alike."""
    rng = np.random.default_rng(0)
    centres = np.repeat([[0.0] * 10, [8.0] * 10], 30, axis=0)
    x_bulk = (centres + rng.normal(size=centres.shape)).astype(np.float32)
    x_sc = rng.normal(size=(25, 10)).astype(np.float32)
    y = (x_bulk[:, 1] > x_bulk[:, 1].mean()).astype(np.float32)
    config = TransferConfig(hidden=(16,), latent_dim=4, pretrain_epochs=3, bulk_epochs=3,
                            adapt_epochs=1, batch_size=16, align_neighbors=3)
    model = DrugTransfer(x_bulk, y, x_sc, config=config).fit_bulk()
    weights = model._alignment_weights()
    assert weights.sum() == 25 * 3 and weights[:30].sum() >= 0.95 * weights.sum()
    model.adapt()  # the partial target trains
    assert np.isfinite(model.history["adapt"]).all()
    all_lines = DrugTransfer(x_bulk, y, x_sc, config=TransferConfig(align_neighbors=0))
    assert all_lines._alignment_weights() is None


def test_smoothing_averages_within_a_population():
    """Two populations 6 sd apart: smoothing over 10 cells shrinks the noise (by less than
    sqrt(10), since a cell's nearest cells share its noise) and never mixes the populations."""
    rng = np.random.default_rng(0)
    centres = np.repeat([[0.0] * 20, [6.0] * 20], 50, axis=0)
    x = (centres + rng.normal(size=centres.shape)).astype(np.float32)
    smooth = smooth_cells(x, n_neighbors=10)
    assert smooth.shape == x.shape
    cell_means = smooth.mean(axis=1)
    assert cell_means[:50].max() < 0.5 and cell_means[50:].min() > 5.5  # one stray would move 0.6
    assert 2.0 < (x - centres).std() / (smooth - centres).std() < np.sqrt(10)


# ---- real data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gdsc(shared_data):
    bulk = ad.read_h5ad(shared_data / "gdsc_bulk_expression_975lines.h5ad")
    cells = ad.read_h5ad(shared_data / "cellline_mixology_3lines_celseq2_dropseq.h5ad")
    response = pd.read_csv(shared_data / "gdsc_drug_response.csv.gz")
    return bulk, response, cells


def test_gene_alignment_count(gdsc):
    bulk, response, cells = gdsc
    data = prepare(bulk, response, cells, "Gefitinib", n_top_genes=None)
    assert data.n_shared_genes == len(set(bulk.var_names) & set(cells.var_names)) == 5277
    assert data.x_bulk.shape[1] == data.x_sc.shape[1] == 5277
    small = prepare(bulk, response, cells, "Gefitinib", n_top_genes=300, n_response_genes=0)
    assert small.n_shared_genes == 5277 and len(small.genes) == 300 and set(small.genes) <= set(data.genes)


def test_leakage_guard_excludes_the_evaluated_lines(gdsc):
    bulk, response, cells = gdsc
    keys = {"HCC827", "NCIH1975", "NCIH2228"}
    full = prepare(bulk, response, cells, "Gefitinib", n_top_genes=100)
    assert keys <= set(full.bulk_lines)
    guarded = prepare(bulk, response, cells, "Gefitinib", n_top_genes=100, exclude_lines=TEST_LINES)
    assert not keys & set(guarded.bulk_lines)
    assert guarded.excluded_lines == sorted(keys)
    assert len(guarded.bulk_lines) == len(full.bulk_lines) - 3
    assert guarded.cutoff == full.cutoff  # the cut-off is the drug's, not the training set's
    # Response-correlated genes come from training lines only: scrambling the excluded lines'
    # responses leaves them unchanged.
    sup = prepare(bulk, response, cells, "Crizotinib", n_top_genes=100, n_response_genes=50,
                  exclude_lines=TEST_LINES)
    assert 100 < len(sup.genes) <= 150 and sup.x_bulk.shape[1] == sup.x_sc.shape[1] == len(sup.genes)
    fake = response.copy()
    test_rows = fake["cell_line_key"].map(line_key).isin(["HCC827", "NCIH1975", "NCIH2228"])
    fake.loc[test_rows, "ln_ic50"] = -50.0
    assert prepare(bulk, fake, cells, "Crizotinib", n_top_genes=100, n_response_genes=50,
                   exclude_lines=TEST_LINES).genes == sup.genes
    rel = prepare(bulk, response, cells, "Crizotinib", n_top_genes=100, label="relative",
                  exclude_lines=TEST_LINES)
    assert not {"HCC827", "NCIH1975", "NCIH2228"} & set(rel.bulk_lines)
    assert 0.15 < rel.y_bulk.mean() < 0.35  # the lower quartile, over all screened lines
    with pytest.warns(UserWarning, match="not among the bulk lines"):
        prepare(bulk, response, cells, "Gefitinib", n_top_genes=100, exclude_lines=["NOSUCHLINE"])


def test_within_profile_ranks_hand_checked():
    ranks = within_profile_ranks(np.array([[3.0, 1.0, 2.0, 2.0], [0.0, 5.0, 5.0, 9.0]]))
    # ranks 4, 1, 2.5, 2.5 and 1, 2.5, 2.5, 4 of 4 genes → (rank − ½) / 4
    np.testing.assert_allclose(ranks, [[0.875, 0.125, 0.5, 0.5], [0.125, 0.5, 0.5, 0.875]], rtol=1e-6)
    np.testing.assert_allclose(within_profile_ranks(np.array([[1.0, 2.0, 3.0, 4.0]]) * 7 + 3),
                               [[0.125, 0.375, 0.625, 0.875]], rtol=1e-6)


@pytest.mark.parametrize("scaling", ["domain", "rank"])
def test_rank_scaling_scores_a_cell_on_its_own(gdsc, scaling):
    """Per-gene standardisation within the cells makes a cell's input depend on the other cells
    given; ranks on the bulk lines' scale do not (smoothing off, so no neighbours either)."""
    bulk, response, cells = gdsc
    h2228 = (cells.obs["cell_type"].astype(str) == "H2228").to_numpy()
    kwargs = {"n_top_genes": 300, "n_response_genes": 0, "smooth_neighbors": 0,
              "scaling": scaling, "exclude_lines": TEST_LINES}
    mixed = prepare(bulk, response, cells, "Crizotinib", **kwargs)
    alone = prepare(bulk, response, cells[h2228].copy(), "Crizotinib", **kwargs)
    assert mixed.genes == alone.genes
    np.testing.assert_array_equal(mixed.x_bulk, alone.x_bulk)
    gap = np.abs(mixed.x_sc[h2228] - alone.x_sc).max()
    if scaling == "rank":
        assert gap < 1e-5
        # other bulk profiles go through the training lines' transform
        keys = bulk.obs["cell_line_key"].map(line_key)
        first = bulk[keys == mixed.bulk_lines[0], mixed.genes].X
        np.testing.assert_allclose(mixed.standardize_bulk(np.asarray(first)), mixed.x_bulk[:1],
                                   atol=1e-5)
    else:
        assert gap > 0.5
    with pytest.raises(ValueError, match="scaling must be one of"):
        prepare(bulk, response, cells, "Crizotinib", n_top_genes=300, scaling="quantile")


def test_gefitinib_end_to_end_ranks_hcc827_above_h1975(gdsc, one_thread):
    bulk, response, cells = gdsc
    cells = cells.copy()
    config = TransferConfig(hidden=(64,), latent_dim=32, pretrain_epochs=5, bulk_epochs=15, adapt_epochs=5)
    torch.manual_seed(7)
    callers_next = torch.rand(2)
    torch.manual_seed(7)
    res = drug_response(bulk, response, cells, "Gefitinib", exclude_lines=TEST_LINES,
                        n_top_genes=500, config=config, seed=0)
    assert torch.equal(torch.rand(2), callers_next)  # the caller's random stream is untouched
    # 500 most variable genes united with the 200 most response-correlated (the default).
    assert res.n_shared_genes == 5277 and 500 < res.n_genes <= 700
    assert res.excluded_lines == ["HCC827", "NCIH1975", "NCIH2228"]
    prob = cells.obs["Gefitinib_sensitivity"]
    assert prob.between(0, 1).all()
    assert cells.obs["Gefitinib_sensitive"].dtype == bool
    per_line = prob.groupby(cells.obs["cell_type"].astype(str)).mean()
    print(per_line.to_dict())
    # HCC-827 (EGFR exon-19 deletion, ln IC50 −2.7) must score above NCI-H1975 (T790M, 2.6).
    assert per_line["HCC827"] > per_line["H1975"] + 0.1, per_line.to_dict()


def test_cli_refuses_to_overwrite_before_training(shared_data, tmp_path):
    out = tmp_path / "cells.h5ad"
    out.write_text("keep me")
    with pytest.raises(SystemExit, match="exists"):
        main(["drug-response", "--bulk", str(shared_data / "gdsc_bulk_expression_975lines.h5ad"),
              "--response", str(shared_data / "gdsc_drug_response.csv.gz"),
              "--cells", str(shared_data / "cellline_mixology_3lines_celseq2_dropseq.h5ad"),
              "--drug", "Gefitinib", "--out", str(out)])
    assert out.read_text() == "keep me"


def test_continuous_target_predicts_ln_ic50(gdsc, one_thread):
    bulk, response, cells = gdsc
    cells = cells.copy()
    config = TransferConfig(hidden=(64,), latent_dim=32, pretrain_epochs=5, bulk_epochs=15, adapt_epochs=5)
    res = drug_response(bulk, response, cells, "Gefitinib", target="continuous", exclude_lines=TEST_LINES,
                        n_top_genes=500, config=config, seed=0)
    assert res.obs_keys == ["Gefitinib_ln_ic50", "Gefitinib_sensitive"] and res.cutoff is None
    per_line = cells.obs.groupby(cells.obs["cell_type"].astype(str), observed=True)["Gefitinib_ln_ic50"].mean()
    print(per_line.to_dict())
    assert per_line["HCC827"] < per_line["H1975"], per_line.to_dict()


@pytest.mark.parametrize("given, expected", [
    ([], {}), (["--smooth-neighbors", "0"], {"smooth_neighbors": 0}),
    (["--scaling", "rank"], {"scaling": "rank"}),
])
def test_cli_passes_smoothing_and_scaling_only_when_given(shared_data, tmp_path, monkeypatch, given, expected):
    """Without the option the library's own default applies (the CLI does not repeat it)."""
    seen = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop before training")

    # The module, not the function that scssl.tl exports under the same name.
    monkeypatch.setattr(importlib.import_module("scssl.tl.drug_response"), "drug_response", fake)
    with pytest.raises(RuntimeError, match="stop before training"):
        main(["drug-response", "--bulk", str(shared_data / "gdsc_bulk_expression_975lines.h5ad"),
              "--response", str(shared_data / "gdsc_drug_response.csv.gz"),
              "--cells", str(shared_data / "cellline_mixology_3lines_celseq2_dropseq.h5ad"),
              "--out", str(tmp_path / "out.h5ad"), *given])
    assert {k: v for k, v in seen.items() if k in ("smooth_neighbors", "scaling")} == expected
    assert not (tmp_path / "out.h5ad").exists()
