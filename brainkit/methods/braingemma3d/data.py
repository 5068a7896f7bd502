"""The BrainGemma3D cohort: FLAIR volumes, reports, lesion side and splits, preprocessed once.

Introduced in ``04_inflating_encoders``; ``05_braingemma3d_training`` and ``06_braingemma3d_evaluation`` load the same
cohort. The smoke profile generates BrainPhantom in the BraTS 2020 + TextBraTS layouts
(:func:`brainkit.data.layouts.ensure_phantom`); colab/full point the same readers at the real
downloads. Each case goes through the card's chain (:func:`brainkit.data.transforms.gemma_transforms`:
RAS, p1-p99 clip, z-score, trilinear resize), its lesion side is read from the segmentation, and
the cases are split 70/10/20 by patient, stratified by lesion side (the card). The preprocessed
tensors are cached as safetensors so the later notebooks start at once.

Volumes are returned as ``(1, D, H, W)`` = (channel, axial slice, row = posterior->anterior,
column = left->right): the RAS array ``(X, Y, Z)`` permuted to ``(Z, Y, X)``. Column index 0 is
the patient's left, so flipping the last axis mirrors the brain and swaps left and right.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ...cache import atomic_save_tensors, atomic_write_text
from ...data.reports import swap_sides  # handed on: the flip augmentation's reports
from ...errors import DataError

__all__ = ["load_cohort", "SIDES", "flip_lr", "swap_sides"]

log = logging.getLogger(__name__)

#: Class order of the laterality probe.
SIDES = ("none", "left", "right")


def flip_lr(volume: torch.Tensor) -> torch.Tensor:
    """Mirror left and right (the last axis of a ``(..., D, H, W)`` volume)."""
    return torch.flip(volume, dims=(-1,))


def _side(seg: np.ndarray, mask: np.ndarray) -> str:
    from ...data.labels import laterality

    # side_fraction 0.5: every lesion gets its majority side (the probe has three classes)
    return laterality(seg, mask, side_fraction=0.5)


def load_cohort(cfg: Any, data_dir: str | os.PathLike, cache_dir: str | os.PathLike, *, seed: int = 0,
                n_jobs: int = 1) -> dict[str, Any]:
    """``{"train"|"val"|"test": [record]}`` plus ``"volumes"``, ``"labels"`` tensors.

    Each record: ``case_id``, ``index`` (row in ``volumes``), ``report``, ``laterality``
    (``none|left|right``), ``healthy``. ``volumes``: ``(N, 1, D, H, W)`` float32; ``labels``:
    ``(N, 1, D, H, W)`` uint8 BraTS labels on the same grid. In smoke, ``cfg.gemma_subjects`` phantom
    subjects (0: ``cfg.data_subjects``, the phantom set the other notebooks use); real data under
    ``data_dir`` otherwise (BraTS 2020 + TextBraTS folders).
    """
    from ...data import formats, layouts, manifests, transforms

    if cfg.data_source == "phantom":
        data_cfg = replace(cfg, data_subjects=int(cfg.gemma_subjects)) if int(cfg.gemma_subjects) > 0 else cfg
        key = layouts.phantom_key(data_cfg, seed)
    else:
        brats_root = Path(data_dir) / "brats2020"
        text_root = Path(data_dir) / "textbrats"
        key = "real-" + hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    size = "x".join(str(v) for v in cfg.data_gemma_volume_size)
    cache = Path(cache_dir) / "gemma_cohort" / f"{key}-{size}"
    vol_path, meta_path = cache / "volumes.safetensors", cache / "records.json"
    if vol_path.is_file() and meta_path.is_file():
        tensors = load_file(str(vol_path))
        records = json.loads(meta_path.read_text())
        log.info("cohort loaded from %s", cache)
    else:
        if cfg.data_source == "phantom":
            paths = layouts.ensure_phantom(data_cfg, data_dir, layouts=("brats2020", "textbrats"), seed=seed,
                                           n_jobs=n_jobs)
            brats_root, text_root = paths["brats2020"], paths["textbrats"]
        cases = formats.find_brats2020(brats_root)
        texts = formats.find_textbrats(text_root)
        chain = transforms.gemma_transforms(cfg, with_label=True)
        vols, segs, records = [], [], []
        for i, case in enumerate(cases):
            cid = case["case_id"]
            if cid not in texts:
                raise DataError(text_root / cid / f"{cid}_flair_text.txt", "report", "a TextBraTS report for every "
                                "BraTS case", "no such file")
            out = chain({"image": str(case["flair"]), "label": str(case["seg"])})
            img = torch.as_tensor(out["image"]).permute(0, 3, 2, 1).contiguous()  # (1, X, Y, Z) -> (1, Z, Y, X)
            lab = torch.as_tensor(out["label"]).permute(0, 3, 2, 1).contiguous()
            seg = formats.load_label(case["seg"]).array
            mask = formats.load_volume(case["flair"]).array != 0
            records.append({"case_id": cid, "patient_id": cid, "index": i, "report": formats.read_report(texts[cid]),
                            "laterality": _side(seg, mask), "healthy": not bool(seg.any())})
            vols.append(img)
            segs.append(lab.to(torch.uint8))
        tensors = {"volumes": torch.stack(vols), "labels": torch.stack(segs)}
        atomic_save_tensors(tensors, vol_path)
        atomic_write_text(meta_path, json.dumps(records))  # written last: the cache counts only with both files
    splits = manifests.make_splits(records, group_key="patient_id", stratify_key="laterality",
                                   fractions={"train": 0.7, "val": 0.1, "test": 0.2}, seed=seed)
    manifests.check_no_leak(splits, "patient_id")
    return {**{k: list(v) for k, v in splits.items()}, "volumes": tensors["volumes"], "labels": tensors["labels"]}
