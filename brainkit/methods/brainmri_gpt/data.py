"""BrainMRI-GPT's 2D slice set: figshare tumour slices (with masks) plus Kaggle ``notumor`` negatives.

Introduced in ``02_clip_localisation`` (and reused by ``03_llm_explanations``).

- positives: every figshare ``<n>.mat`` (T1-CE slice, ``tumorMask``, ``PID``), read with
  :func:`~brainkit.data.formats.read_figshare_mat`;
- negatives: the Kaggle ``notumor`` images (:func:`~brainkit.data.formats.find_kaggle`), mask all zero;
- every image is scaled to ``[0, 1]`` by its own 99.5th percentile and resized to ``size`` (masks
  with nearest neighbour), so both sources go through one identical pipeline;
- patient ids: figshare's ``PID``; for Kaggle images the phantom manifest's ``subject_id`` when the
  set is a phantom (the real Kaggle set has none: each image is then its own group, and
  :func:`~brainkit.data.manifests.make_splits` warns);
- exact duplicates across the two sources (the real Kaggle set repeats figshare images) are
  dropped by a hash of the resized 8-bit image.

Positives and negatives come from different sources, so a model could learn the source instead of
the tumour (BrainMRI-GPT's paper). :func:`load_slice_set` can also return the Kaggle *tumour* images
(``with_kaggle_tumour=True``, no masks): scoring them against the Kaggle negatives measures the
image-level score within one source, the check the notebook runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...data import formats
from ...errors import ConfigError, DataError

__all__ = ["load_slice_set", "normalise_slice", "slice_caption", "stack"]

log = logging.getLogger(__name__)


def normalise_slice(image: np.ndarray, size: int, *, order: int = 1) -> np.ndarray:
    """``image`` scaled to ``[0, 1]`` by its 99.5th percentile (of non-zero pixels) and resized to
    ``size × size`` (``order`` 1 bilinear for images, 0 nearest for masks)."""
    from skimage.transform import resize

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 2:
        raise DataError(None, "image.shape", "a 2D slice (H, W)", img.shape)
    if order:
        nz = img[img > 0]
        top = float(np.percentile(nz, 99.5)) if nz.size else 1.0
        img = np.clip(img / max(top, 1e-6), 0.0, 1.0)
    if img.shape != (size, size):
        img = resize(img, (size, size), order=order, preserve_range=True, anti_aliasing=bool(order), mode="edge")
    return img.astype(np.float32)


def _hash(img: np.ndarray) -> str:
    return hashlib.sha1(np.round(img * 255).astype(np.uint8).tobytes()).hexdigest()


def _subject_table(root: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """From a phantom manifest: ``{file: record}`` and ``{subject_id: subject summary}`` (empty for real data)."""
    man = formats.load_phantom_manifest(root)
    if man is None:
        return {}, {}
    return {r["file"]: r for r in man.get("records", [])}, {s["subject_id"]: s for s in man.get("subjects", [])}


def load_slice_set(figshare_root: str | os.PathLike, kaggle_root: str | os.PathLike, *, size: int,
                   with_kaggle_tumour: bool = False) -> list[dict[str, Any]]:
    """The slice records: ``image`` (float32 ``(size, size)`` in [0, 1]), ``mask`` (uint8), ``label``
    (1 tumour, 0 normal), ``patient_id``, ``source`` (``figshare`` | ``kaggle`` | ``kaggle_tumour``),
    ``file``, ``class_name``, ``slice`` (phantom axial index or ``None``) and ``findings`` (the phantom
    subject's structured findings, or ``None``). ``kaggle_tumour`` records have ``mask=None``."""
    if not isinstance(size, int) or size < 8:
        raise ConfigError(f"size: expected an int >= 8 (the CLIP input side), found {size!r}")
    fig_root, kag_root = Path(figshare_root), Path(kaggle_root)
    fig_recs, fig_subj = _subject_table(fig_root)
    kag_recs, kag_subj = _subject_table(kag_root)
    subjects = {**kag_subj, **fig_subj}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in formats.find_figshare(fig_root):
        s = formats.read_figshare_mat(path)
        img = normalise_slice(s.image, size)
        mask = (normalise_slice(s.mask.astype(np.float32), size, order=0) > 0.5).astype(np.uint8)
        rec = fig_recs.get(path.name, {})
        seen.add(_hash(img))
        out.append({"image": img, "mask": mask, "label": 1, "patient_id": s.pid, "source": "figshare",
                    "file": str(path.relative_to(fig_root)), "class_name": s.class_name, "slice": rec.get("slice"),
                    "findings": (subjects.get(s.pid) or {}).get("findings")})
    dups = 0
    for item in formats.find_kaggle(kag_root):
        cls = item["class_name"]
        if cls != "notumor" and not (with_kaggle_tumour and cls in ("glioma", "meningioma", "pituitary")):
            continue
        img = normalise_slice(formats.read_kaggle_image(item["path"]), size)
        h = _hash(img)
        if h in seen:
            dups += 1
            continue
        seen.add(h)
        rel = item["path"].relative_to(kag_root).as_posix()
        rec = kag_recs.get(rel, {})
        pid = rec.get("subject_id")
        tumour = cls != "notumor"
        out.append({"image": img, "mask": None if tumour else np.zeros((size, size), np.uint8),
                    "label": int(tumour), "patient_id": pid, "source": "kaggle_tumour" if tumour else "kaggle",
                    "file": rel, "class_name": cls, "slice": rec.get("slice"),
                    "findings": (subjects.get(pid) or {}).get("findings") if pid else None})
    if dups:
        log.info("dropped %d Kaggle images identical to figshare ones", dups)
    if not any(r["label"] == 0 for r in out):
        raise DataError(kag_root, "Kaggle notumor images", "at least one negative slice", "none")
    return out


def slice_caption(record: dict[str, Any]) -> str:
    """A caption for contrastive pretraining of the stand-in CLIP: the tumour type, side and lobe from
    the phantom findings, or "a healthy brain"."""
    f = record.get("findings") or {}
    if not record.get("label"):
        return "an axial T1-weighted contrast-enhanced MRI slice of a healthy brain"
    kind = f.get("lesion_type") or record.get("class_name") or "tumour"
    if kind == "pituitary":  # midline, below the brain: no side, no lobe
        return "an axial T1-weighted contrast-enhanced MRI slice with a pituitary adenoma in the sellar region"
    side = f.get("hemisphere")
    lesions = f.get("lesions") or []
    lobe = lesions[0].get("lobe") if lesions else None
    region = f"{lobe} lobe" if lobe in ("frontal", "parietal", "temporal", "occipital") else lobe
    where = " ".join(w for w in (side, region) if w)
    return f"an axial T1-weighted contrast-enhanced MRI slice with a {kind}" + (f" in the {where}" if where else "")


def stack(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Records as tensors: ``image`` ``(N, 1, S, S)``, ``mask`` ``(N, S, S)``, ``label`` ``(N,)``."""
    import torch

    if not records:
        raise DataError(None, "records", "at least one slice", "none")
    if any(r["mask"] is None for r in records):
        raise DataError(None, "records[].mask", "a mask for every record (kaggle_tumour records have none)", None)
    return {"image": torch.from_numpy(np.stack([r["image"] for r in records]))[:, None],
            "mask": torch.from_numpy(np.stack([r["mask"] for r in records]).astype(np.float32)),
            "label": torch.tensor([int(r["label"]) for r in records])}
