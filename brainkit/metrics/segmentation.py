"""Segmentation metrics: Dice, NSD (surface Dice) and HD95 per case and aggregated, through MONAI.

Introduced in ``07_medvisionllama_segmentation`` (the metrics table beside the MedVisionLlama README's
numbers); the best-global-threshold baseline is also used by the data-realism checks.

Metrics (binary masks, foreground = nonzero; MONAI's ``compute_dice``, ``compute_surface_dice`` and
``compute_hausdorff_distance`` -- the functions behind ``DiceMetric``, ``SurfaceDiceMetric`` and
``HausdorffDistanceMetric`` -- on one-hot input with ``include_background=False``):

- **Dice** = 2|P n T| / (|P| + |T|).
- **NSD** (normalised surface Dice) at a tolerance of ``nsd_tolerance_mm`` (default
  :data:`NSD_TOLERANCE_MM` = 2 mm): the fraction of both boundaries lying within the tolerance of the
  other boundary. The tolerance is in millimetres: distances use the voxel ``spacing``.
- **HD95**: the symmetric 95th-percentile Hausdorff distance between the boundaries, in mm.

Empty masks (defined here, tested):

=====================  =====  =====  ==========================================
case                   Dice   NSD    HD95
=====================  =====  =====  ==========================================
both empty             1      1      0
one empty (not both)   0      0      the image diagonal in mm, ``sqrt(sum((shape * spacing)^2))``
=====================  =====  =====  ==========================================

The one-empty HD95 follows the BraTS challenge convention (373.13 mm = the diagonal of a 240x240x155
1 mm volume), so a missed or hallucinated tumour stays in the mean as the worst possible distance
instead of being silently dropped; each case also records ``pred_empty`` / ``target_empty`` so a
table can say how many there were.

Regions of a label map: ``wt`` (whole tumour), ``tc`` (tumour core), ``et`` (enhancing tumour) under
the BraTS labels (1 necrosis / non-enhancing, 2 oedema, 4 enhancing) or the MSD Task01 labels
(1 oedema, 2 non-enhancing, 3 enhancing); see :data:`REGIONS`.

Aggregation: :func:`mean_ci` (t interval by default, or percentile bootstrap) and :func:`summarize`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "NSD_TOLERANCE_MM",
    "REGIONS",
    "region_masks",
    "case_metrics",
    "evaluate_cases",
    "mean_ci",
    "summarize",
    "ThresholdResult",
    "threshold_dice",
    "best_global_threshold_dice",
]

#: Default NSD tolerance (mm). The MedVisionLlama README does not state one; notebooks report it.
NSD_TOLERANCE_MM = 2.0

#: Label values of each region per label convention.
REGIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "brats": {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)},
    "msd": {"wt": (1, 2, 3), "tc": (2, 3), "et": (3,)},
}

_METRICS = ("dice", "nsd", "hd95")


# ------------------------------------------------------------------------------------------ input
def _to_numpy(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{what}: expected an array, found {type(x).__name__}") from exc


def _squeeze_leading(a: np.ndarray) -> np.ndarray:
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    return a


def _pair(pred, target, case: str) -> tuple[np.ndarray, np.ndarray]:
    p = _to_numpy(pred, f"{case}: prediction")
    t = _to_numpy(target, f"{case}: target")
    if p.shape != t.shape:
        raise DataError(case, "prediction/target shape", f"the same shape as the target {t.shape}", p.shape)
    p, t = _squeeze_leading(p), _squeeze_leading(t)
    if p.ndim not in (2, 3):
        raise DataError(case, "shape", "a 2D or 3D mask (leading singleton axes allowed)", p.shape)
    for name, a in (("prediction", p), ("target", t)):
        if a.dtype != bool:
            if not np.isfinite(a).all():
                raise DataError(case, name, "finite values", "NaN or inf")
            if a.dtype.kind == "f" and not np.isin(a, (0.0, 1.0)).all():
                raise ConfigError(
                    f"{case}: {name}: expected a binary mask (0/1 or bool), found non-binary values; "
                    "threshold probabilities first (e.g. probs > 0.5)"
                )
    return p != 0, t != 0


def _spacing(spacing, ndim: int, case: str) -> tuple[float, ...]:
    if np.isscalar(spacing):
        sp = (float(spacing),) * ndim
    else:
        sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"{case}: spacing: expected {ndim} positive voxel sizes in mm, found {spacing!r}")
    return sp


# ---------------------------------------------------------------------------------------- regions
def region_masks(labels, *, convention: str = "msd", regions: Sequence[str] = ("wt",)) -> dict[str, np.ndarray]:
    """Boolean masks of tumour regions from a label map (``convention`` ``"brats"`` or ``"msd"``)."""
    if convention not in REGIONS:
        raise ConfigError(f"convention: expected one of {sorted(REGIONS)}, found {convention!r}")
    table = REGIONS[convention]
    unknown = [r for r in regions if r not in table]
    if unknown:
        raise ConfigError(f"regions: expected a subset of {sorted(table)}, found {unknown}")
    lab = _to_numpy(labels, "labels")
    return {r: np.isin(lab, table[r]) for r in regions}


# ------------------------------------------------------------------------------------------- case
def case_metrics(pred, target, *, spacing=1.0, nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
                 case: str = "case") -> dict[str, float | bool]:
    """Dice, NSD and HD95 of one binary prediction against its target.

    ``pred``, ``target``: same-shape 2D/3D masks (numpy or torch; bool or 0/1); ``spacing``: voxel size
    in mm (scalar or one per axis); ``case`` names the case in error messages. Returns
    ``{"dice", "nsd", "hd95", "pred_empty", "target_empty"}``. Empty masks: see the module docstring.
    Different shapes -> DataError; probabilities instead of a mask -> ConfigError.
    """
    if not (isinstance(nsd_tolerance_mm, (int, float)) and nsd_tolerance_mm >= 0):
        raise ConfigError(f"nsd_tolerance_mm: expected a non-negative number of mm, found {nsd_tolerance_mm!r}")
    p, t = _pair(pred, target, case)
    sp = _spacing(spacing, p.ndim, case)
    p_empty, t_empty = not p.any(), not t.any()
    out: dict[str, float | bool] = {"pred_empty": p_empty, "target_empty": t_empty}
    if p_empty and t_empty:
        out.update(dice=1.0, nsd=1.0, hd95=0.0)
        return out
    if p_empty or t_empty:
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, sp)))
        out.update(dice=0.0, nsd=0.0, hd95=diagonal)
        return out

    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    from monai.networks.utils import one_hot

    def oh(a: np.ndarray) -> torch.Tensor:
        return one_hot(torch.from_numpy(a.astype(np.int64))[None, None], num_classes=2)

    # Boundaries lie inside the bounding box of P u T: crop to it (one voxel of margin, so edges at the box
    # are found as in the full volume) before the distance transforms. Same values, far less work.
    box = np.argwhere(p | t)
    lo = np.maximum(box.min(axis=0) - 1, 0)
    hi = np.minimum(box.max(axis=0) + 2, p.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    yp, yt = oh(p[crop]), oh(t[crop])
    with warnings.catch_warnings():
        # MONAI 1.6 warns about its own deprecated internal argument (get_mask_edges)
        warnings.simplefilter("ignore", FutureWarning)
        dice = compute_dice(yp, yt, include_background=False, ignore_empty=False)
        nsd = compute_surface_dice(yp, yt, class_thresholds=[float(nsd_tolerance_mm)],
                                   include_background=False, spacing=sp)
        hd95 = compute_hausdorff_distance(yp, yt, include_background=False, percentile=95, spacing=sp)
    out.update(dice=float(dice), nsd=float(nsd), hd95=float(hd95))
    return out


def evaluate_cases(preds, targets, *, spacing=1.0, nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
                   regions: Sequence[str] | None = None, convention: str = "msd",
                   names: Sequence[str] | None = None) -> list[dict[str, float | bool]]:
    """Per-case metrics over a set of cases.

    With ``regions=None`` ``preds`` / ``targets`` are binary masks (whole tumour) and each case gives
    ``dice``, ``nsd``, ``hd95``, ``pred_empty``, ``target_empty``. With ``regions`` (e.g.
    ``("wt", "tc", "et")``) they are label maps in ``convention`` and every key is prefixed by the
    region (``wt_dice``, ``tc_hd95``, ...). ``spacing``: one spacing for all cases, or a list with one
    per case. ``names`` label the cases in errors.
    """
    preds, targets = list(preds), list(targets)
    if len(preds) != len(targets):
        raise ConfigError(f"preds, targets: expected the same number of cases, found {len(preds)} and {len(targets)}")
    n = len(preds)
    if names is not None and len(names) != n:
        raise ConfigError(f"names: expected {n} case names, found {len(names)}")
    per_case_spacing = (not np.isscalar(spacing) and len(spacing) == n
                        and all(not np.isscalar(s) for s in spacing))
    out = []
    for i in range(n):
        case = names[i] if names is not None else f"case {i}"
        sp = spacing[i] if per_case_spacing else spacing
        if regions is None:
            out.append(case_metrics(preds[i], targets[i], spacing=sp, nsd_tolerance_mm=nsd_tolerance_mm, case=case))
            continue
        p = _to_numpy(preds[i], f"{case}: prediction")
        t = _to_numpy(targets[i], f"{case}: target")
        if p.shape != t.shape:
            raise DataError(case, "prediction/target shape", f"the same shape as the target {t.shape}", p.shape)
        pm = region_masks(p, convention=convention, regions=regions)
        tm = region_masks(t, convention=convention, regions=regions)
        row: dict[str, float | bool] = {}
        for r in regions:
            m = case_metrics(pm[r], tm[r], spacing=sp, nsd_tolerance_mm=nsd_tolerance_mm, case=f"{case} ({r})")
            row.update({f"{r}_{k}": v for k, v in m.items()})
        out.append(row)
    return out


# -------------------------------------------------------------------------------------- aggregate
def mean_ci(values, *, confidence: float = 0.95, method: str = "t", n_boot: int = 2000,
            seed: int = 0) -> dict[str, float | int | None]:
    """Mean and ``confidence`` interval of ``values``: ``{"mean", "ci_low", "ci_high", "n"}``.

    ``method="t"``: Student-t interval of the mean (suits a few seeds); ``"bootstrap"``: percentile
    bootstrap with ``n_boot`` resamples from ``seed``. Fewer than two values -> the bounds are ``None``
    (no interval exists; ``brainkit.results.save`` accepts None). NaN values -> ConfigError.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ConfigError("values: expected at least one value, found none")
    if not np.isfinite(v).all():
        raise ConfigError(f"values: expected finite numbers, found {int((~np.isfinite(v)).sum())} NaN/inf")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: expected a number in (0, 1), found {confidence}")
    mean = float(v.mean())
    if v.size < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": int(v.size)}
    if method == "t":
        from scipy import stats

        sem = float(v.std(ddof=1) / math.sqrt(v.size))
        if sem == 0.0:
            low = high = mean
        else:
            low, high = (float(x) for x in stats.t.interval(confidence, v.size - 1, loc=mean, scale=sem))
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
        alpha = (1 - confidence) / 2
        low, high = (float(x) for x in np.quantile(means, [alpha, 1 - alpha]))
    else:
        raise ConfigError(f"method: expected 't' or 'bootstrap', found {method!r}")
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": int(v.size)}


def summarize(per_case: Sequence[Mapping[str, float | bool]], *, confidence: float = 0.95,
              method: str = "t", prefix: str = "") -> dict[str, float | int | None]:
    """Flat summary of :func:`evaluate_cases` rows for ``brainkit.results.save``.

    For every numeric key ``k``: ``{prefix}{k}_mean``, ``{prefix}{k}_ci_low``, ``{prefix}{k}_ci_high``;
    for every boolean flag (``pred_empty``...) the count ``{prefix}n_{flag}``; and ``{prefix}n_cases``.
    """
    if not per_case:
        raise ConfigError("per_case: expected at least one case, found none")
    keys = list(per_case[0])
    out: dict[str, float | int | None] = {f"{prefix}n_cases": len(per_case)}
    for k in keys:
        vals = [row[k] for row in per_case]
        if all(isinstance(x, (bool, np.bool_)) for x in vals):
            out[f"{prefix}n_{k}"] = int(sum(bool(x) for x in vals))
            continue
        s = mean_ci(vals, confidence=confidence, method=method)
        out[f"{prefix}{k}_mean"] = s["mean"]
        out[f"{prefix}{k}_ci_low"] = s["ci_low"]
        out[f"{prefix}{k}_ci_high"] = s["ci_high"]
    return out


# ---------------------------------------------------------------------------------------- baseline
@dataclass(frozen=True)
class ThresholdResult:
    """Result of :func:`best_global_threshold_dice`: the chosen threshold, its mean Dice over the cases,
    the per-case Dice at that threshold, and the whole curve (``thresholds``, ``mean_dice``)."""

    threshold: float
    dice: float
    per_case: np.ndarray
    thresholds: np.ndarray
    mean_dice: np.ndarray


def _image_mask_pairs(images, masks) -> list[tuple[np.ndarray, np.ndarray]]:
    images, masks = list(images), list(masks)
    if len(images) != len(masks):
        raise ConfigError(f"images, masks: expected the same number of cases, found {len(images)} and {len(masks)}")
    if not images:
        raise ConfigError("images: expected at least one case, found none")
    pairs = []
    for i, (im, m) in enumerate(zip(images, masks)):
        im = _to_numpy(im, f"case {i}: image").astype(np.float64, copy=False)
        m = _to_numpy(m, f"case {i}: mask")
        if im.shape != m.shape:
            raise DataError(f"case {i}", "image/mask shape", f"the same shape as the mask {m.shape}", im.shape)
        if not np.isfinite(im).all():
            raise DataError(f"case {i}", "image", "finite intensities", "NaN or inf")
        pairs.append((im.ravel(), m.ravel() != 0))
    return pairs


def _dice_curve(pairs, thresholds: np.ndarray) -> np.ndarray:
    """Dice of ``image > t`` for every case and threshold, ``(n_cases, n_thresholds)``, by sorting once."""
    out = np.empty((len(pairs), thresholds.size))
    for i, (im, m) in enumerate(pairs):
        all_sorted = np.sort(im)
        fg_sorted = np.sort(im[m])
        n_pred = im.size - np.searchsorted(all_sorted, thresholds, side="right")
        inter = fg_sorted.size - np.searchsorted(fg_sorted, thresholds, side="right")
        denom = n_pred + fg_sorted.size
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)
    return out


def threshold_dice(images, masks, threshold: float) -> np.ndarray:
    """Per-case Dice of the prediction ``image > threshold`` (both empty -> 1), e.g. to apply a threshold
    chosen on one split to another."""
    pairs = _image_mask_pairs(images, masks)
    return _dice_curve(pairs, np.array([float(threshold)]))[:, 0]


def best_global_threshold_dice(images, masks, *, thresholds=None, n_thresholds: int = 256) -> ThresholdResult:
    """The best single intensity threshold over a whole set: the trivial baseline a segmenter must beat.

    Predicts ``image > t`` with one ``t`` for every case and returns the ``t`` that maximises the mean
    per-case Dice. ``images``: one intensity volume per case (e.g. FLAIR), same shape as its mask.
    Candidates: ``thresholds`` if given, else ``n_thresholds`` quantiles of all voxels pooled plus as
    many of the foreground voxels pooled (tumours are a small fraction of the volume). Chosen on the
    set it is scored on, it is an optimistic baseline (a harder bar for the model); use
    :func:`threshold_dice` to score a threshold chosen elsewhere. Introduced in
    ``07_medvisionllama_segmentation``. Image/mask shape mismatch -> DataError.
    """
    pairs = _image_mask_pairs(images, masks)
    if thresholds is None:
        if n_thresholds < 2:
            raise ConfigError(f"n_thresholds: expected >= 2, found {n_thresholds}")
        q = np.linspace(0.0, 1.0, n_thresholds)
        pooled = np.concatenate([im for im, _ in pairs])
        cands = [np.quantile(pooled, q)]
        fg = np.concatenate([im[m] for im, m in pairs])
        if fg.size:
            cands.append(np.quantile(fg, q))
            cands.append(np.nextafter(np.quantile(fg, q), -np.inf))  # just below: includes that voxel
        thresholds = np.unique(np.concatenate(cands))
    else:
        thresholds = np.unique(np.asarray(thresholds, dtype=np.float64).ravel())
        if thresholds.size == 0 or not np.isfinite(thresholds).all():
            raise ConfigError("thresholds: expected finite candidate thresholds")
    curve = _dice_curve(pairs, thresholds)
    mean = curve.mean(axis=0)
    best = int(np.argmax(mean))
    return ThresholdResult(
        threshold=float(thresholds[best]), dice=float(mean[best]), per_case=curve[:, best],
        thresholds=thresholds, mean_dice=mean,
    )
