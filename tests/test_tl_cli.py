"""`scssl annotate` and `scssl cluster`: thin shells that write .h5ad files and never overwrite."""

from __future__ import annotations

import anndata as ad
import pytest

from scssl.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, pbmc3k, pbmc3k_mae):
    folder = tmp_path_factory.mktemp("tl_cli")
    pbmc3k_mae.save(folder / "model")
    pbmc3k[:500].write_h5ad(folder / "ref.h5ad")
    pbmc3k[500:800].write_h5ad(folder / "query.h5ad")
    return folder


def test_annotate_cli(files, capsys):
    out = files / "annotated.h5ad"
    assert main(["annotate", str(files / "model"), str(files / "ref.h5ad"), str(files / "query.h5ad"),
                 "--out", str(out), "--mode", "knn"]) == 0
    written = ad.read_h5ad(out)
    assert {"scssl_prediction", "scssl_confidence"} <= set(written.obs)
    assert "macro-F1" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="overwrite"):
        main(["annotate", str(files / "model"), str(files / "ref.h5ad"), str(files / "query.h5ad"),
              "--out", str(out)])


def test_cluster_cli(files):
    out = files / "clustered.h5ad"
    assert main(["cluster", str(files / "query.h5ad"), "--model", str(files / "model"), "--out", str(out),
                 "--method", "kmeans", "--n-clusters", "4", "--labels-key", "cell_type"]) == 0
    written = ad.read_h5ad(out)
    assert written.obs["scssl_cluster"].nunique() == 4 and "X_scssl" in written.obsm
    with pytest.raises(SystemExit, match="overwrite"):
        main(["cluster", str(files / "query.h5ad"), "--out", str(files / "query.h5ad")])


def test_missing_keys_end_in_one_line_errors(files, capsys):
    """A mistyped .obs or .obsm key: exit status 2, one line naming the key and the choices, no file."""
    out = files / "never_written.h5ad"
    assert main(["cluster", str(files / "query.h5ad"), "--model", str(files / "model"), "--out", str(out),
                 "--n-clusters", "4", "--labels-key", "celltype"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: labels_key 'celltype' is not a column") and "'cell_type'" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["cluster", str(files / "query.h5ad"), "--use-rep", "X_missing", "--out", str(out)]) == 2
    assert "adata.obsm['X_missing'] not found" in capsys.readouterr().err
    assert not out.exists()
