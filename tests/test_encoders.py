"""Encoders: the transformer over top-k gene tokens."""

from __future__ import annotations

import pytest
import torch

from scssl.encoders import ENCODERS, TransformerEncoder, build_encoder


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder(**options) -> TransformerEncoder:
    torch.manual_seed(0)
    return build_encoder("transformer", 40, latent_dim=8, dropout=0.0, d_model=16, n_layers=1,
                         n_heads=2, top_k=5, hidden=(512, 256), input_dropout=0.1, norm="layer", **options)


def test_registered_and_shape():
    assert ENCODERS["transformer"] is TransformerEncoder
    encoder = _encoder()
    z = encoder(torch.randn(7, 40))
    assert z.shape == (7, 8) and torch.isfinite(z).all()


@pytest.mark.parametrize("value_encoding", ["binned", "rank"])
def test_only_top_k_genes_matter(value_encoding):
    encoder = _encoder(value_encoding=value_encoding).eval()
    x = torch.randn(4, 40)
    x[:, :5] = 8.0 + torch.arange(5.0)  # genes 0-4 are each cell's top 5
    changed = x.clone()
    changed[:, 10:] = torch.randn(4, 30).clamp(max=2.0)  # below the top 5: invisible
    assert torch.allclose(encoder(x), encoder(changed), atol=1e-6)
    promoted = x.clone()
    promoted[:, 20] = 20.0  # a new top gene changes the embedding
    assert not torch.allclose(encoder(x), encoder(promoted), atol=1e-4)


def test_binned_values_change_the_embedding():
    encoder = _encoder().eval()
    x = torch.full((2, 40), -3.0)
    x[:, :5] = 4.5
    y = x.clone()
    y[:, :5] = 0.5  # same top genes, lower bins
    assert not torch.allclose(encoder(x), encoder(y), atol=1e-4)


def test_gradients_reach_gene_embeddings_and_cell_token():
    encoder = _encoder()
    encoder(torch.randn(6, 40)).pow(2).sum().backward()
    assert encoder.cell_token.grad.abs().sum() > 0
    assert encoder.gene_embedding.weight.grad.abs().sum() > 0


def test_top_k_capped_at_vocabulary_and_bad_option_named():
    assert build_encoder("transformer", 10, top_k=256).top_k == 10
    with pytest.raises(ValueError, match="value_encoding"):
        build_encoder("transformer", 10, value_encoding="raw")


def test_transformer_keeps_attention_weights_undropped_for_the_fused_kernel():
    encoder = TransformerEncoder(50, dropout=0.3, top_k=8, d_model=16)
    assert all(layer.self_attn.dropout == 0.0 for layer in encoder.transformer.layers)
    assert all(layer.dropout1.p == 0.3 for layer in encoder.transformer.layers)  # residual dropout stays
