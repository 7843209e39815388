"""The method contract: one small class per SSL method, registered by name.

A method owns its input transform, encoder and heads, and computes its loss from a
:class:`Batch`. It never touches AnnData, files or the optimiser; the training loop in
``scssl.train`` serves every method.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from scssl import distributed
from scssl.encoders import build_encoder
from scssl.transforms import InputTransform

METHODS: dict[str, type[SSLMethod]] = {}


def register(name: str):
    """Class decorator: make a method available as ``SSLModel(adata, method=name)``."""

    def wrap(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def get_method(name: str) -> type[SSLMethod]:
    """The registered method class called ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


@dataclass
class MethodConfig:
    """Hyper-parameters shared by every method; subclasses add their own.

    Attributes
    ----------
    encoder
        Registered encoder name (``"mlp"``).
    hidden
        Hidden layer widths of the encoder.
    latent_dim
        Embedding width.
    dropout
        Dropout after each hidden layer.
    input_dropout
        Dropout on input genes.
    norm
        Normalisation layer in the MLP: ``"layer"``, ``"batch"`` or ``None``.
    scale
        Standardise genes (training mean/std) before the encoder.
    target_sum
        Counts per cell after library-size normalisation; ``None``: the median library size of
        the training cells (scanpy's ``normalize_total`` default), found when the model is
        fitted. On shallow data 1e4 makes the input nearly binary (worm: a median of 35 counts
        over its 2,000 HVGs, so one count becomes log1p(286)); the median keeps one count at
        log1p(1) in a typical cell. Neither wins every dataset (results README, "The median
        library as the target sum").
    encoder_options
        Extra keyword arguments for encoders with their own hyper-parameters.
    """

    encoder: str = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    latent_dim: int = 64
    dropout: float = 0.1
    input_dropout: float = 0.0
    norm: str | None = "layer"
    scale: bool = True
    target_sum: float | None = 1e4
    encoder_options: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_counts(self) -> bool:
        """Whether the objective is a count likelihood (NB/ZINB) that needs raw counts."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MethodConfig:
        """Build from plain values (JSON, CLI), naming any unknown key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {sorted(unknown)} for this method; valid: {sorted(known)}"
            )
        hints = typing.get_type_hints(cls)
        coerced = {}
        for key, value in values.items():
            # JSON has no tuples: bring lists back to the declared tuple type.
            if isinstance(value, list) and "tuple" in str(hints[key]):
                value = tuple(value)
            coerced[key] = value
        return cls(**coerced)


@dataclass
class Batch:
    """One minibatch as a method sees it.

    Attributes
    ----------
    counts
        Raw values in model gene order (counts, or log-normalised values for ``kind="lognorm"``).
    x
        Model input: ``transform(counts)``.
    batch_index
        Integer batch label per cell (``-1`` = unknown), or ``None`` without a batch key.
    generator
        Random generator for masks and augmentations (seeded by the trainer).
    """

    counts: torch.Tensor
    x: torch.Tensor
    batch_index: torch.Tensor | None = None
    generator: torch.Generator | None = None

    @property
    def library(self) -> torch.Tensor:
        """Total counts per cell, shape (cells, 1)."""
        return self.counts.sum(1, keepdim=True).clamp_min(1.0)


@dataclass
class LossOutput:
    """A method's loss: ``total`` is optimised; ``parts`` are logged (detached scalars)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """Base class: input transform + encoder; subclasses add heads and ``loss``.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary.
    config
        The method's ``Config`` instance.
    input_kind
        ``"counts"`` or ``"lognorm"`` (see :class:`scssl.data.MatrixSpec`).
    n_batches
        Number of batch categories (0 without a batch key); batch-aware methods use it.
    gene_names
        The vocabulary's gene names, for methods that read named gene sets (``None``: unknown).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    sample_buffers: ClassVar[tuple[str, ...]] = ()
    """Buffers whose rows are samples (MoCo's queue of keys). Federated averaging pools their
    rows across nodes instead of averaging them: the mean of two unrelated keys is no key."""

    def __init__(
        self, n_genes: int, config: MethodConfig, input_kind: str = "counts", n_batches: int = 0,
        gene_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.n_genes = n_genes
        self.n_batches = n_batches
        self.input_kind = input_kind
        self.gene_names = None if gene_names is None else list(gene_names)
        self.spans_processes = False  # set by the trainer for a distributed fit (train.span_processes)
        self.transform = InputTransform(
            n_genes, kind=input_kind, scale=config.scale, target_sum=config.target_sum,
        )
        self.encoder = build_encoder(
            config.encoder, n_genes, hidden=config.hidden, latent_dim=config.latent_dim,
            dropout=config.dropout, input_dropout=config.input_dropout, norm=config.norm,
            **config.encoder_options,
        )

    def prepare(self, counts: torch.Tensor, batch_index=None, generator=None) -> Batch:
        """Raw minibatch → :class:`Batch` (transform applied on the batch's device)."""
        return Batch(counts=counts, x=self.transform(counts), batch_index=batch_index, generator=generator)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Cell embedding of model input ``x`` (heads used only in training are not applied)."""
        return self.encoder(x)

    def loss(self, batch: Batch) -> LossOutput:
        raise NotImplementedError

    def across_processes(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The rows of ``tensors`` from every process of a distributed fit, in rank order, with
        gradients; as given otherwise (one process, or evaluation).

        For losses over the batch as a whole (negatives, batch statistics), so that they see the
        whole distributed minibatch rather than this process's share of it.
        """
        if not (self.training and self.spans_processes):
            return tensors
        return tuple(distributed.gather_rows(t) for t in tensors)

    @property
    def setup_needs_data(self) -> bool:
        """Whether :meth:`setup` computes state from the cells themselves (not only from moments).

        Such a method cannot be pre-trained federatedly, where no process sees every cell;
        a method that overrides :meth:`setup` to read the batches says so here.
        """
        return False

    def setup(self, batches: Iterable[torch.Tensor]) -> None:
        """Hook called once before training (not on resume) with the training cells' raw batches.

        For state computed from the data, e.g. co-expression gene modules; store it in buffers
        so that it is saved with the weights (and return ``True`` from :attr:`setup_needs_data`).
        The input statistics are already fitted.
        """

    def after_optimizer_step(self, progress: float) -> None:
        """Hook for momentum/EMA updates; ``progress`` runs from 0 to 1 over training."""
