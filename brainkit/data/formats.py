"""The real datasets' on-disk formats: readers for downloads, writers for BrainPhantom.

Introduced in ``01_data_prep``. The smoke profile writes BrainPhantom in these layouts, so the
readers that the colab/full profiles run on real downloads are the very code CI exercises.

============  ==================================================================================
layout        files
============  ==================================================================================
brats2020     ``BraTS20_Training_###/BraTS20_Training_###_{flair,t1,t1ce,t2,seg}.nii.gz`` (or
              ``.nii``, as the Kaggle copy ships them; its case 355 names the seg file
              ``W39_1998.09.19_Segm.nii``, which the reader accepts). Labels 0/1/2/4.
textbrats     ``BraTS20_Training_###/BraTS20_Training_###_flair_text.txt``: one report per case.
msd_task01    ``imagesTr/BRATS_###.nii.gz`` (4D, channels FLAIR, T1w, T1gd, T2w),
              ``labelsTr/BRATS_###.nii.gz`` (0 background, 1 oedema, 2 non-enhancing, 3 enhancing)
              and ``dataset.json``.
figshare      ``<n>.mat``: MATLAB v7.3 (HDF5 behind a 512-byte MATLAB header) with the struct
              ``cjdata``: ``image`` (int16, 512x512 in the real set), ``label`` (1 meningioma,
              2 glioma, 3 pituitary), ``PID`` (char), ``tumorMask`` (logical), ``tumorBorder``.
kaggle        ``Training|Testing/{glioma,meningioma,notumor,pituitary}/*.jpg``: 8-bit JPEG.
============  ==================================================================================

Every reader returns arrays in RAS voxel order (see :mod:`brainkit.data.subject`): a file in
another orientation (LAS, LPS ...) is reoriented on load with nibabel and its original axis codes
are kept in :attr:`Volume.orientation`. Voxel spacing is recorded, never silently changed; the
method transforms (:mod:`brainkit.data.transforms`) resample where a method asks for a spacing.

Bad input raises :class:`~brainkit.errors.DataError` naming the file, the field and what was
expected: a missing file, a truncated ``.nii.gz``, 4D where 3D is expected, image and label of
different shape or affine, NaN/inf voxels, an all-zero image, label values outside the
convention, an empty or non-UTF-8 report, a MATLAB v5 ``.mat`` where v7.3 is expected.

2D slices (figshare, Kaggle) are shown the radiological way: rows run anterior to posterior and
the patient's right is on the image's left (:func:`axial_slice`).

Each layout is written from the cohort of the dataset it stands in for (:mod:`brainkit.data.cohorts`):
BraTS 2020 / TextBraTS and MSD Task01 hold gliomas only (the BraTS layout adds BrainGemma3D's healthy
controls), figshare meningioma, glioma and pituitary slices, Kaggle those three and ``notumor`` slices of
healthy controls, each in its published proportions.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np

from ..cache import atomic_write, atomic_write_text
from ..errors import ConfigError, DataError
from .labels import brats_to_msd, check_labels, msd_to_brats, tumour_core, whole_tumour
from .subject import CONTRASTS, Subject

__all__ = [
    "LAYOUTS", "MANIFEST_FILE", "Volume", "load_volume", "load_label", "save_volume", "check_pair",
    "read_report", "axial_slice",
    "brats_case_id", "write_brats2020", "find_brats2020", "read_brats2020_case",
    "textbrats_path", "write_textbrats", "find_textbrats",
    "MSD_MODALITIES", "MSD_CHANNELS", "msd_case_id", "write_msd_task01", "read_msd_dataset_json",
    "find_msd_task01", "read_msd_case",
    "FIGSHARE_CLASSES", "FigshareSlice", "write_figshare_mat", "read_figshare_mat", "write_figshare",
    "find_figshare",
    "KAGGLE_CLASSES", "write_kaggle", "read_kaggle_image", "find_kaggle",
    "lesion_class", "lesion_slices", "control_slices",
    "load_phantom_manifest",
]

log = logging.getLogger(__name__)

#: The layouts :func:`~brainkit.data.layouts.write_phantom_dataset` writes and the readers read.
LAYOUTS = ("brats2020", "textbrats", "msd_task01", "figshare", "kaggle")
#: The manifest a phantom set carries in its root (sha256 of every file, subjects, records).
MANIFEST_FILE = "brainkit_manifest.json"
PHANTOM_FORMAT = "brainkit-phantom/1"

_NIFTI_EXT = (".nii.gz", ".nii")


# ----------------------------------------------------------------------------------------------
# single volumes
# ----------------------------------------------------------------------------------------------
@dataclass
class Volume:
    """One loaded volume: ``array`` in RAS voxel order and its RAS ``affine``.

    ``orientation`` holds the axis codes the file was stored in (``("L", "A", "S")`` for a LAS
    file): the array was reoriented from them to RAS on load.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path
    orientation: tuple[str, ...] = ("R", "A", "S")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def anisotropic(self) -> bool:
        """True when the largest voxel side exceeds the smallest by more than 10 %."""
        s = self.spacing
        return max(s) > 1.1 * min(s)


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_EXT)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file", "an existing file", "no such file")
    if path.is_dir():
        raise DataError(path, "file", "a file", "a directory")


def _reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient the first three axes of ``data`` to RAS with nibabel's orientation tools."""
    from nibabel.orientations import (
        apply_orientation,
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    ornt = io_orientation(affine)
    transform = ornt_transform(ornt, axcodes2ornt(("R", "A", "S")))
    if np.array_equal(transform, axcodes2ornt(("R", "A", "S"))) and np.array_equal(ornt, transform):
        return data, affine
    new = apply_orientation(data, transform)
    return np.ascontiguousarray(new), affine @ inv_ornt_aff(transform, data.shape[:3])


def _read_any(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read voxels + affine: nibabel for NIfTI, MONAI ``LoadImage`` (pynrrd ...) for the rest."""
    if _is_nifti(path):
        try:
            img = nib.load(str(path))
        except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError ...
            raise DataError(path, "NIfTI header", "a readable NIfTI-1/2 file",
                            f"{type(e).__name__}: {e}") from e
        affine = np.asarray(img.affine, dtype=np.float64)
        try:
            data = np.asanyarray(img.dataobj) if kind == "label" else img.get_fdata(dtype=np.float32)
        except Exception as e:  # truncated gzip: EOFError; corrupt: zlib.error / OSError
            raise DataError(path, "voxel data", "complete, decompressible voxel data",
                            f"{type(e).__name__}: {e} (a truncated or corrupt download?)") from e
    else:
        from monai.transforms import LoadImage

        try:
            img = LoadImage(image_only=True, ensure_channel_first=False)(str(path))
        except Exception as e:
            raise DataError(path, "image file", "a volume MONAI's LoadImage can read (NIfTI, NRRD, ...)",
                            f"{type(e).__name__}: {e}") from e
        affine = np.asarray(img.affine, dtype=np.float64)
        data = np.asarray(img)
        if kind != "label":
            data = data.astype(np.float32, copy=False)
    codes = tuple(nib.aff2axcodes(affine))
    return data, affine, codes


def load_volume(path: str | os.PathLike, *, ndim: int = 3, channels: int | None = None,
                kind: str = "image", convention: str | None = None, reorient: bool = True,
                nonfinite: str = "error", allow_empty: bool | None = None) -> Volume:
    """Load one volume (NIfTI via nibabel; NRRD and the rest through MONAI's ``LoadImage``).

    Checks, each a :class:`~brainkit.errors.DataError` naming the file:

    - the file exists and decompresses completely (a truncated ``.nii.gz`` fails here);
    - ``ndim`` dimensions after dropping trailing singleton axes (4D where 3D is expected fails),
      and ``channels`` entries on the 4th axis when given;
    - images (``kind="image"``): finite voxels (``nonfinite="zero"`` replaces NaN/inf by 0 with a
      warning instead) and not all zero (``allow_empty=True`` allows it); for 4D, per channel;
    - labels (``kind="label"``): integer values of ``convention`` (``"brats"``, ``"msd"``,
      ``"binary"``), returned as ``uint8``; an all-zero label (a healthy subject) is fine.

    The array is reoriented to RAS (``reorient=True``) and the file's own axis codes are kept
    in :attr:`Volume.orientation`. Introduced in ``01_data_prep``.
    """
    path = Path(path)
    if kind not in ("image", "label"):
        raise ConfigError(f"load_volume kind: expected 'image' or 'label', found {kind!r}")
    if nonfinite not in ("error", "zero"):
        raise ConfigError(f"load_volume nonfinite: expected 'error' or 'zero', found {nonfinite!r}")
    _check_exists(path)
    data, affine, codes = _read_any(path, kind)
    while data.ndim > ndim and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != ndim:
        what = {3: "a 3D volume", 4: "a 4D volume (X, Y, Z, channel)"}.get(ndim, f"{ndim} dimensions")
        raise DataError(path, "dimensions", what, f"{data.ndim}D array of shape {tuple(data.shape)}")
    if channels is not None and data.shape[3] != channels:
        raise DataError(path, "channels", f"{channels} channels on the 4th axis", data.shape[3])
    if kind == "image":
        if data.dtype.kind == "f":
            bad = ~np.isfinite(data)
            if bad.any():
                n_nan = int(np.isnan(data).sum())
                n_inf = int(bad.sum()) - n_nan
                if nonfinite == "error":
                    raise DataError(path, "voxel values", "finite numbers",
                                    f"{n_nan} NaN and {n_inf} infinite voxels")
                log.warning("%s: %d NaN and %d infinite voxels replaced by 0", path, n_nan, n_inf)
                data = np.where(bad, np.float32(0), data)
        if not allow_empty:
            parts = [data] if ndim == 3 else [data[..., c] for c in range(data.shape[3])]
            for c, part in enumerate(parts):
                if not np.any(part):
                    where = "" if ndim == 3 else f" (channel {c})"
                    raise DataError(path, "voxel values", "an image with signal",
                                    f"all voxels are zero{where}")
    else:
        data = check_labels(data, convention, path) if convention else np.asarray(data)
    if reorient:
        data, affine = _reorient_to_ras(data, affine)
    vol = Volume(array=data, affine=affine, path=path, orientation=codes)
    if vol.anisotropic:
        log.info("%s: anisotropic voxels %s mm (kept; the method transforms resample)", path,
                 tuple(round(s, 3) for s in vol.spacing))
    return vol


def load_label(path: str | os.PathLike, convention: str = "brats", **kwargs: Any) -> Volume:
    """:func:`load_volume` for a label map in ``convention`` (values checked, ``uint8``)."""
    return load_volume(path, kind="label", convention=convention, **kwargs)


def check_pair(image: Volume, label: Volume, atol_mm: float = 1e-3) -> None:
    """Raise :class:`DataError` unless ``label`` lies on the same voxel grid as ``image``.

    Both must have the same spatial shape and (to ``atol_mm``) the same affine; the error
    names both files. Introduced in ``01_data_prep``.
    """
    if image.shape[:3] != label.shape[:3]:
        raise DataError(label.path, "shape", f"{image.shape[:3]} like {image.path.name}", label.shape[:3])
    diff = float(np.abs(image.affine - label.affine).max())
    if diff > atol_mm:
        raise DataError(label.path, "affine", f"the affine of {image.path.name}",
                        f"an affine that differs by up to {diff:.3g} mm")


def save_volume(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray,
                dtype: Any = None) -> Path:
    """Write a NIfTI volume atomically (temp file in the same folder, then rename).

    ``dtype`` sets the on-disk type; floats stored as ``int16`` get nibabel's scale factors.
    """
    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    if dtype is not None:
        img.set_data_dtype(dtype)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def read_report(path: str | os.PathLike) -> str:
    """Read a report as UTF-8 (a BOM is dropped); empty or non-UTF-8 files raise ``DataError``."""
    path = Path(path)
    _check_exists(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(path, "encoding", "UTF-8 text",
                        f"byte 0x{raw[e.start]:02x} at offset {e.start} is not UTF-8") from e
    if not text.strip():
        raise DataError(path, "report text", "a non-empty report", "an empty file" if not raw else "only whitespace")
    return text.strip()


# ----------------------------------------------------------------------------------------------
# 2D slices from a subject
# ----------------------------------------------------------------------------------------------
def axial_slice(volume: np.ndarray, k: int) -> np.ndarray:
    """Axial slice ``k`` of a RAS volume in radiological display order.

    Rows run anterior (top) to posterior, columns from the patient's right to left, as the
    figshare and Kaggle images are stored: ``display[r, c] = volume[X-1-c, Y-1-r, k]``.
    """
    return np.ascontiguousarray(volume[::-1, ::-1, k].T)


_CLASS_KEYS = ("lesion_type", "type", "pathology", "tumour_type", "tumor_type")


def lesion_class(subject: Subject) -> str:
    """The subject's pathology: ``"none"`` (control), ``"glioma"``, ``"meningioma"``,
    ``"metastasis"`` or the phantom's own word when it is none of these."""
    if subject.healthy:
        return "none"
    value = None
    for src in (subject.findings or {}, subject.meta or {}):
        for key in _CLASS_KEYS:
            if src.get(key):
                value = str(src[key]).lower()
                break
        if value:
            break
    if value is None:
        return "unknown"
    for name in ("glioma", "meningioma", "metasta", "pituitary"):
        if name in value:
            return "metastasis" if name == "metasta" else name
    return value


def _resize2d(img: np.ndarray, size: int, order: int) -> np.ndarray:
    from skimage.transform import resize

    if img.shape == (size, size):
        return img.copy()
    out = resize(img.astype(np.float32), (size, size), order=order, preserve_range=True,
                 anti_aliasing=order > 0, mode="edge")
    return out


def lesion_slices(subject: Subject, n: int) -> list[int]:
    """``n`` axial indices through the lesion: spread over the slices whose tumour-core area is at
    least half the largest (the whole tumour when the core is empty); for a lesion with fewer such
    slices, the ``n`` largest with at least a fifth of the largest area."""
    core = tumour_core(subject.seg)
    if not core.any():
        core = whole_tumour(subject.seg)
    area = core.sum(axis=(0, 1))
    if area.max() == 0:
        return []
    good = np.flatnonzero(area >= 0.5 * area.max())
    if len(good) < n:  # a small lesion: up to n slices with most of it (each at least a fifth of the largest)
        good = np.sort(np.argsort(-area.astype(np.int64), kind="stable")[:min(n, int((area >= 0.2 * area.max()).sum()))])
    if len(good) <= n:
        return [int(k) for k in good]
    pick = np.linspace(0, len(good) - 1, n).round().astype(int)
    return [int(good[i]) for i in np.unique(pick)]


def control_slices(subject: Subject, n: int) -> list[int]:
    """``n`` axial indices spread over the middle of the brain (30-70 % of its height)."""
    zs = np.flatnonzero(subject.brain_mask.any(axis=(0, 1)))
    if len(zs) == 0:
        return []
    lo, hi = zs[0] + 0.3 * (zs[-1] - zs[0]), zs[0] + 0.7 * (zs[-1] - zs[0])
    return sorted({int(round(v)) for v in np.linspace(lo, hi, n)})


def _head(subject: Subject, contrast: str) -> np.ndarray:
    if subject.head is None:
        raise ConfigError(f"subject {subject.subject_id}: the 2D slice sets use the head with skull; "
                          "generate the subjects with with_head=True")
    return subject.head[contrast]


def _to_uint(img: np.ndarray, top: float, vmax: float) -> np.ndarray:
    return np.clip(img / max(top, 1e-6) * vmax, 0, vmax)


# ----------------------------------------------------------------------------------------------
# BraTS 2020 + TextBraTS
# ----------------------------------------------------------------------------------------------
_BRATS_DIR = re.compile(r"^BraTS20_(Training|Validation)_\d{3}$")


def brats_case_id(i: int) -> str:
    """``BraTS20_Training_###`` for the 1-based case number ``i``."""
    return f"BraTS20_Training_{i:03d}"


def write_brats2020(root: str | os.PathLike, subjects: Sequence[Subject], *, ext: str = ".nii.gz",
                    start: int = 1, n_jobs: int = 1) -> list[dict[str, Any]]:
    """Write subjects as BraTS 2020 training folders; returns one record per case.

    Images are stored as ``int16`` with nibabel scale factors (about half the size of float32),
    seg files as ``uint8`` BraTS labels. ``ext=".nii"`` writes the Kaggle copy's variant.
    """
    if ext not in _NIFTI_EXT:
        raise ConfigError(f"BraTS extension: expected one of {_NIFTI_EXT}, found {ext!r}")
    root = Path(root)

    def one(i_s: tuple[int, Subject]) -> dict[str, Any]:
        i, s = i_s
        pid = brats_case_id(start + i)
        case = root / pid
        case.mkdir(parents=True, exist_ok=True)
        for c in ("flair", "t1", "t1ce", "t2"):
            save_volume(case / f"{pid}_{c}{ext}", s.images[c].astype(np.float32), s.affine, np.int16)
        save_volume(case / f"{pid}_seg{ext}", check_labels(s.seg, "brats"), s.affine, np.uint8)
        return {"case_id": pid, "subject_id": s.subject_id}

    return _map(one, list(enumerate(subjects)), n_jobs)


def _find_dirs(root: Path, pattern: re.Pattern[str], max_depth: int = 4) -> list[Path]:
    found: list[Path] = []
    base_depth = len(root.parts)
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if pattern.match(d):
                found.append(here / d)
            elif not d.startswith((".", "__MACOSX")) and len(here.parts) - base_depth < max_depth:
                keep.append(d)
        dirnames[:] = keep
    return sorted(found, key=lambda p: p.name)


def _nifti_in(case: Path, stem: str) -> Path | None:
    for ext in _NIFTI_EXT:
        p = case / f"{stem}{ext}"
        if p.exists():
            return p
    return None


def _seg_fallback(case: Path) -> Path | None:
    """A seg file under another name (the Kaggle copy's case 355: ``W39_1998.09.19_Segm.nii``)."""
    cands = [p for p in case.iterdir() if _is_nifti(p) and "seg" in p.name.lower()
             and not p.name.startswith("._")]
    return cands[0] if len(cands) == 1 else None


def find_brats2020(root: str | os.PathLike, *, require_seg: bool = True) -> list[dict[str, Any]]:
    """List the BraTS 2020 cases under ``root`` (searched up to 4 levels deep, so the folder of a
    download that nests ``MICCAI_BraTS2020_TrainingData`` works).

    Returns ``{"case_id", "dir", "flair", "t1", "t1ce", "t2", "seg"}`` records (paths); a missing
    contrast (or seg, with ``require_seg``) raises :class:`DataError` naming the file.
    """
    root = Path(root)
    _check_exists_dir(root, "a BraTS 2020 folder with BraTS20_Training_### case folders")
    cases = _find_dirs(root, _BRATS_DIR)
    if not cases:
        raise DataError(root, "case folders", "BraTS20_Training_### folders", "none")
    out = []
    for case in cases:
        pid = case.name
        rec: dict[str, Any] = {"case_id": pid, "dir": case}
        for c in ("flair", "t1", "t1ce", "t2"):
            p = _nifti_in(case, f"{pid}_{c}")
            if p is None:
                raise DataError(case / f"{pid}_{c}.nii.gz", "file", "an existing file (.nii.gz or .nii)", "no such file")
            rec[c] = p
        seg = _nifti_in(case, f"{pid}_seg") or _seg_fallback(case)
        if seg is None and require_seg:
            raise DataError(case / f"{pid}_seg.nii.gz", "file", "an existing seg file", "no such file")
        rec["seg"] = seg
        out.append(rec)
    return out


def _check_exists_dir(root: Path, what: str) -> None:
    if not root.exists():
        raise DataError(root, "folder", what, "no such folder")
    if not root.is_dir():
        raise DataError(root, "folder", what, "a file")


def read_brats2020_case(case: dict[str, Any] | str | os.PathLike, *, contrasts: Sequence[str] = CONTRASTS,
                        nonfinite: str = "error") -> Subject:
    """Load one BraTS 2020 case (a record of :func:`find_brats2020` or its folder) as a Subject.

    All contrasts and the seg are checked to lie on the FLAIR's grid; the brain mask is the
    union of non-zero voxels; ``findings`` is empty and ``report`` is ``""`` (join TextBraTS).
    """
    if not isinstance(case, dict):
        case = _case_record(Path(case))
    vols = {c: load_volume(case[c], nonfinite=nonfinite) for c in contrasts}
    ref = vols[contrasts[0]]
    for c in contrasts[1:]:
        check_pair(ref, vols[c])
    if case.get("seg") is not None:
        seg = load_label(case["seg"], "brats")
        check_pair(ref, seg)
        seg_arr = seg.array
    else:
        seg_arr = np.zeros(ref.shape, np.uint8)
    mask = np.zeros(ref.shape, bool)
    for v in vols.values():
        mask |= v.array != 0
    return Subject(subject_id=case["case_id"], images={c: v.array for c, v in vols.items()}, seg=seg_arr,
                   brain_mask=mask, affine=ref.affine, findings={}, report="",
                   meta={"source": "brats2020", "orientation": "".join(ref.orientation),
                         "paths": {k: str(case[k]) for k in (*contrasts, "seg") if case.get(k)}})


def _case_record(folder: Path) -> dict[str, Any]:
    _check_exists_dir(folder, "a BraTS20_Training_### case folder")
    if not _BRATS_DIR.match(folder.name):
        raise DataError(folder, "case folder", "a folder named BraTS20_Training_###", folder.name)
    recs = [r for r in find_brats2020(folder.parent, require_seg=False) if r["dir"] == folder]
    if not recs:
        raise DataError(folder, "case folder", "a BraTS20_Training_### folder", "not found")
    return recs[0]


def textbrats_path(root: str | os.PathLike, case_id: str) -> Path:
    """``root/<case_id>/<case_id>_flair_text.txt``."""
    return Path(root) / case_id / f"{case_id}_flair_text.txt"


def write_textbrats(root: str | os.PathLike, items: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Write ``(case_id, report)`` pairs as TextBraTS report files."""
    out = []
    for case_id, report in items:
        if not report or not report.strip():
            raise DataError(case_id, "report", "a non-empty report", "empty")
        atomic_write_text(textbrats_path(root, case_id), report.strip() + "\n")
        out.append({"case_id": case_id})
    return out


def find_textbrats(root: str | os.PathLike) -> dict[str, Path]:
    """``{case_id: report path}`` for every ``*_flair_text.txt`` under ``root`` (4 levels deep)."""
    root = Path(root)
    _check_exists_dir(root, "a TextBraTS folder with <case>/<case>_flair_text.txt files")
    out = {}
    for case in _find_dirs(root, _BRATS_DIR):
        p = case / f"{case.name}_flair_text.txt"
        if p.exists():
            out[case.name] = p
    if not out:
        raise DataError(root, "report files", "<case>/<case>_flair_text.txt files", "none")
    return out


# ----------------------------------------------------------------------------------------------
# MSD Task01
# ----------------------------------------------------------------------------------------------
#: ``dataset.json`` modality entries of MSD Task01, in channel order.
MSD_MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
#: brainkit contrast names of the MSD channels, in the same order.
MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")
MSD_LABEL_NAMES = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def msd_case_id(i: int) -> str:
    """``BRATS_###`` for the 1-based case number ``i``."""
    return f"BRATS_{i:03d}"


def write_msd_task01(root: str | os.PathLike, subjects: Sequence[Subject], *, start: int = 1,
                     n_jobs: int = 1, description: str | None = None) -> list[dict[str, Any]]:
    """Write subjects in MSD Task01 layout: 4D images (FLAIR, T1w, T1gd, T2w), MSD labels,
    ``dataset.json`` in the decathlon's format (every case in ``training``; ``numTest`` 0)."""
    root = Path(root)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)

    def one(i_s: tuple[int, Subject]) -> dict[str, Any]:
        i, s = i_s
        cid = msd_case_id(start + i)
        img4 = np.stack([s.images[c].astype(np.float32) for c in MSD_CHANNELS], axis=-1)
        save_volume(root / "imagesTr" / f"{cid}.nii.gz", img4, s.affine, np.int16)
        save_volume(root / "labelsTr" / f"{cid}.nii.gz", brats_to_msd(s.seg), s.affine, np.uint8)
        return {"case_id": cid, "subject_id": s.subject_id}

    recs = _map(one, list(enumerate(subjects)), n_jobs)
    meta = {
        "name": "BRATS",
        "description": description or "BrainPhantom written in the layout of MSD Task01_BrainTumour",
        "reference": "http://medicaldecathlon.com/",
        "licence": "CC-BY-SA 4.0",
        "release": "brainkit phantom",
        "tensorImageSize": "4D",
        "modality": dict(MSD_MODALITIES),
        "labels": dict(MSD_LABEL_NAMES),
        "numTraining": len(recs),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{r['case_id']}.nii.gz", "label": f"./labelsTr/{r['case_id']}.nii.gz"}
                     for r in recs],
        "test": [],
    }
    atomic_write_text(root / "dataset.json", json.dumps(meta, indent=4) + "\n")
    return recs


def _msd_root(root: Path) -> Path:
    if (root / "dataset.json").exists():
        return root
    if (root / "Task01_BrainTumour" / "dataset.json").exists():
        return root / "Task01_BrainTumour"
    raise DataError(root / "dataset.json", "file", "an MSD Task01 dataset.json (in the folder or in "
                    "Task01_BrainTumour/)", "no such file")


def read_msd_dataset_json(root: str | os.PathLike) -> dict[str, Any]:
    """Load and check ``dataset.json``: channel order FLAIR, T1w, T1gd, T2w and MSD labels."""
    path = _msd_root(Path(root)) / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, "JSON", "a valid dataset.json", f"{type(e).__name__}: {e}") from e
    for key in ("modality", "labels", "training"):
        if key not in meta:
            raise DataError(path, key, f"a '{key}' entry", "missing")
    modality = {str(k): str(v).lower() for k, v in meta["modality"].items()}
    expected = {k: v.lower() for k, v in MSD_MODALITIES.items()}
    if modality != expected:
        raise DataError(path, "modality", f"channels {MSD_MODALITIES}", meta["modality"])
    labels = {str(k): str(v).lower() for k, v in meta["labels"].items()}
    if set(labels) != set(MSD_LABEL_NAMES) or "edema" not in labels.get("1", ""):
        raise DataError(path, "labels", f"the MSD convention {MSD_LABEL_NAMES}", meta["labels"])
    return meta


def find_msd_task01(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The training cases of ``dataset.json`` as ``{"case_id", "image", "label"}`` records.

    A file listed in ``dataset.json`` but absent raises :class:`DataError` naming it. macOS
    ``._*`` resource-fork files, which the real archive contains, are never listed.
    """
    base = _msd_root(Path(root))
    meta = read_msd_dataset_json(base)
    out = []
    for item in meta["training"]:
        img = (base / item["image"]).resolve()
        lab = (base / item["label"]).resolve()
        for p in (img, lab):
            if not p.exists():
                raise DataError(p, "file", "a file listed in dataset.json", "no such file")
        out.append({"case_id": img.name.split(".")[0], "image": img, "label": lab})
    return out


def read_msd_case(image: str | os.PathLike, label: str | os.PathLike | None = None, *,
                  convention: str = "brats", nonfinite: str = "error") -> Subject:
    """Load one MSD case as a Subject; ``seg`` is converted to ``convention`` (BraTS by default,
    the Subject convention; ``"msd"`` keeps the file's values)."""
    vol = load_volume(image, ndim=4, channels=4, nonfinite=nonfinite)
    if label is not None:
        lab = load_label(label, "msd")
        check_pair(vol, lab)
        seg = msd_to_brats(lab.array) if convention == "brats" else lab.array
    else:
        seg = np.zeros(vol.shape[:3], np.uint8)
    images = {c: np.ascontiguousarray(vol.array[..., i]) for i, c in enumerate(MSD_CHANNELS)}
    mask = np.any(vol.array != 0, axis=-1)
    cid = Path(image).name.split(".")[0]
    return Subject(subject_id=cid, images=images, seg=seg, brain_mask=mask, affine=vol.affine, findings={},
                   report="", meta={"source": "msd_task01", "label_convention": convention,
                                    "orientation": "".join(vol.orientation),
                                    "paths": {"image": str(image), "label": str(label) if label else None}})


# ----------------------------------------------------------------------------------------------
# figshare .mat (MATLAB v7.3)
# ----------------------------------------------------------------------------------------------
#: figshare ``cjdata.label`` values.
FIGSHARE_CLASSES = {1: "meningioma", 2: "glioma", 3: "pituitary"}
_FIGSHARE_LABEL = {v: k for k, v in FIGSHARE_CLASSES.items()}


@dataclass
class FigshareSlice:
    """One figshare slice: ``image`` (int16, rows x cols as MATLAB shows it), ``label`` (1-3),
    ``pid``, ``mask`` (uint8 0/1) and ``border`` (the stored ``tumorBorder`` as (N, 2) pairs)."""

    path: Path
    image: np.ndarray
    label: int
    pid: str
    mask: np.ndarray
    border: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def class_name(self) -> str:
        return FIGSHARE_CLASSES[self.label]


def _mat_header(text: str) -> bytes:
    head = text.encode("ascii")[:116].ljust(116, b" ")
    return head + b"\x00" * 8 + b"\x00\x02" + b"IM"


def write_figshare_mat(path: str | os.PathLike, image: np.ndarray, label: int, pid: str, mask: np.ndarray,
                       border: np.ndarray | None = None) -> Path:
    """Write one slice as MATLAB does for ``save(..., 'cjdata', '-v7.3')``.

    HDF5 behind a 512-byte user block holding the MATLAB header; MATLAB's column-major arrays
    stored transposed; ``MATLAB_class`` attributes (``struct``, ``int16``, ``double``, ``char``,
    ``logical``); ``PID`` as uint16 character codes. Written atomically.
    """
    path = Path(path)
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2 or mask.shape != image.shape:
        raise ConfigError(f"figshare slice: expected a 2D image and a mask of its shape, found "
                          f"{image.shape} and {mask.shape}")
    if label not in FIGSHARE_CLASSES:
        raise ConfigError(f"figshare label: expected one of {FIGSHARE_CLASSES}, found {label!r}")
    if border is None:
        border = np.zeros((0, 2))
    border = np.asarray(border, dtype=np.float64).reshape(-1)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", userblock_size=512) as f:
            g = f.create_group("cjdata")
            g.attrs["MATLAB_class"] = np.bytes_("struct")

            def put(name: str, data: np.ndarray, cls: str, **attrs: Any) -> None:
                d = g.create_dataset(name, data=data)
                d.attrs["MATLAB_class"] = np.bytes_(cls)
                for k, v in attrs.items():
                    d.attrs[k] = v

            put("PID", np.array([[ord(ch)] for ch in pid], dtype=np.uint16), "char",
                MATLAB_int_decode=np.int32(2))
            put("image", np.ascontiguousarray(image.astype(np.int16).T), "int16")
            put("label", np.array([[float(label)]]), "double")
            put("tumorBorder", border.reshape(-1, 1), "double")
            put("tumorMask", np.ascontiguousarray(mask.astype(np.uint8).T), "logical",
                MATLAB_int_decode=np.int32(1))
        with open(tmp, "r+b") as fh:
            fh.write(_mat_header("MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2015 "
                                 "HDF5 schema 1.00 ."))

    return atomic_write(path, write)


def read_figshare_mat(path: str | os.PathLike) -> FigshareSlice:
    """Read one figshare ``.mat`` (MATLAB v7.3) with h5py.

    A MATLAB v5 file (what ``scipy.io.savemat`` writes) or any non-HDF5 file raises
    :class:`DataError` saying which version was found; so do a missing ``cjdata`` field, a label
    outside 1-3 and a mask whose shape differs from the image's.
    """
    path = Path(path)
    _check_exists(path)
    with open(path, "rb") as fh:
        head = fh.read(128)
    if not h5py.is_hdf5(str(path)):
        if head.startswith(b"MATLAB"):
            text = head[:116].decode("ascii", "replace").split(",")[0].strip()
            raise DataError(path, "MAT-file version", "MATLAB v7.3 (HDF5-based), as the figshare set ships; "
                            "re-save it in MATLAB with save(..., '-v7.3')", f"'{text}'")
        raise DataError(path, "file format", "a MATLAB v7.3 (HDF5) MAT-file", f"a file starting with {head[:16]!r}")
    try:
        with h5py.File(path, "r") as f:
            if "cjdata" not in f:
                raise DataError(path, "cjdata", "a MATLAB struct 'cjdata'", f"variables {sorted(f.keys())}")
            g = f["cjdata"]
            for key in ("image", "label", "PID", "tumorMask"):
                if key not in g:
                    raise DataError(path, f"cjdata.{key}", "present", f"missing (fields: {sorted(g.keys())})")
            image = np.asarray(g["image"]).T
            label_arr = np.asarray(g["label"]).ravel()
            pid = "".join(chr(int(c)) for c in np.asarray(g["PID"]).ravel())
            mask = (np.asarray(g["tumorMask"]).T != 0).astype(np.uint8)
            border = np.asarray(g["tumorBorder"]).ravel() if "tumorBorder" in g else np.zeros(0)
    except DataError:
        raise
    except Exception as e:  # truncated or damaged HDF5
        raise DataError(path, "HDF5 data", "a complete MATLAB v7.3 file", f"{type(e).__name__}: {e}") from e
    if image.ndim != 2:
        raise DataError(path, "cjdata.image", "a 2D image", f"shape {image.shape}")
    if mask.shape != image.shape:
        raise DataError(path, "cjdata.tumorMask", f"the image's shape {image.shape}", mask.shape)
    if label_arr.size != 1 or int(label_arr[0]) not in FIGSHARE_CLASSES:
        raise DataError(path, "cjdata.label", "1 (meningioma), 2 (glioma) or 3 (pituitary)", label_arr.tolist())
    if border.size % 2:
        border = border[:-1]
    return FigshareSlice(path=path, image=image, label=int(label_arr[0]), pid=pid, mask=mask,
                         border=border.reshape(-1, 2))


def _border(mask: np.ndarray) -> np.ndarray:
    """The longest contour of ``mask`` as 1-based (row, col) pairs, every 2nd point."""
    from skimage.measure import find_contours

    contours = find_contours(mask.astype(float), 0.5)
    if not contours:
        return np.zeros((0, 2))
    c = max(contours, key=len)[::2]
    return np.round(c + 1, 2)


def _slice_pair(subject: Subject, k: int, size: int, contrast: str, top: float) -> tuple[np.ndarray, np.ndarray]:
    img = axial_slice(_head(subject, contrast), k)
    core = tumour_core(subject.seg)
    region = core if core[:, :, k].any() else whole_tumour(subject.seg)
    mask = axial_slice(region, k)
    img = _resize2d(img, size, order=1)
    mask = (_resize2d(mask.astype(np.float32), size, order=0) > 0.5).astype(np.uint8)
    return _to_uint(img, top, 1.0), mask


def _robust_top(subject: Subject, contrast: str) -> float:
    vol = _head(subject, contrast)
    nz = vol[vol > 0]
    return float(np.percentile(nz, 99.5)) if nz.size else 1.0


#: The contrast of the 2D slice sets (figshare and Kaggle are T1 contrast-enhanced).
_SLICE_CONTRAST = "t1ce"


def _slices_for(spec: Any, cls: str, default: int) -> int:
    return spec.slices_for(cls, default) if spec is not None else default


def write_figshare(root: str | os.PathLike, subjects: Sequence[Subject], *, slice_size: int = 512,
                   slices_per_subject: int = 3, contrast: str = _SLICE_CONTRAST,
                   spec: Any = None) -> list[dict[str, Any]]:
    """Write the meningioma, glioma and pituitary subjects' head slices through the lesion as ``<n>.mat``.

    Images are T1-CE (the figshare contrast) scaled to int16 0-1000, ``tumorMask`` is the tumour
    core (necrosis + enhancing; the whole tumour where a slice has no core), as a T1-CE slice
    shows it; files are numbered 1, 2, ... in subject order, ``PID`` is the subject id. A subject
    gives ``spec.slices_for(class)`` slices (a :class:`~brainkit.data.cohorts.CohortSpec`), else
    ``slices_per_subject``. Controls and metastases (no figshare class) are not written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    recs = []
    n = 0
    for s in subjects:
        cls = lesion_class(s)
        if cls not in _FIGSHARE_LABEL:
            continue
        top = _robust_top(s, contrast)
        for k in lesion_slices(s, _slices_for(spec, cls, slices_per_subject)):
            img, mask = _slice_pair(s, k, slice_size, contrast, top)
            n += 1
            name = f"{n}.mat"
            write_figshare_mat(root / name, np.round(img * 1000).astype(np.int16), _FIGSHARE_LABEL[cls],
                               s.subject_id, mask, _border(mask))
            recs.append({"file": name, "subject_id": s.subject_id, "label": _FIGSHARE_LABEL[cls],
                         "class_name": cls, "slice": k})
    return recs


def find_figshare(root: str | os.PathLike) -> list[Path]:
    """Every ``<n>.mat`` under ``root`` (the four zips may be unpacked into one folder or four),
    in numeric order; ``cvind.mat`` and macOS ``._*`` files are skipped."""
    root = Path(root)
    _check_exists_dir(root, "a folder with the figshare <n>.mat files")
    files = [p for p in root.rglob("*.mat") if p.stem.isdigit() and not p.name.startswith("._")]
    if not files:
        raise DataError(root, "files", "figshare <n>.mat files", "none")
    return sorted(files, key=lambda p: int(p.stem))


# ----------------------------------------------------------------------------------------------
# Kaggle brain-tumor-mri-dataset
# ----------------------------------------------------------------------------------------------
#: Kaggle class folders; ``notumor`` holds the healthy slices.
KAGGLE_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
_KAGGLE_PREFIX = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}
_KAGGLE_SPLITS = {"Training": "Tr", "Testing": "Te"}


def write_kaggle(root: str | os.PathLike, subjects: Sequence[Subject], *, slice_size: int = 512,
                 slices_per_subject: int = 3, test_fraction: float = 0.2, seed: int = 0,
                 contrast: str = _SLICE_CONTRAST, quality: int = 90, spec: Any = None) -> list[dict[str, Any]]:
    """Write head slices as the Kaggle class folders (8-bit grayscale JPEG, ``Tr-gl_0001.jpg`` ...).

    Glioma, meningioma and pituitary subjects give slices through the lesion; healthy controls give
    ``notumor`` slices from the middle of the brain (``spec.slices_for(class)`` each, else
    ``slices_per_subject``). Subjects go wholly to ``Training`` or ``Testing`` (grouped by subject,
    stratified by class, deterministic in ``seed``).
    """
    from PIL import Image

    from .splits import split_groups

    root = Path(root)
    for sp in _KAGGLE_SPLITS:
        for c in KAGGLE_CLASSES:
            (root / sp / c).mkdir(parents=True, exist_ok=True)
    chosen = []
    for s in subjects:
        cls = lesion_class(s)
        cls = "notumor" if cls == "none" else cls
        if cls in KAGGLE_CLASSES:
            chosen.append((s, cls))
    assign = split_groups([s.subject_id for s, _ in chosen], [c for _, c in chosen],
                          {"Training": 1 - test_fraction, "Testing": test_fraction}, seed=seed)
    counters = {(sp, c): 0 for sp in _KAGGLE_SPLITS for c in KAGGLE_CLASSES}
    recs = []
    for s, cls in chosen:
        sp = assign[s.subject_id]
        top = _robust_top(s, contrast)
        n_sl = _slices_for(spec, "none" if cls == "notumor" else cls, slices_per_subject)
        ks = control_slices(s, n_sl) if cls == "notumor" else lesion_slices(s, n_sl)
        for k in ks:
            img = _resize2d(axial_slice(_head(s, contrast), k), slice_size, order=1)
            arr = np.round(_to_uint(img, top, 255.0)).astype(np.uint8)
            counters[(sp, cls)] += 1
            name = f"{_KAGGLE_SPLITS[sp]}-{_KAGGLE_PREFIX[cls]}_{counters[(sp, cls)]:04d}.jpg"
            rel = f"{sp}/{cls}/{name}"
            atomic_write(root / rel, lambda tmp, a=arr: Image.fromarray(a, mode="L").save(tmp, format="JPEG",
                                                                                       quality=quality))
            recs.append({"file": rel, "subject_id": s.subject_id, "class_name": cls, "split": sp, "slice": k})
    return recs


def _map(fn: Callable[[Any], Any], items: list[Any], n_jobs: int) -> list[Any]:
    if n_jobs <= 1 or len(items) < 2:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n_jobs) as pool:  # zlib / HDF5 release the GIL
        return list(pool.map(fn, items))


def read_kaggle_image(path: str | os.PathLike) -> np.ndarray:
    """Read a Kaggle JPEG as a 2D ``uint8`` array (RGB files, which the real set contains, are
    converted to grayscale); a truncated or non-image file raises :class:`DataError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(path, "image", "a readable JPEG", f"{type(e).__name__}: {e}") from e
    if not arr.any():
        raise DataError(path, "pixel values", "an image with signal", "all pixels are zero")
    return arr


def find_kaggle(root: str | os.PathLike) -> list[dict[str, Any]]:
    """``{"path", "split" (Training/Testing), "class_name"}`` for every image under ``root``
    (``root`` or one level below it must hold ``Training/`` and ``Testing/``)."""
    root = Path(root)
    _check_exists_dir(root, "a folder with Training/ and Testing/ class folders")
    base = root
    if not (root / "Training").is_dir():
        subs = [p for p in root.iterdir() if (p / "Training").is_dir()]
        if not subs:
            raise DataError(root / "Training", "folder", "Training/ and Testing/ class folders", "no such folder")
        base = subs[0]
    out = []
    for sp in _KAGGLE_SPLITS:
        for c in KAGGLE_CLASSES:
            folder = base / sp / c
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith("._"):
                    out.append({"path": p, "split": sp, "class_name": c})
    if not out:
        raise DataError(base, "images", "JPEG files in Training|Testing/<class>/", "none")
    return out


def load_phantom_manifest(root: str | os.PathLike) -> dict[str, Any] | None:
    """The ``brainkit_manifest.json`` of a phantom set, or ``None`` for a real download."""
    p = Path(root) / MANIFEST_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(p, "JSON", "a valid brainkit manifest", f"{type(e).__name__}: {e}") from e


