"""Every notebook executed through the runner in the smoke profile, its learning gates asserted
from the metrics JSON it saved, and its wall time held to the profile's budget.

Each notebook's gates come from its issue; a notebook without gates here fails, so none runs ungated.
"""

import json
from pathlib import Path

import pytest

from brainkit import results, runner
from brainkit.profiles import resolve

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = runner.list_notebooks(ROOT / "notebooks")


def gates_00(m):
    # The toy task of the tour: the loop learns, equals the literal loop, and resumes exactly.
    assert m["toy_val_accuracy"] >= 0.75
    assert m["toy_best_val_loss"] < 0.8 * m["toy_first_val_loss"]
    assert m["literal_vs_fit_max_diff"] < 1e-6
    assert m["resume_same_weights"] is True


GATES = {
    "00": gates_00,
}


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_and_meets_gates(path, tmp_path, shared_data_dir):
    gate = GATES.get(path.name[:2])
    assert gate is not None, f"{path.name}: no learning gates declared in tests/test_notebooks.py"
    runs, run_dir = runner.run_series("smoke", out=tmp_path, only=path.name[:2], notebooks_dir=path.parent,
                                      data_dir=shared_data_dir)
    (run,) = runs
    log = (tmp_path / path.stem / "papermill.log")
    assert run.status == "ok", f"{path.name}: {run.status}: {run.error}\n{log.read_text()[-3000:] if log.exists() else ''}"
    record = results.load(tmp_path / path.stem / "metrics.json")
    assert record["profile"] == "smoke" and record["notebook"] == path.stem
    gate(record["metrics"])
    budget = runner.notebook_budget(path, resolve("smoke"))
    assert run.seconds <= budget, f"{path.name}: {run.seconds:.0f} s, over its {budget:.0f} s budget"
    assert json.loads((run_dir / "run.json").read_text())["notebooks"][0]["status"] == "ok"
