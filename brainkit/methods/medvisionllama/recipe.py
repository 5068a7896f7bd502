"""MedVisionLlama's recipe: the loss, training runs through :func:`brainkit.train.fit` with the checkpoint chosen
on validation Dice, sliding-window inference, post-processing chosen on validation, and evaluation.

Introduced in ``07_medvisionllama_segmentation``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data import transforms as T
from ...errors import ConfigError, DataError
from .data import epoch_loader
from .model import MedVisionLlama, MVLConfig, variant_config

__all__ = ["build_loss", "sliding_window_predict", "base_config", "build", "component_sizes", "remove_small",
           "mean_dice", "predict", "val_dice", "choose_min_size", "train_run", "test_metrics"]

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


# --------------------------------------------------------------------------------------------
# the recipe of notebook 07: configuration, post-processing, training runs, test metrics
# --------------------------------------------------------------------------------------------
def base_config(cfg: Any) -> MVLConfig:
    """The :class:`MVLConfig` of the profile: one FLAIR channel in, the whole tumour out, the network's input
    the ``cfg.mvl_roi_size`` patch (the whole ``cfg.data_msd_volume_size`` volume when None), in RAS order."""
    grid = tuple(int(v) for v in T.dhw_to_xyz(cfg.data_msd_volume_size))
    roi = T.dhw_to_xyz(cfg.mvl_roi_size) if cfg.mvl_roi_size else grid
    return MVLConfig(in_channels=1, out_channels=1, img_size=roi, patch_size=T.dhw_to_xyz(cfg.mvl_patch_size),
                     hidden_size=cfg.mvl_hidden_size, mlp_dim=cfg.mvl_mlp_dim, num_layers=cfg.mvl_layers,
                     num_heads=cfg.mvl_heads, llm_position=cfg.mvl_llm_position, mapper=cfg.mvl_mapper,
                     lora_rank=cfg.mvl_lora_rank, decoder=cfg.mvl_decoder,
                     decoder_channels=cfg.mvl_decoder_channels,
                     input_skip=cfg.mvl_input_skip if cfg.mvl_decoder == "conv" else 0).check()


def build(variant: str, base: MVLConfig, layers: Mapping[str, nn.Module]) -> MedVisionLlama:
    """One of :data:`~.model.VARIANTS` on ``base``; ``layers`` maps ``"medvisionllama"`` / ``"bert"`` to the
    frozen layer that variant carries (the ViT and its widened twin carry none)."""
    return MedVisionLlama(variant_config(variant, base), layers.get(variant))


def component_sizes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of a mask (26-connected, ``scipy.ndimage.label``) and the size of each (index 0 =
    background)."""
    from scipy import ndimage

    lab, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    return lab, np.bincount(lab.ravel())


def remove_small(mask: np.ndarray, min_size: int, comps: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The mask without its connected components smaller than ``min_size`` voxels (``comps``: its
    :func:`component_sizes`, when already computed)."""
    if min_size <= 0 or not mask.any():
        return mask
    lab, sizes = comps if comps is not None else component_sizes(mask)
    keep = sizes >= min_size
    keep[0] = False
    return keep[lab]


def mean_dice(preds: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """Mean per-case Dice ``2|P∩T| / (|P| + |T|)``, 1 when both are empty (as in
    :mod:`brainkit.metrics.segmentation`); the fast score of model selection."""
    d = [2 * (p & m).sum() / (p.sum() + m.sum()) if p.any() or m.any() else 1.0 for p, m in zip(preds, masks)]
    return float(np.mean(d))


def predict(model: nn.Module, images: torch.Tensor, cfg: Any, device: torch.device | str) -> torch.Tensor:
    """Probabilities of ``(B, 1, X, Y, Z)`` volumes: MONAI sliding-window inference over windows of the
    training patch (one window when the patch is the whole volume)."""
    model.eval()
    return sliding_window_predict(model, images.to(device), overlap=cfg.mvl_sw_overlap,
                                  sw_batch_size=cfg.mvl_batch_size).cpu()


def val_dice(model: nn.Module, images: torch.Tensor, masks: Sequence[np.ndarray], cfg: Any,
             device: torch.device | str) -> dict[str, float]:
    """Mean validation Dice at 0.5 (1 when both masks are empty); NSD / HD95 are kept for the test."""
    probs = predict(model, images, cfg, device)[:, 0].numpy()
    return {"val_dice": mean_dice([p > 0.5 for p in probs], masks)}


def choose_min_size(model: nn.Module, images: torch.Tensor, masks: Sequence[np.ndarray], cfg: Any,
                    device: torch.device | str) -> int:
    """The post-processing size (voxels, among ``cfg.mvl_min_component_sizes``) that maximises the validation
    Dice (the smallest among ties)."""
    probs = predict(model, images, cfg, device)[:, 0].numpy()
    scores = [(mean_dice([remove_small(p > 0.5, k) for p in probs], masks), -k) for k in cfg.mvl_min_component_sizes]
    return -max(scores)[1]


def train_run(model: nn.Module, train_data: Any, *, cfg: Any, seed: int, val_images: torch.Tensor,
              val_masks: Sequence[np.ndarray], out_dir: str | Path, device: torch.device, steps: int | None = None,
              workers: int = 1, resume: bool = False, callbacks: Iterable[Any] = (), desc: str = "mvl") -> Any:
    """Train ``model`` (built right after ``brainkit.train.seed_everything(seed)``) on ``train_data`` through
    :func:`brainkit.train.fit`: ``steps`` (default ``cfg.mvl_steps``) AdamW steps under a one-cycle schedule,
    validated every ``cfg.mvl_eval_every`` steps on whole volumes, the checkpoint chosen on validation Dice, then
    the post-processing size chosen on validation. Returns fit's result with ``seconds`` and ``min_size``."""
    from ...train import fit

    steps = steps or cfg.mvl_steps
    per_epoch = min(cfg.mvl_eval_every, steps)  # steps between validations
    epochs = max(1, steps // per_epoch)
    loader = epoch_loader(train_data, batch_size=cfg.mvl_batch_size, steps_per_epoch=per_epoch, seed=seed,
                          workers=max(cfg.num_workers, workers))
    loss = build_loss(cfg.mvl_loss, batch=cfg.mvl_dice_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.mvl_lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.mvl_lr, total_steps=epochs * per_epoch,
                                                pct_start=0.1)
    t = time.perf_counter()
    res = fit(model, loader, loss_fn=lambda m, batch: loss(m(batch["image"]), batch["label"].float()),
              optimizer=opt, scheduler=sched, epochs=epochs,
              evaluate=lambda m, _: val_dice(m, val_images, val_masks, cfg, device), monitor="val_dice", mode="max",
              out_dir=out_dir, resume=resume, seed=seed, log_every=25, desc=desc,
              mixed_precision=cfg.mixed_precision if device.type == "cuda" else "no", cpu=device.type == "cpu",
              callbacks=list(callbacks))
    res.seconds = time.perf_counter() - t
    res.min_size = choose_min_size(res.model, val_images, val_masks, cfg, device)
    return res


def test_metrics(res: Any, test_ds: Any, test_masks: Sequence[np.ndarray], *, cfg: Any, spacing: Sequence[float],
                 device: torch.device | str, names: Sequence[str] | None = None) -> tuple[list[dict], torch.Tensor]:
    """Per-case test metrics of a trained run (with its validation-chosen post-processing) and the
    probabilities ``(N, 1, X, Y, Z)``."""
    from ...metrics import segmentation as seg

    probs = torch.cat([predict(res.model, test_ds[i]["image"][None], cfg, device) for i in range(len(test_ds))])
    preds = [remove_small(p > 0.5, res.min_size) for p in probs[:, 0].numpy()]
    return seg.evaluate_cases(preds, test_masks, spacing=spacing, nsd_tolerance_mm=cfg.mvl_nsd_tolerance_mm,
                              names=names), probs
