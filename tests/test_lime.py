"""brainkit.methods.braingemma3d.lime: brain-masked SLIC supervoxels and 3D LIME find the region the score depends on."""

import json

import numpy as np
import pytest
import torch

from brainkit.errors import ConfigError, DataError
from brainkit.methods.braingemma3d.lime import lime_3d, save_lime_figures, supervoxels, weight_volume


def _phantom():
    rng = np.random.default_rng(0)
    d, h, w = 16, 32, 32
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    brain = ((zz - 8) / 7) ** 2 + ((yy - 16) / 14) ** 2 + ((xx - 16) / 14) ** 2 < 1
    vol = np.where(brain, 1.0 + 0.05 * rng.standard_normal((d, h, w)), 0.0)
    lesion = brain & (((zz - 8) / 3) ** 2 + ((yy - 16) / 4) ** 2 + ((xx - 8) / 4) ** 2 < 1)
    vol[lesion] = 3.0
    return vol.astype(np.float32), brain, lesion


def test_lime_puts_the_largest_weight_on_the_region_the_score_reads():
    vol, brain, lesion = _phantom()
    seg = supervoxels(vol, brain, n_segments=20, compactness=0.05)
    assert seg[~brain].max() == 0 and seg[brain].min() >= 1 and seg.max() >= 5
    les = torch.as_tensor(lesion)

    def score(v):  # "how much lesion signal is left": depends on the lesion voxels only
        return v[:, 0][:, les].mean(1)

    out = lime_3d(score, torch.as_tensor(vol)[None], seg, n_samples=80, seed=0)
    w = out["weights"]
    top = int(np.argmax(w)) + 1
    assert (lesion & (seg == top)).sum() > 0.3 * (seg == top).sum()
    assert out["score"] > 0.5
    wv = weight_volume(seg, w)
    assert wv[lesion].mean() > np.abs(wv[brain & ~lesion]).mean()


def test_outputs_are_written(tmp_path):
    vol, brain, _ = _phantom()
    seg = supervoxels(vol, brain, n_segments=8)
    w = np.linspace(-1, 1, seg.max())
    paths = save_lime_figures(vol, seg, w, tmp_path, meta={"case_id": "x"})
    for name in ("overlay_slices.png", "lime_2x3_grid.png", "lime_top_supervoxels_grid.png", "lime_weights.json"):
        assert (tmp_path / name).is_file()
    rec = json.loads(paths["weights"].read_text())
    assert rec["case_id"] == "x" and len(rec["weights"]) == seg.max()


def test_bad_input():
    vol, brain, _ = _phantom()
    with pytest.raises(DataError, match="3D"):
        supervoxels(vol[0], brain[0])
    bad = vol.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        supervoxels(bad, brain)
    with pytest.raises(DataError, match="empty"):
        supervoxels(vol, np.zeros_like(brain))
    seg = supervoxels(vol, brain, n_segments=20)
    with pytest.raises(ConfigError, match="n_samples"):
        lime_3d(lambda v: v.mean((1, 2, 3, 4)), torch.as_tensor(vol)[None], seg, n_samples=3)
    with pytest.raises(DataError, match="spatial shape"):
        lime_3d(lambda v: v.mean((1, 2, 3, 4)), torch.as_tensor(vol)[None], seg[:-1], n_samples=50)
