"""brainkit.metrics.segmentation: Dice / NSD / HD95 through MONAI, empty cases, CIs, threshold baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainkit.errors import ConfigError, DataError
from brainkit.metrics.segmentation import (
    NSD_TOLERANCE_MM,
    best_global_threshold_dice,
    case_metrics,
    evaluate_cases,
    mean_ci,
    region_masks,
    summarize,
    threshold_dice,
)


def _cubes(shift=2):
    t = np.zeros((30, 30, 30), bool)
    t[10:20, 10:20, 10:20] = True
    p = np.zeros_like(t)
    p[10 + shift:20 + shift, 10:20, 10:20] = True
    return p, t


def test_shifted_cube_by_hand():
    p, t = _cubes(2)
    m = case_metrics(p, t, spacing=1.0, nsd_tolerance_mm=2.0)
    assert m["dice"] == pytest.approx(0.8)  # 2 * 800 / 2000
    assert m["hd95"] == pytest.approx(2.0)  # the boundaries are 2 voxels apart at most
    assert m["nsd"] == pytest.approx(1.0)  # everything within 2 mm
    assert case_metrics(p, t, nsd_tolerance_mm=0.5)["nsd"] < 0.7
    assert not m["pred_empty"] and not m["target_empty"]


def test_spacing_is_in_millimetres():
    p, t = _cubes(2)
    # the shift is along axis 0: 2 voxels of 2 mm = 4 mm; spacing along another axis changes nothing
    assert case_metrics(p, t, spacing=(2.0, 1.0, 1.0))["hd95"] == pytest.approx(4.0)
    assert case_metrics(p, t, spacing=(1.0, 2.0, 1.0))["hd95"] == pytest.approx(2.0)
    assert case_metrics(p, t, spacing=(2.0, 1.0, 1.0), nsd_tolerance_mm=2.0)["nsd"] < 1.0


def test_identical_masks_and_torch_input():
    _, t = _cubes()
    m = case_metrics(torch.from_numpy(t), torch.from_numpy(t.astype(np.float32)))
    assert m["dice"] == pytest.approx(1.0) and m["nsd"] == pytest.approx(1.0) and m["hd95"] == 0.0
    m = case_metrics(t[None, None], t[None, None])  # leading singleton channel axes
    assert m["dice"] == pytest.approx(1.0)


def test_empty_cases():
    _, t = _cubes()
    z = np.zeros_like(t)
    both = case_metrics(z, z)
    assert (both["dice"], both["nsd"], both["hd95"]) == (1.0, 1.0, 0.0)
    assert both["pred_empty"] and both["target_empty"]
    diag = math.sqrt(3 * (30 * 1.5) ** 2)
    for p, tt in ((z, t), (t, z)):
        m = case_metrics(p, tt, spacing=1.5)
        assert (m["dice"], m["nsd"]) == (0.0, 0.0)
        assert m["hd95"] == pytest.approx(diag)
    # the BraTS constant: diagonal of a 240 x 240 x 155 volume at 1 mm
    big = np.zeros((240, 240, 155), bool)
    blob = big.copy()
    blob[100:110, 100:110, 70:80] = True
    assert case_metrics(big, blob)["hd95"] == pytest.approx(373.13, abs=0.01)


def test_bad_inputs():
    _, t = _cubes()
    with pytest.raises(DataError, match="shape"):
        case_metrics(t[:, :, :29], t, case="BraTS_001")
    with pytest.raises(DataError, match="BraTS_001"):
        case_metrics(t[:, :, :29], t, case="BraTS_001")
    with pytest.raises(ConfigError, match="binary"):
        case_metrics(np.random.default_rng(0).random(t.shape), t)
    with pytest.raises(ConfigError, match="spacing"):
        case_metrics(t, t, spacing=(1.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        case_metrics(t, t, spacing=0.0)
    with pytest.raises(ConfigError, match="nsd_tolerance_mm"):
        case_metrics(t, t, nsd_tolerance_mm=-1)
    with pytest.raises(ConfigError, match="same number"):
        evaluate_cases([t, t], [t])
    with pytest.raises(DataError, match="case 1"):
        evaluate_cases([t, t[1:]], [t, t])


def test_regions_and_evaluate_cases():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[5:15, 5:15, 5:15] = 1  # oedema
    lab[7:13, 7:13, 7:13] = 2  # non-enhancing
    lab[9:11, 9:11, 9:11] = 3  # enhancing
    r = region_masks(lab, convention="msd", regions=("wt", "tc", "et"))
    assert r["wt"].sum() == 1000 and r["tc"].sum() == 216 and r["et"].sum() == 8
    assert region_masks(np.where(lab == 3, 4, lab), convention="brats", regions=("et",))["et"].sum() == 8
    pred = lab.copy()
    pred[lab == 3] = 2  # misses the enhancing core entirely
    rows = evaluate_cases([pred], [lab], regions=("wt", "tc", "et"), convention="msd", spacing=[(1, 1, 1)])
    row = rows[0]
    assert row["wt_dice"] == pytest.approx(1.0) and row["tc_dice"] == pytest.approx(1.0)
    assert row["et_dice"] == 0.0 and row["et_pred_empty"] and not row["et_target_empty"]
    with pytest.raises(ConfigError, match="regions"):
        region_masks(lab, regions=("core",))
    with pytest.raises(ConfigError, match="convention"):
        region_masks(lab, convention="kits")


def test_mean_ci_and_summarize():
    s = mean_ci([1, 2, 3, 4, 5])
    assert s["mean"] == 3.0 and s["n"] == 5
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # t_{0.975, 4} * sem
    assert s["ci_low"] == pytest.approx(3 - half, rel=1e-6) and s["ci_high"] == pytest.approx(3 + half, rel=1e-6)
    b = mean_ci([1, 2, 3, 4, 5], method="bootstrap", seed=1)
    assert 1 <= b["ci_low"] < 3 < b["ci_high"] <= 5
    one = mean_ci([0.7])
    assert one["ci_low"] is None and one["ci_high"] is None
    const = mean_ci([0.5, 0.5, 0.5])
    assert const["ci_low"] == const["ci_high"] == 0.5
    with pytest.raises(ConfigError, match="finite"):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ConfigError, match="method"):
        mean_ci([1.0, 2.0], method="normal")

    p, t = _cubes(2)
    z = np.zeros_like(t)
    rows = evaluate_cases([p, t, z], [t, t, t], nsd_tolerance_mm=NSD_TOLERANCE_MM)
    summ = summarize(rows, prefix="wt_")
    assert summ["wt_n_cases"] == 3 and summ["wt_n_pred_empty"] == 1 and summ["wt_n_target_empty"] == 0
    assert summ["wt_dice_mean"] == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert summ["wt_dice_ci_low"] < summ["wt_dice_mean"] < summ["wt_dice_ci_high"]
    assert summ["wt_hd95_mean"] == pytest.approx((2.0 + 0.0 + math.sqrt(3 * 30 ** 2)) / 3)


def _phantoms(n=6, seed=0):
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(n):
        m = np.zeros((16, 16, 16), bool)
        if i != 0:  # case 0 is healthy: an empty mask
            c = rng.integers(4, 12, size=3)
            m[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 2:c[2] + 2] = True
        images.append(rng.normal(0.0, 0.4, m.shape) + 2.0 * m)
        masks.append(m)
    return images, masks


def test_best_global_threshold_matches_monai_dice_and_brute_force():
    images, masks = _phantoms()
    res = best_global_threshold_dice(images, masks)
    assert 0.5 < res.threshold < 2.0
    assert 0.7 < res.dice < 1.0
    # the per-case Dice at the chosen threshold is MONAI's Dice of image > t (case 0: healthy)
    for im, m, d in zip(images, masks, res.per_case):
        assert d == pytest.approx(case_metrics(im > res.threshold, m)["dice"], abs=1e-6)
    assert res.per_case.mean() == pytest.approx(res.dice)
    # no threshold on a fine grid does better
    for t in np.linspace(-1, 3, 41):
        assert threshold_dice(images, masks, t).mean() <= res.dice + 1e-9
    # explicit candidates
    fixed = best_global_threshold_dice(images, masks, thresholds=[0.75, 5.0])
    assert fixed.threshold in (0.75, 5.0) and fixed.thresholds.tolist() == [0.75, 5.0]
    # a threshold above every intensity predicts nothing: Dice 1 on the healthy case, 0 elsewhere
    high = threshold_dice(images, masks, 100.0)
    assert high[0] == 1.0 and (high[1:] == 0).all()


def test_threshold_baseline_bad_input():
    images, masks = _phantoms(2)
    with pytest.raises(DataError, match="case 1"):
        best_global_threshold_dice(images, [masks[0], masks[1][:, :, :8]])
    with pytest.raises(ConfigError, match="same number"):
        best_global_threshold_dice(images, masks[:1])
    bad = [images[0].copy(), images[1]]
    bad[0][0, 0, 0] = np.nan
    with pytest.raises(DataError, match="finite"):
        best_global_threshold_dice(bad, masks)
