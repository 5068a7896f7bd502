"""Inflating a pretrained 2D vision tower (SigLIP / MedSigLIP, CLIP) into a 3D one.

Introduced in ``04_inflating_encoders`` (BrainGemma3D); ``05_braingemma3d_training`` and
``06_braingemma3d_evaluation`` use the inflated tower as the report generator's vision side.

A 2D ViT cuts an image into ``p x p`` patches with a ``Conv2d`` (kernel = stride = ``p``) and adds
one learned position vector per patch. Inflation makes the patch embedding a ``Conv3d`` with a
depth kernel ``t`` and depth stride ``s`` (the released code: kernel (2, 14, 14), stride
(1, 14, 14); default here: stride = kernel, non-overlapping slabs), so a volume ``(B, 1, D, H, W)`` becomes a grid of ``D' x H' x W'`` tokens that
the *unchanged* transformer layers read. Two initialisations of the 3D kernel ``W3`` from the 2D
kernel ``W2``:

- ``"centre"`` (the model card): ``W3[:, :, c] = W2`` at the centre depth ``c = t // 2``, zeros
  elsewhere. Each token sees the centre slice of its slab exactly as the 2D model saw the image.
- ``"mean"`` (the released code, I3D): ``W3[:, :, k] = W2 / t`` for every ``k``. A volume whose ``t``
  slices are the same image gives exactly the 2D patch embedding.

The 2D kernel reads RGB; a FLAIR volume has one channel. ``rgb="sum"`` folds the three input
channels by summing (so a grey image, which a 2D model sees as three equal channels, gives the
same features); ``rgb="mean"`` averages them as the released code does (features of the grey
image divided by three, before the bias).

Position embeddings: ``pos="interpolate"`` (default) resizes the pretrained 2D grid of vectors
bicubically to the ``H' x W'`` token grid and shares it across depth, plus a learned depth
embedding initialised to zero, so at initialisation an inflated tower fed identical slices
reproduces the 2D model's token features at every depth. ``pos="fixed"`` is the released code's
choice: the pretrained embedding is discarded for a fixed (not learned) code of the normalised
``linspace`` coordinates of each token.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as nnf
from torch import nn

from ...errors import ConfigError, DataError
from ...generation import check_volume

__all__ = ["inflate_patch_kernel", "InflatedEmbeddings", "VisionTower3D", "inflate_vision_tower",
           "token_grid", "fixed_position_code", "INITS", "POSITIONS"]

log = logging.getLogger(__name__)

INITS = ("centre", "mean")
POSITIONS = ("interpolate", "fixed")


def inflate_patch_kernel(weight2d: torch.Tensor, depth: int, init: str = "centre", rgb: str = "sum",
                         in_channels: int = 1) -> torch.Tensor:
    """The 3D patch kernel ``(out, in_channels, depth, kh, kw)`` made from a 2D one ``(out, C, kh, kw)``.

    ``init``: ``"centre"`` (2D kernel in the centre depth slice ``depth // 2``, zeros elsewhere) or
    ``"mean"`` (2D kernel repeated over depth and divided by ``depth``). ``rgb``: how ``C`` input
    channels fold into ``in_channels=1``: ``"sum"`` or ``"mean"``; with ``in_channels == C`` the
    channels are kept.
    """
    if init not in INITS:
        raise ConfigError(f"init: expected one of {', '.join(INITS)}, found {init!r}")
    if rgb not in ("sum", "mean"):
        raise ConfigError(f"rgb: expected 'sum' or 'mean', found {rgb!r}")
    if weight2d.dim() != 4:
        raise ConfigError(f"weight2d: expected a Conv2d kernel (out, C, kh, kw), found {tuple(weight2d.shape)}")
    if int(depth) < 1:
        raise ConfigError(f"depth kernel: expected >= 1, found {depth}")
    w = weight2d.detach()
    if in_channels == 1 and w.shape[1] != 1:
        w = w.sum(1, keepdim=True) if rgb == "sum" else w.mean(1, keepdim=True)
    elif in_channels != w.shape[1]:
        raise ConfigError(f"in_channels: expected 1 or {w.shape[1]} (the 2D kernel's), found {in_channels}")
    out = torch.zeros(w.shape[0], w.shape[1], int(depth), w.shape[2], w.shape[3], dtype=w.dtype, device=w.device)
    if init == "centre":
        out[:, :, int(depth) // 2] = w
    else:
        out[:] = (w / int(depth)).unsqueeze(2)
    return out


def token_grid(spatial: tuple[int, int, int], kernel: tuple[int, int, int], stride: tuple[int, int, int]
               ) -> tuple[int, int, int]:
    """Tokens along (D, H, W) of a valid (unpadded) Conv3d: ``floor((n - k) / s) + 1`` per axis.

    A volume smaller than one patch along any axis raises :class:`DataError`.
    """
    out = []
    for axis, n, k, s in zip("DHW", spatial, kernel, stride):
        if n < k:
            raise DataError(None, "volume", f"at least one patch ({k} voxels) along {axis}",
                            f"{n} voxels (spatial size {tuple(spatial)}, patch {tuple(kernel)})")
        out.append((n - k) // s + 1)
    return tuple(out)  # type: ignore[return-value]


def fixed_position_code(grid: tuple[int, int, int], dim: int, device=None, dtype=None) -> torch.Tensor:
    """The released code's kind of fixed position code: for each token, its ``linspace(-1, 1)``
    coordinates along D, H and W, expanded with sines and cosines at octave frequencies and padded
    to ``dim`` channels. Not learned; the pretrained 2D embedding is not used. ``(N, dim)``."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device) if n > 1 else torch.zeros(1, device=device) for n in grid]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    coords = torch.stack([d, h, w], -1).reshape(-1, 3)  # (N, 3)
    n_freq = max(1, dim // 6)
    freqs = (2.0 ** torch.arange(n_freq, device=device, dtype=torch.float32)) * math.pi / 2
    ang = coords[:, :, None] * freqs  # (N, 3, F)
    code = torch.cat([ang.sin(), ang.cos()], -1).reshape(coords.shape[0], -1)
    if code.shape[1] < dim:
        code = nnf.pad(code, (0, dim - code.shape[1]))
    return code[:, :dim].to(dtype=dtype or torch.float32)


class InflatedEmbeddings(nn.Module):
    """Drop-in replacement of a SigLIP / CLIP ``*VisionEmbeddings`` that reads a 5D volume.

    Same call signature (``forward(pixel_values, interpolate_pos_encoding=False)``) so the vision
    model's own ``forward`` runs unchanged; returns ``(B, N, dim)`` tokens (CLIP: a class token
    first). Built by :func:`inflate_vision_tower`.
    """

    def __init__(self, embeddings2d: nn.Module, *, depth_kernel: int = 2, depth_stride: int | None = None,
                 init: str = "centre", pos: str = "interpolate", rgb: str = "sum"):
        super().__init__()
        if pos not in POSITIONS:
            raise ConfigError(f"pos: expected one of {', '.join(POSITIONS)}, found {pos!r}")
        conv2d = embeddings2d.patch_embedding
        if not isinstance(conv2d, nn.Conv2d):
            raise ConfigError(f"expected a vision tower whose embeddings.patch_embedding is a Conv2d, found "
                              f"{type(conv2d).__name__}")
        depth_stride = int(depth_kernel if depth_stride is None else depth_stride)
        if depth_stride < 1:
            raise ConfigError(f"depth stride: expected >= 1, found {depth_stride}")
        ph, pw = conv2d.kernel_size
        self.kernel = (int(depth_kernel), int(ph), int(pw))
        self.stride = (depth_stride, int(conv2d.stride[0]), int(conv2d.stride[1]))
        self.init, self.pos, self.rgb = init, pos, rgb
        self.dim = conv2d.out_channels
        self.patch_embedding = nn.Conv3d(1, self.dim, self.kernel, stride=self.stride, bias=conv2d.bias is not None)
        with torch.no_grad():
            self.patch_embedding.weight.copy_(inflate_patch_kernel(conv2d.weight, depth_kernel, init, rgb))
            if conv2d.bias is not None:
                self.patch_embedding.bias.copy_(conv2d.bias.detach())
        pe = embeddings2d.position_embedding.weight.detach().clone()  # (n_pos, dim)
        self.class_embedding = None
        if hasattr(embeddings2d, "class_embedding"):  # CLIP: the first position is the class token's
            self.class_embedding = nn.Parameter(embeddings2d.class_embedding.detach().clone())
            self.cls_position = nn.Parameter(pe[:1].clone())
            pe = pe[1:]
        side = int(round(math.sqrt(pe.shape[0])))
        if side * side != pe.shape[0]:
            raise ConfigError(f"2D position embedding: expected a square grid, found {pe.shape[0]} positions")
        self.grid2d = (side, side)
        if pos == "interpolate":
            self.position_embedding_2d = nn.Parameter(pe.T.reshape(1, self.dim, side, side).contiguous())
            self.max_depth_tokens = 128  # learned depth vectors, zero at initialisation
            self.depth_embedding = nn.Parameter(torch.zeros(self.max_depth_tokens, self.dim))
        else:
            self.max_depth_tokens = 1 << 30
            self.position_embedding_2d = None
            self.depth_embedding = None

    def grid(self, spatial: tuple[int, int, int]) -> tuple[int, int, int]:
        """Token grid (D', H', W') for a volume of spatial size (D, H, W)."""
        return token_grid(tuple(int(v) for v in spatial), self.kernel, self.stride)

    def position(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Position vectors ``(N, dim)`` for a token grid, in the flattening order of the tokens (D, H, W)."""
        gd, gh, gw = grid
        if self.pos == "fixed":
            ref = self.patch_embedding.weight
            return fixed_position_code(grid, self.dim, device=ref.device, dtype=ref.dtype)
        if gd > self.max_depth_tokens:
            raise DataError(None, "volume", f"at most {self.max_depth_tokens} tokens along depth", gd)
        pe = self.position_embedding_2d
        if (gh, gw) != self.grid2d:
            pe = nnf.interpolate(pe, size=(gh, gw), mode="bicubic", align_corners=False)
        pe = pe.reshape(self.dim, gh * gw).T  # (HW, dim)
        return (pe[None] + self.depth_embedding[:gd, None]).reshape(gd * gh * gw, self.dim)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        x = check_volume(pixel_values, "pixel_values")
        grid = self.grid(tuple(x.shape[2:]))
        x = x.to(self.patch_embedding.weight.dtype)
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        tokens = tokens + self.position(grid).to(tokens.dtype)
        if self.class_embedding is not None:
            cls = (self.class_embedding + self.cls_position[0]).expand(tokens.shape[0], 1, -1)
            tokens = torch.cat([cls.to(tokens.dtype), tokens], 1)
        return tokens


class VisionTower3D(nn.Module):
    """An inflated vision tower: ``forward(volume (B, 1, D, H, W)) -> tokens (B, N, dim)``.

    Wraps the transformers vision model (its own encoder and final layer norm, unchanged) whose
    ``embeddings`` were replaced by :class:`InflatedEmbeddings`. ``hidden_size`` and ``grid(spatial)``
    tell the consumer how many tokens to expect. Any module with this interface (tokens out) can be
    the vision side of :class:`brainkit.generation.ReportVLM`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.hidden_size = int(model.config.hidden_size)

    @property
    def embeddings(self) -> InflatedEmbeddings:
        return self.model.embeddings  # type: ignore[return-value]

    def grid(self, spatial: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.embeddings.grid(spatial)

    def num_tokens(self, spatial: tuple[int, int, int]) -> int:
        g = self.grid(spatial)
        return g[0] * g[1] * g[2] + (1 if self.embeddings.class_embedding is not None else 0)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        volume = check_volume(volume)
        return self.model(pixel_values=volume).last_hidden_state


def inflate_vision_tower(model2d: nn.Module, *, depth_kernel: int = 2, depth_stride: int | None = None,
                         init: str = "centre", pos: str = "interpolate", rgb: str = "sum",
                         copy_model: bool = True) -> VisionTower3D:
    """Inflate a transformers 2D vision tower (``SiglipVisionModel``, ``CLIPVisionModel``, or the
    vision side of a ``SiglipModel`` / ``CLIPModel``) into a :class:`VisionTower3D`.

    The transformer layers are shared in structure and copied in weights (``copy_model=False``
    modifies ``model2d`` in place). SigLIP's attention-pooling head is switched off: the report
    generator reads the tokens.
    """
    vision = getattr(model2d, "vision_model", model2d)
    if not hasattr(vision, "embeddings") or not hasattr(vision.embeddings, "patch_embedding"):
        raise ConfigError(f"inflate_vision_tower: expected a SigLIP/CLIP vision model with "
                          f"embeddings.patch_embedding, found {type(model2d).__name__}")
    vision = copy.deepcopy(vision) if copy_model else vision
    vision.embeddings = InflatedEmbeddings(vision.embeddings, depth_kernel=depth_kernel, depth_stride=depth_stride,
                                           init=init, pos=pos, rgb=rgb)
    if hasattr(vision, "use_head"):
        vision.use_head = False
        if hasattr(vision, "head"):
            del vision.head
    return VisionTower3D(vision)
