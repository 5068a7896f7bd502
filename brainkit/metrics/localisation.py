"""Localisation metrics: pixel AUROC, accuracy / precision at a validation threshold, AP, max-F1,
AUPRO and image AUROC.

Introduced in ``02_clip_localisation``. scikit-learn computes every curve; this module only
flattens, checks and combines.

- pixel AUROC / AP: ``roc_auc_score`` / ``average_precision_score`` over all pixels of all slices;
- the threshold is chosen on **validation** (:func:`choose_threshold`, maximum F1 by default) and
  then applied to test (:func:`threshold_metrics`), never chosen on test;
- max-F1: the best F1 over all thresholds of the precision–recall curve (an optimistic number
  by construction: it looks at the test labels);
- AUPRO: the per-region overlap (PRO) curve integrated over false-positive rates ``0..max_fpr``
  (0.3) and divided by ``max_fpr``. PRO at a threshold is the mean, over connected ground-truth
  regions (``skimage.measure.label``), of the fraction of the region's pixels above the threshold;
  that is a ROC curve in which each region pixel weighs ``1 / (R · |region|)``, so
  ``roc_curve(..., sample_weight=w)`` computes it exactly;
- image AUROC: ``roc_auc_score`` on one score per slice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from ..errors import ConfigError, DataError

__all__ = ["pixel_auroc", "pixel_ap", "max_f1", "choose_threshold", "threshold_metrics", "aupro",
           "pro_curve", "image_auroc", "localisation_report"]


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _pixels(scores: Any, masks: Any, *, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s, m = _as_numpy(scores), _as_numpy(masks)
    if s.shape != m.shape:
        raise DataError(None, "scores/masks", "arrays of the same shape", f"{s.shape} vs {m.shape}")
    if s.size == 0:
        raise DataError(None, "scores", "at least one pixel", "an empty array")
    if not np.all(np.isfinite(s)):
        raise DataError(None, "scores", "finite values", "NaN or inf")
    u = np.unique(m)
    if not np.all(np.isin(u, (0, 1))):
        raise DataError(None, "masks", "binary values 0/1", u[:6].tolist())
    y = m.reshape(-1).astype(np.int8)
    if need_both and (y.min() == y.max()):
        which = "tumour" if y.max() == 1 else "background"
        raise DataError(None, "masks", "both tumour and background pixels (the score is undefined for one "
                        "class)", f"only {which} pixels")
    return s.reshape(-1).astype(np.float64), y


def pixel_auroc(scores: Any, masks: Any) -> float:
    """Area under the ROC curve over all pixels (``scores`` and binary ``masks`` of one shape)."""
    s, y = _pixels(scores, masks)
    return float(skm.roc_auc_score(y, s))


def pixel_ap(scores: Any, masks: Any) -> float:
    """Average precision (area under the precision–recall curve, step-wise) over all pixels."""
    s, y = _pixels(scores, masks)
    return float(skm.average_precision_score(y, s))


def _pr(scores: Any, masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, y = _pixels(scores, masks)
    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    return precision[:-1], recall[:-1], thresholds


def max_f1(scores: Any, masks: Any) -> float:
    """The best F1 over all thresholds (``precision_recall_curve``)."""
    p, r, _ = _pr(scores, masks)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return float(f1.max())


def choose_threshold(scores: Any, masks: Any, criterion: str = "f1") -> float:
    """The threshold to use on test, chosen on **validation** maps: ``"f1"`` (maximum F1) or
    ``"youden"`` (maximum TPR − FPR). Pixels with ``score >= threshold`` are called tumour."""
    if criterion == "f1":
        p, r, t = _pr(scores, masks)
        f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
        return float(t[int(np.argmax(f1))])
    if criterion == "youden":
        s, y = _pixels(scores, masks)
        fpr, tpr, t = skm.roc_curve(y, s)
        t = np.minimum(t, np.max(s))  # sklearn's first threshold is +inf
        return float(t[int(np.argmax(tpr - fpr))])
    raise ConfigError(f"criterion: expected 'f1' or 'youden', found {criterion!r}")


def threshold_metrics(scores: Any, masks: Any, threshold: float) -> dict[str, float]:
    """Pixel accuracy, precision, recall, F1 and Dice at ``threshold`` (``score >= threshold`` → tumour).
    Precision is 0 when nothing is predicted (scikit-learn's ``zero_division=0``)."""
    if not np.isfinite(threshold):
        raise ConfigError(f"threshold: expected a finite number, found {threshold!r}")
    s, y = _pixels(scores, masks, need_both=False)
    pred = (s >= threshold).astype(np.int8)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
    }


def pro_curve(scores: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, pro)``: the per-region-overlap curve over all thresholds. ``scores``/``masks`` are
    ``(N, H, W)`` (or one ``(H, W)`` slice); regions are connected components per slice."""
    from skimage.measure import label

    s, m = _as_numpy(scores), _as_numpy(masks)
    if s.ndim == 2:
        s, m = s[None], m[None]
    if s.ndim != 3:
        raise DataError(None, "scores.shape", "(N, H, W) or (H, W)", s.shape)
    _pixels(s, m)  # shape, binary and both-class checks
    weights = np.ones(m.shape, dtype=np.float64)
    regions = []
    for i in range(m.shape[0]):
        lab, n = label(m[i].astype(np.uint8), return_num=True)
        for k in range(1, n + 1):
            regions.append((i, lab == k))
    for i, region in regions:
        weights[i][region] = 1.0 / (len(regions) * region.sum())
    fpr, pro, _ = skm.roc_curve(m.reshape(-1).astype(np.int8), s.reshape(-1), sample_weight=weights.reshape(-1),
                                drop_intermediate=False)
    return fpr, pro


def aupro(scores: Any, masks: Any, max_fpr: float = 0.3) -> float:
    """Area under the PRO curve for FPR in ``[0, max_fpr]``, divided by ``max_fpr`` (1.0 = perfect)."""
    if not 0 < max_fpr <= 1:
        raise ConfigError(f"max_fpr: expected a number in (0, 1], found {max_fpr!r}")
    fpr, pro = pro_curve(scores, masks)
    keep = fpr <= max_fpr
    x, y = fpr[keep], pro[keep]
    if x[-1] < max_fpr:  # close the curve at max_fpr by linear interpolation
        x = np.append(x, max_fpr)
        y = np.append(y, np.interp(max_fpr, fpr, pro))
    return float(skm.auc(x, y) / max_fpr)


def image_auroc(scores: Any, labels: Any) -> float:
    """AUROC of one anomaly score per slice against its label (1 = tumour)."""
    s, y = _as_numpy(scores).reshape(-1), _as_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(None, "scores/labels", "one score per label", f"{s.shape} vs {y.shape}")
    if len(np.unique(y)) != 2 or not np.all(np.isin(y, (0, 1))):
        raise DataError(None, "labels", "both 0 (normal) and 1 (tumour) slices", np.unique(y).tolist())
    return float(skm.roc_auc_score(y.astype(np.int8), s.astype(np.float64)))


def localisation_report(maps: Any, masks: Any, threshold: float, *, image_scores: Any = None,
                        image_labels: Any = None, max_fpr: float = 0.3, prefix: str = "") -> dict[str, float]:
    """Every metric of the seed and of APRIL-GAN in one dict (values in ``[0, 1]``):
    ``pixel_auroc``, ``pixel_accuracy``/``pixel_precision``/``pixel_recall``/``pixel_f1`` at the
    validation ``threshold``, ``pixel_ap``, ``pixel_max_f1``, ``aupro`` and, with image scores,
    ``image_auroc``."""
    out: dict[str, float] = {"pixel_auroc": pixel_auroc(maps, masks)}
    at = threshold_metrics(maps, masks, threshold)
    out.update({f"pixel_{k}": v for k, v in at.items()})
    out["pixel_ap"] = pixel_ap(maps, masks)
    out["pixel_max_f1"] = max_f1(maps, masks)
    out["aupro"] = aupro(maps, masks, max_fpr=max_fpr)
    if image_scores is not None:
        if image_labels is None:
            raise ConfigError("image_labels: expected labels beside image_scores, found None")
        out["image_auroc"] = image_auroc(image_scores, image_labels)
    out["threshold"] = float(threshold)
    return {f"{prefix}{k}": v for k, v in out.items()} if prefix else out

