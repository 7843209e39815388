"""Losses: small pure functions of tensors, each with a unit test.

Reconstruction losses take a boolean ``mask`` (cells × genes) and average only over the
masked entries, the masked-autoencoder objective (He et al. 2022; for scRNA-seq,
Richter et al. 2024).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the entries where ``mask`` is true (all entries if ``None``)."""
    return _masked_mean((pred - target) ** 2, mask)


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Log-probability of counts ``x`` under a negative binomial with mean ``mu`` and inverse
    dispersion ``theta`` (the scVI parameterisation, Lopez et al. 2018)."""
    log_theta_mu = torch.log(theta + mu + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mu + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def zinb_log_prob(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, dropout_logits: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Zero-inflated NB log-probability; ``dropout_logits`` are logits of the zero-inflation
    probability π. Computed in log space: log(π + (1-π)·NB(0)) = logaddexp(l, log NB(0)) - softplus(l)."""
    log_nb = nb_log_prob(x, mu, theta, eps)
    log_nb_zero = theta * (torch.log(theta + eps) - torch.log(theta + mu + eps))
    zero_case = torch.logaddexp(dropout_logits, log_nb_zero) - F.softplus(dropout_logits)
    nonzero_case = log_nb - F.softplus(dropout_logits)
    return torch.where(x < eps, zero_case, nonzero_case)


def nb_nll(x, mu, theta, mask=None) -> torch.Tensor:
    """Mean negative NB log-likelihood over masked entries."""
    return -_masked_mean(nb_log_prob(x, mu, theta), mask)


def zinb_nll(x, mu, theta, dropout_logits, mask=None) -> torch.Tensor:
    """Mean negative ZINB log-likelihood over masked entries."""
    return -_masked_mean(zinb_log_prob(x, mu, theta, dropout_logits), mask)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Normalised temperature-scaled cross entropy (SimCLR, Chen et al. 2020).

    Each of the 2N projected views must pick out its partner among the other 2N-1 views by
    cosine similarity / ``temperature``. Symmetric in ``(z1, z2)``.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)
