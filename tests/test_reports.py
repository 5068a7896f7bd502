"""brainkit.data.reports: writing reports from findings and reading findings back."""

from __future__ import annotations

import numpy as np
import pytest

from brainkit.data import reports
from brainkit.data.reports import (
    clean_report,
    entities_from_findings,
    extract_findings,
    read_report_text,
    scrub_phi,
    split_sentences,
    write_report,
)
from brainkit.errors import DataError


def _findings(**kw):
    base = {
        "normal": False, "lesion_count": 1, "lesion_type": "glioma", "hemisphere": "left", "lobes": ["frontal"],
        "location": ["frontal lobe"], "largest_diameter_cm": 3.2, "dimensions_cm": [3.2, 2.5, 2.0],
        "volume_cm3": 20.0, "enhancement": True, "enhancement_pattern": "heterogeneous", "oedema": True,
        "oedema_extent": "moderate", "necrosis": True, "mass_effect": True, "mass_effect_grade": "moderate",
        "midline_shift_mm": 5.0, "midline_shift_direction": "right", "wmh": "mild",
    }
    base.update(kw)
    base["lesions"] = kw.get("lesions") or [{
        "type": base["lesion_type"], "hemisphere": base["hemisphere"], "lobe": base["lobes"][0],
        "lobes": base["lobes"], "location": base["location"][0], "diameter_cm": base["largest_diameter_cm"],
        "dimensions_cm": base["dimensions_cm"],
    }]
    return base


def _normal():
    return {"normal": True, "lesion_count": 0, "lesion_type": None, "hemisphere": None, "lobes": [], "location": [],
            "wmh": "moderate", "lesions": [], "mass_effect": False, "midline_shift_mm": 0.0}


@pytest.mark.parametrize("seed", range(40))
def test_written_reports_read_back(seed):
    rng = np.random.default_rng(seed)
    variants = [
        _findings(),
        _findings(hemisphere="right", lobes=["temporal", "parietal"], necrosis=False, midline_shift_mm=0.0,
                  mass_effect_grade="mild", oedema_extent="marked"),
        _findings(lesion_type="meningioma", lobes=["parietal"], location=["parafalcine"], enhancement_pattern="homogeneous",
                  necrosis=False, oedema=False, oedema_extent="none", mass_effect=False, mass_effect_grade="none",
                  midline_shift_mm=0.0),
        _findings(lesion_type="glioma", lobes=["brainstem"], location=["pons"], mass_effect=False, midline_shift_mm=0.0,
                  mass_effect_grade="none", enhancement=False, enhancement_pattern="none", necrosis=False),
        _findings(lesion_type="metastasis", hemisphere="bilateral", lobes=["frontal", "cerebellum", "deep"],
                  enhancement_pattern="ring", midline_shift_mm=0.0, mass_effect=False, mass_effect_grade="none",
                  lesions=[
                      {"type": "metastasis", "hemisphere": "left", "lobe": "frontal", "lobes": ["frontal"],
                       "location": "frontal lobe", "diameter_cm": 1.2, "dimensions_cm": [1.2, 1.0, 0.9]},
                      {"type": "metastasis", "hemisphere": "right", "lobe": "cerebellum", "lobes": ["cerebellum"],
                       "location": "cerebellar hemisphere", "diameter_cm": 0.8, "dimensions_cm": [0.8, 0.7, 0.7]},
                      {"type": "metastasis", "hemisphere": "right", "lobe": "deep", "lobes": ["deep"],
                       "location": "thalamus", "diameter_cm": 0.6, "dimensions_cm": [0.6, 0.6, 0.5]},
                  ]),
        _normal(),
    ]
    for f in variants:
        text = write_report(f, rng)
        assert len(split_sentences(text)) >= 3, text
        assert extract_findings(text) == entities_from_findings(f), text


def test_reports_vary():
    f = _findings()
    texts = {write_report(f, np.random.default_rng(s)) for s in range(30)}
    assert len(texts) >= 25
    normals = {write_report(_normal(), np.random.default_rng(s)) for s in range(30)}
    assert len(normals) >= 20
    # sentence order varies: the position of the enhancement sentence is not fixed
    firsts = {split_sentences(t)[1][:12] for t in texts}
    assert len(firsts) >= 4


def test_write_report_is_deterministic():
    f = _findings()
    assert write_report(f, np.random.default_rng(3)) == write_report(f, np.random.default_rng(3))


def test_split_sentences_keeps_decimals_and_abbreviations():
    text = ("FINDINGS:\nThere is a mass measuring 3.2 x 2.1 cm in the left frontal lobe. Dr. Smith was informed. "
            "No midline shift, e.g. no subfalcine herniation.\nIMPRESSION: Left frontal glioma!")
    assert split_sentences(text) == [
        "There is a mass measuring 3.2 x 2.1 cm in the left frontal lobe.",
        "Dr. Smith was informed.",
        "No midline shift, e.g. no subfalcine herniation.",
        "IMPRESSION: Left frontal glioma!",
    ]
    assert split_sentences("") == []


def test_clean_report_removes_prior_references_and_temporal_words():
    raw = ("Compared with the prior MRI of 2019-03-02, the heterogeneously enhancing mass in the left temporal lobe "
           "now measures 7.5 x 4.8 cm from 6.7 x 4.7 cm. No significant interval change. "
           "Again seen is mild midline shift to the right. There is a new enhancing lesion in the right cerebellum. "
           "Stable appearance since the last study.")
    out = clean_report(raw)
    low = out.lower()
    for word in ("prior", "compared", "now", "again", "new ", "interval", "6.7", "stable", "since"):
        assert word not in low, (word, out)
    assert "7.5 x 4.8 cm" in out
    assert "left temporal lobe" in out
    assert "midline shift" in out
    assert "enhancing lesion in the right cerebellum" in out
    # findings survive the clean-up
    assert extract_findings(out)["anatomy"] == {"temporal", "cerebellum"}
    # a hedge keeps its meaning
    assert "less likely" in clean_report("A glioma is less likely.")


def test_scrub_phi():
    raw = ("Patient seen by Dr. Jane Smith on 12/03/2021 and 3 March 2021 (MRN: 12345678). "
           "Call 555-123-4567 or (020) 7946 0958, e-mail jane.smith@hospital.org. Accession No. 98765432. "
           "Mrs O'Neil consented. The mass measures 3.2 x 2.1 cm with 5 mm midline shift.")
    out = scrub_phi(raw)
    for secret in ("Jane", "Smith", "12/03/2021", "March", "12345678", "555-123", "7946", "jane.smith", "98765432",
                   "O'Neil"):
        assert secret not in out, (secret, out)
    assert "Dr. [NAME]" in out and "[DATE]" in out and "[EMAIL]" in out and "[PHONE]" in out and "[ID]" in out
    assert "3.2 x 2.1 cm with 5 mm midline shift" in out


@pytest.mark.parametrize("text, key, expected", [
    ("There is no mass, mass effect or midline shift.", "pathology", {"normal"}),
    ("Left frontal mass without enhancement.", "pathology", {"tumour"}),
    ("Left frontal mass. Necrosis cannot be excluded.", "pathology", {"tumour", "necrosis"}),
    ("Oedema is not seen around the right parietal mass.", "pathology", {"tumour"}),
    ("A non-enhancing mass in the right insula.", "pathology", {"tumour"}),
    ("Mass in the left parietal lobe with 6 mm midline shift to the right.", "laterality", {"left"}),
    ("Rightward midline shift from a left frontal glioma.", "laterality", {"left"}),
    ("Lesions in the left frontal lobe and the right cerebellum.", "laterality", {"left", "right", "bilateral"}),
    ("A left frontoparietal mass. The cerebellum and brainstem are unremarkable.", "anatomy", {"frontal", "parietal"}),
    ("Mass of the left pons.", "anatomy", {"brainstem"}),
    ("Mass in the right thalamus, dilated temporal horn.", "anatomy", {"deep"}),
    ("Right frontal mass. No lesion in the left temporal lobe.", "anatomy", {"frontal"}),
])
def test_extract_findings_rules(text, key, expected):
    assert extract_findings(text)[key] == expected


def test_entity_vocabularies():
    assert set(reports.ANATOMY) == {"frontal", "parietal", "temporal", "occipital", "deep", "cerebellum", "brainstem"}
    assert "normal" in reports.PATHOLOGY and "tumour" in reports.PATHOLOGY


def test_bad_report_input(tmp_path):
    with pytest.raises(DataError, match="report"):
        extract_findings(None)  # type: ignore[arg-type]
    empty = tmp_path / "BraTS20_Training_001_flair_text.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match=r"BraTS20_Training_001_flair_text\.txt.*non-empty"):
        read_report_text(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Läsion links frontal".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt.*UTF-8"):
        read_report_text(latin)
    with pytest.raises(DataError, match="missing.txt"):
        read_report_text(tmp_path / "missing.txt")


def test_phantom_reports_agree_with_findings():
    from brainkit.data.phantoms import generate_cohort

    subjects = generate_cohort(12, seed=5, shape=(40, 40, 32))
    assert any(s.findings["normal"] for s in subjects) and any(not s.findings["normal"] for s in subjects)
    for s in subjects:
        assert extract_findings(s.report) == entities_from_findings(s.findings), (s.subject_id, s.report)
