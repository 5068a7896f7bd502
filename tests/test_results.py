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
    assert "| 02_clip_localisation | pixel_auroc | 0.93 |  | 0.991 | smoke |" in text
    assert "00_quickstart" in text and "Wall time per notebook" in text
    assert text.index("00_quickstart") < text.index("02_clip_localisation")
    assert "## BrainMRI-GPT" in text and "## course" in text


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
    assert "| 02_c | pixel_auroc | 0.93 |  | 0.991 | smoke |" in text and "| 00_q | toy | 0.8 |  | – | smoke |" in text
    assert "| 02_c | other |" not in text  # methods with published numbers show those rows
    readme.write_text("no markers")
    with pytest.raises(DataError, match="markers"):
        results.update_readme(readme, tmp_path)


def _full_run(tmp_path):
    """A run folder shaped like a full smoke run: per-seed values and intervals, a failed notebook."""
    results.save({"toy_val_accuracy": 0.8}, tmp_path / "00_quickstart", notebook="00_quickstart", profile="smoke")
    results.save({"medvisionllama_dice_mean": 0.6, "medvisionllama_dice_ci_low": 0.5,
                  "medvisionllama_dice_ci_high": 0.7, "medvisionllama_seed0_dice": 0.55,
                  "medvisionllama_seed1_dice": 0.65, "vit_dice_mean": 0.4, "vit_seed0_dice": 0.4,
                  "paired_dice_diff_ci_low": -0.1, "paired_dice_diff_ci_high": 0.3, "n_test_cases": 40},
                 tmp_path / "07_medvisionllama_segmentation", notebook="07_medvisionllama_segmentation",
                 profile="smoke", seed=0)
    results.save({"notebooks_with_metrics": 2}, tmp_path / "10_results", notebook="10_results", profile="smoke")
    (tmp_path / "run.json").write_text(json.dumps({"profile": "smoke", "seed": 0, "notebooks": [
        {"name": "00_quickstart", "status": "ok", "seconds": 20.0, "budget": 240},
        {"name": "02_clip_localisation", "status": "timeout", "seconds": 480.0, "budget": 360, "over_budget": True},
        {"name": "07_medvisionllama_segmentation", "status": "ok", "seconds": 300.0, "budget": 360}]}))
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for stem in ("00_quickstart", "01_data_prep", "02_clip_localisation", "07_medvisionllama_segmentation"):
        (nbs / f"{stem}.ipynb").write_text("{}")
    return nbs


def test_table_folds_intervals_and_seeds_into_their_metric(tmp_path):
    _full_run(tmp_path)
    tab = {r["metric"]: r for r in results.table(tmp_path)}
    dice = tab["medvisionllama_dice_mean"]
    assert (dice["ci_low"], dice["ci_high"], dice["seeds"]) == (0.5, 0.7, [0.55, 0.65])
    assert dice["paper"] == 0.87 and dice["paper_metric"] == "dice" and dice["method"] == "MedVisionLlama"
    assert tab["vit_dice_mean"]["paper"] == 0.74 and tab["vit_dice_mean"]["seeds"] == [0.4]
    # an interval without a metric of its own stays visible, as rows
    assert tab["paired_dice_diff_ci_low"]["ours"] == -0.1 and tab["paired_dice_diff_ci_high"]["ours"] == 0.3
    assert not [m for m in tab if "seed" in m] and "medvisionllama_dice_ci_low" not in tab
    assert "notebooks_with_metrics" not in tab  # notebook 10's own record is not a result
    assert tab["n_test_cases"]["paper"] is None


def test_missing_notebooks_are_stated_with_their_reason(tmp_path):
    nbs = _full_run(tmp_path)
    gone = {g["notebook"]: g["reason"] for g in results.missing(tmp_path, nbs)}
    assert gone["01_data_prep"] == "not run in this run"
    assert gone["02_clip_localisation"] == "timeout in this run"
    assert gone["08_brat_pretraining"] == "not in this clone yet" and gone["09_brat_evaluation"] == "not in this clone yet"
    assert "00_quickstart" not in gone and "07_medvisionllama_segmentation" not in gone and "10_results" not in gone
    md = results.markdown(tmp_path, nbs)
    assert "| 02_clip_localisation | BrainMRI-GPT | timeout in this run |" in md
    assert "| medvisionllama_dice_mean | 0.6 | [0.5, 0.7] | 0.87 | smoke |" in md
    assert "| 02_clip_localisation | timeout | 480 | 360 (over) | ? |" in md and "| total | | 800 | | |" in md
    assert "CANNOT confirm or refute" in md


def test_only_00_and_01(tmp_path):
    results.save({"toy_val_accuracy": 0.8}, tmp_path / "00_quickstart", notebook="00_quickstart", profile="smoke")
    results.save({"n_subjects": 400}, tmp_path / "01_data_prep", notebook="01_data_prep", profile="smoke")
    md = results.markdown(tmp_path)
    assert "## course" in md and "## data" in md and "Wall time" not in md  # no run.json: no times
    assert len(results.missing(tmp_path)) == 8
    assert results.readme_block(tmp_path).startswith("### course")


def test_empty_run_folder_says_so(tmp_path):
    md = results.markdown(tmp_path)
    assert "No notebook saved metrics" in md and "says nothing about the papers' claims" in md
    assert len(results.missing(tmp_path)) == 10


def test_claims_statement_by_profile():
    assert "CANNOT" in results.claims_statement({"smoke"})
    full = results.claims_statement({"full"})
    assert "real datasets" in full and "CANNOT" not in full


def test_bad_run_json(tmp_path):
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(DataError, match="run.json"):
        results.timings(tmp_path)


def test_cli_results_writes_readme_section(tmp_path, capsys):
    from brainkit import cli

    nbs = _full_run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:start -->\n<!-- results:end -->\n")
    assert cli.main(["results", str(tmp_path), "--readme", str(readme), "--notebooks", str(nbs)]) == 0
    text = readme.read_text()
    assert "### MedVisionLlama" in text and "| 07_medvisionllama_segmentation | medvisionllama_dice_mean |" in text
    assert "| 07_medvisionllama_segmentation | n_test_cases |" not in text  # only metrics the paper reports
    assert "not in this clone yet" in text and (tmp_path / "results.md").read_text() in capsys.readouterr().out
