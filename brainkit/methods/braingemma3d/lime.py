"""3D LIME for report generation: which brain regions make the model's report likely.

Introduced in ``06_braingemma3d_evaluation`` (BrainGemma3D's interpretability, as its model card describes it).

1. **Supervoxels.** scikit-image's ``slic`` over the 3D volume, restricted to the brain mask
   (``n_segments`` about 20, compactness about 0.05 on z-scored intensities); label 0 is outside the brain.
2. **Perturbations.** ``n_samples`` binary vectors ``z`` (the first keeps every supervoxel); in each,
   the switched-off supervoxels are replaced by a baseline (the brain's mean intensity).
3. **Score.** ``score_fn(volumes) -> (n,)``: for the report generator, minus the negative
   log-likelihood of the report given the perturbed volume (:meth:`ReportVLM.report_nll`), so a
   region whose removal makes the report less likely gets a positive weight.
4. **Fit.** The ``lime`` package's ``LimeBase`` fits a weighted ridge regression of the scores on
   ``z``, with LIME's exponential kernel on the cosine distance of ``z`` to the all-ones vector.

:func:`save_lime_figures` writes ``overlay_slices.png`` (the weight map over axial slices, red =
supportive, blue = contradicting), ``lime_2x3_grid.png`` (three slices, image and overlay),
``lime_top_supervoxels_grid.png`` (the most influential supervoxels) and ``lime_weights.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...cache import atomic_write_text
from ...errors import ConfigError, DataError

__all__ = ["supervoxels", "lime_3d", "weight_volume", "save_lime_figures"]

log = logging.getLogger(__name__)


def supervoxels(volume: np.ndarray, brain_mask: np.ndarray | None = None, *, n_segments: int = 20,
                compactness: float = 0.05, seed: int = 0) -> np.ndarray:
    """SLIC supervoxels of a 3D ``volume`` inside ``brain_mask`` (default: voxels above the minimum).

    Returns int labels, 0 outside the mask and ``1..K`` inside. A volume that is not 3D, holds
    NaN, or has an empty mask raises :class:`DataError`.
    """
    from skimage.segmentation import slic

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise DataError(None, "volume", "a 3D array (D, H, W)", f"shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise DataError(None, "volume", "finite voxel values", f"{int((~np.isfinite(vol)).sum())} NaN/inf voxels")
    mask = vol > vol.min() + 1e-6 if brain_mask is None else np.asarray(brain_mask, bool)
    if mask.shape != vol.shape:
        raise DataError(None, "brain_mask", f"the volume's shape {vol.shape}", mask.shape)
    if not mask.any():
        raise DataError(None, "brain_mask", "at least one brain voxel", "an empty mask")
    lo, hi = np.percentile(vol[mask], [1, 99])
    norm = np.clip((vol - lo) / max(hi - lo, 1e-6), 0, 1)
    rng_state = np.random.get_state()
    np.random.seed(seed)
    try:
        seg = slic(norm, n_segments=int(n_segments), compactness=float(compactness), mask=mask, channel_axis=None,
                   start_label=1)
    finally:
        np.random.set_state(rng_state)
    return seg.astype(np.int32)


def lime_3d(score_fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, segments: np.ndarray, *,
            n_samples: int = 100, batch_size: int = 8, keep_prob: float = 0.5, kernel_width: float = 0.25,
            seed: int = 0) -> dict[str, Any]:
    """LIME weights of the supervoxels of ``volume`` (``(1, D, H, W)``) for ``score_fn``.

    Returns ``{"weights": (K,) array, "intercept", "score" (R^2 of the local fit), "full_score"
    (score of the unperturbed volume), "samples": (n, K) array, "scores": (n,) array}``.
    """
    from lime.lime_base import LimeBase

    if not isinstance(volume, torch.Tensor) or volume.dim() != 4 or volume.shape[0] != 1:
        raise DataError(None, "volume", "a (1, D, H, W) tensor",
                        tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__)
    seg = torch.as_tensor(np.asarray(segments), dtype=torch.long)
    if tuple(seg.shape) != tuple(volume.shape[1:]):
        raise DataError(None, "segments", f"the volume's spatial shape {tuple(volume.shape[1:])}", tuple(seg.shape))
    k = int(seg.max())
    if k < 2:
        raise ConfigError(f"lime_3d: expected at least 2 supervoxels, found {k}")
    if n_samples < k + 1:
        raise ConfigError(f"lime_3d: n_samples={n_samples} is fewer than supervoxels + 1 ({k + 1})")
    rng = np.random.default_rng(seed)
    z = (rng.random((n_samples, k)) < keep_prob).astype(np.float64)
    z[0] = 1.0
    brain = seg > 0
    baseline = float(volume[0][brain].mean())
    scores = []
    for start in range(0, n_samples, batch_size):
        zb = torch.as_tensor(z[start:start + batch_size], dtype=torch.bool)
        keep = torch.cat([torch.ones(len(zb), 1, dtype=torch.bool), zb], 1)  # label 0 (outside) always kept
        vols = torch.where(keep[:, seg], volume[0][None], torch.full_like(volume[0], baseline)[None])
        with torch.no_grad():
            scores.append(torch.as_tensor(score_fn(vols[:, None].to(volume.dtype))).float().reshape(-1).cpu())
    y = torch.cat(scores).numpy().astype(np.float64)
    ones = np.ones((1, k))
    dist = 1.0 - (z @ ones.T)[:, 0] / (np.linalg.norm(z, axis=1) * np.sqrt(k) + 1e-12)

    def kernel(d):
        return np.sqrt(np.exp(-(d ** 2) / kernel_width ** 2))

    base = LimeBase(kernel, random_state=seed)
    intercept, feats, r2, _ = base.explain_instance_with_data(z, y[:, None], dist, label=0, num_features=k,
                                                              feature_selection="none")
    w = np.zeros(k)
    for idx, val in feats:
        w[idx] = val
    return {"weights": w, "intercept": float(intercept), "score": float(r2), "full_score": float(y[0]),
            "samples": z, "scores": y}


def weight_volume(segments: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each voxel gets its supervoxel's weight (0 outside the brain)."""
    lut = np.concatenate([[0.0], np.asarray(weights, np.float64)])
    return lut[np.asarray(segments)]


def save_lime_figures(volume: np.ndarray, segments: np.ndarray, weights: np.ndarray, out_dir: str | os.PathLike, *,
                      alpha: float = 0.45, clip_q: float = 0.99, top: int = 6, meta: dict | None = None
                      ) -> dict[str, Path]:
    """Write the four LIME outputs for a ``(D, H, W)`` volume; returns their paths."""
    import matplotlib

    matplotlib.use(matplotlib.get_backend())
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vol = np.asarray(volume, np.float64)
    wv = weight_volume(segments, weights)
    lim = float(np.quantile(np.abs(wv[segments > 0]), clip_q)) if (segments > 0).any() else 1.0
    lim = lim if lim > 0 else 1.0
    d = vol.shape[0]
    paths = {}

    def show(ax, k, overlay=True):
        ax.imshow(vol[k], cmap="gray", origin="lower")
        if overlay:
            m = np.ma.masked_where(segments[k] == 0, wv[k])
            ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim, alpha=alpha, origin="lower")
        ax.set_axis_off()

    ks = np.linspace(d * 0.15, d * 0.85, 12).astype(int)
    fig, axes = plt.subplots(2, 6, figsize=(13, 4.6))
    for ax, k in zip(axes.ravel(), ks):
        show(ax, k)
        ax.set_title(f"slice {k}", fontsize=8)
    fig.suptitle("LIME weights (red: supports the report, blue: contradicts it)")
    paths["overlay"] = out / "overlay_slices.png"
    fig.savefig(paths["overlay"], dpi=90, bbox_inches="tight")
    plt.close(fig)

    brain = segments > 0
    mass = [(np.abs(wv[k]) * brain[k]).sum() for k in range(d)]
    best = int(np.argmax(mass))
    ks3 = sorted({max(0, best - d // 6), best, min(d - 1, best + d // 6)})
    while len(ks3) < 3:
        ks3.append(ks3[-1])
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for j, k in enumerate(ks3):
        show(axes[0, j], k, overlay=False)
        axes[0, j].set_title(f"slice {k}", fontsize=9)
        show(axes[1, j], k)
    paths["grid"] = out / "lime_2x3_grid.png"
    fig.savefig(paths["grid"], dpi=90, bbox_inches="tight")
    plt.close(fig)

    order = np.argsort(-np.abs(weights))[:top]
    fig, axes = plt.subplots(1, len(order), figsize=(2.2 * len(order), 2.6), squeeze=False)
    for ax, i in zip(axes[0], order):
        sv = segments == (i + 1)
        k = int(np.argmax(sv.sum((1, 2))))
        ax.imshow(vol[k], cmap="gray", origin="lower")
        ax.imshow(np.ma.masked_where(~sv[k], np.full(sv[k].shape, weights[i])), cmap="bwr", vmin=-lim, vmax=lim,
                  alpha=0.7, origin="lower")
        ax.set_title(f"#{i + 1}: {weights[i]:+.3f}", fontsize=8)
        ax.set_axis_off()
    paths["top"] = out / "lime_top_supervoxels_grid.png"
    fig.savefig(paths["top"], dpi=90, bbox_inches="tight")
    plt.close(fig)

    record = {"weights": {str(i + 1): float(w) for i, w in enumerate(weights)},
              "voxels": {str(i + 1): int((segments == i + 1).sum()) for i in range(len(weights))}, **(meta or {})}
    paths["weights"] = out / "lime_weights.json"
    atomic_write_text(paths["weights"], json.dumps(record, indent=1))
    return paths
