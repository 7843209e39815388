"""Bulk → single-cell drug-response transfer (scDEAL-style) on the real GDSC and CellBench files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scssl.cli import main
from scssl.losses import mmd
from scssl.tl.drug_response import (
    TransferConfig, binarize, drug_response, line_key, prepare, response_table,
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


def test_mmd_gradient_pulls_samples_together():
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
    small = prepare(bulk, response, cells, "Gefitinib", n_top_genes=300)
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
    with pytest.warns(UserWarning, match="not among the bulk lines"):
        prepare(bulk, response, cells, "Gefitinib", n_top_genes=100, exclude_lines=["NOSUCHLINE"])


def test_gefitinib_end_to_end_ranks_hcc827_above_h1975(gdsc):
    bulk, response, cells = gdsc
    cells = cells.copy()
    config = TransferConfig(hidden=(128,), latent_dim=32, pretrain_epochs=5, bulk_epochs=20, adapt_epochs=10)
    res = drug_response(bulk, response, cells, "Gefitinib", exclude_lines=TEST_LINES,
                        n_top_genes=1000, config=config, seed=0)
    assert res.n_shared_genes == 5277 and res.n_genes == 1000
    assert res.excluded_lines == ["HCC827", "NCIH1975", "NCIH2228"]
    prob = cells.obs["Gefitinib_sensitivity"]
    assert prob.between(0, 1).all()
    assert cells.obs["Gefitinib_sensitive"].dtype == bool
    per_line = prob.groupby(cells.obs["cell_type"].astype(str)).mean()
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
