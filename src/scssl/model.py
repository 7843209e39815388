"""SSLModel: the object users touch — fit, embed, save, load.

It pairs a :class:`~scssl.data.CellData` registry (which matrix, which genes, which batch key)
with a registered SSL method, in the spirit of scvi-tools' model/module split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from scssl import __version__
from scssl.checkpoint import load_json, load_tensors, save_json, save_tensors
from scssl.data import CellData, DataError, MatrixSpec
from scssl.methods import get_method
from scssl.methods.base import SSLMethod
from scssl.train import Trainer, TrainConfig, resolve_device, seeded

FORMAT_VERSION = 1


class SSLModel:
    """A self-supervised cell-embedding model.

    Parameters
    ----------
    adata
        Training cells: raw counts (or log-normalised values with ``loss="mse"``) in ``.X``,
        a layer, or ``.raw``. Never modified.
    method
        A registered method name (``scssl.methods.METHODS``), e.g. ``"mae"`` or ``"simclr"``.
    layer
        Layer with the expression values (default ``.X``).
    use_raw
        Read ``adata.raw.X``.
    input_kind
        ``"counts"``, ``"lognorm"`` or ``"auto"`` (integral values ⇒ counts).
    batch_key
        ``.obs`` column with batch labels, for batch-aware methods.
    seed
        Seeds the initial weights (``fit(seed=...)`` seeds the training itself).
    **hyperparameters
        The method's hyper-parameters (see ``get_method(method).Config``).

    Examples
    --------
    >>> import scanpy as sc, scssl
    >>> adata = sc.read_h5ad("cells.h5ad")
    >>> model = scssl.SSLModel(adata, method="mae")
    >>> model.fit(max_epochs=100)
    >>> adata.obsm["X_scssl"] = model.embed(adata)
    >>> model.save("pbmc_mae/")
    """

    def __init__(
        self, adata: ad.AnnData | None = None, method: str = "mae", *, layer: str | None = None,
        use_raw: bool = False, input_kind: str = "auto", batch_key: str | None = None,
        seed: int = 0, **hyperparameters: Any,
    ) -> None:
        self.method_name = method
        method_cls = get_method(method)
        self.config = method_cls.Config.from_dict(hyperparameters)
        self.history: list[dict] = []
        self.train_config: TrainConfig | None = None
        self.federation: dict[str, Any] | None = None  # the settings of a federated run that trained it
        self.data: CellData | None = None
        if adata is None:
            return  # filled in by load()
        self.data = CellData(
            adata, layer=layer, use_raw=use_raw, kind=input_kind,
            require_counts=self.config.needs_counts, batch_key=batch_key,
        )
        self.genes = list(self.data.genes)
        self.spec = self.data.spec
        self.batch_key, self.batch_categories = batch_key, self.data.batch_categories
        self.module: SSLMethod = self._build_module(seed)

    @classmethod
    def from_vocabulary(
        cls, genes: Sequence[str], spec: MatrixSpec, method: str = "mae", *,
        batch_key: str | None = None, batch_categories: Sequence[str] | None = None,
        seed: int | None = 0, **hyperparameters: Any,
    ) -> SSLModel:
        """An untrained model for a given vocabulary, without any cells.

        For callers that know the genes and the input format but hold no cells: :meth:`load`,
        and the federated server (:mod:`scssl.federated`), which learns them from the nodes.

        Parameters
        ----------
        genes
            The gene vocabulary, in the model's order.
        spec
            Which matrix the model reads and what it holds (:class:`~scssl.data.MatrixSpec`).
        method
            A registered method name.
        batch_key, batch_categories
            ``.obs`` column with batch labels and its categories (``None``: no batches).
        seed
            Seeds the initial weights without touching the caller's RNG (``None``: draw them
            from torch's global RNG).
        **hyperparameters
            The method's hyper-parameters.

        Returns
        -------
        The model, untrained (input statistics at mean 0, std 1), with no training data attached.
        """
        model = cls(None, method, **hyperparameters)
        model.genes = list(genes)
        model.spec = spec
        model.batch_key = batch_key
        model.batch_categories = None if batch_categories is None else list(batch_categories)
        model.module = model._build_module(seed)
        return model

    def _build_module(self, seed: int | None) -> SSLMethod:
        def build() -> SSLMethod:
            return get_method(self.method_name)(
                len(self.genes), self.config, self.spec.kind, len(self.batch_categories or []),
                gene_names=self.genes,
            )

        if seed is None:
            return build()
        with seeded(seed):
            return build()

    def __repr__(self) -> str:
        unit = "rounds" if self.history and "round" in self.history[0] else "epochs"  # federated
        state = f"trained {len(self.history)} {unit}" if self.history else "untrained"
        return f"SSLModel(method={self.method_name!r}, genes={len(self.genes)}, latent_dim={self.config.latent_dim}, {state})"

    # ---- training --------------------------------------------------------------------------------
    def fit(
        self, max_epochs: int = 100, batch_size: int = 256, *, checkpoint_dir: str | Path | None = None,
        resume: bool = False, progress: bool = True, **train_options: Any,
    ) -> SSLModel:
        """Pre-train on the cells given at construction.

        Parameters
        ----------
        max_epochs, batch_size
            Training length and minibatch size.
        checkpoint_dir
            Write a checkpoint here after every epoch.
        resume
            Continue the run checkpointed in ``checkpoint_dir``.
        progress
            Show a progress bar.
        **train_options
            Further :class:`~scssl.train.TrainConfig` fields (``lr``, ``patience``, ``seed``, ``device``…).

        Returns
        -------
        The model itself, trained (best validation weights).
        """
        if self.data is None:
            raise RuntimeError("this model was loaded without training data; pass adata to SSLModel(...) to train")
        self.train_config = TrainConfig(max_epochs=max_epochs, batch_size=batch_size, **train_options)
        trainer = Trainer(self.module, self.data, self.train_config, checkpoint_dir)
        self.history = trainer.fit(resume=resume, progress=progress)
        self.module.cpu()
        return self

    # ---- inference -------------------------------------------------------------------------------
    def cell_data(self, adata: ad.AnnData) -> CellData:
        """``adata`` as this model reads it: same matrix, genes aligned by name."""
        return CellData(
            adata, layer=self.spec.layer, use_raw=self.spec.use_raw, genes=self.genes,
            kind=self.spec.kind, batch_key=self.batch_key if self.batch_key in adata.obs else None,
            batch_categories=self.batch_categories,
        )

    @torch.no_grad()
    def embed(self, adata: ad.AnnData | None = None, batch_size: int = 1024, device: str = "auto") -> np.ndarray:
        """Cell embeddings (cells × latent_dim) for ``adata`` (default: the training cells).

        Genes are matched to the model's by name; missing genes are zero-filled with a warning.
        Store the result under ``adata.obsm["X_scssl"]``.
        """
        data = self.data if adata is None else self.cell_data(adata)
        if data is None:
            raise ValueError("pass the AnnData to embed")
        device = resolve_device(device)
        module = self.module.to(device).eval()
        out = [module.embed(module.transform(x)).float().cpu() for _, x in data.batches(batch_size, device=device)]
        module.cpu()
        if not out:  # an AnnData without cells
            return np.zeros((0, self.config.latent_dim), dtype=np.float32)
        return torch.cat(out).numpy()

    get_latent_representation = embed

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> None:
        """Write ``config.json`` + ``weights.safetensors`` into folder ``path``.

        Each file is written beside its target and renamed into place, weights first; the
        config records the weights' checksum, so a half-finished save is detected on load.
        An existing model is never replaced unless ``overwrite=True``.
        """
        path = Path(path)
        if (path / "config.json").exists() and not overwrite:
            raise FileExistsError(f"{path} already holds a model; pass overwrite=True or choose another folder")
        path.mkdir(parents=True, exist_ok=True)
        sha = save_tensors(path / "weights.safetensors", self.module.state_dict())
        save_json(path / "config.json", {
            "format_version": FORMAT_VERSION, "scssl_version": __version__,
            "method": self.method_name, "hyperparameters": self.config.to_dict(),
            "genes": self.genes, "input": asdict(self.spec),
            "batch_key": self.batch_key, "batch_categories": self.batch_categories,
            "training": self._training_record(),
            "history": self.history, "weights_sha256": sha,
        })

    def _training_record(self) -> dict[str, Any] | None:
        """How the weights were trained, for ``config.json``: the fit's settings, or the federation's."""
        if self.train_config is not None:
            return asdict(self.train_config)
        return None if self.federation is None else {"federated": self.federation}

    @classmethod
    def load(cls, path: str | Path, adata: ad.AnnData | None = None) -> SSLModel:
        """Load a folder written by :meth:`save` (no unpickling; the weights' checksum is verified).

        Parameters
        ----------
        path
            Model folder.
        adata
            Optional cells to continue training on (aligned to the model's genes).
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"model folder {path} not found")
        config = load_json(path / "config.json")
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has model format {config.get('format_version')}; this scssl reads {FORMAT_VERSION}")
        state = load_tensors(path / "weights.safetensors", config["weights_sha256"])
        # Models saved before the target sum was a buffer all normalised cells to 1e4 counts.
        state.setdefault("transform.target_sum", torch.tensor(1e4))
        model = cls.from_vocabulary(
            config["genes"], MatrixSpec(**config["input"]), config["method"],
            batch_key=config["batch_key"], batch_categories=config["batch_categories"], seed=None,
            **config["hyperparameters"],
        )
        model.history = config["history"]
        try:
            model.module.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"weights in {path} do not fit its config.json: {err}") from None
        model.module.eval()
        if adata is not None:
            model.data = model.cell_data(adata)
        return model


__all__ = ["SSLModel", "DataError"]
