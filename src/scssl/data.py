"""CellData: the one place that reads AnnData matrices.

Everything downstream sees dense float32 tensors in the model's gene order. The user's
matrix is never modified: alignment to a gene vocabulary, densification and
normalisation all happen per minibatch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

log = logging.getLogger("scssl")

InputKind = Literal["counts", "lognorm"]
_CHUNK_ROWS = 8192  # rows per chunk when scanning a matrix (bounded memory on large/backed data)


class DataError(ValueError):
    """Raised for input that scssl cannot use; the message names the problem and the fix."""


@dataclass(frozen=True)
class MatrixSpec:
    """Which matrix of an AnnData holds the model's input, and what it contains.

    Attributes
    ----------
    layer
        Name of the layer, or ``None`` for ``.X`` (or ``.raw.X`` when ``use_raw``).
    use_raw
        Read ``adata.raw.X`` instead of ``.X``.
    kind
        ``"counts"`` (raw counts; normalised + log1p inside the model) or ``"lognorm"``
        (already log-normalised; used as is).
    """

    layer: str | None = None
    use_raw: bool = False
    kind: InputKind = "counts"


def _select_matrix(adata: ad.AnnData, layer: str | None, use_raw: bool):
    if use_raw and layer is not None:
        raise DataError("pass either layer=... or use_raw=True, not both")
    if use_raw:
        if adata.raw is None:
            raise DataError("use_raw=True but adata.raw is None; pass layer=... or use_raw=False")
        return adata.raw.X, pd.Index(adata.raw.var_names)
    if layer is not None:
        if layer not in adata.layers:
            available = ", ".join(map(repr, adata.layers.keys())) or "none"
            raise DataError(f"layer {layer!r} not found; available layers: {available}")
        return adata.layers[layer], pd.Index(adata.var_names)
    return adata.X, pd.Index(adata.var_names)


def _chunks(matrix, n_rows: int) -> Iterator[np.ndarray | sp.csr_matrix]:
    for start in range(0, n_rows, _CHUNK_ROWS):
        yield matrix[start : min(start + _CHUNK_ROWS, n_rows)]


def _values(chunk) -> np.ndarray:
    """The stored values of a chunk (non-zeros for sparse, everything for dense)."""
    if sp.issparse(chunk):
        return np.asarray(chunk.data)
    return np.asarray(chunk).ravel()


def _where(layer: str | None, use_raw: bool) -> str:
    return "adata.raw.X" if use_raw else (f"layer {layer!r}" if layer else "X")


def inspect_matrix(matrix, n_rows: int, where: str) -> dict:
    """Scan a matrix in chunks: finiteness, sign, integrality and empty cells.

    Raises
    ------
    DataError
        On non-finite or negative values, naming the fix.
    """
    integral, n_empty = True, 0
    for chunk in _chunks(matrix, n_rows):
        values = _values(chunk)
        if not np.isfinite(values).all():
            raise DataError(f"{where} holds NaN or infinite values; fix or drop those cells first")
        if (values < 0).any():
            raise DataError(
                f"{where} holds negative values (it looks scaled or centred); scssl needs raw counts "
                "or log-normalised values: pass layer='counts' (or the layer with counts), "
                "use_raw=True, or undo sc.pp.scale"
            )
        if integral and not np.equal(np.mod(values, 1), 0).all():
            integral = False
        nonzero = chunk.getnnz(axis=1) if sp.issparse(chunk) else (np.asarray(chunk) != 0).sum(1)
        n_empty += int((np.asarray(nonzero) == 0).sum())
    return {"integral": integral, "n_empty": n_empty}


class CellData:
    """A validated, read-only view of one AnnData matrix, aligned to a gene vocabulary.

    Parameters
    ----------
    adata
        The cells, in memory or opened with ``backed="r"``.
    layer, use_raw
        Which matrix holds the expression values (default ``.X``).
    genes
        The model's gene vocabulary. ``None`` uses the data's own genes (training).
        Otherwise columns are matched by name: missing genes are zero-filled (and reported),
        extra genes are ignored.
    kind
        ``"counts"``, ``"lognorm"`` or ``"auto"`` (integral values ⇒ counts).
    require_counts
        Fail unless the values are integral counts (for count likelihoods such as NB/ZINB).
    batch_key
        Optional ``.obs`` column with batch labels, exposed as integer codes.
    """

    def __init__(
        self,
        adata: ad.AnnData,
        *,
        layer: str | None = None,
        use_raw: bool = False,
        genes: Sequence[str] | None = None,
        kind: InputKind | Literal["auto"] = "auto",
        require_counts: bool = False,
        batch_key: str | None = None,
        batch_categories: Sequence[str] | None = None,
    ) -> None:
        matrix, var_names = _select_matrix(adata, layer, use_raw)
        if not var_names.is_unique:
            dup = var_names[var_names.duplicated()].unique()
            raise DataError(
                f"gene names are not unique ({len(dup)} duplicated, e.g. {list(dup[:3])}); "
                "run adata.var_names_make_unique() first"
            )
        self.matrix = matrix
        self.n_cells = adata.n_obs
        self.obs_names = pd.Index(adata.obs_names)
        where = _where(layer, use_raw)
        stats = inspect_matrix(matrix, self.n_cells, where)
        if stats["n_empty"]:
            raise DataError(
                f"{stats['n_empty']} cells have no non-zero gene in {where}; remove them with "
                "sc.pp.filter_cells(adata, min_genes=1)"
            )
        if kind == "auto":
            kind = "counts" if stats["integral"] else "lognorm"
        if (require_counts or kind == "counts") and not stats["integral"]:
            raise DataError(
                f"{where} holds non-integer values, but raw counts are needed here "
                f"({'a count likelihood was chosen' if require_counts else 'kind=counts'}): "
                "pass layer=... with raw counts, or use loss='mse' on log-normalised values"
            )
        self.spec = MatrixSpec(layer=layer, use_raw=use_raw, kind=kind)
        self.data_genes = var_names
        self.genes = pd.Index(genes) if genes is not None else var_names
        self._selector = self._build_selector(var_names, self.genes)
        self.batch_key = batch_key
        self.batch_codes, self.batch_categories = self._batch_codes(adata, batch_key, batch_categories)

    # ---- alignment -----------------------------------------------------------------------------
    @staticmethod
    def _build_selector(data_genes: pd.Index, model_genes: pd.Index) -> sp.csr_matrix | None:
        """Sparse (n_data_genes × n_model_genes) 0/1 matrix mapping data columns to model columns.

        ``None`` means the two vocabularies are identical (no work per batch).
        """
        if data_genes.equals(model_genes):
            return None
        positions = data_genes.get_indexer(model_genes)
        found = positions >= 0
        n_found = int(found.sum())
        if n_found == 0:
            raise DataError(
                "no shared genes between model and data; check that both use the same gene "
                f"identifiers (model: {list(model_genes[:3])}…, data: {list(data_genes[:3])}…)"
            )
        n_missing = len(model_genes) - n_found
        if n_missing:
            warnings.warn(
                f"{n_missing} of {len(model_genes)} model genes are missing from the data and are "
                f"zero-filled ({n_found} shared); {len(data_genes) - n_found} extra data genes ignored",
                stacklevel=3,
            )
        cols = np.flatnonzero(found)
        return sp.csr_matrix(
            (np.ones(n_found, np.float32), (positions[found], cols)),
            shape=(len(data_genes), len(model_genes)),
        )

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_shared_genes(self) -> int:
        return self.n_genes if self._selector is None else int(self._selector.nnz)

    @staticmethod
    def _batch_codes(adata, batch_key, categories):
        if batch_key is None:
            return None, None
        if batch_key not in adata.obs:
            raise DataError(f"batch_key {batch_key!r} is not a column of adata.obs; columns: {list(adata.obs)}")
        labels = adata.obs[batch_key]
        if labels.isna().any():
            raise DataError(
                f"adata.obs[{batch_key!r}] has {int(labels.isna().sum())} missing values; "
                "fill them (e.g. with 'unknown') before training"
            )
        labels = labels.astype(str)
        categories = pd.Index(categories if categories is not None else sorted(labels.unique()))
        codes = categories.get_indexer(labels)
        # Batches unseen in training get code -1: methods treat them as "no batch information".
        return codes.astype(np.int64), list(categories)

    # ---- minibatches ---------------------------------------------------------------------------
    def rows(self, index: np.ndarray):
        """Rows ``index`` (any order) in model gene order, still sparse when stored sparse."""
        order = np.argsort(index)
        sorted_index = np.asarray(index)[order]
        block = self.matrix[sorted_index]  # backed files need sorted indices
        if self._selector is not None:
            block = block @ self._selector
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return block[inverse]

    def to_tensor(self, index: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """Dense float32 tensor of rows ``index`` on ``device``; sparse rows are densified there."""
        block = self.rows(index)
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            if torch.device(device).type == "cpu":
                return torch.from_numpy(block.toarray().astype(np.float32, copy=False))
            # Ship only the non-zeros to the accelerator and densify there.
            rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
            sparse = torch.sparse_coo_tensor(
                torch.from_numpy(np.vstack([rows, block.indices]).astype(np.int64)),
                torch.from_numpy(block.data.astype(np.float32)), size=block.shape,
            )
            return sparse.to(device, non_blocking=True).to_dense()
        return torch.as_tensor(np.asarray(block, dtype=np.float32), device=device)

    def batches(
        self,
        batch_size: int,
        index: np.ndarray | None = None,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(cell_index, dense_tensor)`` minibatches over ``index`` (default: all cells)."""
        index = np.arange(self.n_cells) if index is None else np.asarray(index)
        if shuffle:
            index = index[torch.randperm(len(index), generator=generator).numpy()]
        stop = len(index) - (len(index) % batch_size if drop_last and len(index) > batch_size else 0)
        for start in range(0, stop, batch_size):
            batch = index[start : start + batch_size]
            yield batch, self.to_tensor(batch, device)
