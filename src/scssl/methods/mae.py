"""Masked autoencoder (``method="mae"``).

Masks a fraction of genes per cell, encodes the masked cell and reconstructs the
masked genes only (He et al. 2022, CVPR; for scRNA-seq, Richter et al. 2024,
"Delineating the effective use of self-supervised learning in single-cell genomics").
The reconstruction loss is MSE on model-input values, or a negative binomial /
zero-inflated NB likelihood on raw counts (Lopez et al. 2018, scVI).

Masking strategies (Richter et al. 2024): ``"random"`` genes; ``"gene_programme"`` masks whole
gene sets at once (from a GMT file / ``gene_sets``, or co-expression modules of the training
data); ``"isolated"`` shows the encoder only one gene set and reconstructs another, disjoint one
(GP→TF with ``isolated_source="<TF set name>"``, GP→GP otherwise). An optional head predicts
which genes were masked (scMAE, Fang et al. 2024), best with ``mask_value="shuffle"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from scssl.augment import BinomialThinning, random_other_cells
from scssl.encoders import mlp
from scssl.losses import batch_mmd, gaussian_kl, masked_mse, nb_nll, zinb_nll
from scssl.masking import (
    coexpression_modules, isolated_masks, membership_matrix, programme_mask, random_mask, read_gmt,
)
from scssl.methods.base import Batch, LossOutput, MethodConfig, SSLMethod, register

LOSSES = ("mse", "nb", "zinb")
MASKINGS = ("random", "gene_programme", "isolated")
MASK_VALUES = ("zero", "shuffle")


@dataclass
class MAEConfig(MethodConfig):
    """Masked-autoencoder hyper-parameters.

    Attributes
    ----------
    hidden
        Encoder widths; ``(1024, 256)`` here, wider than the shared ``(512, 256)``. On the five
        ``standard`` datasets (60 epochs, seeds 0–2, one GPU) the wider encoder raised the mean of
        kNN macro-F1, k-means and Leiden ARI from 0.691 to 0.703, with k-means ARI up on four
        datasets (kidney 0.592 → 0.616, pbmc3k 0.617 → 0.660) and Leiden ARI down only on worm
        (0.344 → 0.277); about 1.4x the CPU time per epoch (pbmc3k: 0.9–1.3 → 1.4–1.6 s, one
        thread).
        The published CPU run (``benchmarks/results``, 3 seeds) moved less: mean 0.698 → 0.699;
        kidney k-means ARI 0.568 → 0.633 and pbmc3k 0.613 → 0.643, but pbmc_3chem kNN F1
        0.827 → 0.804 and pbmc3k / worm Leiden ARI −0.03 each.
    dropout
        Dropout after each encoder layer; 0.3 here, above the shared default of 0.1.
    mask_ratio
        Fraction of genes masked per cell (the literature uses 15–50%).

    The defaults were measured on pbmc3k (5-fold kNN macro-F1, 100 epochs with early stopping):
    mask 0.3 / dropout 0.1 gave 0.914 (seed 0); mask 0.5 / dropout 0.1 0.930, 0.930, 0.926
    (seeds 0–2); mask 0.5 / dropout 0.2 0.942, 0.937, 0.938; mask 0.5 / dropout 0.3 0.951,
    0.947, 0.940. PCA reaches 0.924 there.
    loss
        ``"mse"`` on model-input values, ``"nb"`` or ``"zinb"`` on raw counts.
    masking
        ``"random"``, ``"gene_programme"`` or ``"isolated"`` (see the module docstring).
    gene_sets
        ``{name: [gene names]}`` for programme/isolated masking. Filled from ``gmt`` at
        construction (restricted to the model's genes), so a saved model needs no GMT file.
        Empty: ``n_programmes`` co-expression modules computed on the training cells.
    gmt
        Path of a GMT file of gene sets (read once, into ``gene_sets``).
    min_set_size
        Gene sets with fewer genes in the vocabulary are dropped.
    n_programmes
        Number of data-driven co-expression modules when no gene sets are given.
    module_cells
        At most this many training cells are used to compute the modules.
    isolated_source
        Isolated masking: name of the gene set always shown (e.g. transcription factors);
        ``None`` draws a random source programme per cell.
    mask_value
        What masked genes are replaced by: ``"zero"`` (the gene's training mean after scaling)
        or ``"shuffle"`` (the gene's value in a random other cell, as scMAE).
    mask_prediction_weight
        Weight of the auxiliary loss of predicting which genes were masked (0 = no head).
    batch_decoder
        With a batch key: give the decoder the cell's batch (one-hot), as scVI does, so the
        embedding need not encode batch effects to reconstruct the genes.
    batch_mmd_weight
        With a batch key: weight of an MMD penalty between each batch's embeddings and the
        others' (:func:`scssl.losses.batch_mmd`), pulling batches together in the embedding.
    thinning
        Raw counts only: the encoder sees each cell binomially thinned, keeping every molecule
        with a probability drawn per cell from ``[1 - thinning, 1]``, while the loss scores the
        full cell's masked genes: denoising of count sampling noise on top of masking (0 = off).
        Opt-in: on the five standard datasets it gained a little on average, on CITE-seq CBMC
        it lost (figures in ``benchmarks/results/README.md``).
    variational_weight
        Weight of a variational bottleneck (as in scVI): the decoder sees a draw from
        N(embedding, σ²), σ² predicted from the embedding, and the loss adds this weight times
        the KL divergence to N(0, I) per cell, divided by the number of genes. The embedding
        stays the posterior mean. 0 = off. Opt-in: at 1.0 it raised Leiden ARI on pbmc4k and
        worm and lowered pbmc3k and CBMC (figures in ``benchmarks/results/README.md``).

    Batch defaults, measured on pbmc_10x_3chemistries_symphony (three chemistries as batches;
    seed 0, 60 epochs; kNN macro-F1 / k-means ARI / Leiden ARI / scIB total): no batch input
    0.769 / 0.512 / 0.450 / 0.506; batch decoder 0.792 / 0.561 / 0.538 / 0.580; + MMD 0.1
    0.778 / 0.543 / 0.536 / 0.731; MMD 0.3 0.754 / 0.583 / 0.531 / 0.718; MMD 1 0.707 / 0.520 /
    0.520 / 0.702; MMD 10 0.591 / 0.357 / 0.454 / 0.659. PCA 0.828 / 0.536 / 0.439 / 0.539,
    Harmony 0.862 / 0.712 / 0.638 / 0.722, scVI 0.805 / 0.531 / 0.536 / 0.691.
    """

    hidden: tuple[int, ...] = (1024, 256)
    dropout: float = 0.3
    mask_ratio: float = 0.5
    loss: str = "mse"
    masking: str = "random"
    gene_sets: dict[str, list[str]] = field(default_factory=dict)
    gmt: str | None = None
    min_set_size: int = 5
    n_programmes: int = 20
    module_cells: int = 5000
    isolated_source: str | None = None
    mask_value: str = "zero"
    mask_prediction_weight: float = 0.0
    batch_decoder: bool = True
    batch_mmd_weight: float = 0.1
    thinning: float = 0.0
    variational_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {self.masking!r}")
        if self.mask_value not in MASK_VALUES:
            raise ValueError(f"mask_value must be one of {MASK_VALUES}, got {self.mask_value!r}")
        if self.mask_prediction_weight < 0:
            raise ValueError(f"mask_prediction_weight must be ≥ 0, got {self.mask_prediction_weight}")
        if self.batch_mmd_weight < 0:
            raise ValueError(f"batch_mmd_weight must be ≥ 0, got {self.batch_mmd_weight}")
        if not 0.0 <= self.thinning < 1.0:
            raise ValueError(f"thinning must be in [0, 1), got {self.thinning}")
        if self.variational_weight < 0:
            raise ValueError(f"variational_weight must be ≥ 0, got {self.variational_weight}")
        if self.isolated_source is not None and self.masking != "isolated":
            raise ValueError("isolated_source is only used with masking='isolated'")

    @property
    def needs_counts(self) -> bool:
        return self.loss in ("nb", "zinb")


@register("mae")
class MAE(SSLMethod):
    """Masked autoencoder: encoder → embedding → decoder, loss on masked genes."""

    Config = MAEConfig

    def __init__(
        self, n_genes: int, config: MAEConfig, input_kind: str = "counts", n_batches: int = 0,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(n_genes, config, input_kind, n_batches, gene_names)
        if config.thinning > 0 and input_kind != "counts":
            raise ValueError("thinning needs raw counts; this data is log-normalised (set thinning=0)")
        self.thin = BinomialThinning(config.thinning, per_cell_rate=True)
        self.n_covariates = n_batches if config.batch_decoder else 0
        widths = [config.latent_dim + self.n_covariates, *reversed(config.hidden)]
        self.decoder = mlp(widths, dropout=0.0, norm=config.norm, last_activation=True)
        self.output = nn.Linear(widths[-1], n_genes)
        if config.loss in ("nb", "zinb"):
            self.log_theta = nn.Parameter(torch.zeros(n_genes))  # gene-wise inverse dispersion
        if config.loss == "zinb":
            self.dropout_head = nn.Linear(widths[-1], n_genes)
        if config.mask_prediction_weight > 0:
            self.mask_head = nn.Linear(widths[-1], n_genes)
        if config.variational_weight > 0:
            self.log_variance = nn.Linear(config.latent_dim, config.latent_dim)
        self.source_set: int | None = None
        if config.masking != "random":
            self._init_programmes(n_genes, config)

    def _init_programmes(self, n_genes: int, config: MAEConfig) -> None:
        if config.gmt and not config.gene_sets:
            if self.gene_names is None:
                raise ValueError("a GMT file needs the model's gene names (use SSLModel, or pass gene_names=)")
            known = set(self.gene_names)
            # Recorded in the config, so saving keeps the sets and loading needs no file.
            config.gene_sets = {
                name: [g for g in genes if g in known] for name, genes in read_gmt(config.gmt).items()
                if sum(g in known for g in genes) >= config.min_set_size
            }
            if not config.gene_sets:
                raise ValueError(
                    f"no gene set in {config.gmt} has ≥ {config.min_set_size} of the model's genes; "
                    "check the gene identifiers (symbols vs Ensembl IDs) or lower min_set_size"
                )
        if config.gene_sets:
            if self.gene_names is None:
                raise ValueError("gene_sets need the model's gene names (use SSLModel, or pass gene_names=)")
            names, members = membership_matrix(config.gene_sets, self.gene_names)
        else:
            names = [f"module{i}" for i in range(config.n_programmes)]
            # A placeholder partition until setup() computes co-expression modules from the data.
            members = (torch.arange(n_genes) % config.n_programmes).view(1, -1) == torch.arange(
                config.n_programmes).view(-1, 1)
        self.programme_names = names
        self.register_buffer("programmes", members)
        if config.isolated_source is not None:
            if config.isolated_source not in names:
                raise ValueError(f"isolated_source {config.isolated_source!r} is not a gene set; have {names[:10]}…")
            self.source_set = names.index(config.isolated_source)

    @property
    def setup_needs_data(self) -> bool:
        """Programme masking without gene sets computes co-expression modules from the cells."""
        return self.config.masking != "random" and not self.config.gene_sets

    @torch.no_grad()
    def setup(self, batches: Iterable[torch.Tensor]) -> None:
        """Compute co-expression modules from (at most ``module_cells``) training cells."""
        cfg = self.config
        if not self.setup_needs_data:
            return
        parts, n = [], 0
        for raw in batches:
            x = self.transform.normalise(raw.to(self.programmes.device))
            parts.append(x[: cfg.module_cells - n])
            n += parts[-1].shape[0]
            if n >= cfg.module_cells:
                break
        self.programmes.copy_(coexpression_modules(torch.cat(parts), cfg.n_programmes))

    def masks(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden, scored)``: genes hidden from the encoder and genes the loss is computed on."""
        n_cells, n_genes = batch.x.shape
        cfg = self.config
        if cfg.masking == "random":
            mask = random_mask(n_cells, n_genes, cfg.mask_ratio, batch.generator, batch.x.device)
            return mask, mask
        if cfg.masking == "gene_programme":
            mask = programme_mask(self.programmes, n_cells, cfg.mask_ratio, batch.generator)
            return mask, mask
        visible, target = isolated_masks(self.programmes, n_cells, self.source_set, batch.generator)
        return ~visible, target

    def mask(self, batch: Batch) -> torch.Tensor:
        return self.masks(batch)[0]

    def corrupt(self, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``batch.x`` with ``hidden`` genes replaced (see ``mask_value``).

        Isolated masking always zero-fills: its encoder must see the source set alone.
        """
        if self.config.mask_value == "zero" or self.config.masking == "isolated":
            return batch.x.masked_fill(hidden, 0.0)
        donors = random_other_cells(tuple(batch.x.shape), batch.x.shape[0], batch.generator, batch.x.device)
        return torch.where(hidden, batch.x.gather(0, donors), batch.x)

    def decode(self, z: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
        """Decoder hidden state from embedding ``z``, with the batch one-hot when conditioned.

        Cells of unknown batch (``-1``, or no batch given) get the average of all batches.
        """
        if not self.n_covariates:
            return self.decoder(z)
        if batch_index is None:
            batch_index = z.new_full((z.shape[0],), -1, dtype=torch.long)
        known = batch_index >= 0
        onehot = F.one_hot(batch_index.clamp_min(0), self.n_covariates).to(z.dtype)
        covariates = torch.where(known[:, None], onehot, torch.full_like(onehot, 1.0 / self.n_covariates))
        return self.decoder(torch.cat([z, covariates], 1))

    def reconstruction_loss(self, batch: Batch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Loss of the decoder's output on the ``mask``ed genes."""
        out = self.output(hidden).float()
        if self.config.loss == "mse":
            return masked_mse(out, batch.x, mask)
        mu = torch.softmax(out, dim=1) * batch.library
        theta = self.log_theta.exp()
        if self.config.loss == "nb":
            return nb_nll(batch.counts, mu, theta, mask)
        return zinb_nll(batch.counts, mu, theta, self.dropout_head(hidden).float(), mask)

    def thinned_input(self, batch: Batch) -> Batch:
        """``batch`` with its input made from binomially thinned counts (each cell keeps each
        molecule with a probability drawn from [1 - thinning, 1]); the target stays the full cell."""
        counts = self.thin(batch.counts, batch.generator)
        return Batch(counts=counts, x=self.transform(counts), batch_index=batch.batch_index,
                     generator=batch.generator)

    def loss(self, batch: Batch) -> LossOutput:
        hidden_genes, scored = self.masks(batch)
        source = self.thinned_input(batch) if self.config.thinning > 0 else batch
        z = self.encoder(self.corrupt(source, hidden_genes))
        drawn, kl = (self.sample_posterior(z, batch.generator) if self.config.variational_weight > 0
                     else (z, None))
        decoded = self.decode(drawn, batch.batch_index)
        recon = self.reconstruction_loss(batch, decoded, scored)
        parts = {"reconstruction": recon.detach()}
        total = recon
        if kl is not None:
            total = total + self.config.variational_weight * kl
            parts["kl"] = kl.detach()
        if self.config.batch_mmd_weight > 0 and batch.batch_index is not None and self.n_batches > 1:
            # On the draw, not the mean: pbmc_3chem's figures were better so (results README).
            alignment = batch_mmd(*self.across_processes(drawn.float(), batch.batch_index), self.n_batches)
            total = total + self.config.batch_mmd_weight * alignment
            parts["batch_mmd"] = alignment.detach()
        if self.config.mask_prediction_weight > 0:
            logits = self.mask_head(decoded).float()
            mask_loss = F.binary_cross_entropy_with_logits(logits, hidden_genes.float())
            total = total + self.config.mask_prediction_weight * mask_loss
            parts["mask_prediction"] = mask_loss.detach()
        return LossOutput(total=total, parts=parts)

    def sample_posterior(
        self, mean: torch.Tensor, generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A draw from N(mean, σ²) with σ² predicted from the mean, and the KL divergence to
        N(0, I) per cell, summed over dimensions and divided by the number of genes (so that it
        sits on the per-gene scale of the reconstruction loss)."""
        log_var = self.log_variance(mean).float().clamp(-10.0, 10.0)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        mean = mean.float()
        return mean + (0.5 * log_var).exp() * noise, gaussian_kl(mean, log_var) / self.n_genes

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_index: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output for unmasked input: model-input values (mse) or expected fractions (nb/zinb)."""
        out = self.output(self.decode(self.encoder(x), batch_index))
        return out if self.config.loss == "mse" else torch.softmax(out, dim=1)
