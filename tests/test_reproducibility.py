"""Reproducibility (issue 8): a notebook run twice with the same seed writes identical metrics; a notebook cut
off mid-training resumes from its last checkpoint when RESUME is true (and ends where an uninterrupted run
ends); `brainkit tutorial` records pip freeze, git revision, profile and seed with every run.

Each notebook here runs through the runner in the smoke profile, as `brainkit tutorial` runs it.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest

from brainkit import results, runner

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {p.name[:2]: p for p in runner.list_notebooks(ROOT / "notebooks")}

# Notebook number -> parameter overrides that make two runs cheap (the smoke profile's own settings, cut down
# where a notebook allows it). To add one: put its number here with its reduced parameters, e.g.
# "09": {"STEPS": 40}; it must be committed (every notebook listed here must exist: none is skipped).
REPEATED = {
    "00": {},
    "02": {"CLIP_EPOCHS": 2},  # a cold cache pretrains the stand-in CLIP in the first run (~1.5 min); the rest read it
    "04": {"PROBE_STEPS": 8},  # the stand-in SigLIP comes from the cache after the first run; 8 fine-tune steps each
    "05": {"PHASE1_STEPS": 4, "PHASE2A_STEPS": 4, "PHASE2B_STEPS": 4, "BASELINE_2D": False},  # LM pre-training kept
    "07": {"STEPS": 16, "EVAL_EVERY": 8},  # 16 steps per comparison run, validation + checkpoint every 8 (the
    # 10%-data runs keep the profile's 100 steps), two seeds
}

# Notebook number -> (parameters that interrupt its training, the global step of the last checkpoint written
# before the interruption). The notebook declares RESUME and STOP_AT_STEP and saves `toy_resumed_from_step`-like
# metric named in RESUMED_METRIC. To add one, give its interruption the same way.
INTERRUPTED = {
    "00": ({"STOP_AT_STEP": 42}, 40),  # checkpoints every 4 steps: cut at 42, the last one is at step 40
    "07": ({"STOP_AT_STEP": 12}, 8),  # first run cut at step 12; its last checkpoint followed step 8's validation
}
RESUMED_METRIC = {"00": "toy_resumed_from_step", "07": "resumed_from_step"}

# Wall-time measurements differ between runs by nature; every other metric must be identical.
VOLATILE = re.compile(r"(^|_)(seconds|secs|wall|elapsed)(_|$)")


def _run(number, out, data_dir, **params):
    runs, run_dir = runner.run_series("smoke", out=out, only=number, notebooks_dir=ROOT / "notebooks",
                                      data_dir=data_dir, extra_parameters=params)
    (run,) = runs
    return run, run_dir


def _metrics(run_dir, number):
    return results.load(run_dir / NOTEBOOKS[number].stem / "metrics.json")["metrics"]


def _stable(metrics):
    return {k: v for k, v in metrics.items() if not VOLATILE.search(k)}


def test_every_listed_notebook_exists():
    assert set(REPEATED) <= set(NOTEBOOKS) and set(INTERRUPTED) <= set(NOTEBOOKS), \
        "a notebook listed here is not in notebooks/: commit it or remove it from the list"


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory, shared_data_dir):
    """Each REPEATED notebook run once with seed 0: the reference the other tests compare with."""
    out = {}
    for number, params in REPEATED.items():
        run_dir = tmp_path_factory.mktemp(f"first{number}")
        run, _ = _run(number, run_dir, shared_data_dir, **params)
        assert run.status == "ok", f"{run.name}: {run.status}: {run.error}"
        out[number] = run_dir
    return out


@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(REPEATED))
def test_same_seed_same_metrics(number, first_runs, tmp_path, shared_data_dir):
    run, run_dir = _run(number, tmp_path, shared_data_dir, **REPEATED[number])
    assert run.status == "ok", f"{run.name}: {run.status}: {run.error}"
    first, second = _metrics(first_runs[number], number), _metrics(run_dir, number)
    assert set(first) == set(second)
    assert _stable(first) == _stable(second)
    assert len(_stable(first)) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(INTERRUPTED))
def test_interrupted_run_resumes_from_its_last_checkpoint(number, first_runs, tmp_path, shared_data_dir):
    stop, last_step = INTERRUPTED[number]
    cut, _ = _run(number, tmp_path, shared_data_dir, **REPEATED.get(number, {}), **stop)
    assert cut.status == "failed" and "KeyboardInterrupt" in cut.error, cut.error
    assert not (tmp_path / NOTEBOOKS[number].stem / "metrics.json").exists()
    resumed, run_dir = _run(number, tmp_path, shared_data_dir, **REPEATED.get(number, {}), RESUME=True)
    assert resumed.status == "ok", f"{resumed.name}: {resumed.status}: {resumed.error}"
    metrics = _metrics(run_dir, number)
    # resumed, not restarted: training went on from the checkpoint written before the interruption ...
    assert metrics[RESUMED_METRIC[number]] == last_step
    # ... and ended where the uninterrupted run ended
    if number in first_runs:
        reference = _stable(_metrics(first_runs[number], number))
        assert reference[RESUMED_METRIC[number]] == 0
        reference.pop(RESUMED_METRIC[number])
        assert {k: v for k, v in _stable(metrics).items() if k != RESUMED_METRIC[number]} == reference


@pytest.mark.slow
def test_run_records_environment_git_profile_and_seed(first_runs):
    run_dir = next(iter(first_runs.values()))
    record = json.loads((run_dir / "run.json").read_text())
    assert record["profile"] == "smoke" and record["seed"] == 0 and record["python"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert head and record["git_revision"] == head and isinstance(record["git_dirty"], bool)
    for nb in record["notebooks"]:
        assert nb["profile"] == "smoke" and nb["seed"] == 0 and nb["git_revision"] == head
    freeze = (run_dir / "environment.txt").read_text()
    assert re.search(r"^torch==\d", freeze, re.M) and re.search(r"^papermill==\d", freeze, re.M)
    assert "brainkit" in freeze.lower()
    metrics = results.load(next(run_dir.glob("*/metrics.json")))
    assert metrics["profile"] == "smoke" and metrics["seed"] == 0
