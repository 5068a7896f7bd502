"""BrainGemma3D's networks: the report generator of :mod:`brainkit.generation` with the inflated SigLIP
(:mod:`.inflate`) as its vision tower, and the card's 2D-slice baseline tower.

Introduced in ``05_braingemma3d_training``; evaluated in ``06_braingemma3d_evaluation``.
"""

from __future__ import annotations

import torch
from torch import nn

from ...generation import check_volume

__all__ = ["SliceTower2D"]


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
