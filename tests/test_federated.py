"""Federated pre-training (scssl.federated): the protocol's pieces on files, then two Flower
simulations (about 60 s together on 2 cores, most of it ray starting its workers)."""

from __future__ import annotations

import builtins
import itertools
import json
import math

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("flwr", reason="scssl.federated needs Flower: pip install 'scssl[federated]'")

from conftest import make_counts, median_library

import scssl
from scssl import federated
from scssl.data import DataError, MatrixSpec
from scssl.federated import NodeData
from scssl.metrics import knn_macro_f1

SMALL = {"hidden": (16,), "latent_dim": 4}


def write(adata: ad.AnnData, path) -> NodeData:
    adata.write_h5ad(path)
    return NodeData(str(path), path.stem)


def lognormalised(adata: ad.AnnData) -> ad.AnnData:
    x = adata.X.toarray()
    out = adata.copy()
    out.X = sp.csr_matrix(np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32))
    return out


def test_pooled_moments_of_two_unequal_parts_give_the_statistics_of_all_cells(tmp_path):
    adata = make_counts(n_cells=200, n_genes=80)
    genes = list(adata.var_names)
    order = np.random.default_rng(0).permutation(adata.n_obs)
    # Unequal parts (an unweighted mean of the parts' means would be off), the second one with
    # its genes in another order and an extra gene the model does not know.
    a = adata[np.sort(order[:60])].copy()
    b = adata[np.sort(order[60:]), genes[::-1]].copy()
    extra = ad.AnnData(sp.csr_matrix(np.ones((b.n_obs, 1), np.float32)), obs=b.obs,
                       var={"index": ["not_in_a"]})
    b = ad.concat([b, extra], axis=1, merge="first")
    model = scssl.SSLModel.from_vocabulary(genes, MatrixSpec(kind="counts"), "mae", target_sum=None, **SMALL)
    nodes = [write(x, tmp_path / f"{name}.h5ad") for name, x in (("a", a), ("b", b))]
    histograms = [federated.node_library_histogram(node, model) for node in nodes]
    model.module.transform.set_target(sum(histograms))
    parts = [federated.node_moments(node, model) for node in nodes]
    n, total, sq_total = federated.pool_moments(parts)
    assert n == adata.n_obs and total.dtype == torch.float64
    model.module.transform.set_stats(n, total, sq_total)

    reference = scssl.SSLModel(adata, "mae", target_sum=None, **SMALL).module.transform
    reference.fit_stats(torch.as_tensor(adata.X[i : i + 64].toarray()) for i in range(0, adata.n_obs, 64))
    assert reference.std.min() < 0.99  # real statistics, not the defaults
    assert reference.target_sum.item() == pytest.approx(median_library(adata), rel=0.003)
    assert model.module.transform.target_sum.item() == reference.target_sum.item()
    torch.testing.assert_close(model.module.transform.mean, reference.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.module.transform.std, reference.std, atol=1e-6, rtol=0)


def test_vocabulary_is_the_shared_genes_in_the_first_nodes_order(tmp_path):
    adata = make_counts(n_cells=60, n_genes=100)
    genes = list(adata.var_names)
    rng = np.random.default_rng(1)
    first = [genes[i] for i in rng.permutation(100)[:90]]  # its own order, 10 genes fewer
    second = [genes[i] for i in rng.permutation(100)[:85]]
    files = [write(adata[:, g].copy(), tmp_path / f"site{i}.h5ad") for i, g in enumerate((first, second))]
    described = [federated.describe_node(f, node_id=10 - i, partition=i) for i, f in enumerate(files)]
    assert described[0].kind == "counts" and described[0].n_cells == 60
    # Flower returns replies in any order; partition-id decides which node is first.
    nodes = federated.order_nodes(reversed(described))
    assert [n.name for n in nodes] == ["site0", "site1"]
    vocabulary, kind = federated.shared_vocabulary(nodes)
    assert kind == "counts"
    assert vocabulary == [g for g in first if g in set(second)]
    assert len(vocabulary) < 90 and vocabulary != sorted(vocabulary)


def test_vocabulary_errors_name_the_nodes(tmp_path):
    adata = make_counts(n_cells=60, n_genes=100)
    genes = list(adata.var_names)
    counts = federated.describe_node(write(adata, tmp_path / "counts_site.h5ad"))
    lognorm = federated.describe_node(write(lognormalised(adata), tmp_path / "lognorm_site.h5ad"), node_id=1)
    assert lognorm.kind == "lognorm"
    with pytest.raises(DataError, match="counts_site.*counts.*lognorm_site.*lognorm"):
        federated.shared_vocabulary([counts, lognorm])

    few = federated.describe_node(write(adata[:, genes[:30]].copy(), tmp_path / "panel_site.h5ad"), node_id=2)
    with pytest.raises(DataError, match=r"only 30 genes.*counts_site: 100 genes, panel_site: 30 genes"):
        federated.shared_vocabulary([counts, few])
    assert len(federated.shared_vocabulary([counts, few], min_genes=30)[0]) == 30


def test_methods_that_need_the_cells_before_training_are_refused():
    genes = [f"gene{i}" for i in range(40)]
    spec = MatrixSpec(kind="counts")

    def model(method="mae", **options):
        return scssl.SSLModel.from_vocabulary(genes, spec, method, **SMALL, **options)

    assert not model("simclr").module.setup_needs_data  # the base class
    for masking in ("gene_programme", "isolated"):
        data_driven = model(masking=masking, n_programmes=4)
        assert data_driven.module.setup_needs_data
        with pytest.raises(ValueError, match=r"gene_sets=.*masking='random'"):
            federated.check_federable(data_driven)
    sets = {"a": genes[:10], "b": genes[10:20], "c": genes[20:30]}
    for ok in (model(), model(masking="gene_programme", gene_sets=sets)):
        assert not ok.module.setup_needs_data
        federated.check_federable(ok)


def test_settings_from_a_flower_run_config():
    settings = federated.FederatedSettings.from_run_config({
        "method": "mae", "rounds": 5, "local-epochs": 2, "batch-size": 32, "lr": 0.01, "seed": 3,
        "layer": "", "batch-key": "sample", "min-nodes": 3, "hyperparameters": '{"loss": "mse", "hidden": [64]}',
    })
    assert (settings.rounds, settings.local_epochs, settings.batch_size, settings.seed) == (5, 2, 32, 3)
    assert settings.layer is None and settings.batch_key == "sample" and settings.min_nodes == 3
    assert settings.hyperparameters == {"loss": "mse", "hidden": [64]}
    lrs = [settings.round_lr(r) for r in range(1, 6)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.001)
    assert all(x > y for x, y in itertools.pairwise(lrs))
    with pytest.raises(ValueError, match="JSON object"):
        federated.FederatedSettings.from_run_config({"hyperparameters": "loss=mse"})
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        federated.FederatedSettings.from_run_config({"hyperparameters": '{"mask_ration": 0.3}'})
    with pytest.raises(ValueError, match="batch_size must be at least 2, got 1"):
        federated.FederatedSettings.from_run_config({"batch-size": 1})


@pytest.fixture(scope="module")
def pbmc68k():
    sc = pytest.importorskip("scanpy")
    return sc.datasets.pbmc68k_reduced().raw.to_adata()  # log-normalised values


def test_simulated_federation_trains_a_model_that_saves_loads_and_separates_cell_types(tmp_path, pbmc68k):
    adata = pbmc68k
    genes = list(adata.var_names)
    half = np.random.default_rng(0).permutation(adata.n_obs) < adata.n_obs // 2
    # The second institution measured fewer genes and stores them in another order.
    site_b = adata[~half, genes[::-1][20:]].copy()
    site_a = tmp_path / "site_a.h5ad"
    adata[half].copy().write_h5ad(site_a)
    options = {"loss": "mse", "hidden": (128,), "latent_dim": 16}
    rounds = 3
    builtin_print = builtins.print
    model = federated.simulate([site_a, site_b], "mae", rounds=rounds, local_epochs=2, batch_size=64,
                               seed=0, **options)
    # Ray patches print for good; numba (pynndescent, hence sc.pp.neighbors) then fails to compile.
    assert builtins.print is builtin_print

    assert model.genes == genes[:-20]  # shared genes, in the first site's order
    assert [h["round"] for h in model.history] == list(range(1, rounds + 1))
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["eval_loss"]) for h in model.history)
    assert all(h["nodes"] == 2 and h["cells"] == adata.n_obs for h in model.history)
    assert model.history[-1]["eval_loss"] < model.history[0]["eval_loss"]
    # The input statistics are those of all cells together, though no process saw them all.
    shared = adata[:, model.genes].copy()
    values = shared.X.toarray() if sp.issparse(shared.X) else np.asarray(shared.X)
    pooled = scssl.SSLModel(shared, "mae", **options).module.transform
    pooled.fit_stats(torch.as_tensor(values[i : i + 128]) for i in range(0, adata.n_obs, 128))
    torch.testing.assert_close(model.module.transform.mean, pooled.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.module.transform.std, pooled.std, atol=1e-5, rtol=0)

    embedding = model.embed(adata)
    assert embedding.shape == (adata.n_obs, 16) and np.isfinite(embedding).all()
    model.save(tmp_path / "model")
    loaded = scssl.SSLModel.load(tmp_path / "model")
    assert np.array_equal(loaded.embed(adata), embedding)
    assert loaded.history == model.history
    training = json.loads((tmp_path / "model" / "config.json").read_text())["training"]["federated"]
    assert (training["rounds"], training["local_epochs"], training["batch_size"]) == (rounds, 2, 64)
    scssl.pl.history(loaded, path=tmp_path / "rounds.png")

    # The same network before any round: same initial weights, same input statistics.
    untrained = scssl.SSLModel.from_vocabulary(model.genes, model.spec, "mae", seed=0, **options)
    untrained.module.transform.load_state_dict(model.module.transform.state_dict())
    labels = adata.obs["bulk_labels"]
    trained_f1, untrained_f1 = knn_macro_f1(embedding, labels), knn_macro_f1(untrained.embed(adata), labels)
    assert trained_f1 > untrained_f1 + 0.15, (trained_f1, untrained_f1)


def test_a_federation_on_counts_normalises_to_the_median_library_of_all_cells(tmp_path):
    adata = make_counts(n_cells=240, n_genes=60)
    deep = np.arange(adata.n_obs) < 100  # the two sites differ in depth, so their medians differ
    adata.X = sp.csr_matrix(adata.X.toarray() * np.where(deep, 3, 1)[:, None])
    sites = [tmp_path / "deep.h5ad", tmp_path / "shallow.h5ad"]
    adata[deep].copy().write_h5ad(sites[0])
    adata[~deep].copy().write_h5ad(sites[1])
    options = {"target_sum": None, **SMALL}
    model = federated.simulate(sites, "mae", rounds=1, local_epochs=1, batch_size=64, seed=0, **options)

    pooled = scssl.SSLModel(adata, "mae", **options).module.transform
    pooled.fit_stats(torch.as_tensor(adata.X[i : i + 64].toarray()) for i in range(0, adata.n_obs, 64))
    assert model.module.transform.target_sum.item() == pooled.target_sum.item()
    assert pooled.target_sum.item() == pytest.approx(median_library(adata), rel=0.003)
    assert model.config.target_sum == pytest.approx(pooled.target_sum.item())  # what nodes rebuilt with
    torch.testing.assert_close(model.module.transform.mean, pooled.mean, atol=1e-5, rtol=0)
    model.save(tmp_path / "model")
    assert scssl.SSLModel.load(tmp_path / "model").module.transform.target_sum.item() == pooled.target_sum.item()


def test_a_buffer_of_samples_is_pooled_by_rows_not_averaged():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 3)), rng.normal(size=(500, 3))
    pooled = federated.pool_rows([a, b], [300, 100], np.random.default_rng(1))
    from_a, from_b = (pooled == a).all(1), (pooled == b).all(1)
    assert (from_a ^ from_b).all()  # every row is one node's row, in its place
    assert 0.70 < from_a.mean() < 0.80  # nodes drawn in proportion to their cells (0.75)

    # End to end: MoCo's queue of unit-length keys stays a queue of unit-length keys.
    sites = [make_counts(n_cells=120, n_genes=60, seed=s) for s in (0, 1)]
    model = federated.simulate(sites, "moco", rounds=2, local_epochs=1, batch_size=32, seed=0,
                               queue_size=64, **SMALL)
    assert model.module.sample_buffers == ("queue",)
    norms = model.module.queue.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_a_nodes_error_reaches_the_caller_with_the_nodes_name():
    adata = make_counts(n_cells=80, n_genes=60)
    no_batches = adata.copy()
    del no_batches.obs["batch"]
    with pytest.raises(DataError, match=r"'describe' failed on dataset 1: DataError: batch_key 'batch'"):
        federated.simulate([adata, no_batches], rounds=1, batch_key="batch", **SMALL)


def test_cli_refuses_an_existing_model_and_a_missing_file_before_any_training(tmp_path):
    from scssl.cli import main

    node = write(make_counts(n_cells=60, n_genes=60), tmp_path / "a.h5ad")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a model"):
        main(["federated", node.path, node.path, "--out", str(tmp_path / "model")])
    with pytest.raises(SystemExit, match="missing.h5ad not found"):
        main(["federated", node.path, str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "new")])
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
