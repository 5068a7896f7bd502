"""brainkit.data.transforms: each method's MONAI chain on files written in the real layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainkit.data import formats, layouts, transforms
from brainkit.data.phantoms import generate_cohort
from brainkit.errors import ConfigError, DataError
from brainkit.profiles import resolve


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("chains")
    subjects = [s for s in generate_cohort(4, seed=7, shape=(32, 32, 24), with_head=True)]
    out = {lay: layouts.write_phantom_dataset(root / lay, lay, subjects, slice_size=48)
           for lay in ("brats2020", "msd_task01", "figshare")}
    return out, subjects


@pytest.fixture(scope="module")
def cfg():
    return resolve("smoke", data_gemma_volume_size=(16, 24, 24), data_msd_volume_size=(16, 24, 24),
                   data_brat_volume_size=(8, 32, 32), data_slice_size=40)


def test_gemma_chain(sets, cfg):
    (paths, subjects) = sets
    case = formats.find_brats2020(paths["brats2020"])[1]
    out = transforms.gemma_transforms(cfg, with_label=True)({"image": str(case["flair"]), "label": str(case["seg"])})
    assert tuple(out["image"].shape) == (1, 24, 24, 16)  # (C, X, Y, Z) from (D, H, W) = (16, 24, 24)
    assert out["image"].dtype == torch.float32 and abs(float(out["image"].mean())) < 0.2  # z-scored
    assert set(torch.unique(out["label"]).tolist()) <= {0, 1, 2, 4}


def test_msd_chain_label_modes(sets, cfg):
    (paths, subjects) = sets
    rec = next(r for r, s in zip(formats.find_msd_task01(paths["msd_task01"]), subjects) if s.seg.any())
    for mode, allowed, channels in (("msd", {0, 1, 2, 3}, 1), ("binary", {0, 1}, 1), ("regions", {0, 1}, 3)):
        out = transforms.msd_transforms(cfg, label_mode=mode)({"image": str(rec["image"]), "label": str(rec["label"])})
        assert tuple(out["image"].shape) == (4, 24, 24, 16)
        assert out["label"].shape[0] == channels and set(torch.unique(out["label"]).tolist()) <= allowed
        assert out["label"].sum() > 0
    train = transforms.msd_transforms(cfg, train=True)
    assert tuple(train({"image": str(rec["image"]), "label": str(rec["label"])})["image"].shape) == (4, 24, 24, 16)


def test_msd_chain_keeps_channels_and_crops_the_training_patch(sets, cfg):
    (paths, subjects) = sets
    rec = next(r for r, s in zip(formats.find_msd_task01(paths["msd_task01"]), subjects) if s.seg.any())
    item = {"image": str(rec["image"]), "label": str(rec["label"])}
    full = transforms.msd_transforms(cfg, label_mode="binary")(dict(item))
    flair = transforms.msd_transforms(cfg, label_mode="binary", channels=(0,))(dict(item))
    assert tuple(flair["image"].shape) == (1, 24, 24, 16) and torch.equal(flair["image"][0], full["image"][0])
    pair = transforms.msd_transforms(cfg, label_mode="binary", channels=(3, 1))(dict(item))
    assert torch.equal(pair["image"], full["image"][[3, 1]])
    train = transforms.msd_transforms(cfg, train=True, label_mode="binary", channels=(0,), roi=(8, 12, 12))
    names = [type(t).__name__ for t in train.transforms]
    assert names.index("SelectChannelsd") < names.index("EnsureTyped") < names.index("RandCropByPosNegLabeld") \
        < names.index("RandFlipd")  # the deterministic part first: a CacheDataset caches all of it
    patches = [train(dict(item)) for _ in range(4)]
    patches = [p[0] if isinstance(p, list) else p for p in patches]
    assert all(tuple(p["image"].shape) == (1, 12, 12, 8) for p in patches)  # (C, X, Y, Z) of (D, H, W) = (8, 12, 12)
    assert any(p["label"].sum() > 0 for p in patches)  # half the patches are centred on tumour
    whole = transforms.msd_transforms(cfg, train=True, channels=(0,), roi=(16, 24, 24))  # roi = volume: no crop
    assert "RandCropByPosNegLabeld" not in [type(t).__name__ for t in whole.transforms]
    with pytest.raises(DataError, match="channel"):
        transforms.msd_transforms(cfg, channels=(4,))(dict(item))
    with pytest.raises(ConfigError, match="channel"):
        transforms.msd_transforms(cfg, channels=())


def test_brat_and_slice_chains(sets, cfg):
    (paths, _) = sets
    case = formats.find_brats2020(paths["brats2020"])[0]
    out = transforms.brat_transforms(cfg)({"image": str(case["flair"])})
    assert tuple(out["image"].shape) == (1, 32, 32, 8)
    mat = formats.find_figshare(paths["figshare"])[0]
    sl = transforms.slice_transforms(cfg, clip_normalise=True)({"image": str(mat)})
    assert tuple(sl["image"].shape) == (3, 40, 40) and tuple(sl["mask"].shape[-2:]) == (40, 40)
    assert sl["mask"].max() == 1
    plain = transforms.slice_transforms(cfg)({"image": str(mat)})
    assert 0.0 <= float(plain["image"].min()) and float(plain["image"].max()) <= 1.0


def test_stepwise_and_method_lookup(sets, cfg):
    (paths, _) = sets
    case = formats.find_brats2020(paths["brats2020"])[0]
    chain = transforms.for_method("braingemma3d", cfg)
    steps = transforms.stepwise(chain, {"image": str(case["flair"])})
    assert [name for name, _ in steps][0] == "LoadVolumed" and len(steps) == len(chain.transforms)
    with pytest.raises(ConfigError, match="method"):
        transforms.for_method("unet", cfg)


def test_chain_rejects_a_label_off_the_image_grid(sets, cfg, tmp_path):
    (paths, _) = sets
    case = formats.find_brats2020(paths["brats2020"])[0]
    seg = formats.load_label(case["seg"]).array
    shifted = np.eye(4)
    shifted[:3, :3] = formats.load_volume(case["flair"]).affine[:3, :3]
    bad = formats.save_volume(tmp_path / "BraTS20_Training_001_seg.nii.gz", seg, shifted, np.uint8)
    # MONAI's Compose would wrap it in a RuntimeError; brainkit's chains raise the DataError itself
    with pytest.raises(DataError, match="affine") as info:
        transforms.gemma_transforms(cfg, with_label=True)({"image": str(case["flair"]), "label": str(bad)})
    assert "BraTS20_Training_001_seg.nii.gz" in str(info.value)


def test_chain_passes_other_errors_through_unchanged():
    from monai.transforms import Lambda

    def boom(x):
        raise KeyError("not a brainkit error")

    with pytest.raises(RuntimeError) as info:
        transforms.Chain([Lambda(boom)])(1)
    assert isinstance(info.value.__cause__, KeyError)
    assert transforms.Chain([Lambda(lambda x: x + 1)])(1) == 2


def test_chain_keeps_the_cause_of_a_brainkit_error():
    from monai.transforms import Lambda

    def unreadable(x):
        try:
            raise OSError("truncated gzip stream")
        except OSError as exc:
            raise DataError("case_001.nii.gz", "image", "a readable NIfTI file", "truncated") from exc

    with pytest.raises(DataError, match="case_001.nii.gz") as info:
        transforms.Chain([Lambda(unreadable)])(1)
    assert isinstance(info.value.__cause__, OSError) and "truncated gzip" in str(info.value.__cause__)
