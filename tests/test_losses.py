import math

import numpy as np
import pytest
import torch
from scipy import stats

from scssl.losses import (
    batch_mmd, gaussian_kl, masked_mse, mmd, nb_log_prob, nb_nll, nt_xent, zinb_log_prob, zinb_nll,
)


def test_masked_mse_hand_computed():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [False, True]])
    # masked entries: (1-0)^2 and (4-0)^2 → mean 8.5; the unmasked 2 and 3 must not count
    assert masked_mse(pred, target, mask).item() == pytest.approx(8.5)
    assert masked_mse(pred, target).item() == pytest.approx((1 + 4 + 9 + 16) / 4)


def test_nb_log_prob_matches_scipy():
    x = torch.tensor([0.0, 1.0, 5.0, 20.0])
    mu = torch.tensor([0.5, 2.0, 5.0, 10.0])
    theta = torch.tensor([1.0, 3.0, 0.5, 10.0])
    # scipy's nbinom(n, p): n = theta, p = theta / (theta + mu)
    expected = stats.nbinom.logpmf(x.numpy(), theta.numpy(), (theta / (theta + mu)).numpy())
    assert np.allclose(nb_log_prob(x, mu, theta).numpy(), expected, atol=1e-5)


def test_nb_hand_computed_zero_count():
    # P(0) = (theta / (theta + mu))^theta = (1/3)^1 for mu=2, theta=1
    value = nb_nll(torch.tensor([0.0]), torch.tensor([2.0]), torch.tensor([1.0]))
    assert value.item() == pytest.approx(math.log(3.0), rel=1e-5)


def test_zinb_hand_computed():
    mu, theta = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])
    logits = torch.tensor([0.0, 0.0])  # pi = 0.5
    x = torch.tensor([0.0, 1.0])
    nb0, nb1 = 1 / 3, stats.nbinom.pmf(1, 1, 1 / 3)
    expected = [math.log(0.5 + 0.5 * nb0), math.log(0.5 * nb1)]
    assert np.allclose(zinb_log_prob(x, mu, theta, logits).numpy(), expected, atol=1e-5)
    # with no zero-inflation (pi → 0) ZINB is NB
    far = torch.full((2,), -30.0)
    assert torch.allclose(zinb_log_prob(x, mu, theta, far), nb_log_prob(x, mu, theta), atol=1e-5)


def test_nt_xent_hand_computed():
    # two cells, orthogonal unit embeddings; views identical: positive sim 1, negatives 0 and 0
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # each row: logits over the 3 others = [positive 1/t, 0, 0] → CE = -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert nt_xent(z, z, temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_symmetric_and_minimal_for_identical_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert nt_xent(z1, z2).item() == pytest.approx(nt_xent(z2, z1).item(), rel=1e-6)
    same = nt_xent(z1, z1).item()
    assert same < nt_xent(z1, z2).item()
    assert same < nt_xent(z1, z1 + 0.3 * torch.randn(16, 8, generator=g)).item()


@pytest.mark.parametrize("name", ["mse", "nb", "zinb", "nt_xent"])
def test_loss_falls_over_20_steps(name):
    g = torch.Generator().manual_seed(0)
    target = torch.poisson(torch.full((32, 10), 3.0), generator=g)
    mask = torch.rand(32, 10, generator=g) < 0.5
    params = torch.nn.Parameter(torch.zeros(32, 10))
    extra = torch.nn.Parameter(torch.zeros(10))
    optimizer = torch.optim.Adam([params, extra], lr=0.1)

    def loss():
        if name == "mse":
            return masked_mse(params, target, mask)
        if name == "nb":
            return nb_nll(target, params.exp(), extra.exp(), mask)
        if name == "zinb":
            return zinb_nll(target, params.exp(), extra.exp(), params - 2, mask)
        return nt_xent(params, params.flip(0) + target)

    first = loss().item()
    for _ in range(20):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < first * 0.9


def test_batch_mmd_is_the_mean_one_vs_rest_mmd_and_skips_unknown_cells():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(40, 4, generator=generator)
    batches = torch.arange(40) % 3
    expected = sum(mmd(z[batches == b], z[batches != b]) for b in range(3)) / 3
    assert batch_mmd(z, batches, 3).item() == pytest.approx(expected.item(), rel=1e-5)
    # Unknown cells (-1) and a category absent from the minibatch do not count.
    with_unknown = torch.cat([z, 10 + torch.randn(5, 4, generator=generator)])
    codes = torch.cat([batches, torch.full((5,), -1)])
    assert batch_mmd(with_unknown, codes, 4).item() == pytest.approx(expected.item(), rel=1e-5)


def test_batch_mmd_zero_for_identical_batches_and_grows_with_a_batch_shift():
    z = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    same = torch.cat([z, z])
    codes = torch.cat([torch.zeros(30), torch.ones(30)]).long()
    assert batch_mmd(same, codes, 2).item() == pytest.approx(0.0, abs=1e-6)
    shifted = torch.cat([z, z + 1.0])
    assert batch_mmd(shifted, codes, 2).item() > 0.05


def test_gaussian_kl_is_zero_at_the_prior_and_matches_the_closed_form():
    assert gaussian_kl(torch.zeros(5, 3), torch.zeros(5, 3)).item() == 0.0
    mean, log_var = torch.full((4, 2), 1.0), torch.full((4, 2), math.log(2.0))
    # Per dimension: (mean² + var - 1 - log var) / 2 = (1 + 2 - 1 - log 2) / 2; two dimensions.
    torch.testing.assert_close(gaussian_kl(mean, log_var), torch.tensor(2.0 - math.log(2.0)))
