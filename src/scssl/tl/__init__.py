"""Downstream tools (``scssl.tl``) on embeddings and fitted models."""
