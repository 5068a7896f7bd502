"""brainkit.metrics.localisation on cases small enough to compute by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainkit.errors import ConfigError, DataError
from brainkit.metrics import localisation as lm

# One 2x3 slice: tumour pixels score 0.9 and 0.4, background 0.8, 0.3, 0.2, 0.1.
S = np.array([[0.9, 0.8, 0.3], [0.4, 0.2, 0.1]])
M = np.array([[1, 0, 0], [1, 0, 0]])


def test_pixel_auroc_by_hand():
    # positive/negative pairs ranked correctly: 0.9 beats all 4; 0.4 beats 0.3, 0.2, 0.1 -> 7 of 8
    assert lm.pixel_auroc(S, M) == pytest.approx(7 / 8)
    assert lm.pixel_auroc(torch.tensor(S), torch.tensor(M)) == pytest.approx(7 / 8)


def test_ap_and_max_f1_by_hand():
    # ranking: 0.9 (P), 0.8 (N), 0.4 (P): precision at the two recall steps 1/1 and 2/3
    assert lm.pixel_ap(S, M) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # threshold 0.9: P=1, R=.5 -> F1=2/3; threshold 0.4: P=2/3, R=1 -> F1=0.8
    assert lm.max_f1(S, M) == pytest.approx(0.8)


def test_threshold_on_validation_then_metrics():
    t = lm.choose_threshold(S, M)
    assert t == pytest.approx(0.4)
    got = lm.threshold_metrics(S, M, t)
    assert got["accuracy"] == pytest.approx(5 / 6)  # one false positive (0.8)
    assert got["precision"] == pytest.approx(2 / 3)
    assert got["recall"] == pytest.approx(1.0)
    # Youden: TPR - FPR is 1 - 1/4 at 0.4
    assert lm.choose_threshold(S, M, "youden") == pytest.approx(0.4)
    none = lm.threshold_metrics(S, M, 2.0)
    assert none["precision"] == 0.0 and none["accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ConfigError):
        lm.choose_threshold(S, M, "median")


def test_aupro_perfect_and_hand_case():
    scores = np.zeros((1, 4, 4))
    masks = np.zeros((1, 4, 4), dtype=int)
    masks[0, 0, 0] = 1  # region A: 1 pixel
    masks[0, 2:4, 2:4] = 1  # region B: 4 pixels
    perfect = masks.astype(float)
    assert lm.aupro(perfect, masks) == pytest.approx(1.0)
    # A scores 0.9; B half at 0.8, half at 0.05; background: one pixel 0.85, ten at 0.0.
    scores[0, 0, 0] = 0.9
    scores[0, 2, 2:4] = 0.8
    scores[0, 3, 2:4] = 0.05
    scores[0, 0, 3] = 0.85
    # Thresholds: 0.9 -> FPR 0, PRO (1 + 0)/2 = .5; 0.85 -> FPR 1/11, PRO .5; 0.8 -> FPR 1/11, PRO .75;
    # 0.05 -> FPR 1/11, PRO 1. The curve: 0 -> .5 at FPR 0, .5 until 1/11, then 1 until 0.3.
    want = (0.5 * (1 / 11) + 1.0 * (0.3 - 1 / 11)) / 0.3
    assert lm.aupro(scores, masks) == pytest.approx(want)
    fpr, pro = lm.pro_curve(scores, masks)
    assert pro.max() == pytest.approx(1.0) and fpr.max() == pytest.approx(1.0)


def test_aupro_weights_regions_equally_not_pixels():
    # Detecting only the small region gives PRO 0.5 (one of two regions), although it is 1/5 of the pixels.
    masks = np.zeros((2, 3, 3), dtype=int)
    masks[0, 0, 0] = 1
    masks[1, :2, :2] = 1
    scores = np.zeros((2, 3, 3))
    scores[0, 0, 0] = 1.0
    fpr, pro = lm.pro_curve(scores, masks)
    assert pro[fpr == 0].max() == pytest.approx(0.5)


def test_image_auroc():
    assert lm.image_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    with pytest.raises(DataError, match="both 0"):
        lm.image_auroc([0.1, 0.2], [1, 1])


def test_single_class_pixels_are_an_error():
    with pytest.raises(DataError, match="only background"):
        lm.pixel_auroc(S, np.zeros_like(M))
    with pytest.raises(DataError, match="only tumour"):
        lm.aupro(S, np.ones_like(M))


@pytest.mark.parametrize("scores,masks,match", [
    (np.zeros((2, 2)), np.zeros((3, 3)), "same shape"),
    (np.full((2, 2), np.nan), np.eye(2), "finite"),
    (np.zeros((2, 2)), np.eye(2) * 2, "binary"),
])
def test_bad_inputs(scores, masks, match):
    with pytest.raises(DataError, match=match):
        lm.pixel_auroc(scores, masks)


def test_report_collects_everything():
    rep = lm.localisation_report(S[None], M[None], 0.4, image_scores=[0.2, 0.9], image_labels=[0, 1])
    assert set(rep) == {"pixel_auroc", "pixel_accuracy", "pixel_precision", "pixel_recall", "pixel_f1",
                        "pixel_ap", "pixel_max_f1", "aupro", "image_auroc", "threshold"}
    assert rep["pixel_auroc"] == pytest.approx(7 / 8) and rep["image_auroc"] == 1.0
    pre = lm.localisation_report(S[None], M[None], 0.4, prefix="test_")
    assert "test_aupro" in pre and "image_auroc" not in pre and "test_image_auroc" not in pre
    with pytest.raises(ConfigError):
        lm.localisation_report(S[None], M[None], 0.4, image_scores=[0.1])


def test_random_scores_are_near_chance():
    rng = np.random.default_rng(0)
    masks = (rng.random((20, 16, 16)) < 0.2).astype(int)
    scores = rng.random((20, 16, 16))
    assert abs(lm.pixel_auroc(scores, masks) - 0.5) < 0.03
    assert abs(lm.aupro(scores, masks) - 0.15) < 0.03  # PRO ≈ FPR, integral to .3 is .045, /.3 = .15
