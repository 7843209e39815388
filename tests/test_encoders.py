"""Encoders: the transformer over top-k gene tokens; batch norm over processes."""

from __future__ import annotations

import pytest
import torch

from scssl.encoders import ENCODERS, BatchNorm1d, TransformerEncoder, build_encoder


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


def test_genes_at_or_below_min_value_are_padding():
    x = torch.full((3, 40), -1.0)
    x[:, :3] = torch.tensor([3.0, 2.0, 1.0])  # 3 genes above their mean; the top 5 adds 2 below
    changed = x.clone()
    changed[:, 30:] = -0.5  # new genes at rank 4-5, still below the mean
    masked = x.clone()
    masked[:, 10:20] = 0.0  # a masked autoencoder's zeroed genes (value = the training mean)
    encoder = _encoder().eval()
    assert torch.allclose(encoder(x), encoder(changed), atol=1e-6)
    assert torch.allclose(encoder(x), encoder(masked), atol=1e-6)
    keep_all = _encoder(min_value=None).eval()
    assert not torch.allclose(keep_all(x), keep_all(changed), atol=1e-4)


def test_cell_without_genes_above_min_value_gets_a_finite_embedding():
    encoder = _encoder().eval()
    z = encoder(torch.cat([torch.full((1, 40), -1.0), torch.randn(1, 40) + 1.0]))
    assert torch.isfinite(z).all()


def test_pooling_mean_or_cell_token():
    x = torch.randn(4, 40)
    mean, cls = _encoder().eval(), _encoder(pooling="cls").eval()  # same seed: same weights
    assert mean.pooling == "mean" and not torch.allclose(mean(x), cls(x), atol=1e-4)
    tokens, pad = mean.tokens(x)
    key_pad = torch.cat([torch.zeros(4, 1, dtype=torch.bool), pad], 1)
    out = mean.transformer(torch.cat([mean.cell_token.expand(4, -1, -1), tokens], 1),
                           src_key_padding_mask=key_pad)
    keep = (~pad).unsqueeze(-1).float()  # mean over unpadded gene tokens; "cls": the cell token
    expected = mean.head(mean.norm((out[:, 1:] * keep).sum(1) / keep.sum(1)))
    assert torch.allclose(mean(x), expected, atol=1e-5)
    assert torch.allclose(cls(x), cls.head(cls.norm(out[:, 0])), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        _encoder(pooling="max")


def test_embeddings_start_small():
    encoder = _encoder()
    assert encoder.gene_embedding.weight.std() < 0.01
    assert encoder.value_embedding.weight.std() < 0.01
    assert _encoder(init_std=1.0).gene_embedding.weight.std() > 0.5


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


def test_batch_norm_over_processes_keeps_float32_statistics_under_bf16_autocast():
    """The distributed branch of ``BatchNorm1d`` (here over one process) under the autocast
    that CUDA and ``amp=True`` train with: bf16 in and out, statistics as torch's in float32."""
    torch.manual_seed(0)
    linear, spanning, reference = torch.nn.Linear(20, 8), BatchNorm1d(8), torch.nn.BatchNorm1d(8)
    spanning.spans_processes = True
    x = torch.randn(64, 20) * 3 + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        out = spanning(h)
    assert h.dtype == out.dtype == torch.bfloat16
    expected = reference(h.float())
    assert torch.allclose(out.float(), expected, atol=0.05)  # bf16 keeps ~3 significant digits
    assert torch.allclose(spanning.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(spanning.running_var, reference.running_var, atol=1e-5)
    assert spanning.running_mean.dtype == torch.float32
