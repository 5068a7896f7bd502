"""MedVisionLlama's recipe: the loss, training runs through :func:`brainkit.train.fit` with the checkpoint chosen
on validation Dice, sliding-window inference, post-processing chosen on validation, and evaluation.

Introduced in ``07_medvisionllama_segmentation``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...errors import ConfigError, DataError

__all__ = ['build_loss', 'sliding_window_predict']

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# training and inference helpers
# --------------------------------------------------------------------------------------------
def build_loss(kind: str = "dicefocal", *, batch: bool = False) -> nn.Module:
    """The segmentation loss on logits, through MONAI: ``"dicefocal"`` (soft Dice + focal) or ``"dicece"``
    (soft Dice + binary cross-entropy), sigmoid inside. The Dice term is the soft Dice of the probabilities,
    never of a thresholded mask (the released code's bug: a thresholded Dice has no gradient).
    ``batch=True`` computes the Dice term over the whole batch instead of per volume: with small tumours and
    healthy volumes in a batch, the per-volume Dice of an empty target is 0 or 1 and its gradient pushes
    every prediction to zero; the batch Dice does not single those volumes out."""
    from monai.losses import DiceCELoss, DiceFocalLoss

    if kind == "dicefocal":
        return DiceFocalLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch)
    if kind == "dicece":
        return DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=batch)
    raise ConfigError(f"loss: expected 'dicefocal' or 'dicece', found {kind!r}")


def sliding_window_predict(model: nn.Module, image: torch.Tensor, *, overlap: float = 0.5,
                           sw_batch_size: int = 4, mode: str = "gaussian") -> torch.Tensor:
    """Mask probabilities ``(B, out, *spatial)`` of ``image`` ``(B, C, *spatial)`` of any size >= the
    model's ``img_size``, with MONAI's ``sliding_window_inference`` over windows of ``img_size``
    (Gaussian-weighted blending). A volume of exactly ``img_size`` is one window."""
    from monai.inferers import sliding_window_inference

    roi = tuple(model.cfg.img_size)
    if image.ndim != 5:
        raise ConfigError(f"image: expected (B, C, X, Y, Z), found {tuple(image.shape)}")
    small = [f"{s} < {r}" for s, r in zip(image.shape[2:], roi) if s < r]
    if small:
        raise DataError(None, "image shape", f"a volume at least as large as the training patch {roi}",
                        f"{tuple(image.shape[2:])} ({', '.join(small)}); resize it first")
    with torch.no_grad():
        logits = sliding_window_inference(image, roi, sw_batch_size, model, overlap=overlap, mode=mode)
    return torch.sigmoid(logits)
