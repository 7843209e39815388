"""Cell-type annotation with a pre-trained encoder: linear probe, full fine-tuning or kNN.

The user's model is never modified: the encoder is deep-copied before any training. A
query (another dataset, e.g. another technology) is read through ``model.cell_data``,
so its genes are aligned to the model's by name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from torch import nn

from scssl.model import SSLModel
from scssl.tl._utils import get_labels, model_inputs, stratified_split
from scssl.train import cpu_threads, seeded

UNKNOWN = "unknown"
_MIN_STEPS = 300
_DEFAULTS = {"linear": {"epochs": 100, "lr": 1e-2}, "finetune": {"epochs": 20, "lr": 1e-3}}


@dataclass
class AnnotationResult:
    """Scores of an annotation run on the labelled test cells.

    Attributes
    ----------
    accuracy, macro_f1
        Over test cells whose type is in the reference; an ``"unknown"`` call counts as wrong.
    per_class_f1
        F1 per reference type (rare types included, so their failures stay visible).
    unknown_rate
        Fraction of those known-type test cells called ``"unknown"`` (false rejections).
    unseen_recall
        Fraction of test cells whose type is absent from the reference that were called
        ``"unknown"`` (``None`` when there are none).
    n_train, n_test
        Labelled cells used to train, and scored.
    mode
        ``"linear"``, ``"finetune"`` or ``"knn"``.
    """

    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float]
    unknown_rate: float
    unseen_recall: float | None
    n_train: int
    n_test: int
    mode: str
    classes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def annotate(
    model: SSLModel, ref: ad.AnnData, query: ad.AnnData | None = None, labels_key: str = "cell_type",
    mode: Literal["finetune", "linear", "knn"] = "finetune", n_shots: int | None = None,
    unknown_threshold: float = 0.5, *, outlier_pvalue: float | None = 0.01, epochs: int | None = None,
    lr: float | None = None, batch_size: int = 128, weight_decay: float = 1e-4, k: int = 15,
    test_fraction: float = 0.2, calibration_fraction: float = 0.1, embed_key: str = "X_scssl_annotate", seed: int = 0,
) -> AnnotationResult:
    """Train a cell-type classifier on ``ref`` and annotate ``query``.

    Parameters
    ----------
    model
        A fitted :class:`~scssl.SSLModel` (any method). Not modified.
    ref
        Labelled reference cells (same matrix kind as the model was trained on).
    query
        Cells to annotate. ``None`` holds out a stratified ``test_fraction`` of ``ref``
        (or, with ``n_shots``, every cell not drawn as a shot) and annotates ``ref``.
    labels_key
        ``.obs`` column with the cell types (in ``ref``; in ``query`` only for scoring).
    mode
        ``"linear"``: a linear head on the frozen encoder. ``"finetune"``: head and encoder
        trained together (encoder at a tenth of the head's learning rate). ``"knn"``:
        ``k``-nearest-neighbour vote on the frozen embedding.
    n_shots
        Few-shot: train on at most this many labelled cells per type.
    unknown_threshold
        Cells whose confidence (softmax maximum, or kNN vote fraction) is below this are
        called ``"unknown"``.
    outlier_pvalue
        Also call ``"unknown"`` the cells farther from the reference than all but this
        fraction of reference cells are from each other (mean distance to the ``k``
        nearest reference cells in the classifier's embedding). Softmax and vote fractions
        stay high for a type the reference lacks (it sits near *some* known type), the
        distance does not. ``None`` disables it.
    epochs, lr
        Head training (AdamW, class-weighted cross-entropy, seeded); defaults 100 epochs at
        1e-2 for ``"linear"``, 20 epochs at 1e-3 for ``"finetune"``. Small (few-shot)
        training sets get more epochs, up to 300 optimiser steps in all.
    batch_size, weight_decay
        Minibatch size and AdamW weight decay of the head training.
    k
        Neighbours for ``"knn"`` and for the reference-distance test.
    test_fraction
        Held-out fraction of ``ref`` when ``query`` is ``None``.
    calibration_fraction
        ``"finetune"`` only: labelled reference cells kept out of training to calibrate the
        reference-distance test.
    embed_key
        ``.obsm`` key for the embedding the classifier used (fine-tuned for ``"finetune"``).
    seed
        Seeds the split, the shots, the head's initialisation and batch order.

    Returns
    -------
    :class:`AnnotationResult` (scores are ``nan`` when the annotated cells have no labels).

    Writes
    ------
    On ``query`` (on ``ref`` when ``query`` is ``None``): ``.obs["scssl_prediction"]``
    (categorical: reference types and ``"unknown"``), ``.obs["scssl_confidence"]`` (softmax
    maximum or vote fraction), ``.obs["scssl_reference_pvalue"]`` (share of reference cells
    at least as far from the reference, 1 = typical), ``.obsm[embed_key]`` and
    ``.uns["scssl_annotate"]`` (the scores and settings). Without ``query`` also
    ``ref.obs["scssl_split"]`` (``"train"``/``"test"``).
    """
    if mode not in ("finetune", "linear", "knn"):
        raise ValueError(f"mode must be 'finetune', 'linear' or 'knn', got {mode!r}")
    if n_shots is not None and n_shots < 1:
        raise ValueError(f"n_shots must be at least 1 cell per type (or None for all), got {n_shots}")
    if not 0.0 <= unknown_threshold <= 1.0:
        raise ValueError(f"unknown_threshold is a confidence in [0, 1], got {unknown_threshold}")
    labels = get_labels(ref, labels_key)
    if query is None:
        train_idx, test_idx = _split_reference(labels, test_fraction, n_shots, seed)
        target, target_idx = ref, np.arange(ref.n_obs)
    else:
        train_idx = np.arange(ref.n_obs) if n_shots is None else _shots(labels, n_shots, seed)
        target, target_idx, test_idx = query, np.arange(query.n_obs), np.arange(query.n_obs)
    classes = sorted(np.unique(labels[train_idx]))
    y_train = torch.as_tensor(pd.Index(classes).get_indexer(labels[train_idx]))

    module = copy.deepcopy(model.module).cpu().eval()  # the user's model stays as it was
    z_calib, fit = None, np.arange(len(train_idx))
    _, x_train = model_inputs(model, ref, train_idx)
    _, x_target = model_inputs(model, target, target_idx)
    if mode == "knn":
        z_train, z_target = _embed(module, x_train), _embed(module, x_target)
        # With n_shots cells per type, more than n_shots neighbours would cap every vote below 1.
        n_neighbors = min(k, len(train_idx), n_shots or k)
        knn = KNeighborsClassifier(n_neighbors=n_neighbors).fit(z_train, y_train.numpy())
        proba = knn.predict_proba(z_target)
        code, confidence = proba.argmax(1), proba.max(1)
    else:
        settings = _DEFAULTS[mode]
        if mode == "finetune":
            # A fine-tuned encoder packs its own training cells tighter than new cells of the
            # same type; the reference distances are calibrated on labelled cells it never saw.
            fit, calib = stratified_split(labels[train_idx], calibration_fraction, seed)
            z_calib_input = x_train[calib]
        with seeded(seed):
            head = _train_head(
                module, x_train[fit], y_train[fit], len(classes), finetune=mode == "finetune",
                epochs=epochs or settings["epochs"], lr=lr or settings["lr"], batch_size=batch_size,
                weight_decay=weight_decay, seed=seed,
            )
        z_train, z_target = _embed(module, x_train[fit]), _embed(module, x_target)
        if mode == "finetune":
            z_calib = _embed(module, z_calib_input)
        with torch.no_grad():
            proba = torch.softmax(head(torch.as_tensor(z_target)), dim=1).numpy()
        code, confidence = proba.argmax(1), proba.max(1)

    pvalue = _reference_pvalue(z_train, z_target, k, z_calib)
    predicted = np.asarray(classes, dtype=object)[code]
    rejected = confidence < unknown_threshold
    if outlier_pvalue is not None:
        rejected |= pvalue < outlier_pvalue
    predicted[rejected] = UNKNOWN

    target.obs["scssl_prediction"] = pd.Categorical(predicted.astype(str), categories=[*classes, UNKNOWN])
    target.obs["scssl_confidence"] = confidence.astype(np.float32)
    target.obs["scssl_reference_pvalue"] = pvalue.astype(np.float32)
    target.obsm[embed_key] = z_target
    if query is None:
        split = np.full(ref.n_obs, "unused", dtype=object)
        split[train_idx], split[test_idx] = "train", "test"
        ref.obs["scssl_split"] = pd.Categorical(split.astype(str))

    truth = get_labels(target, labels_key) if labels_key in target.obs else None
    result = _score(truth, predicted.astype(str), test_idx, classes, mode, len(fit))
    target.uns["scssl_annotate"] = {
        **result.to_dict(), "unknown_threshold": unknown_threshold,
        "outlier_pvalue": -1.0 if outlier_pvalue is None else outlier_pvalue,  # h5py stores no None
        "n_shots": -1 if n_shots is None else n_shots, "labels_key": labels_key,
        "unseen_recall": np.nan if result.unseen_recall is None else result.unseen_recall,
    }
    return result


# ---- pieces --------------------------------------------------------------------------------------
def _shots(labels: np.ndarray, n_shots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:n_shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _split_reference(labels, test_fraction, n_shots, seed):
    if n_shots is None:
        return stratified_split(labels, test_fraction, seed)
    train = _shots(labels, n_shots, seed)
    return train, np.setdiff1d(np.arange(len(labels)), train)


@torch.no_grad()
def _embed(module, x: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    module.eval()
    return torch.cat([module.embed(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


@cpu_threads()
def _train_head(module, x, y, n_classes, *, finetune, epochs, lr, batch_size, weight_decay, seed) -> nn.Linear:
    """A linear head on the encoder (frozen, or trained at lr/10); class-weighted cross-entropy.
    Head weights and dropout draw on torch's global stream: call it under :func:`seeded`."""
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(module.config.latent_dim, n_classes)
    counts = torch.bincount(y, minlength=n_classes).float()
    # Inverse-frequency weights: without them a 14-cell type is simply never predicted.
    weight = counts.sum() / (n_classes * counts.clamp_min(1.0))
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    groups = [{"params": head.parameters(), "lr": lr}]
    if finetune:
        groups.append({"params": module.encoder.parameters(), "lr": lr * 0.1})
        features = x
    else:
        for p in module.parameters():
            p.requires_grad_(False)
        features = torch.as_tensor(_embed(module, x))  # frozen: embed once, train on the embedding
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    module.train(finetune)
    steps_per_epoch = -(-len(y) // batch_size)
    # Few-shot sets are one minibatch an epoch: give them enough optimiser steps to converge.
    for _ in range(max(epochs, -(-_MIN_STEPS // steps_per_epoch))):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            if finetune and len(idx) < 2:
                continue  # batch norm cannot train on a single cell
            z = module.embed(features[idx]) if finetune else features[idx]
            loss = loss_fn(head(z), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    module.eval()
    head.eval()
    return head


def _reference_pvalue(z_ref: np.ndarray, z_query: np.ndarray, k: int, z_calib: np.ndarray | None = None) -> np.ndarray:
    """Share of calibration cells at least as far from the reference as each query cell.

    Distance = mean distance to the ``k`` nearest reference cells. Calibration cells are
    ``z_calib`` when given, else the reference cells themselves (leaving each one out).
    """
    k = max(1, min(k, len(z_ref) - 1))
    nn_ref = NearestNeighbors(n_neighbors=k + 1).fit(z_ref)
    if z_calib is None:
        ref_dist = np.sort(nn_ref.kneighbors(z_ref)[0][:, 1:].mean(1))  # column 0 is the cell itself
    else:
        ref_dist = np.sort(nn_ref.kneighbors(z_calib, n_neighbors=k)[0].mean(1))
    query_dist = nn_ref.kneighbors(z_query, n_neighbors=k)[0].mean(1)
    at_least = len(ref_dist) - np.searchsorted(ref_dist, query_dist, side="left")
    return (at_least + 1) / (len(ref_dist) + 1)


def _score(truth, predicted, test_idx, classes, mode, n_train) -> AnnotationResult:
    if truth is None or len(test_idx) == 0:
        nan = float("nan")
        return AnnotationResult(nan, nan, {}, nan, None, n_train, 0, mode, list(classes))
    truth, predicted = truth[test_idx], predicted[test_idx]
    known = np.isin(truth, classes)
    t, p = truth[known], predicted[known]
    # Types of the reference absent from these test cells would score 0 and are left out.
    present = [c for c in classes if c in set(t)]
    per_class = f1_score(t, p, labels=present, average=None, zero_division=0) if known.any() else []
    unseen = ~known
    return AnnotationResult(
        accuracy=float((t == p).mean()) if known.any() else float("nan"),
        macro_f1=float(np.mean(per_class)) if known.any() else float("nan"),
        per_class_f1={c: float(f) for c, f in zip(present, per_class, strict=True)},
        unknown_rate=float((p == UNKNOWN).mean()) if known.any() else float("nan"),
        unseen_recall=float((predicted[unseen] == UNKNOWN).mean()) if unseen.any() else None,
        n_train=n_train, n_test=len(test_idx), mode=mode, classes=list(classes),
    )
