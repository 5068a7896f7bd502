"""Token compressors: many vision tokens in, a fixed small number out.

Introduced in ``04_inflating_encoders`` (token counts per input size) and used by the report generator of
``05_braingemma3d_training`` (BrainGemma3D, METHODS.md §B). A 3D tower yields hundreds or thousands of
tokens; the language model gets 32.

- :class:`PerceiverResampler` (the model card, default): ``L`` learned latent vectors cross-attend
  to the tokens, then pass a feed-forward block, ``depth`` times (Flamingo's resampler: keys and
  values are the tokens concatenated with the latents). No position information is added, so the
  output does not depend on the order of the input tokens.
- :class:`AdaptivePoolCompressor` (the released code): adaptive average pooling over the token
  axis to ``L`` tokens, in the tokens' order; no parameters.

Both take ``(B, N, dim)`` and return ``(B, L, dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from ..errors import ConfigError, DataError

__all__ = ["PerceiverResampler", "AdaptivePoolCompressor", "make_compressor", "COMPRESSORS"]

COMPRESSORS = ("perceiver", "pool")


def _check_tokens(tokens: torch.Tensor, dim: int | None) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 3:
        raise DataError(None, "tokens", "a (B, N, dim) tensor",
                        tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__)
    if tokens.shape[1] < 1:
        raise DataError(None, "tokens", "at least one token", tuple(tokens.shape))
    if dim is not None and tokens.shape[2] != dim:
        raise DataError(None, "tokens", f"feature size {dim}", tokens.shape[2])


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None):
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_tokens(tokens), q], 1)
        mask = None
        if key_padding_mask is not None:
            pad_lat = torch.zeros(latents.shape[:2], dtype=torch.bool, device=latents.device)
            mask = torch.cat([key_padding_mask.bool(), pad_lat], 1)
        out, _ = self.attn(q, kv, kv, key_padding_mask=mask, need_weights=False)
        latents = latents + out
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """``num_latents`` learned queries that cross-attend to the tokens (``depth`` layers, default 2
    with 32 latents, as the card). ``forward(tokens (B, N, dim), key_padding_mask=None) -> (B, L, dim)``;
    ``key_padding_mask`` is True where a token is padding."""

    def __init__(self, dim: int, num_latents: int = 32, depth: int = 2, heads: int = 4, ff_mult: int = 2):
        super().__init__()
        if num_latents < 1 or depth < 1:
            raise ConfigError(f"PerceiverResampler: expected num_latents >= 1 and depth >= 1, found "
                              f"{num_latents}, {depth}")
        if dim % heads:
            raise ConfigError(f"PerceiverResampler: dim {dim} is not divisible by heads {heads}")
        self.dim, self.num_latents = int(dim), int(num_latents)
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * dim ** -0.5)
        self.layers = nn.ModuleList(_PerceiverLayer(dim, heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(tokens, self.dim)
        x = self.latents.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, tokens, key_padding_mask)
        return self.norm(x)


class AdaptivePoolCompressor(nn.Module):
    """The released code's compressor: ``adaptive_avg_pool1d`` over the token axis to ``num_tokens``.
    Token ``j`` of the output is the mean of a contiguous run of about ``N / num_tokens`` inputs."""

    def __init__(self, num_tokens: int = 32):
        super().__init__()
        if num_tokens < 1:
            raise ConfigError(f"AdaptivePoolCompressor: expected num_tokens >= 1, found {num_tokens}")
        self.num_latents = int(num_tokens)

    def forward(self, tokens: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_tokens(tokens, None)
        if key_padding_mask is not None:
            raise ConfigError("AdaptivePoolCompressor does not take a key_padding_mask (it pools in order)")
        return nnf.adaptive_avg_pool1d(tokens.transpose(1, 2), self.num_latents).transpose(1, 2)


def make_compressor(kind: str, dim: int, num_tokens: int = 32, depth: int = 2, heads: int = 4) -> nn.Module:
    """``"perceiver"`` -> :class:`PerceiverResampler`, ``"pool"`` -> :class:`AdaptivePoolCompressor`."""
    if kind == "perceiver":
        return PerceiverResampler(dim, num_latents=num_tokens, depth=depth, heads=heads)
    if kind == "pool":
        return AdaptivePoolCompressor(num_tokens)
    raise ConfigError(f"compressor: expected one of {', '.join(COMPRESSORS)}, found {kind!r}")
