"""Losses that more than one method uses: symmetric InfoNCE (BrainGemma3D's Phase 1 grounding, brat's
image-report contrast) and the input checks of every loss.

Introduced in ``05_braingemma3d_training``; brat's own losses (PVA, DPP, ITG) are in
:mod:`brainkit.methods.brat.losses`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf

from .errors import ConfigError

__all__ = ["info_nce", "as_tensor", "check_finite"]


# ----------------------------------------------------------------------------------------- checks
def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a floating-point tensor (numpy arrays converted), or a ConfigError naming ``name``."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch.Tensor or numpy array, found {type(x).__name__}")
    if not torch.is_floating_point(x):
        x = x.float()
    return x


def check_finite(x: torch.Tensor, name: str) -> None:
    """A ConfigError naming ``name`` and counting NaN / infinite entries, if ``x`` has any."""
    # one cheap reduction first: a finite sum means no NaN / inf (the full check runs only otherwise)
    if x.numel() and bool(torch.isfinite(x.detach().sum())):
        return
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ConfigError(
            f"{name}: expected finite values, found {n_nan} NaN and {n_inf} infinite entries "
            "(a diverged model or a bad input upstream)"
        )


def info_nce(sim: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE (equations 7-8): ``(CE(rows) + CE(columns)) / 2`` over ``scale * sim``.

    ``sim``: ``(B, B)`` image x report similarities with matching pairs on the diagonal; ``scale``:
    the logit scale ``1/tau`` (e.g. brat's ``LearnableTemperature()()``). A batch of one is refused
    (ConfigError): with one pair the loss is identically zero and teaches nothing.
    """
    sim = as_tensor(sim, "sim")
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ConfigError(f"sim: expected a square (B, B) similarity matrix, found {tuple(sim.shape)}")
    if sim.shape[0] < 2:
        raise ConfigError(
            "sim: expected a batch of at least 2 image-report pairs (InfoNCE over one pair is identically "
            f"zero), found B={sim.shape[0]}; use drop_last=True or a larger batch"
        )
    check_finite(sim, "sim")
    scale_t = torch.as_tensor(scale, dtype=sim.dtype, device=sim.device)
    check_finite(scale_t, "scale")
    if scale_t.dim() != 0 or bool(scale_t.detach() <= 0):
        raise ConfigError(f"scale: expected a positive scalar (1/temperature), found {scale!r}")
    logits = sim * scale_t
    target = torch.arange(sim.shape[0], device=sim.device)
    return 0.5 * (nnf.cross_entropy(logits, target) + nnf.cross_entropy(logits.T, target))
