import os
import subprocess
import sys

import numpy as np

import scssl


def test_umap_and_history_write_pngs(tmp_path, counts_adata):
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(max_epochs=3, batch_size=64, progress=False)
    counts_adata.obsm["X_scssl"] = model.embed(counts_adata)
    scssl.pl.umap(counts_adata, color=["group", "batch"], path=tmp_path / "umap.png")
    assert counts_adata.obsm["X_umap_X_scssl"].shape == (counts_adata.n_obs, 2)
    assert np.isfinite(counts_adata.obsm["X_umap_X_scssl"]).all()
    scssl.pl.history(model, path=tmp_path / "loss.png")
    for name in ("umap.png", "loss.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_scssl_leaves_the_users_matplotlib_backend_alone(tmp_path):
    # A notebook sets its inline backend through MPLBACKEND; switching it to Agg on import
    # would silently stop the user's own figures from showing.
    script = (
        "import matplotlib, scssl, scssl.bench.report\n"
        "print(matplotlib.rcParams['backend'])\n"
    )
    env = {**os.environ, "MPLBACKEND": "pdf"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "pdf"
