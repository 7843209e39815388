"""Every registered method: smoke fit, save/load round trip, and method-specific mechanics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scssl
from scssl.methods import METHODS, get_method
from scssl.methods._views import TwoViewMethod, cosine_tau, ema_update
from scssl.methods.base import Batch
from scssl.methods.byol import BYOL, BYOLConfig
from scssl.methods.moco import MoCo, MoCoConfig
from scssl.methods.vicreg import VICReg, VICRegConfig


pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = {"hidden": (64,), "latent_dim": 8}
FAMILY = ["mae", "simclr", "byol", "barlow_twins", "vicreg", "moco", "hybrid"]


def test_family_is_registered():
    assert set(FAMILY) <= set(METHODS)
    for name in FAMILY:
        assert get_method(name).name == name and get_method(name).__doc__


@pytest.mark.parametrize("name", FAMILY)
def test_smoke_fit_embed_save_load(name, counts_adata, tmp_path):
    model = scssl.SSLModel(counts_adata, method=name, **SMALL)
    model.fit(max_epochs=2, batch_size=64, progress=False)
    embedding = model.embed()
    assert embedding.shape == (200, 8) and np.isfinite(embedding).all()
    assert embedding.std(0).mean() > 1e-3  # not collapsed to a point
    model.save(tmp_path / name)
    loaded = scssl.SSLModel.load(tmp_path / name)
    np.testing.assert_array_equal(loaded.embed(counts_adata), embedding)


@pytest.mark.parametrize("name,options", [
    ("mae", {"encoder": "transformer", "encoder_options": {"top_k": 16, "d_model": 16}}),
    ("simclr", {"encoder": "transformer", "encoder_options": {"top_k": 16, "d_model": 16}}),
    ("vicreg", {"batch_aware": True, "augmentations": {"binomial_thinning": {"rate": 0.3}, "gene_swap": {},
                                                       "crossover": {}, "gene_mask": {"ratio": 0.2}}}),
    ("mae", {"masking": "isolated", "mask_prediction_weight": 0.5}),
    ("mae", {"variational_weight": 1.0}),  # the embedding is the posterior mean: reproducible
])
def test_variants_fit_and_round_trip(name, options, counts_adata, tmp_path):
    model = scssl.SSLModel(counts_adata, method=name, batch_key="batch", **SMALL, **options)
    model.fit(max_epochs=1, batch_size=64, progress=False)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(scssl.SSLModel.load(tmp_path / "m").embed(counts_adata), model.embed())


def test_batch_aware_needs_batches(counts_adata):
    with pytest.raises(ValueError, match="batch_key"):
        scssl.SSLModel(counts_adata, method="moco", batch_aware=True)


def test_count_augmentations_refuse_lognorm():
    with pytest.raises(ValueError, match="raw counts"):
        VICReg(20, VICRegConfig(augmentations={"binomial_thinning": {}}), input_kind="lognorm")


def _batch(n_cells=32, n_genes=20, seed=0, batch_index=None) -> Batch:
    """Poisson counts around a distinct log-normal profile per cell (instances are discriminable)."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.poisson(3.0 * torch.randn(n_cells, n_genes, generator=generator).exp(), generator=generator)
    x = torch.log1p(counts)
    return Batch(counts, x, batch_index, torch.Generator().manual_seed(seed + 1))


def test_two_view_batch_aware_second_view_is_mnn_partner():
    config = VICRegConfig(augmentations={}, batch_aware=True, mnn_k=3, **SMALL)
    method = VICReg(20, config, n_batches=2)
    batch = _batch(batch_index=torch.arange(32) % 2)
    partners = method.partners(batch)
    assert (partners != torch.arange(32)).any()
    moved = partners != torch.arange(32)
    assert (batch.batch_index[partners[moved]] != batch.batch_index[moved]).all()
    view1, view2 = method.views(batch)
    assert torch.equal(view1, batch.x) and torch.equal(view2, batch.x[partners])


def test_counts_stage_runs_before_transform():
    config = VICRegConfig(augmentations={"binomial_thinning": {"rate": 0.5}}, **SMALL)
    method = VICReg(20, config)
    batch = _batch()
    batch.x = method.transform(batch.counts)
    view1, view2 = method.views(batch)
    assert not torch.equal(view1, view2) and not torch.equal(view1, batch.x)


def test_cosine_tau_schedule():
    assert cosine_tau(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_tau(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_tau(0.99, 1.0) == pytest.approx(1.0)


def test_byol_ema_moves_target_by_the_right_amount():
    method = BYOL(20, BYOLConfig(**SMALL))
    with torch.no_grad():
        for p in list(method.encoder.parameters()) + list(method.projector.parameters()):
            p.add_(1.0)  # online ≠ target
    online = [p.clone() for m in (method.encoder, method.projector) for p in m.parameters()]
    before = [p.clone() for p in method.target.parameters()]
    method.after_optimizer_step(progress=0.5)  # tau = 0.995
    for t, b, o in zip(method.target.parameters(), before, online, strict=True):
        assert torch.allclose(t, 0.995 * b + 0.005 * o, atol=1e-6)
    assert not any(p.requires_grad for p in method.target.parameters())


def test_byol_target_gets_no_gradient():
    method = BYOL(20, BYOLConfig(**SMALL))
    method.loss(_batch()).total.backward()
    assert all(p.grad is None for p in method.target.parameters())
    assert any(p.grad is not None for p in method.predictor.parameters())


def test_ema_update_lerps_and_copies_buffers():
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(2.0)
        target.weight.fill_(1.0)
        online.running_mean.fill_(5.0)
    ema_update([target], [online], tau=0.75)
    assert torch.allclose(target.weight, torch.full((3,), 1.25))
    assert torch.equal(target.running_mean, online.running_mean)


def test_moco_queue_is_fifo_and_wraps():
    method = MoCo(20, MoCoConfig(queue_size=5, projection_dim=2, **SMALL))
    keys = torch.arange(1.0, 15.0).view(7, 2)
    method.enqueue(keys[:3])
    assert method.queue_ptr.item() == 3 and torch.equal(method.queue[:3], keys[:3])
    method.enqueue(keys[3:6])  # rows 3, 4, then wraps to 0
    assert method.queue_ptr.item() == 1
    assert torch.equal(method.queue, torch.stack([keys[5], keys[1], keys[2], keys[3], keys[4]]))
    method.enqueue(torch.arange(100.0, 114.0).view(7, 2))  # more than the queue: the newest 5 stay
    assert method.queue_ptr.item() == 3
    assert set(method.queue[:, 0].tolist()) == {104.0, 106.0, 108.0, 110.0, 112.0}
    assert {"queue", "queue_ptr"} <= set(method.state_dict())


def test_moco_enqueues_after_step_and_momentum_updates():
    method = MoCo(20, MoCoConfig(queue_size=128, momentum=0.9, **SMALL)).train()
    queue_before = method.queue.clone()
    out = method.loss(_batch())
    assert torch.equal(method.queue, queue_before)  # unchanged inside the step's graph
    out.total.backward()
    with torch.no_grad():
        next(method.encoder.parameters()).add_(1.0)
    key_before = next(method.key_network.parameters()).clone()
    online = next(method.encoder.parameters()).clone()
    method.after_optimizer_step(0.1)
    assert method.queue_ptr.item() == 64  # two views × 32 cells
    assert torch.allclose(method.queue[:64].norm(dim=1), torch.ones(64))
    assert torch.allclose(next(method.key_network.parameters()), 0.9 * key_before + 0.1 * online, atol=1e-6)


@pytest.mark.parametrize("name", ["byol", "barlow_twins", "vicreg", "moco", "hybrid"])
def test_method_loss_falls_over_20_steps(name):
    torch.manual_seed(0)
    # MoCo's loss first rises while real keys replace the random initial queue: a queue that
    # one step fills, and comparing from the second step on, measure learning instead.
    options = {"queue_size": 128} if name == "moco" else {}
    start = 1 if name == "moco" else 0
    method = get_method(name)(20, get_method(name).Config(**SMALL, **options)).train()
    optimiser = torch.optim.AdamW(method.parameters(), lr=1e-3)
    losses = []
    for step in range(20):
        out = method.loss(_batch(64, seed=step))
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        method.after_optimizer_step(step / 20)
        losses.append(out.total.item())
    assert np.mean(losses[-3:]) < np.mean(losses[start:start + 3]), losses


def test_two_view_methods_share_the_base():
    for name in ["simclr", "byol", "barlow_twins", "vicreg", "moco", "hybrid"]:
        assert issubclass(get_method(name), TwoViewMethod)


def test_mae_batch_decoder_sees_the_batch_and_averages_unknown_batches(counts_adata):
    model = scssl.SSLModel(counts_adata, method="mae", batch_key="batch", **SMALL)
    module = model.module
    n_batches = len(model.batch_categories)
    assert module.decoder[0].in_features == SMALL["latent_dim"] + n_batches
    z = torch.randn(5, SMALL["latent_dim"])
    per_batch = [module.decode(z, torch.full((5,), b)) for b in range(n_batches)]
    assert not torch.allclose(per_batch[0], per_batch[1])
    # Unknown batch (-1, or none given) decodes with the average of the batches' one-hots.
    expected = module.decoder(torch.cat([z, torch.full((5, n_batches), 1.0 / n_batches)], 1))
    torch.testing.assert_close(module.decode(z, torch.full((5,), -1)), expected)
    torch.testing.assert_close(module.decode(z, None), expected)
    plain = scssl.SSLModel(counts_adata, method="mae", batch_key="batch", batch_decoder=False, **SMALL)
    assert plain.module.decoder[0].in_features == SMALL["latent_dim"]


def test_mae_batch_mmd_enters_the_loss(counts_adata):
    model = scssl.SSLModel(counts_adata, method="mae", batch_key="batch", batch_mmd_weight=2.0, **SMALL)
    module = model.module
    counts = torch.as_tensor(counts_adata.X[:64].toarray(), dtype=torch.float32)
    codes = torch.arange(64) % len(model.batch_categories)
    out = module.loss(module.prepare(counts, codes, torch.Generator().manual_seed(0)))
    assert set(out.parts) == {"reconstruction", "batch_mmd"}
    torch.testing.assert_close(out.total, out.parts["reconstruction"] + 2.0 * out.parts["batch_mmd"])
    with pytest.raises(ValueError, match="batch_mmd_weight"):
        scssl.SSLModel(counts_adata, method="mae", batch_mmd_weight=-1.0)


def test_mae_variational_bottleneck_adds_a_kl_term():
    config = get_method("mae").Config(variational_weight=0.5, **SMALL)
    module = get_method("mae")(20, config)
    torch.nn.init.zeros_(module.log_variance.weight)
    torch.nn.init.zeros_(module.log_variance.bias)
    # Standard-normal posterior: no divergence; the draw is the mean plus unit noise.
    at_prior, kl = module.sample_posterior(torch.zeros(64, 8), torch.Generator().manual_seed(0))
    assert kl.item() == 0.0 and 0.8 < at_prior.std().item() < 1.2
    _, kl_shifted = module.sample_posterior(torch.full((64, 8), 2.0), None)
    torch.testing.assert_close(kl_shifted, torch.tensor(0.5 * 8 * 4.0 / 20))
    # The decoder sees draws around the encoder's output, and the embedding is that output (the
    # posterior mean), not a draw: the same cells embed identically twice.
    module.eval()
    x = torch.randn(4, 20)
    mean = module.embed(x)
    draws = module.sample_posterior(mean.repeat(4000, 1), None)[0].view(4000, *mean.shape)
    torch.testing.assert_close(draws.mean(0), mean, atol=0.1, rtol=0.0)
    assert not torch.allclose(draws[0], mean, atol=0.1)
    torch.testing.assert_close(module.embed(x), mean, atol=0.0, rtol=0.0)
    module.train()
    module.transform.fit_stats([_batch(seed=3).counts])
    batch = _batch()
    batch.x = module.transform(batch.counts)
    out = module.loss(batch)
    assert set(out.parts) == {"kl", "reconstruction"} and out.parts["kl"] > 0
    torch.testing.assert_close(out.total, out.parts["reconstruction"] + 0.5 * out.parts["kl"])
    with pytest.raises(ValueError, match="variational_weight"):
        get_method("mae").Config(variational_weight=-1.0)


def test_mae_thinning_shows_the_encoder_a_shallower_cell_and_scores_the_full_one():
    module = get_method("mae")(20, get_method("mae").Config(thinning=0.5, **SMALL))
    module.transform.fit_stats([_batch(seed=3).counts])
    batch = _batch(n_cells=64)
    batch.x = module.transform(batch.counts)
    thinned = module.thinned_input(batch)
    assert torch.all(thinned.counts <= batch.counts)
    kept = thinned.counts.sum(1) / batch.counts.sum(1)
    # Each cell keeps a fraction drawn from [0.5, 1]: on average about 0.75, never far below 0.5.
    assert kept.min() > 0.35 and 0.65 < kept.mean() < 0.85
    torch.testing.assert_close(thinned.x, module.transform(thinned.counts))
    # The loss encodes the thinned cell and scores the full cell's values (eval: no dropout).
    module.eval()
    batch.generator.manual_seed(7)
    loss = module.loss(batch).total
    batch.generator.manual_seed(7)
    hidden, scored = module.masks(batch)
    z = module.encoder(module.corrupt(module.thinned_input(batch), hidden))
    torch.testing.assert_close(loss, module.reconstruction_loss(batch, module.decode(z, None), scored))
    with pytest.raises(ValueError, match="raw counts"):
        get_method("mae")(20, get_method("mae").Config(thinning=0.5), input_kind="lognorm")
    with pytest.raises(ValueError, match="thinning"):
        get_method("mae").Config(thinning=1.0)


def test_two_view_methods_are_batch_aware_exactly_when_given_batches(counts_adata):
    with_batches = scssl.SSLModel(counts_adata, method="vicreg", batch_key="batch", **SMALL).module
    without = scssl.SSLModel(counts_adata, method="vicreg", **SMALL).module
    opted_out = scssl.SSLModel(counts_adata, method="vicreg", batch_key="batch", batch_aware=False, **SMALL).module
    assert with_batches.batch_aware and not without.batch_aware and not opted_out.batch_aware
    batch = with_batches.prepare(torch.as_tensor(counts_adata.X[:32].toarray()), torch.arange(32) % 2)
    assert with_batches.partners(batch) is not None and opted_out.partners(batch) is None
