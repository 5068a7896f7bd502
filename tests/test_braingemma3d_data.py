"""brainkit.methods.braingemma3d.data: the BrainGemma3D cohort read from BraTS 2020 + TextBraTS folders."""

import pytest
import torch

from brainkit.data import formats
from brainkit.data.phantoms import generate_cohort
from brainkit.errors import DataError
from brainkit.methods.braingemma3d import data as report_data
from brainkit.profiles import resolve


@pytest.fixture(scope="module")
def subjects():
    return generate_cohort(4, seed=0, shape=(32, 32, 24), healthy_fraction=0.25)


def _write(root, subjects, drop_report=None):
    recs = formats.write_brats2020(root / "brats2020", subjects)
    items = [(r["case_id"], s.report) for r, s in zip(recs, subjects) if r["case_id"] != drop_report]
    formats.write_textbrats(root / "textbrats", items)
    return recs


def test_cohort_reads_volumes_reports_and_sides(tmp_path, subjects):
    recs = _write(tmp_path / "data", subjects)
    cfg = resolve("colab", data_gemma_volume_size=(8, 16, 16))
    c = report_data.load_cohort(cfg, tmp_path / "data", tmp_path / "cache")
    assert c["volumes"].shape == (4, 1, 8, 16, 16) and c["labels"].shape == (4, 1, 8, 16, 16)
    allrec = sorted(c["train"] + c["val"] + c["test"], key=lambda r: r["index"])
    assert [r["case_id"] for r in allrec] == [r["case_id"] for r in recs]
    for r, s in zip(allrec, subjects):
        assert r["report"].strip() == s.report.strip()
        assert r["healthy"] == s.healthy
        assert r["laterality"] in report_data.SIDES and (r["laterality"] == "none") == s.healthy
    # the second call reads the cache and gives the same tensors
    again = report_data.load_cohort(cfg, tmp_path / "data", tmp_path / "cache")
    assert torch.equal(again["volumes"], c["volumes"])


def test_missing_report_is_a_clear_error(tmp_path, subjects):
    recs = _write(tmp_path / "data", subjects, drop_report="BraTS20_Training_002")
    cfg = resolve("colab", data_gemma_volume_size=(8, 16, 16))
    with pytest.raises(DataError, match="BraTS20_Training_002_flair_text.txt.*TextBraTS report"):
        report_data.load_cohort(cfg, tmp_path / "data", tmp_path / "cache")
    assert recs


def test_flip_and_side_swap():
    v = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    assert torch.equal(report_data.flip_lr(v)[..., 0], v[..., 1])
    assert report_data.swap_sides("Left frontal mass; right shift. left") == "Right frontal mass; left shift. right"
