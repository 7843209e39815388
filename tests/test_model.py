import json

import numpy as np
import pytest
import torch
from conftest import median_library

import scssl
from scssl.checkpoint import load_tensors, save_tensors
from scssl.data import DataError
from scssl.methods.base import Batch
from scssl.train import Trainer

FAST = dict(max_epochs=3, batch_size=64, progress=False)


@pytest.mark.parametrize("method, options", [("mae", {"loss": "mse"}), ("mae", {"loss": "nb"}),
                                             ("mae", {"loss": "zinb"}), ("simclr", {})])
def test_fit_embed_save_load_round_trip(tmp_path, counts_adata, method, options):
    model = scssl.SSLModel(counts_adata, method=method, hidden=(64,), latent_dim=8, **options)
    model.fit(**FAST)
    assert len(model.history) == 3 and all(np.isfinite(h["train_loss"]) for h in model.history)
    emb = model.embed(counts_adata)
    assert emb.shape == (counts_adata.n_obs, 8) and np.isfinite(emb).all()
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["method"] == method and config["genes"] == list(counts_adata.var_names)
    loaded = scssl.SSLModel.load(tmp_path / "m")
    assert np.array_equal(loaded.embed(counts_adata), emb)


def test_same_seed_same_embedding_and_seed_matters(counts_adata):
    def run(seed):
        return scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(seed=seed, **FAST).embed()

    assert np.array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


def test_seeded_training_and_annotation_leave_the_callers_random_stream_alone(counts_adata):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(seed=5, **FAST)
    scssl.tl.annotate(model, counts_adata, labels_key="group", mode="finetune", epochs=2, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_training_learns_groups(counts_adata):
    from scssl.metrics import knn_macro_f1

    model = scssl.SSLModel(counts_adata, hidden=(64,), latent_dim=8)
    untrained = knn_macro_f1(model.embed(), counts_adata.obs["group"])
    model.fit(max_epochs=30, batch_size=64, progress=False)
    trained = knn_macro_f1(model.embed(), counts_adata.obs["group"])
    assert trained > 0.9 and trained >= untrained


@pytest.mark.parametrize("method", ["mae", "simclr"])
def test_amp_trains_in_bf16_on_the_cpu_when_asked(counts_adata, method):
    """``amp=None`` keeps the CPU in float32; ``amp=True`` autocasts there too (as on CUDA):
    the losses move off float32's, the run still learns the groups."""
    from scssl.metrics import knn_macro_f1

    def fit(amp):
        model = scssl.SSLModel(counts_adata, method=method, hidden=(64,), latent_dim=8)
        model.fit(max_epochs=20, batch_size=64, progress=False, device="cpu", amp=amp)
        return model, [h["train_loss"] for h in model.history]

    (_, default), (_, float32), (model, bf16) = fit(None), fit(False), fit(True)
    assert default == float32
    assert bf16 != float32 and np.allclose(bf16[:3], float32[:3], rtol=0.02)
    emb = model.embed()
    assert emb.dtype == np.float32 and knn_macro_f1(emb, counts_adata.obs["group"]) > 0.9


def test_mae_loss_only_on_masked_genes(counts_adata):
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4, mask_ratio=0.25)
    module = model.module.eval()
    counts = torch.as_tensor(counts_adata.X[:16].toarray())
    batch = module.prepare(counts, generator=torch.Generator().manual_seed(0))
    mask = module.mask(batch)
    assert torch.all(mask.sum(1) == 25)  # exactly the asked ratio in every cell
    target = batch.x.clone().requires_grad_(True)
    hidden = module.decoder(module.encoder(batch.x.masked_fill(mask, 0.0)))
    loss = module.reconstruction_loss(Batch(counts, target), hidden, mask)
    (grad,) = torch.autograd.grad(loss, target)
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask] != 0)


def test_embed_aligns_genes_by_name(counts_adata):
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(**FAST)
    shuffled = counts_adata[:, np.random.default_rng(0).permutation(counts_adata.n_vars)].copy()
    assert np.allclose(model.embed(shuffled), model.embed(counts_adata), atol=1e-5)
    partial = counts_adata[:, 10:].copy()
    with pytest.warns(UserWarning, match="10 of 100 model genes are missing"):
        assert model.embed(partial).shape == (counts_adata.n_obs, 4)
    empty = model.embed(counts_adata[:0])  # no cells: an empty embedding, not a torch error
    assert empty.shape == (0, 4) and empty.dtype == np.float32


def test_resume_continues_an_interrupted_run(tmp_path, counts_adata, monkeypatch):
    settings = dict(max_epochs=6, batch_size=64, progress=False, patience=0)
    full = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(**settings)

    save = Trainer._save_checkpoint

    def save_then_crash(self, epoch, *args):
        save(self, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    resumed = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4)
    resumed.fit(checkpoint_dir=tmp_path, resume=True, **settings)
    assert [h["epoch"] for h in resumed.history] == list(range(6))
    assert np.allclose([h["train_loss"] for h in resumed.history], [h["train_loss"] for h in full.history], rtol=1e-4)
    assert np.allclose(resumed.embed(), full.embed(), atol=1e-5)


def test_resume_without_checkpoint_or_with_other_settings_fails(tmp_path, counts_adata):
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        model.fit(checkpoint_dir=tmp_path, resume=True, **FAST)
    model.fit(checkpoint_dir=tmp_path, **FAST)
    other = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=8)
    with pytest.raises(ValueError, match="different method or hyper-parameters"):
        other.fit(checkpoint_dir=tmp_path, resume=True, **FAST)


def test_too_few_cells_to_train_says_how_many_it_has(counts_adata):
    model = scssl.SSLModel(counts_adata[:0].copy(), hidden=(32,), latent_dim=4)
    with pytest.raises(ValueError, match="the data holds 0 cells, 0 of them for training"):
        model.fit(**FAST)


def test_tampered_or_truncated_weights_raise(tmp_path, counts_adata):
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(**FAST)
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="altered or truncated"):
        scssl.SSLModel.load(tmp_path / "m")
    weights.write_bytes(bytes(data[: len(data) // 2]))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["weights_sha256"] = None  # even without a checksum, a truncated file is caught
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        scssl.SSLModel.load(tmp_path / "m")


def test_save_never_overwrites_silently(tmp_path, counts_adata):
    model = scssl.SSLModel(counts_adata, hidden=(32,), latent_dim=4).fit(**FAST)
    model.save(tmp_path / "m")
    before = (tmp_path / "m" / "weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    assert (tmp_path / "m" / "weights.safetensors").read_bytes() == before


def test_bad_inputs_get_clear_errors(counts_adata):
    with pytest.raises(ValueError, match="unknown method 'nope'; available: .*mae"):
        scssl.SSLModel(counts_adata, method="nope")
    with pytest.raises(ValueError, match="unknown hyper-parameter.*'mask_rate'"):
        scssl.SSLModel(counts_adata, mask_rate=0.5)
    with pytest.raises(ValueError, match="loss must be one of"):
        scssl.SSLModel(counts_adata, loss="poisson")
    lognorm = counts_adata.copy()
    lognorm.X = np.log1p(lognorm.X.toarray() * 1.5)
    with pytest.raises(DataError, match="nb.*|count likelihood"):
        scssl.SSLModel(lognorm, loss="nb")
    model = scssl.SSLModel(lognorm, loss="mse")  # log-normalised input works with MSE
    assert model.spec.kind == "lognorm"
    with pytest.raises(ValueError, match="batch_size must be at least 2 cells, got 1"):
        model.fit(max_epochs=1, batch_size=1)  # one-cell steps: batch norm would fail mid-epoch
    with pytest.raises(ValueError, match="max_epochs must be at least 1, got 0"):
        model.fit(max_epochs=0)


def test_lognorm_input_trains_with_mse(counts_adata):
    lognorm = counts_adata.copy()
    lognorm.X = np.log1p(lognorm.X.toarray())
    emb = scssl.SSLModel(lognorm, hidden=(32,), latent_dim=4).fit(**FAST).embed()
    assert np.isfinite(emb).all()


def test_training_uses_the_thread_count_asked_for(counts_adata, monkeypatch):
    """scanpy's numba kernels reset torch's OpenMP pool to every CPU (OMP_NUM_THREADS ignored);
    training must run on num_threads, else OMP_NUM_THREADS, and restore the count it found."""
    seen: list[int] = []
    lr_factor = Trainer._lr_factor

    def spy(self, *args):
        seen.append(torch.get_num_threads())
        return lr_factor(self, *args)

    monkeypatch.setattr(Trainer, "_lr_factor", spy)
    model = scssl.SSLModel(counts_adata, hidden=(16,), latent_dim=4)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # what scanpy leaves behind on a 2-CPU machine
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        model.fit(max_epochs=1, progress=False)
        assert set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        model.fit(max_epochs=1, progress=False, num_threads=3)
        assert set(seen) == {3} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.delenv("OMP_NUM_THREADS")
        model.fit(max_epochs=1, progress=False)
        assert set(seen) == {2}
        with pytest.raises(ValueError, match="num_threads"):
            model.fit(max_epochs=1, progress=False, num_threads=0)
    finally:
        torch.set_num_threads(previous)


def test_cells_are_normalised_to_the_median_library_of_the_training_cells(tmp_path, counts_adata):
    adata = counts_adata.copy()
    adata.X = adata.X * 7  # a depth no fixed target would match
    model = scssl.SSLModel(adata, "mae", hidden=(16,), latent_dim=4, target_sum=None)
    model.fit(max_epochs=1, batch_size=64, progress=False, validation_fraction=0.0)
    median = median_library(adata)
    assert model.module.transform.target_sum.item() == pytest.approx(median, rel=0.003)
    assert model.config.target_sum is None  # "from the data", recorded in the weights
    model.save(tmp_path / "m")
    assert scssl.SSLModel.load(tmp_path / "m").module.transform.target_sum.item() == pytest.approx(median, rel=0.003)

    fixed = scssl.SSLModel(adata, "mae", hidden=(16,), latent_dim=4)  # the default
    fixed.fit(max_epochs=1, batch_size=64, progress=False)
    assert fixed.module.transform.target_sum.item() == 1e4
    with pytest.raises(ValueError, match="target_sum must be a positive number"):
        scssl.SSLModel(adata, "mae", target_sum="None")  # what `--set target_sum=None` would pass


def test_a_model_saved_before_the_target_sum_buffer_loads_with_its_1e4_target(tmp_path, counts_adata):
    model = scssl.SSLModel(counts_adata, "mae", hidden=(16,), latent_dim=4).fit(**FAST)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    state = load_tensors(tmp_path / "m" / "weights.safetensors", config["weights_sha256"])
    del state["transform.target_sum"]
    del config["hyperparameters"]["target_sum"]
    config["weights_sha256"] = save_tensors(tmp_path / "m" / "weights.safetensors", state)
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = scssl.SSLModel.load(tmp_path / "m")
    assert loaded.module.transform.target_sum.item() == 1e4
    assert np.allclose(loaded.embed(counts_adata), model.embed(counts_adata), atol=1e-6)
