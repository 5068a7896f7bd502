"""MedVisionLlama's data: the MSD Task01 cases split by case, the FLAIR-only chains (the patch-training chain
and the whole-volume chain), cached datasets, and the epoch-seeded loader that makes a resumed run exact.

Introduced in ``07_medvisionllama_segmentation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from torch.utils.data import RandomSampler

from ...data import formats, layouts, manifests
from ...data import transforms as T

__all__ = ["FLAIR", "msd_splits", "chains", "cached_datasets", "grid_spacing", "EpochSampler", "epoch_loader"]

#: MSD Task01's image channels are FLAIR, T1w, T1gd, T2w: MedVisionLlama reads FLAIR alone.
FLAIR = (0,)


def msd_splits(cfg: Any, data_dir: str | Path, seed: int) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """``(msd_root, splits)``: the MSD Task01 cases (the phantom written in its layout when
    ``cfg.data_source == "phantom"``, else ``data_dir/Task01_BrainTumour``), the first ``cfg.mvl_subjects``
    of them (0 = all), split 70/10/20 by case and stratified by the lesion's side, checked for leaks."""
    data_dir = Path(data_dir)
    if cfg.data_source == "phantom":
        msd_root = layouts.ensure_phantom(cfg, data_dir, layouts=("msd_task01",))["msd_task01"]
    else:
        msd_root = data_dir / "Task01_BrainTumour"
    records = formats.find_msd_task01(msd_root)
    if cfg.mvl_subjects:
        records = records[: cfg.mvl_subjects]
    phantom_manifest = formats.load_phantom_manifest(msd_root)
    side = {s["case_id"]: s["laterality"] for s in phantom_manifest["subjects"]} if phantom_manifest else {}
    for r in records:
        r["laterality"] = side.get(r["case_id"], "unknown")
    splits = manifests.make_splits(records, group_key="case_id", stratify_key="laterality",
                                   fractions={"train": 0.7, "val": 0.1, "test": 0.2}, seed=seed)
    manifests.check_no_leak(splits, group_key="case_id")
    return Path(msd_root), splits


def chains(cfg: Any) -> tuple[Any, Any]:
    """``(train_chain, eval_chain)``: FLAIR only, whole-tumour labels; training adds the ``cfg.mvl_roi_size``
    patch (None = the whole volume) and the augmentation."""
    roi = cfg.mvl_roi_size
    eval_chain = T.msd_transforms(cfg, label_mode="binary", channels=FLAIR)
    train_chain = T.msd_transforms(cfg, train=True, label_mode="binary", channels=FLAIR, roi=roi)
    return train_chain, eval_chain


def cached_datasets(cfg: Any, splits: dict[str, list[dict[str, Any]]], workers: int = 2) -> dict[str, CacheDataset]:
    """One MONAI ``CacheDataset`` per split (the deterministic steps run once per case, the random ones per
    draw): ``train`` through the training chain, ``val`` and ``test`` through the whole-volume chain."""
    train_chain, eval_chain = chains(cfg)
    return {name: CacheDataset([dict(r) for r in splits[name]], train_chain if name == "train" else eval_chain,
                               progress=False, num_workers=workers)
            for name in ("train", "val", "test")}


def grid_spacing(cfg: Any, record: dict[str, Any]) -> tuple[float, ...]:
    """Voxel size (mm) of the network grid for one case: the brain's cropped extent divided by the resized
    shape (the chain run up to its last, meta-dropping step)."""
    chain = T.msd_transforms(cfg, label_mode="binary")
    d = dict(record)
    for t in chain.transforms[:-1]:
        d = t(d)
    return tuple(float(v) for v in d["image"].pixdim)


class EpochSampler(RandomSampler):
    """Draws with replacement from a generator re-seeded from (seed, epoch) at every epoch, so a run resumed
    at an epoch boundary sees the same batches as an uninterrupted one (:func:`brainkit.train.fit` calls the
    loader's ``set_epoch``)."""

    def __init__(self, data: Any, num_samples: int, seed: int):
        super().__init__(data, replacement=True, num_samples=num_samples, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)


class _EpochLoader(DataLoader):
    """MONAI's DataLoader whose ``set_epoch`` re-seeds its :class:`EpochSampler`."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def epoch_loader(data: Any, *, batch_size: int, steps_per_epoch: int, seed: int, workers: int) -> DataLoader:
    """``steps_per_epoch`` batches of ``batch_size`` per epoch, drawn by an :class:`EpochSampler`.

    MONAI's DataLoader seeds the random transforms of its workers (crop, flips, intensity jitter, prepared on
    a second core while the first trains) from the global generator when an epoch starts, which ``fit``
    checkpoints: the workers are started afresh every epoch (not persistent), so that a resume is exact."""
    sampler = EpochSampler(data, steps_per_epoch * batch_size, seed)
    return _EpochLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=list_data_collate)
