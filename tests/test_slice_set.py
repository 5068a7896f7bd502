"""brainkit.methods.brainmri_gpt.data: figshare positives + Kaggle negatives, one pipeline, de-duplicated."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from brainkit.data import formats, manifests
from brainkit.errors import ConfigError, DataError
from brainkit.methods.brainmri_gpt import data as slices


def _img(seed, size=40):
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size))
    a[5:35, 5:35] = 0.5 + 0.3 * rng.random((30, 30))
    return a


@pytest.fixture()
def roots(tmp_path):
    fig, kag = tmp_path / "fig", tmp_path / "kag"
    fig.mkdir()
    for i in range(4):
        mask = np.zeros((40, 40), np.uint8)
        mask[10 + i:18 + i, 12:20] = 1
        formats.write_figshare_mat(fig / f"{i + 1}.mat", (_img(i) * 1000).astype(np.int16), 2, f"P{i // 2}", mask)
    for sp in ("Training", "Testing"):
        for c in formats.KAGGLE_CLASSES:
            (kag / sp / c).mkdir(parents=True)
    for i in range(3):
        Image.fromarray((_img(10 + i) * 255).astype(np.uint8)).save(kag / "Training" / "notumor" / f"Tr-no_{i}.jpg")
    Image.fromarray((_img(20) * 255).astype(np.uint8)).save(kag / "Testing" / "glioma" / "Te-gl_0.jpg")
    return fig, kag


def test_load_slice_set(roots):
    recs = slices.load_slice_set(*roots, size=32)
    assert [r["source"] for r in recs].count("figshare") == 4 and [r["source"] for r in recs].count("kaggle") == 3
    for r in recs:
        assert r["image"].shape == (32, 32) and r["image"].dtype == np.float32
        assert 0 <= r["image"].min() and r["image"].max() <= 1
        assert r["mask"].shape == (32, 32) and set(np.unique(r["mask"])) <= {0, 1}
        assert r["label"] == int(r["mask"].any())
    assert {r["patient_id"] for r in recs if r["source"] == "figshare"} == {"P0", "P1"}
    # no patient ids for real Kaggle images: each one is its own group when splitting
    assert all(r["patient_id"] is None for r in recs if r["source"] == "kaggle")
    splits = manifests.make_splits([r for r in recs], fractions=[0.5, 0.25, 0.25])
    manifests.check_no_leak(splits)
    with_t = slices.load_slice_set(*roots, size=32, with_kaggle_tumour=True)
    extra = [r for r in with_t if r["source"] == "kaggle_tumour"]
    assert len(extra) == 1 and extra[0]["mask"] is None and extra[0]["label"] == 1
    with pytest.raises(DataError, match="mask"):
        slices.stack(with_t)
    st = slices.stack(recs)
    assert st["image"].shape == (7, 1, 32, 32) and st["label"].sum() == 4


def test_duplicates_across_sources_are_dropped(roots):
    fig, kag = roots
    img = formats.read_figshare_mat(fig / "1.mat").image
    top = np.percentile(img[img > 0], 99.5)
    Image.fromarray(np.round(np.clip(img / top, 0, 1) * 255).astype(np.uint8)).save(
        kag / "Training" / "notumor" / "Tr-no_dup.png")
    recs = slices.load_slice_set(fig, kag, size=40)
    assert not any(r["file"].endswith("Tr-no_dup.png") for r in recs)


def test_bad_input(roots, tmp_path):
    fig, kag = roots
    with pytest.raises(ConfigError):
        slices.load_slice_set(fig, kag, size=4)
    for p in (kag / "Training" / "notumor").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="notumor"):
        slices.load_slice_set(fig, kag, size=32)
    with pytest.raises(DataError):
        slices.load_slice_set(tmp_path / "missing", kag, size=32)
    with pytest.raises(DataError, match="image.shape"):
        slices.normalise_slice(np.zeros((3, 4, 4)), 8)


def test_captions():
    f = {"lesion_type": "glioma", "hemisphere": "left", "lesions": [{"lobe": "frontal"}]}
    assert slices.slice_caption({"label": 1, "findings": f}).endswith("a glioma in the left frontal lobe")
    assert "healthy" in slices.slice_caption({"label": 0, "findings": None})
