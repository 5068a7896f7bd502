"""MONAI preprocessing chains of the four methods, and the loading transforms they start with.

Introduced in ``01_data_prep``; each method notebook builds its chain with one call.

===================  ====================================================================================
method               chain (sizes from the profile; the papers' values in colab/full)
===================  ====================================================================================
BrainMRI-GPT (A)     2D slice (figshare ``.mat`` / Kaggle JPEG) -> p0.5-p99.5 to [0, 1] -> resize to
                     ``data_slice_size``² (mask nearest) -> optional 3 channels / CLIP normalisation
BrainGemma3D (B)     FLAIR -> RAS -> clip to p1-p99 -> z-score -> trilinear resize to
                     ``data_gemma_volume_size`` (paper (64, 128, 128))
MedVisionLlama (C)   4D MSD image + label -> RAS -> ``data_msd_spacing_mm`` -> per-channel z-score over
                     the brain -> crop to the brain -> resize to ``data_msd_volume_size`` (paper 128³)
brat (D)             FLAIR -> RAS -> ``data_brat_spacing_mm`` (paper 1 mm) -> z-score over the brain ->
                     resize to ``data_brat_volume_size`` (paper 32×256×256)
===================  ====================================================================================

Sizes are given as the papers give them, (D, H, W) = (axial slices, rows, columns); our arrays
are RAS (X, Y, Z), so the spatial size passed to MONAI is (W, H, D) (:func:`dhw_to_xyz`).
No chain flips left and right where a label depends on the side (B and D read laterality).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RepeatChanneld,
    Resized,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from ..errors import BrainkitError, ConfigError, DataError
from . import formats, labels

__all__ = ["Chain", "LoadVolumed", "LoadSliced", "CheckGridd", "LabelModed", "dhw_to_xyz", "slice_transforms",
           "gemma_transforms", "msd_transforms", "SelectChannelsd", "brat_transforms", "for_method", "METHODS", "stepwise",
           "CLIP_MEAN", "CLIP_STD"]

#: OpenAI CLIP's image normalisation.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def dhw_to_xyz(size: Sequence[int]) -> tuple[int, int, int]:
    """A paper's (D, H, W) volume size as our RAS (X, Y, Z) spatial size: (W, H, D)."""
    if len(size) != 3:
        raise ConfigError(f"volume size: expected (D, H, W), found {tuple(size)!r}")
    d, h, w = (int(v) for v in size)
    return (w, h, d)


def _as_meta(arr: np.ndarray, affine: np.ndarray, path: Path, orientation: Sequence[str]) -> MetaTensor:
    t = MetaTensor(torch.from_numpy(np.ascontiguousarray(arr)), affine=torch.as_tensor(affine, dtype=torch.float64))
    t.meta["filename_or_obj"] = str(path)
    t.meta["original_orientation"] = "".join(orientation)
    return t


class LoadVolumed(MapTransform):
    """Load volumes with :func:`brainkit.data.formats.load_volume` as channel-first MetaTensors.

    Each key holds a path (a 3D volume -> 1 channel; a 4D one -> its channels first) or a list of
    paths (stacked as channels; all must share the first one's grid). ``kind="label"`` checks
    the values against ``convention``. All of load_volume's checks apply, and their
    :class:`~brainkit.errors.DataError` name the file. The array is RAS and the MetaTensor's
    affine is the RAS affine, so MONAI's spatial transforms follow.
    """

    def __init__(self, keys: KeysCollection, *, kind: str = "image", ndim: int = 3, channels: int | None = None,
                 convention: str | None = None, nonfinite: str = "error", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.kind, self.ndim, self.channels = kind, ndim, channels
        self.convention, self.nonfinite = convention, nonfinite

    def _one(self, path: Any) -> formats.Volume:
        kw: dict[str, Any] = {"ndim": self.ndim, "channels": self.channels, "kind": self.kind}
        if self.kind == "label":
            kw["convention"] = self.convention
        else:
            kw["nonfinite"] = self.nonfinite
        return formats.load_volume(path, **kw)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            paths = list(value) if isinstance(value, (list, tuple)) else [value]
            vols = [self._one(p) for p in paths]
            for v in vols[1:]:
                formats.check_pair(vols[0], v)
            arrs = []
            for v in vols:
                a = v.array
                arrs.append(np.moveaxis(a, -1, 0) if a.ndim == 4 else a[None])
            arr = np.concatenate(arrs, axis=0)
            if self.kind == "image":
                arr = arr.astype(np.float32, copy=False)
            d[key] = _as_meta(arr, vols[0].affine, vols[0].path, vols[0].orientation)
        return d


class CheckGridd(MapTransform):
    """Raise :class:`DataError` unless all ``keys`` share one spatial shape and affine (image vs
    label of another grid is caught here, naming both files)."""

    def __init__(self, keys: KeysCollection, atol_mm: float = 1e-3, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.atol_mm = atol_mm

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.key_iterator(d)]
        if len(keys) < 2:
            return d
        ref = d[keys[0]]
        for k in keys[1:]:
            other = d[k]
            rname = Path(str(ref.meta.get("filename_or_obj", keys[0]))).name
            opath = other.meta.get("filename_or_obj", k)
            if tuple(ref.shape[1:]) != tuple(other.shape[1:]):
                raise DataError(opath, "shape", f"{tuple(ref.shape[1:])} like {rname}", tuple(other.shape[1:]))
            diff = float((ref.affine - other.affine).abs().max())
            if diff > self.atol_mm:
                raise DataError(opath, "affine", f"the affine of {rname}", f"an affine that differs by up to {diff:.3g} mm")
        return d


class LabelModed(MapTransform):
    """Turn a label map (of ``convention``) into ``mode``: ``"brats"``, ``"msd"``, ``"binary"``
    (whole tumour) or ``"regions"`` (3 channels TC, WT, ET; see :func:`brainkit.data.labels.regions`)."""

    MODES = ("brats", "msd", "binary", "regions")

    def __init__(self, keys: KeysCollection, mode: str, convention: str, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if mode not in self.MODES:
            raise ConfigError(f"label mode: expected one of {', '.join(self.MODES)}, found {mode!r}")
        self.mode, self.convention = mode, convention

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            arr = np.asarray(lab[0].cpu().numpy() if isinstance(lab, torch.Tensor) else lab[0])
            path = lab.meta.get("filename_or_obj") if isinstance(lab, MetaTensor) else None
            if self.mode == "regions":
                out = labels.regions(arr, self.convention)
            else:
                out = labels.convert_labels(arr, self.convention, self.mode, path)[None]
            new = torch.from_numpy(np.ascontiguousarray(out))
            if isinstance(lab, MetaTensor):
                new = MetaTensor(new, affine=lab.affine, meta=dict(lab.meta))
            d[key] = new
        return d


class LoadSliced(MapTransform):
    """Load a 2D slice: a figshare ``.mat`` (image + ``tumorMask``) or a Kaggle JPEG (mask all
    zero; the class comes from the record). Writes ``image`` (1, H, W) float32 and ``mask_key``
    (1, H, W) float32 0/1."""

    def __init__(self, keys: KeysCollection = ("image",), mask_key: str = "mask", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = Path(d[key])
            if path.suffix.lower() == ".mat":
                s = formats.read_figshare_mat(path)
                img, mask = s.image.astype(np.float32), s.mask.astype(np.float32)
                if not img.any():
                    raise DataError(path, "cjdata.image", "an image with signal", "all pixels are zero")
            else:
                img = formats.read_kaggle_image(path).astype(np.float32)
                mask = np.zeros_like(img)
            d[key] = torch.from_numpy(img[None].copy())
            d[self.mask_key] = torch.from_numpy(mask[None].copy())
        return d


class Chain(Compose):
    """A MONAI ``Compose`` that lets brainkit's own errors reach the caller unwrapped.

    MONAI re-raises any exception from inside a transform as a ``RuntimeError`` ("applying
    transform ..."), which hides the :class:`~brainkit.errors.DataError` naming the file and field.
    Here such an error is raised as itself, with its own ``__cause__`` kept (MONAI's wrapper stays
    reachable as ``__context__`` but is not printed); every other exception passes through unchanged.
    The chains of this module are ``Chain``s.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except RuntimeError as wrapped:
            cause: BaseException | None = wrapped
            while cause is not None and not isinstance(cause, BrainkitError):
                cause = cause.__cause__
            if cause is None:
                raise
            cause.__suppress_context__ = True  # the traceback shows the brainkit error and its cause
            raise cause


def _spacing_step(keys: Sequence[str], spacing_mm: float, modes: Sequence[str]) -> list[Any]:
    if spacing_mm and spacing_mm > 0:
        return [Spacingd(keys=list(keys), pixdim=(spacing_mm,) * 3, mode=list(modes))]
    return []


def slice_transforms(cfg: Any, *, train: bool = False, rgb: bool = False, clip_normalise: bool = False,
                     size: int | None = None) -> Compose:
    """BrainMRI-GPT's 2D chain over ``{"image": path}`` records (figshare ``.mat`` or Kaggle JPEG).

    Intensities to [0, 1] between the 0.5th and 99.5th percentiles, resize to
    ``cfg.data_slice_size`` (mask with nearest neighbour), ``train`` adds flips and small
    intensity jitter, ``rgb`` repeats to 3 channels, ``clip_normalise`` applies CLIP's mean/std.
    """
    s = int(size or cfg.data_slice_size)
    steps: list[Any] = [
        LoadSliced(keys=("image",), mask_key="mask"),
        ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
        Resized(keys=["image", "mask"], spatial_size=(s, s), mode=("bilinear", "nearest")),
    ]
    if train:
        steps += [RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=1),
                  RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                  RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5)]
    if rgb or clip_normalise:
        steps.append(RepeatChanneld(keys="image", repeats=3))
    if clip_normalise:
        steps.append(NormalizeIntensityd(keys="image", subtrahend=np.asarray(CLIP_MEAN, np.float32),
                                         divisor=np.asarray(CLIP_STD, np.float32), channel_wise=True))
    steps.append(EnsureTyped(keys=["image", "mask"], dtype=torch.float32, track_meta=False))
    return Chain(steps)


def gemma_transforms(cfg: Any, *, with_label: bool = False, nonzero: bool = False) -> Compose:
    """BrainGemma3D's chain over ``{"image": FLAIR path[, "label": seg path]}`` (model card):
    RAS, clip to the 1st-99th percentile, z-score (``nonzero=True`` over the brain only; the card
    does not say, default: the whole volume), trilinear resize to ``cfg.data_gemma_volume_size``."""
    size = dhw_to_xyz(cfg.data_gemma_volume_size)
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[Any] = [LoadVolumed(keys="image")]
    if with_label:
        steps += [LoadVolumed(keys="label", kind="label", convention="brats"), CheckGridd(keys=keys)]
    steps += [
        Orientationd(keys=keys, axcodes="RAS"),
        ClipIntensityPercentilesd(keys="image", lower=1.0, upper=99.0),
        NormalizeIntensityd(keys="image", nonzero=nonzero),
        Resized(keys=keys, spatial_size=size, mode=("trilinear", "nearest")[: len(keys)]),
        EnsureTyped(keys=keys, dtype=(torch.float32, torch.uint8)[: len(keys)], track_meta=False),
    ]
    return Chain(steps)


class SelectChannelsd(MapTransform):
    """Keep some channels of ``image`` (``channels``: their indices, e.g. ``(0,)`` = MSD's FLAIR): a contiguous
    ascending run is a slice (a view), anything else an index list. Deterministic, so a cached dataset keeps it."""

    def __init__(self, keys: KeysCollection, channels: Sequence[int]):
        super().__init__(keys)
        self.channels = tuple(int(c) for c in channels)
        if not self.channels or any(c < 0 for c in self.channels):
            raise ConfigError(f"channels: expected one or more channel indices >= 0, found {channels!r}")
        run = self.channels == tuple(range(self.channels[0], self.channels[0] + len(self.channels)))
        self.index = slice(self.channels[0], self.channels[-1] + 1) if run else list(self.channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if max(self.channels) >= d[key].shape[0]:
                raise DataError(None, f"{key} channels", f"channel indices {self.channels} of a (C, X, Y, Z) volume",
                                f"{d[key].shape[0]} channels")
            d[key] = d[key][self.index]
        return d


def msd_transforms(cfg: Any, *, train: bool = False, label_mode: str = "msd", channels: Sequence[int] | None = None,
                   roi: Sequence[int] | None = None) -> Compose:
    """MedVisionLlama's MSD-style chain over ``{"image": 4D path, "label": label path}``.

    RAS, resample to ``cfg.data_msd_spacing_mm`` (0 keeps the file's spacing), z-score per
    channel over the brain (non-zero voxels), crop to the brain, resize to
    ``cfg.data_msd_volume_size``; ``label_mode``: ``"msd"`` (0-3), ``"binary"`` (whole tumour),
    ``"regions"`` (TC, WT, ET) or ``"brats"``. ``channels`` keeps those image channels (MSD's order:
    FLAIR, T1w, T1gd, T2w; ``(0,)`` = FLAIR only) right after the labels are made. ``train`` adds, after
    the split (never before it): with ``roi`` ``(D, H, W)`` smaller than the volume, a training patch of that
    size, centred on tumour and on background equally often (MONAI's ``RandCropByPosNegLabeld``, its
    foreground indices computed once per case), then flips on every axis and intensity jitter. The
    deterministic steps come first, so a MONAI ``CacheDataset`` caches all of them. Introduced in
    ``01_data_prep``; used by ``07_medvisionllama_segmentation``.
    """
    size = dhw_to_xyz(cfg.data_msd_volume_size)
    keys = ["image", "label"]
    steps: list[Any] = [
        LoadVolumed(keys="image", ndim=4, channels=4),
        LoadVolumed(keys="label", kind="label", convention="msd"),
        CheckGridd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS"),
        *_spacing_step(keys, float(cfg.data_msd_spacing_mm), ("bilinear", "nearest")),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
        Resized(keys=keys, spatial_size=size, mode=("trilinear", "nearest")),
        LabelModed(keys="label", mode=label_mode, convention="msd"),
    ]
    if channels is not None:
        steps.append(SelectChannelsd(keys="image", channels=channels))
    steps.append(EnsureTyped(keys=keys, dtype=(torch.float32, torch.uint8), track_meta=False))
    if train:
        patch = tuple(int(v) for v in dhw_to_xyz(roi)) if roi is not None else None
        if patch is not None and patch != tuple(int(v) for v in size):
            steps += [FgBgToIndicesd(keys="label"),
                      RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=patch, pos=1, neg=1,
                                             num_samples=1, fg_indices_key="label_fg_indices",
                                             bg_indices_key="label_bg_indices")]
        steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(3)]
        steps += [RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
                  RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0)]
    return Chain(steps)


def brat_transforms(cfg: Any, *, with_label: bool = False) -> Compose:
    """brat's chain over ``{"image": FLAIR path}``: RAS, resample to ``cfg.data_brat_spacing_mm``
    (paper 1 mm), z-score over the brain, resize to ``cfg.data_brat_volume_size`` (paper 32×256×256)."""
    size = dhw_to_xyz(cfg.data_brat_volume_size)
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[Any] = [LoadVolumed(keys="image")]
    if with_label:
        steps += [LoadVolumed(keys="label", kind="label", convention="brats"), CheckGridd(keys=keys)]
    steps += [
        Orientationd(keys=keys, axcodes="RAS"),
        *_spacing_step(keys, float(cfg.data_brat_spacing_mm), ("bilinear", "nearest")[: len(keys)]),
        NormalizeIntensityd(keys="image", nonzero=True),
        Resized(keys=keys, spatial_size=size, mode=("trilinear", "nearest")[: len(keys)]),
        EnsureTyped(keys=keys, dtype=(torch.float32, torch.uint8)[: len(keys)], track_meta=False),
    ]
    return Chain(steps)


#: Method name -> chain builder.
METHODS = {"brainmri_gpt": slice_transforms, "braingemma3d": gemma_transforms,
           "medvisionllama": msd_transforms, "brat": brat_transforms}


def for_method(method: str, cfg: Any, **kwargs: Any) -> Compose:
    """The chain of ``method`` (``brainmri_gpt``, ``braingemma3d``, ``medvisionllama``, ``brat``)."""
    if method not in METHODS:
        raise ConfigError(f"method: expected one of {', '.join(METHODS)}, found {method!r}")
    return METHODS[method](cfg, **kwargs)


def stepwise(transform: Compose, data: Mapping[Hashable, Any]) -> list[tuple[str, dict[Hashable, Any]]]:
    """Apply a chain one step at a time: ``[(step name, output)]``, to show each step's effect.

    Used in ``01_data_prep`` to plot every preprocessing step before and after.
    """
    out = []
    d: Any = dict(data)
    for t in transform.transforms:
        d = t(d)
        out.append((type(t).__name__, dict(d)))
    return out
