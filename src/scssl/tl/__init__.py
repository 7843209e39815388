"""Downstream tools (``scssl.tl``) on embeddings and fitted models.

Each function takes an AnnData (and a fitted model where it needs one), writes its results
under documented ``.obs``/``.obsm``/``.uns`` keys and returns a small record of scores.
"""

from scssl.tl.annotate import AnnotationResult, annotate
from scssl.tl.cluster import cluster, umap
from scssl.tl.dropout import add_dropout
from scssl.tl.drug_response import drug_response
from scssl.tl.integrate import integrate_scores
from scssl.tl.protein import predict_protein
from scssl.tl.reconstruct import reconstruct

__all__ = [
    "AnnotationResult", "add_dropout", "annotate", "cluster", "drug_response", "integrate_scores",
    "predict_protein",
    "reconstruct", "umap",
]
