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


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins redundancy reduction (Zbontar et al. 2021, ICML).

    Each feature is standardised over the batch; the cross-correlation ``C`` of the two views
    is pushed to the identity: ``Σ_i (1 - C_ii)² + lambd · Σ_{i≠j} C_ij²``.
    """
    n = z1.shape[0]
    z1 = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    z2 = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = z1.T @ z2 / n
    on_diag = (1.0 - torch.diagonal(c)).pow(2).sum()
    return on_diag + lambd * _off_diagonal(c).pow(2).sum()


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
    cov_weight: float = 1.0, eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Variance-invariance-covariance regularisation (Bardes et al. 2022, ICLR).

    Invariance: MSE between views. Variance: hinge ``relu(1 - sqrt(var + eps))`` on each feature's
    (unbiased) batch standard deviation, averaged, per view. Covariance: squared off-diagonal
    covariances summed and divided by the width, per view.

    Returns
    -------
    The weighted total and its three unweighted parts.
    """
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        std = torch.sqrt(z.var(0) + eps)
        variance = variance + F.relu(1.0 - std).mean()
        centred = z - z.mean(0)
        cov = centred.T @ centred / (n - 1)
        covariance = covariance + _off_diagonal(cov).pow(2).sum() / d
    total = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return total, {"invariance": invariance, "variance": variance, "covariance": covariance}


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss (Grill et al. 2020, NeurIPS): ``2 - 2·cos(p, t)``, mean over cells.

    ``target`` comes from the momentum network and should carry no gradient.
    """
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target, dim=1)).mean()


def info_nce_queue(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2,
) -> torch.Tensor:
    """InfoNCE with a queue of negative keys (MoCo, He et al. 2020, CVPR).

    Each L2-normalised ``query`` must pick out its own ``key`` (positive) among the ``queue``
    rows (negatives, already normalised) by dot product / ``temperature``.
    """
    query = F.normalize(query, dim=1)
    key = F.normalize(key, dim=1)
    positive = (query * key).sum(1, keepdim=True)
    negative = query @ queue.T
    logits = torch.cat([positive, negative], dim=1) / temperature
    targets = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits, targets)


def mmd(
    x: torch.Tensor, y: torch.Tensor,
    bandwidths: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0), relative: bool = True,
) -> torch.Tensor:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels (Gretton et al. 2012).

    The multi-kernel form of deep adaptation networks (Long et al. 2015), used by scDEAL
    (Chen et al. 2022) to align bulk and single-cell embeddings. Biased (V-statistic)
    estimate: exactly zero when ``x`` and ``y`` are the same sample, never negative.

    Parameters
    ----------
    x, y
        Samples (n × d) and (m × d).
    bandwidths
        Kernel widths σ² in ``k(a, b) = exp(-|a - b|² / σ²)``.
    relative
        Read ``bandwidths`` as multiples of the mean pairwise squared distance of the pooled
        sample (detached), so one setting serves embeddings of any scale.
    """
    kernel = gaussian_kernels(torch.cat([x, y]), bandwidths, relative)
    n_x = x.shape[0]
    return (
        kernel[:n_x, :n_x].mean() + kernel[n_x:, n_x:].mean() - 2 * kernel[:n_x, n_x:].mean()
    ).clamp_min(0.0)


def gaussian_kernels(
    z: torch.Tensor, bandwidths: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0), relative: bool = True,
    counted: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum of Gaussian kernels between all rows of ``z`` (see :func:`mmd` for the parameters).

    ``counted`` (0/1 per row) restricts the mean pairwise distance of relative bandwidths to
    those rows.
    """
    sq = torch.cdist(z, z).pow(2)
    if relative:
        if counted is None:
            n = z.shape[0]
            scale = sq.detach().sum() / max(1, n * n - n)
        else:
            n = counted.sum()
            scale = (counted @ sq.detach() @ counted) / (n * n - n).clamp_min(1.0)
        scale = scale.clamp_min(1e-12)
    else:
        scale = sq.new_ones(())
    return sum(torch.exp(-sq / (scale * b)) for b in bandwidths)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mean, exp(log_var)) from N(0, I), summed over dimensions and averaged
    over cells (the VAE regulariser, Kingma & Welling 2014)."""
    return 0.5 * (mean.square() + log_var.exp() - 1.0 - log_var).sum(1).mean()


def batch_mmd(z: torch.Tensor, batch_index: torch.Tensor, n_batches: int) -> torch.Tensor:
    """Mean over batches of the squared MMD between one batch's embeddings and all others'.

    Penalises embeddings that tell batches apart (a one-vs-rest form of the MMD penalty of
    trVAE, Lotfollahi et al. 2020). All batches are scored from one kernel matrix by weighted
    sums, without indexing per batch (no host synchronisation). Cells with batch ``-1`` and
    batches absent from the minibatch contribute nothing.

    Parameters
    ----------
    z
        Embeddings (cells × d).
    batch_index
        Batch per cell (``-1`` = unknown).
    n_batches
        Number of batch categories.
    """
    known = (batch_index >= 0).to(z.dtype)
    member = torch.nn.functional.one_hot(batch_index.clamp_min(0), n_batches).to(z.dtype) * known[:, None]
    rest = known[:, None] - member
    n_in, n_out = member.sum(0), rest.sum(0)
    present = (n_in > 0) & (n_out > 0)
    w_in, w_out = member / n_in.clamp_min(1.0), rest / n_out.clamp_min(1.0)
    kernel = gaussian_kernels(z, counted=known)
    per_batch = (
        (w_in * (kernel @ w_in)).sum(0) + (w_out * (kernel @ w_out)).sum(0) - 2 * (w_in * (kernel @ w_out)).sum(0)
    ).clamp_min(0.0)
    return (per_batch * present).sum() / present.sum().clamp_min(1)
