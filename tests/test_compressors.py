"""brainkit.generation: Perceiver resampler and the adaptive-pool compressor."""

import pytest
import torch

from brainkit.errors import ConfigError, DataError
from brainkit.generation import AdaptivePoolCompressor, PerceiverResampler, make_compressor


def test_perceiver_shapes_and_order_invariance():
    torch.manual_seed(0)
    r = PerceiverResampler(32, num_latents=8, depth=2).eval()
    x = torch.randn(3, 50, 32)
    out = r(x)
    assert out.shape == (3, 8, 32)
    perm = torch.randperm(50)
    torch.testing.assert_close(r(x[:, perm]), out, atol=1e-5, rtol=1e-5)
    assert (r(x[[1, 0, 2]])[0] - out[1]).abs().max() < 1e-5  # samples do not mix


def test_perceiver_padding_mask_ignores_padded_tokens():
    torch.manual_seed(0)
    r = PerceiverResampler(16, num_latents=4, depth=2).eval()
    x = torch.randn(1, 10, 16)
    padded = torch.cat([x, 100 * torch.randn(1, 5, 16)], 1)
    mask = torch.zeros(1, 15, dtype=torch.bool)
    mask[:, 10:] = True
    torch.testing.assert_close(r(padded, key_padding_mask=mask), r(x), atol=1e-5, rtol=1e-5)


def test_perceiver_learns_through_gradients():
    r = PerceiverResampler(16, num_latents=4)
    r(torch.randn(2, 9, 16)).sum().backward()
    assert r.latents.grad is not None and r.latents.grad.abs().sum() > 0


def test_pool_matches_block_means_and_keeps_order():
    x = torch.arange(64.0).reshape(1, 64, 1).expand(2, 64, 3)
    out = AdaptivePoolCompressor(8)(x)
    assert out.shape == (2, 8, 3)
    torch.testing.assert_close(out[0, :, 0], x[0, :, 0].reshape(8, 8).mean(1))
    assert torch.all(out[0, 1:, 0] > out[0, :-1, 0])


def test_make_compressor_and_errors():
    assert isinstance(make_compressor("pool", 16, 4), AdaptivePoolCompressor)
    assert make_compressor("perceiver", 16, 4).num_latents == 4
    with pytest.raises(ConfigError, match="compressor"):
        make_compressor("qformer", 16)
    with pytest.raises(ConfigError, match="divisible"):
        PerceiverResampler(10, heads=4)
    with pytest.raises(DataError, match="feature size 16"):
        PerceiverResampler(16)(torch.randn(1, 5, 8))
    with pytest.raises(DataError, match=r"\(B, N, dim\)"):
        AdaptivePoolCompressor(4)(torch.randn(5, 8))
