"""BrainGemma3D's networks: the report generator of :mod:`brainkit.generation` with the inflated SigLIP
(:mod:`.inflate`) as its vision tower, the card's 2D-slice baseline tower, and the slab-wise laterality probe
of the inflated tower.

:class:`SlabSideProbe` is introduced in ``04_inflating_encoders`` (fine-tuned there by
:func:`.recipe.finetune_side_probe`); :class:`SliceTower2D` in ``05_braingemma3d_training``, evaluated in
``06_braingemma3d_evaluation``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ...generation import check_volume

__all__ = ["SliceTower2D", "SlabSideProbe"]


class SliceTower2D(nn.Module):
    """The card's 2D-slice baseline as a vision tower: the middle axial slice of each volume through a 2D
    transformers vision model (``SiglipVisionModel`` / ``CLIPVisionModel``), its patch tokens out.

    Same interface as the inflated tower (``forward(volume (B, 1, D, H, W)) -> (B, N, dim)``, ``hidden_size``), so
    :class:`ReportVLM` uses it unchanged. A one-channel slice is repeated over the model's input channels.
    Introduced in ``05_braingemma3d_training`` (trained there beside the 3D model), evaluated in ``06``.
    """

    def __init__(self, model2d: nn.Module):
        super().__init__()
        self.model = getattr(model2d, "vision_model", model2d)
        cfg = getattr(model2d, "config", None)
        cfg = getattr(cfg, "vision_config", cfg)
        self.hidden_size = int(cfg.hidden_size)
        self.channels = int(getattr(cfg, "num_channels", 1))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        volume = check_volume(volume)
        mid = volume[:, :, volume.shape[2] // 2]
        if self.channels != 1:
            mid = mid.expand(-1, self.channels, -1, -1)
        return self.model(pixel_values=mid).last_hidden_state


class SlabSideProbe(nn.Module):
    """The lesion-side probe (none / left / right) of an inflated tower: a 2D side head
    (:class:`~.standin.SliceHeads`, deep-copied) on every depth slab of the tokens; the best slab's left / right
    margin over none, ``(m_L, m_R) = max_s (z_{s,L} - z_{s,none}, z_{s,R} - z_{s,none})``; logits ``(0, m_L, m_R)``
    through a linear layer that starts as exactly that map, so the untrained probe is that fixed rule.

    ``grid`` is the tower's token grid ``(gd, gh, gw)`` (:meth:`~.inflate.VisionTower3D.grid`); ``forward`` takes
    the tokens ``(B, gd * gh * gw, dim)``, depth-major, and returns the side logits ``(B, 3)``.
    Introduced in ``04_inflating_encoders``.
    """

    def __init__(self, heads: nn.Module, grid: tuple[int, int, int]):
        super().__init__()
        self.heads, self.grid = copy.deepcopy(heads), grid
        self.out = nn.Linear(2, 3)
        with torch.no_grad():
            self.out.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
            self.out.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, gd * gh * gw, dim), depth-major
        gd, gh, gw = self.grid
        _, z = self.heads(tokens.reshape(-1, gh * gw, tokens.shape[-1]))  # side logits of every slab: (B * gd, 3)
        return self.out((z[:, 1:] - z[:, :1]).reshape(-1, gd, 2).amax(1))
