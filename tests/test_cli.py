import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

import scssl
from scssl.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "scssl.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("pretrain", "embed", "methods", "demo"):
        assert command in out


def test_pretrain_then_embed(tmp_path, counts_adata, capsys):
    cells = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(cells)
    model_dir = tmp_path / "model"
    assert main(["pretrain", str(cells), "--out", str(model_dir), "--epochs", "2", "--batch-size", "64",
                 "--set", "hidden=[32]", "--set", "latent_dim=6"]) == 0
    assert (model_dir / "config.json").exists() and (model_dir / "checkpoints" / "last.json").exists()
    assert json.loads((model_dir / "config.json").read_text())["training"]["amp"] is None
    out = tmp_path / "embedded.h5ad"
    assert main(["embed", str(model_dir), str(cells), "--out", str(out)]) == 0
    embedded = ad.read_h5ad(out)
    expected = scssl.SSLModel.load(model_dir).embed(counts_adata)
    assert np.allclose(embedded.obsm["X_scssl"], expected, atol=1e-6)
    assert "X_scssl" not in ad.read_h5ad(cells).obsm  # the input file is untouched


def test_pretrain_amp_on_is_recorded_with_the_model(tmp_path, counts_adata):
    cells = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(cells)
    assert main(["pretrain", str(cells), "--out", str(tmp_path / "m"), "--epochs", "1", "--amp", "on",
                 "--set", "hidden=[16]"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["training"]["amp"] is True


def test_embed_refuses_to_overwrite_the_input(tmp_path, counts_adata):
    cells = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(cells)
    before = cells.read_bytes()
    model_dir = tmp_path / "model"
    main(["pretrain", str(cells), "--out", str(model_dir), "--epochs", "1", "--set", "hidden=[16]"])
    with pytest.raises(SystemExit, match="--overwrite"):
        main(["embed", str(model_dir), str(cells), "--out", str(cells)])
    assert cells.read_bytes() == before
    with pytest.raises(SystemExit, match="already holds a model"):
        main(["pretrain", str(cells), "--out", str(model_dir), "--epochs", "1"])


def test_bad_input_exits_with_a_message(tmp_path, counts_adata, capsys):
    cells = tmp_path / "cells.h5ad"
    counts_adata.write_h5ad(cells)
    assert main(["pretrain", str(cells), "--out", str(tmp_path / "m"), "--layer", "counts"]) == 2
    assert "layer 'counts' not found" in capsys.readouterr().err
    assert main(["pretrain", str(cells), "--out", str(tmp_path / "m"), "--set", "target_sum=None"]) == 2
    assert "target_sum must be a positive number" in capsys.readouterr().err  # JSON's null is None
    assert not (tmp_path / "m").exists()
