"""brainkit.metrics.text (pycocoevalcap / rouge-score) and brainkit.metrics.clinical (entity F1)."""

import math

import pytest

from brainkit.errors import DataError
from brainkit.metrics.clinical import clinical_metrics, set_f1
from brainkit.metrics.text import text_metrics, tokenize

REFS = ["There is a large mass in the left frontal lobe with surrounding oedema.",
        "No intracranial abnormality is seen. Normal study.",
        "An enhancing lesion is present in the right temporal lobe."]


def test_identical_reports_score_perfectly_and_nonsense_scores_low():
    same = text_metrics(REFS, REFS)
    assert same["bleu1"] == pytest.approx(1.0, abs=1e-6) and same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["rougeL"] == pytest.approx(1.0)
    other = text_metrics(["zebra quartz"] * 3, REFS)
    assert other["bleu1"] < 0.05 and other["rougeL"] == 0.0 and other["cider"] < same["cider"]
    assert text_metrics(["", "", ""], REFS)["bleu1"] < 0.05


def test_partial_overlap_is_between():
    hyp = ["There is a mass in the right frontal lobe.", "Normal study.", "A lesion in the right temporal lobe."]
    m = text_metrics(hyp, REFS)
    assert 0.2 < m["bleu1"] < 1.0 and 0.0 < m["bleu4"] < m["bleu1"] and 0.2 < m["rougeL"] < 1.0 and m["cider"] > 0


def test_tokenize():
    assert tokenize("Left-sided 3.5 cm mass.") == "left - sided 3.5 cm mass ."


def test_text_metric_errors():
    with pytest.raises(DataError, match="one per reference"):
        text_metrics(["a"], REFS)
    with pytest.raises(DataError, match=r"references\[0\].*non-empty"):
        text_metrics(["a"], [""])
    with pytest.raises(DataError, match="single string"):
        text_metrics("a", "b")


def test_set_f1_variants():
    assert set_f1(set(), set(), empty=1.0) == 1.0 and set_f1(set(), set(), empty=None) is None
    assert set_f1({"left"}, {"left"}, empty=None) == 1.0
    assert set_f1({"left"}, {"right"}, empty=None) == 0.0
    assert set_f1({"left", "right"}, {"left"}, empty=None) == pytest.approx(2 / 3)


def test_clinical_strict_vs_released_and_specificity():
    perfect = clinical_metrics(REFS, REFS)
    assert perfect["lat_f1"] == 1.0 and perfect["path_f1"] == 1.0 and perfect["healthy_specificity"] == 1.0
    # swapping sides: laterality 0 strict; the healthy case (no side in either) counts 1.0 only when released
    swapped = [REFS[0].replace("left", "right"), REFS[1], REFS[2].replace("right", "left")]
    m = clinical_metrics(swapped, REFS)
    assert m["lat_f1"] == 0.0
    assert m["lat_f1_released"] == pytest.approx(1 / 3)
    # hallucinating a tumour in the healthy control
    m2 = clinical_metrics([REFS[0], REFS[0], REFS[2]], REFS)
    assert m2["healthy_specificity"] == 0.0 and m2["path_f1"] < 1.0
    assert math.isnan(clinical_metrics(REFS[:1], REFS[:1])["healthy_specificity"])
    with pytest.raises(DataError, match="one report per reference"):
        clinical_metrics(REFS[:2], REFS)


def test_clinical_per_case_means_are_the_metrics_and_nan_marks_what_does_not_count():
    import math

    from brainkit.metrics.clinical import clinical_metrics, clinical_per_case

    refs = ["Left frontal mass with oedema.", "No abnormality.", "Right temporal enhancing lesion.", "No abnormality."]
    hyps = ["Left frontal mass.", "Right frontal mass.", "No abnormality.", "No abnormality."]
    cases, means = clinical_per_case(hyps, refs), clinical_metrics(hyps, refs)
    assert math.isnan(cases["healthy_specificity"][0]) and cases["healthy_specificity"][1:4:2] == [0.0, 1.0]
    assert math.isnan(cases["lat_f1"][3])  # both reports name no side: left out of the strict mean
    assert cases["lat_f1_released"][3] == 1.0
    for key, values in cases.items():
        kept = [v for v in values if not math.isnan(v)]
        assert means[key] == pytest.approx(sum(kept) / len(kept))
    assert means["n_healthy"] == 2


def test_paired_bootstrap_difference():
    import numpy as np

    from brainkit.errors import DataError
    from brainkit.metrics.stats import paired_bootstrap_difference

    rng = np.random.default_rng(0)
    base = rng.random(80)
    better = paired_bootstrap_difference(base + 0.2, base, seed=1)
    assert better["difference"] == pytest.approx(0.2) and 0 < better["low"] <= 0.2 <= better["high"]
    noise = paired_bootstrap_difference(rng.random(80), rng.random(80), seed=1)
    assert noise["low"] < noise["difference"] < noise["high"] and noise["low"] < 0 < noise["high"]
    with_nan = base.copy()
    with_nan[:10] = np.nan  # cases that do not count for one system
    r = paired_bootstrap_difference(with_nan, base, seed=1)
    assert r["difference"] == pytest.approx(np.nanmean(with_nan) - base.mean())
    assert paired_bootstrap_difference(base + 0.2, base, seed=1) == better  # seeded
    with pytest.raises(DataError, match="one length"):
        paired_bootstrap_difference([1.0, 2.0], [1.0])
    with pytest.raises(DataError, match="NaN"):
        paired_bootstrap_difference([np.nan, np.nan], [1.0, 2.0])
