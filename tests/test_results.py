import csv
import json

import pytest

from brainkit import results
from brainkit.errors import DataError


def test_save_load_roundtrip(tmp_path):
    p = results.save({"dice": 0.5, "n": 3, "ok": True, "skipped": None}, tmp_path / "07_x", notebook="07_x",
                     profile="smoke", seed=1, extra={"per_seed": [0.4, 0.6]})
    rec = results.load(p)
    assert rec["metrics"] == {"dice": 0.5, "n": 3, "ok": True, "skipped": None}
    assert rec["profile"] == "smoke" and rec["seed"] == 1 and rec["extra"]["per_seed"] == [0.4, 0.6]
    assert not [q for q in p.parent.iterdir() if q.name != "metrics.json"]


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": float("inf")}, {"x": "0.5"}, {"": 1.0}, {"x": [1]}])
def test_bad_metrics_refused_and_nothing_written(tmp_path, bad):
    with pytest.raises(DataError) as err:
        results.save(bad, tmp_path, notebook="02_y", profile="smoke")
    assert "02_y" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_unserialisable_extra_refused(tmp_path):
    with pytest.raises(DataError, match="extra"):
        results.save({"a": 1.0}, tmp_path, notebook="02_y", profile="smoke", extra={"f": object()})


def test_load_malformed(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json"):
        results.load(tmp_path / "metrics.json")
    (tmp_path / "metrics.json").write_text(json.dumps({"notebook": "x", "profile": "smoke"}))
    with pytest.raises(DataError, match="metrics"):
        results.load(tmp_path / "metrics.json")


def test_published_numbers_are_on_a_0_1_scale_except_distances():
    pub = results.published()
    assert {"02", "06", "07", "09"} <= set(pub)
    for key, entry in pub.items():
        assert entry["method"] and entry["source"]
        for name, v in entry["metrics"].items():
            assert 0 <= v <= (100 if "hd95" in name else 1), (key, name, v)
    assert pub["02"]["metrics"]["pixel_auroc"] == 0.991


def test_aggregate_puts_paper_beside_ours(tmp_path):
    results.save({"pixel_auroc": 0.93, "extra_metric": 1.0}, tmp_path / "02_clip_localisation",
                 notebook="02_clip_localisation", profile="smoke", seed=0)
    results.save({"toy": 0.8}, tmp_path / "00_quickstart", notebook="00_quickstart", profile="smoke")
    (tmp_path / "run.json").write_text(json.dumps({"profile": "smoke", "seed": 0, "notebooks": [
        {"name": "00_quickstart", "status": "ok", "seconds": 5.0, "timeout": 480}]}))
    md, csv_path = results.aggregate(tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    row = next(r for r in rows if r["metric"] == "pixel_auroc")
    assert row["ours"] == "0.93" and row["paper"] == "0.991" and row["method"] == "BrainMRI-GPT"
    text = md.read_text()
    assert "| pixel_auroc | 0.93 | 0.991 | smoke |" in text
    assert "00_quickstart" in text and "Notebook runs" in text
    assert text.index("00_quickstart") < text.index("02_clip_localisation")


def test_aggregate_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        results.aggregate(tmp_path / "nope")


def test_update_readme_replaces_only_the_block(tmp_path):
    results.save({"pixel_auroc": 0.93, "other": 2.0}, tmp_path / "02_c", notebook="02_c", profile="smoke")
    results.save({"toy": 0.8}, tmp_path / "00_q", notebook="00_q", profile="smoke")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nafter\n")
    results.update_readme(readme, tmp_path)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("after\n") and "old" not in text
    assert "| 02_c | pixel_auroc | 0.93 | 0.991 |" in text and "| 00_q | toy | 0.8 | – |" in text
    assert "| 02_c | other |" not in text  # notebooks with published numbers show those rows
    readme.write_text("no markers")
    with pytest.raises(DataError, match="markers"):
        results.update_readme(readme, tmp_path)
