"""Losses of the SSL method family: hand-computed values and "falls over 20 steps" checks."""

from __future__ import annotations

import math

import pytest
import torch

from scssl.losses import barlow_twins_loss, byol_loss, info_nce_queue, vicreg_loss


pytestmark = pytest.mark.usefixtures("one_thread")


def test_barlow_twins_hand_computed():
    # Standardised columns are unchanged: C = [[1, -1], [1, -1]].
    # On-diagonal: (1-1)² + (1-(-1))² = 4; off-diagonal squares: 1 + 1 = 2.
    z1 = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    z2 = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert barlow_twins_loss(z1, z2, lambd=0.5).item() == pytest.approx(4 + 0.5 * 2, rel=1e-3)
    # Identical, decorrelated views reach the minimum 0.
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, z, lambd=0.5).item() == pytest.approx(0.0, abs=1e-3)


def test_vicreg_hand_computed():
    z1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z2 = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    total, parts = vicreg_loss(z1, z2)
    # Invariance: differences (0, 0, 2, 2) → 8 / 4 = 2.
    assert parts["invariance"].item() == pytest.approx(2.0)
    # Variance: z1 stds are √2 > 1 → 0; z2 stds are √1e-4 = 0.01 → relu(0.99) per feature.
    assert parts["variance"].item() == pytest.approx(0.99, abs=1e-6)
    # Covariance: z1 off-diagonal covariance 2 (twice) → (4 + 4) / d=2 = 4; z2 has none.
    assert parts["covariance"].item() == pytest.approx(4.0)
    assert total.item() == pytest.approx(25 * 2 + 25 * 0.99 + 4.0, abs=1e-4)


def test_byol_hand_computed():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    # cos = 0 → 2; cos = 1/√2 → 2 - √2; mean of the two.
    assert byol_loss(p, t).item() == pytest.approx((2 + 2 - math.sqrt(2)) / 2, rel=1e-6)
    assert byol_loss(t, 5 * t).item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_queue_hand_computed():
    q = torch.tensor([[2.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # Logits (T = 0.5): positive 1/0.5 = 2, negatives 0 and -2; cross entropy on the positive.
    expected = math.log(math.exp(2) + math.exp(0) + math.exp(-2)) - 2
    assert info_nce_queue(q, k, queue, temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def _falls(loss_fn, n_params: int = 2, steps: int = 20) -> tuple[float, float]:
    torch.manual_seed(0)
    x = torch.randn(32, 10)
    nets = [torch.nn.Linear(10, 8) for _ in range(n_params)]
    noise = 0.3 * torch.randn(32, 10)
    optimiser = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=0.05)
    losses = []
    for _ in range(steps):
        loss = loss_fn(nets, x, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg", "byol", "info_nce_queue"])
def test_loss_falls_over_20_steps(name):
    queue = torch.nn.functional.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(1)), dim=1)

    def loss_fn(nets, x, noise):
        online = nets[0]
        z1, z2 = online(x), online(x + noise)
        if name == "barlow_twins":
            return barlow_twins_loss(z1, z2, lambd=0.1)
        if name == "vicreg":
            return vicreg_loss(z1, z2)[0]
        if name == "byol":
            return byol_loss(nets[1](z1[:, :8].repeat(1, 2)[:, :10]), z2.detach())
        return info_nce_queue(z1, z2.detach(), queue, temperature=0.2)

    first, last = _falls(loss_fn)
    assert last < 0.8 * first, (first, last)
