"""Tumour label conventions: BraTS 2020 <-> MSD Task01, whole tumour, sub-regions, validation.

Introduced in ``01_data_prep``.

=====================  ==========================  ==========================
region                 BraTS 2020 ``*_seg.nii.gz``  MSD Task01 ``labelsTr/``
=====================  ==========================  ==========================
background             0                           0
necrosis / non-enh.    1                           2 ("non-enhancing tumor")
oedema                 2                           1 ("edema")
enhancing tumour       4                           3 ("enhancing tumour")
=====================  ==========================  ==========================

Derived regions (the BraTS evaluation regions): whole tumour WT = every label > 0, tumour core
TC = necrosis + enhancing, enhancing tumour ET = enhancing only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .subject import BRATS_LABELS, MSD_LABELS

__all__ = ["CONVENTIONS", "LABEL_NAMES", "check_labels", "brats_to_msd", "msd_to_brats", "convert_labels",
           "whole_tumour", "tumour_core", "enhancing_tumour", "regions", "laterality"]

#: Valid label values per convention.
CONVENTIONS: dict[str, tuple[int, ...]] = {"brats": BRATS_LABELS, "msd": MSD_LABELS, "binary": (0, 1)}

#: Names of the labels per convention, as the datasets' documentation spells them.
LABEL_NAMES: dict[str, dict[int, str]] = {
    "brats": {0: "background", 1: "necrotic / non-enhancing tumour core", 2: "peritumoral oedema",
              4: "GD-enhancing tumour"},
    "msd": {0: "background", 1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"},
    "binary": {0: "background", 1: "tumour"},
}

# Lookup tables indexed by the source label.
_BRATS_TO_MSD = np.array([0, 2, 1, 0, 3], dtype=np.uint8)  # 1->2, 2->1, 4->3 (3 is invalid, checked first)
_MSD_TO_BRATS = np.array([0, 2, 1, 4], dtype=np.uint8)  # 1->2, 2->1, 3->4

# The label values of each region per convention.
_REGION_VALUES = {
    "brats": {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)},
    "msd": {"wt": (1, 2, 3), "tc": (2, 3), "et": (3,)},
}


def _convention(name: str) -> str:
    if name not in CONVENTIONS:
        raise ConfigError(f"label convention: expected one of {', '.join(CONVENTIONS)}, found {name!r}")
    return name


def check_labels(seg: np.ndarray, convention: str = "brats", path: str | Path | None = None) -> np.ndarray:
    """Check that ``seg`` holds only the integer values of ``convention``; return it as ``uint8``.

    Raises :class:`~brainkit.errors.DataError` naming ``path`` when a value is not an integer
    or outside the convention (e.g. a 3 in a BraTS 2020 seg file, which usually means the file
    was already converted to the MSD convention).
    """
    convention = _convention(convention)
    arr = np.asarray(seg)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(path, "label values", "finite integer labels", "NaN or infinite voxels")
        if not np.array_equal(arr, np.round(arr)):
            raise DataError(path, "label values", f"integer labels {CONVENTIONS[convention]}",
                            "non-integer values (an image given as a label?)")
    elif arr.dtype.kind not in "uib":
        raise DataError(path, "label dtype", "an integer or float array", str(arr.dtype))
    values = np.unique(arr)
    bad = [int(v) for v in values if int(v) not in CONVENTIONS[convention]]
    if bad:
        counts = {v: int((arr == v).sum()) for v in bad}
        hint = ""
        if convention == "brats" and 3 in bad:
            hint = " (label 3 is not used by BraTS 2020; is this an MSD-convention file?)"
        raise DataError(path, "label values", f"values in {set(CONVENTIONS[convention])} ({convention} convention)",
                        ", ".join(f"{v} in {n} voxels" for v, n in counts.items()) + hint)
    return arr.astype(np.uint8, copy=False)


def brats_to_msd(seg: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """BraTS 2020 labels (1 necrosis, 2 oedema, 4 enhancing) -> MSD Task01 (1 oedema, 2 non-enh., 3 enh.)."""
    return _BRATS_TO_MSD[check_labels(seg, "brats", path)]


def msd_to_brats(seg: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """MSD Task01 labels -> BraTS 2020 labels; the inverse of :func:`brats_to_msd`."""
    return _MSD_TO_BRATS[check_labels(seg, "msd", path)]


def convert_labels(seg: np.ndarray, src: str, dst: str, path: str | Path | None = None) -> np.ndarray:
    """Convert between ``"brats"``, ``"msd"`` and ``"binary"`` (whole tumour; one way only)."""
    src, dst = _convention(src), _convention(dst)
    if src == dst:
        return check_labels(seg, src, path)
    if dst == "binary":
        return whole_tumour(check_labels(seg, src, path))
    if (src, dst) == ("brats", "msd"):
        return brats_to_msd(seg, path)
    if (src, dst) == ("msd", "brats"):
        return msd_to_brats(seg, path)
    raise ConfigError(f"cannot convert labels from {src!r} to {dst!r}: a binary mask has no sub-regions")


def whole_tumour(seg: np.ndarray) -> np.ndarray:
    """Whole tumour (WT): every label > 0, in either convention, as a ``uint8`` 0/1 mask."""
    return (np.asarray(seg) > 0).astype(np.uint8)


def _region(seg: np.ndarray, convention: str, region: str) -> np.ndarray:
    values = _REGION_VALUES[_convention(convention)][region]
    return np.isin(np.asarray(seg), values).astype(np.uint8)


def tumour_core(seg: np.ndarray, convention: str = "brats") -> np.ndarray:
    """Tumour core (TC): necrosis / non-enhancing + enhancing tumour, without the oedema."""
    return _region(seg, convention, "tc")


def enhancing_tumour(seg: np.ndarray, convention: str = "brats") -> np.ndarray:
    """Enhancing tumour (ET)."""
    return _region(seg, convention, "et")


def regions(seg: np.ndarray, convention: str = "brats") -> np.ndarray:
    """The three nested BraTS evaluation regions as channels ``(TC, WT, ET)``, ``uint8``.

    The channel order follows MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` (which only
    reads the BraTS convention); this function reads both conventions.
    """
    return np.stack([_region(seg, convention, r) for r in ("tc", "wt", "et")])


def laterality(seg: np.ndarray, brain_mask: np.ndarray | None = None, side_fraction: float = 0.75) -> str:
    """``"left"``, ``"right"``, ``"bilateral"`` or ``"none"`` from where the whole tumour lies.

    ``seg`` is in RAS voxel order (axis 0 runs from the patient's left to right). The midline is
    the x-centroid of ``brain_mask`` (of the volume when no mask is given); a side is named
    when at least ``side_fraction`` of the tumour voxels lie on it. Used to stratify splits by
    lesion side (BrainGemma3D's 70/10/20 split).
    """
    wt = np.asarray(seg) > 0
    if not wt.any():
        return "none"
    if brain_mask is not None and np.asarray(brain_mask).any():
        mid = float(np.nonzero(brain_mask)[0].mean())
    else:
        mid = (wt.shape[0] - 1) / 2.0
    xs = np.nonzero(wt)[0]
    right = float((xs > mid).mean())
    if right >= side_fraction:
        return "right"
    if 1.0 - right >= side_fraction:
        return "left"
    return "bilateral"
