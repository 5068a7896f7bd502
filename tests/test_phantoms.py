"""BrainPhantom: determinism, labels, realism checks (issue 3)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from brainkit.data import phantoms
from brainkit.data.anatomy import LOBES
from brainkit.data.phantoms import generate_cohort, generate_subject, lesion_plan, realism_stats
from brainkit.data.reports import entities_from_findings, extract_findings
from brainkit.errors import ConfigError

SHAPE = (48, 48, 36)  # smaller than the smoke grid (64, 64, 48) to keep the unit tests fast


@pytest.fixture(scope="module")
def cohort():
    return generate_cohort(40, seed=0, shape=SHAPE, n_jobs=2)


@pytest.fixture(scope="module")
def stats(cohort):
    return realism_stats(cohort)


# ---------------------------------------------------------------------------------------------- realism
def test_best_global_flair_threshold_is_poor(stats):
    # "bright on FLAIR means tumour" must not work: at most 0.6 whole-tumour Dice ...
    assert stats["flair_threshold_dice"] <= 0.6, stats
    # ... while the tumour is not invisible either
    assert stats["flair_threshold_dice"] >= 0.1, stats


def test_lesion_volumes_span_small_to_large(stats, cohort):
    vols = [s.findings["volume_cm3"] for s in cohort if not s.findings["normal"]]
    assert min(vols) >= 0.5 and max(vols) <= 200.0, vols
    assert stats["volume_cm3_min"] <= 3.0 and stats["volume_cm3_max"] >= 40.0, stats


def test_lesion_volumes_span_roughly_1_to_150_cm3_at_the_smoke_grid():
    # the largest plans (radius near the lobe maximum) and smallest (a single small metastasis)
    sizes = {"large": [], "small": []}
    for i in range(200):
        p = lesion_plan(i, seed=0)
        r = max(les["radius"] for les in p["lesions"])
        if p["lesion_type"] == "glioma" and r > 20:
            sizes["large"].append(i)
        if p["lesion_type"] == "metastasis" and len(p["lesions"]) == 1 and r < 5:
            sizes["small"].append(i)
    big = generate_subject(sizes["large"][0], seed=0, shape=(64, 64, 48), healthy=False)
    small = generate_subject(sizes["small"][0], seed=0, shape=(64, 64, 48), healthy=False)
    assert 60.0 <= big.findings["volume_cm3"] <= 200.0, big.findings["volume_cm3"]
    assert 0.3 <= small.findings["volume_cm3"] <= 4.0, small.findings["volume_cm3"]
    # a large lesion exerts mass effect and shifts the midline; a small one does not
    assert big.findings["mass_effect"] and big.findings["midline_shift_mm"] >= phantoms.MIDLINE_SHIFT_REPORT_MM
    assert "midline shift" in extract_findings(big.report)["pathology"], big.report
    assert small.findings["midline_shift_mm"] < phantoms.MIDLINE_SHIFT_REPORT_MM


def test_hemispheres_balanced(stats):
    h = stats["hemisphere_counts"]
    assert abs(h["left"] - h["right"]) <= 0.25 * (h["left"] + h["right"]) + 2, h
    sides = Counter(lesion_plan(i, seed=3)["hemisphere"] for i in range(200))
    assert sides["left"] == sides["right"] == 100  # block-randomised: exact balance in pairs


def test_every_lobe_used():
    main = Counter(lesion_plan(i, seed=0)["lobe"] for i in range(150))
    assert set(main) == set(LOBES), main
    assert min(main.values()) >= 4, main


def test_controls_carry_no_label_voxels(stats, cohort):
    assert stats["n_controls"] == 10
    assert stats["control_label_voxels"] == 0
    for s in cohort:
        if s.meta["healthy"]:
            assert not s.seg.any() and s.findings["normal"] and s.findings["lesion_count"] == 0
            assert extract_findings(s.report)["pathology"] == {"normal"}


def test_reports_agree_with_findings(stats, cohort):
    assert stats["report_agreement"] == {"laterality": 1.0, "anatomy": 1.0, "pathology": 1.0, "all": 1.0}
    for s in cohort:
        assert extract_findings(s.report) == entities_from_findings(s.findings), s.report


# ---------------------------------------------------------------------------------------------- structure
def test_labels_masks_and_findings(cohort):
    for s in cohort:
        assert set(np.unique(s.seg)) <= {0, 1, 2, 4}
        assert s.seg.shape == SHAPE and s.brain_mask.shape == SHAPE
        for c, img in s.images.items():
            assert img.dtype == np.float32 and np.isfinite(img).all(), c
            assert not img[s.brain_mask == 0].any(), c  # skull-stripped
        assert not s.seg[s.brain_mask == 0].any()
        if not s.findings["normal"]:
            f = s.findings
            assert f["lesion_count"] == len(f["lesions"]) >= 1
            assert f["hemisphere"] in ("left", "right", "bilateral")
            assert set(f["lobes"]) <= set(LOBES) and f["lobes"]
            assert 0 < f["largest_diameter_cm"] <= 9.0, f["largest_diameter_cm"]  # no far-flung core islands
            assert f["enhancement"] == bool((s.seg == 4).any())
            assert f["oedema"] == bool((s.seg == 2).any())


def test_each_lesion_core_is_one_piece(cohort):
    from scipy import ndimage

    for s in cohort:
        if s.findings["normal"]:
            continue
        _, n = ndimage.label((s.seg == 1) | (s.seg == 4))
        assert n <= s.findings["lesion_count"], (s.subject_id, n)


def test_laterality_of_labels_matches_findings(cohort):
    from brainkit.data.labels import laterality

    for s in cohort:
        f = s.findings
        if f["normal"] or f["hemisphere"] == "bilateral":
            continue
        assert laterality(s.seg, s.brain_mask, side_fraction=0.6) == f["hemisphere"], s.subject_id


def test_deterministic_and_independent_of_cohort_size():
    a = generate_subject(5, seed=2, shape=(32, 32, 24), healthy=phantoms.is_control(5))
    b = generate_cohort(7, seed=2, shape=(32, 32, 24))[5]
    c = generate_cohort(7, seed=2, shape=(32, 32, 24), n_jobs=2)[5]
    for other in (b, c):
        assert np.array_equal(a.seg, other.seg)
        assert np.array_equal(a.images["flair"], other.images["flair"])
        assert a.report == other.report
    assert not np.array_equal(a.images["t1"], generate_subject(5, seed=3, shape=(32, 32, 24)).images["t1"])


def test_with_head_has_skull_and_scalp():
    s = generate_subject(1, seed=0, shape=(32, 32, 24), with_head=True, healthy=True)
    outside = s.brain_mask == 0
    assert s.head is not None and s.head["t1"][outside].mean() > 0.05 * s.head["t1"][~outside].mean()
    assert not s.images["t1"][outside].any()


@pytest.mark.parametrize("kind", phantoms.LESION_TYPES)
def test_forced_lesion_type(kind):
    s = generate_subject(3, seed=0, shape=(32, 32, 24), lesion_type=kind)
    assert s.findings["lesion_type"] == kind and s.seg.any()
    if kind == "meningioma":
        assert s.findings["enhancement_pattern"] == "homogeneous"


def test_bad_arguments():
    with pytest.raises(ConfigError, match="shape"):
        generate_subject(0, shape=(4, 64, 64))
    with pytest.raises(ConfigError, match="lesion_type"):
        generate_subject(0, shape=(32, 32, 24), lesion_type="ependymoma")
    with pytest.raises(ConfigError, match="healthy_fraction"):
        generate_cohort(4, healthy_fraction=1.5)
    with pytest.raises(ConfigError, match="n"):
        generate_cohort(-1)
    with pytest.raises(ConfigError, match="contradicts"):
        generate_subject(0, healthy=True, lesion_type="glioma")
