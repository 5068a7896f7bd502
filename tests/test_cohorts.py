"""Cohort specs per dataset (issue 15): bad specs refused, proportions allocated, layouts written from their spec."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from brainkit.data import cohorts, formats, layouts, phantoms
from brainkit.data.reports import entities_from_findings, extract_findings
from brainkit.errors import ConfigError

SHAPE = (40, 40, 30)


# ---------------------------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize("changes, field", [
    ({"lesion_weights_pairs": (("glioma", 0.6), ("meningioma", 0.3))}, "lesion_weights_pairs"),
    ({"lesion_weights_pairs": (("ependymoma", 1.0),)}, "lesion_weights_pairs"),
    ({"lesion_weights_pairs": (("glioma", 1.2), ("meningioma", -0.2))}, "lesion_weights_pairs"),
    ({"glioma_radius_mm": (30.0, 10.0)}, "glioma_radius_mm"),
    ({"glioma_radius_mm": (-1.0, 10.0)}, "glioma_radius_mm"),
    ({"healthy_fraction": 1.5}, "healthy_fraction"),
    ({"healthy_fraction": -0.1}, "healthy_fraction"),
    ({"glioma_grade_pairs": (("hgg", 0.5),)}, "glioma_grade_pairs"),
    ({"glioma_lobe_pairs": (("sellar", 1.0),)}, "glioma_lobe_pairs"),
    ({"report_style": "prose"}, "report_style"),
])
def test_bad_spec_names_the_spec_and_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"'brats'.*{field}"):
        cohorts.BRATS_GLIOMAS.replace(**changes)


@pytest.mark.parametrize("changes, field", [
    ({"classes": ("glioma", "ependymoma")}, "classes"),
    ({"published_pairs": (("glioma", 0.5), ("none", 0.3))}, "published_pairs"),
    ({"published_pairs": (("glioma", 1.0),)}, "published_pairs"),
    ({"slices_pairs": (("glioma", 0),)}, "slices_pairs"),
    ({"published_unit": "patients"}, "published_unit"),
])
def test_bad_layout_spec_names_the_spec_and_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"layout spec 'brats2020'.*{field}"):
        cohorts.LAYOUT_SPECS["brats2020"].replace(**changes)


def test_published_spec_numbers():
    # the published proportions, as the issue and the specs' sources give them
    assert cohorts.BRATS_GLIOMAS.glioma_grades["hgg"] == pytest.approx(293 / 369)
    assert cohorts.BRATS_GLIOMAS.healthy_fraction == pytest.approx(99 / 468)
    assert cohorts.LAYOUT_SPECS["figshare"].published == pytest.approx(
        {"meningioma": 708 / 3064, "glioma": 1426 / 3064, "pituitary": 930 / 3064})
    for spec in list(cohorts.COHORTS.values()) + list(cohorts.LAYOUT_SPECS.values()):
        assert spec.source
    assert set(cohorts.BRATS_GLIOMAS.lesion_weights) == {"glioma"}
    # the slice cohort's controls are exactly what makes Kaggle's notumor share 2,000 / 7,023
    kag = cohorts.LAYOUT_SPECS["kaggle"]
    h = cohorts.SLICE_TUMOURS.healthy_fraction
    tumour = sum(w * kag.slices_for(c) for c, w in cohorts.SLICE_TUMOURS.lesion_weights.items())
    assert h * kag.slices_for("none") / (h * kag.slices_for("none") + (1 - h) * tumour) == pytest.approx(2000 / 7023)


def test_published_check():
    ok = cohorts.published_check("figshare", {"meningioma": 220, "glioma": 470, "pituitary": 300})
    assert ok["ok"] and ok["max_deviation"] < 0.03
    bad = cohorts.published_check("figshare", {"meningioma": 100, "glioma": 600, "pituitary": 300})
    assert not bad["ok"]
    with pytest.raises(ConfigError, match="figshare"):
        cohorts.published_check("figshare", {"metastasis": 3})


def test_fingerprint_changes_with_any_number():
    a = cohorts.BRATS_GLIOMAS
    assert a.fingerprint() == cohorts.BRATS_GLIOMAS.replace().fingerprint()
    assert a.fingerprint() != a.replace(glioma_radius_mm=(13.0, 35.0)).fingerprint()
    assert a.fingerprint() != a.replace(healthy_fraction=0.2).fingerprint()


def test_phantom_key_names_the_specs(monkeypatch):
    from brainkit import profiles

    cfg = profiles.resolve("smoke")
    key = layouts.phantom_key(cfg)
    monkeypatch.setitem(cohorts.COHORTS, "brats", cohorts.BRATS_GLIOMAS.replace(healthy_fraction=0.3))
    assert layouts.phantom_key(cfg) != key
    monkeypatch.setitem(cohorts.COHORTS, "brats", cohorts.BRATS_GLIOMAS)
    assert layouts.phantom_key(cfg) == key
    monkeypatch.setitem(cohorts.LAYOUT_SPECS, "kaggle", cohorts.LAYOUT_SPECS["kaggle"].replace(
        slices_pairs=(("glioma", 1),)))
    assert layouts.phantom_key(cfg) != key


@pytest.mark.parametrize("weights", [{"a": 0.231, "b": 0.465, "c": 0.304}, {"x": 0.9, "y": 0.1}])
def test_allocate_matches_weights_at_any_size(weights):
    for n in (50, 137, 400):
        counts = Counter(cohorts.allocate(i, weights) for i in range(n))
        for k, w in weights.items():
            assert abs(counts[k] / n - w) <= 0.02 + 1.5 / n, (n, k, counts)


def test_allocate_streams_are_independent():
    # the grade is not a function of the type: each combination appears in about its product share
    n = 600
    t = [cohorts.allocate(i, {"a": 0.5, "b": 0.5}, stream=0) for i in range(n)]
    g = [cohorts.allocate(i, {"h": 0.5, "l": 0.5}, stream=1) for i in range(n)]
    both = Counter(zip(t, g))
    assert all(0.17 <= both[(a, b)] / n <= 0.33 for a in "ab" for b in "hl"), both
    with pytest.raises(ConfigError, match="stream"):
        cohorts.allocate(0, {"a": 1.0}, stream=9)


def test_spec_for_layout():
    assert cohorts.cohort_for_layout("textbrats") is cohorts.BRATS_GLIOMAS
    assert cohorts.cohort_for_layout("msd_task01") is cohorts.BRATS_GLIOMAS
    assert cohorts.cohort_for_layout("kaggle") is cohorts.SLICE_TUMOURS
    assert cohorts.spec_for_layout("kaggle").name == "kaggle"
    with pytest.raises(ConfigError, match="layout"):
        cohorts.spec_for_layout("adni")


# ---------------------------------------------------------------------------------------------- subjects
def test_brats_plans_are_gliomas_with_grades_sizes_and_crossings():
    plans = [phantoms.lesion_plan(i, spec=cohorts.BRATS_GLIOMAS) for i in range(300)]
    assert {p["lesion_type"] for p in plans} == {"glioma"}
    grades = Counter(p["lesions"][0]["grade"] for p in plans)
    assert abs(grades["hgg"] / 300 - 293 / 369) <= 0.03, grades
    lgg = [p["lesions"][0] for p in plans if p["lesions"][0]["grade"] == "lgg"]
    assert sum(les["enhancing"] for les in lgg) <= 0.35 * len(lgg)  # LGG mostly non-enhancing
    assert not any(les["necrotic"] for les in lgg)
    lobes = Counter(p["lobe"] for p in plans)
    assert lobes["cerebellum"] == lobes["brainstem"] == 0  # supratentorial
    crossing = sum(len({les["hemisphere"] for les in p["lesions"]}) > 1 for p in plans)
    assert 0.10 <= crossing / 300 <= 0.22, crossing


def test_pituitary_adenoma_subject():
    s = phantoms.generate_subject(3, seed=0, shape=SHAPE, lesion_type="pituitary", with_head=True,
                                  head_contrasts=("t1ce",))
    f = s.findings
    assert f["lesion_type"] == "pituitary" and f["hemisphere"] is None and f["lobes"] == []
    assert 1.0 <= f["largest_diameter_cm"] <= 3.6, f["largest_diameter_cm"]
    assert f["enhancement"] and not f["oedema"] and f["midline_shift_mm"] == 0.0
    assert "sellar" in f["location"][0]
    # in the midline: the label's x-centroid lies within 8 mm of the brain's
    xs = np.nonzero(s.seg)[0].mean() - np.nonzero(s.brain_mask)[0].mean()
    assert abs(xs * np.linalg.norm(s.affine[:3, 0])) <= 8.0
    assert "pituitary" in extract_findings(s.report)["pathology"]
    assert extract_findings(s.report) == entities_from_findings(f), s.report


@pytest.mark.parametrize("spec", [cohorts.BRATS_GLIOMAS, cohorts.SLICE_TUMOURS])
def test_reports_of_each_spec_agree_with_findings(spec):
    subs = phantoms.generate_cohort(16, seed=1, shape=SHAPE, spec=spec)
    for s in subs:
        assert extract_findings(s.report) == entities_from_findings(s.findings), s.report
    if spec.report_style == "textbrats":
        from brainkit.data.reports import split_sentences

        for s in subs:
            if not s.findings["normal"]:
                sents = split_sentences(s.report)
                assert len(sents) == 4, s.report
                assert "oedema" in sents[1].lower() and "necro" in sents[2].lower(), s.report
                assert "ventric" in sents[3].lower(), s.report


def test_cohort_spec_sets_the_controls_and_the_classes():
    subs = phantoms.generate_cohort(40, seed=0, shape=(24, 24, 18), spec=cohorts.SLICE_TUMOURS)
    n_ctrl = sum(s.healthy for s in subs)
    assert n_ctrl == int(np.floor(40 * cohorts.SLICE_TUMOURS.healthy_fraction + 0.5))
    assert {s.findings["lesion_type"] for s in subs if not s.healthy} == {"glioma", "meningioma", "pituitary"}
    assert all(s.subject_id.startswith("phantom-slices-") for s in subs)


def test_layouts_written_from_their_cohorts(tmp_path):
    from brainkit import profiles

    cfg = profiles.resolve("smoke", data_subjects=24, data_volume_shape=(32, 32, 24), data_slice_size=32)
    paths = layouts.ensure_phantom(cfg, tmp_path, n_jobs=1)
    brats = formats.load_phantom_manifest(paths["brats2020"])
    msd = formats.load_phantom_manifest(paths["msd_task01"])
    kag = formats.load_phantom_manifest(paths["kaggle"])
    fig = formats.load_phantom_manifest(paths["figshare"])
    assert {s["lesion_type"] for s in brats["subjects"]} == {"glioma", "none"}
    # MSD holds the BraTS cohort's gliomas, the same subjects
    glioma_ids = [s["subject_id"] for s in brats["subjects"] if s["lesion_type"] == "glioma"]
    assert [s["subject_id"] for s in msd["subjects"]] == glioma_ids
    assert {r["class_name"] for r in fig["records"]} == {"meningioma", "glioma", "pituitary"}
    assert {r["class_name"] for r in kag["records"]} == {"glioma", "meningioma", "notumor", "pituitary"}
    assert brats["cohort"]["cohort_fingerprint"] == cohorts.BRATS_GLIOMAS.fingerprint()
