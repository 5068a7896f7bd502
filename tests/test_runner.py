"""The runner behind `brainkit tutorial`: parameters injected, failures kept, exit codes."""

import json
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from brainkit import cli, runner
from brainkit.errors import ConfigError


def write_nb(path, body, training=False):
    nb = new_notebook()
    params = new_code_cell('PROFILE: str = "smoke"  # profile\nSEED: int = 0  # seed\n'
                           'OUTPUT_DIR: str = "out"  # output\nDATA_DIR: str = ""  # data')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["brainkit"] = {"training": training}
    nbformat.write(nb, path)


GOOD = ("import brainkit.results\nprint('hello from', PROFILE)\n"
        "brainkit.results.save({'seed_seen': SEED}, OUTPUT_DIR, notebook='00_good', profile=PROFILE, seed=SEED)")


@pytest.fixture
def course(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    write_nb(nbs / "00_good.ipynb", GOOD)
    write_nb(nbs / "01_bad.ipynb", "raise ValueError('broken on purpose')")
    write_nb(nbs / "02_slow.ipynb", "import time\ntime.sleep(60)")
    write_nb(nbs / "03_after.ipynb", GOOD.replace("00_good", "03_after"), training=True)
    (nbs / "scratch.ipynb").write_text("{}")  # not numbered: never run
    return nbs


def test_select(course):
    nbs = runner.list_notebooks(course)
    assert [p.stem for p in nbs] == ["00_good", "01_bad", "02_slow", "03_after"]
    assert [p.stem for p in runner.select(nbs, "3,00")] == ["00_good", "03_after"]
    with pytest.raises(ConfigError, match="07"):
        runner.select(nbs, "07")


def test_budget_from_metadata(course):
    prof = runner.resolve("smoke")
    assert runner.notebook_budget(course / "00_good.ipynb", prof) == 60 * prof.budget_minutes
    assert runner.notebook_budget(course / "03_after.ipynb", prof) == 60 * prof.budget_training_minutes


@pytest.mark.slow
def test_series_goes_on_past_failure_and_timeout(course, tmp_path):
    out = tmp_path / "run"
    # timeout_factor makes the 4-minute budget a 12-second limit, so 02_slow is cut off.
    runs, run_dir = runner.run_series("smoke", out=out, seed=7, notebooks_dir=course, timeout_factor=0.05)
    status = {r.name: r.status for r in runs}
    assert status == {"00_good": "ok", "01_bad": "failed", "02_slow": "timeout", "03_after": "ok"}
    bad = next(r for r in runs if r.name == "01_bad")
    assert "ValueError: broken on purpose" in bad.error
    assert (out / "01_bad" / "01_bad.ipynb").is_file()  # the failed notebook is kept
    assert "hello from smoke" in (out / "00_good" / "stdout.txt").read_text()
    metrics = json.loads((out / "00_good" / "metrics.json").read_text())
    assert metrics["metrics"]["seed_seen"] == 7 and metrics["profile"] == "smoke"
    record = json.loads((out / "run.json").read_text())
    assert [n["name"] for n in record["notebooks"]] == ["00_good", "01_bad", "02_slow", "03_after"]
    assert (out / "results.md").is_file() and (out / "environment.txt").read_text().strip()
    with pytest.raises(runner.NotebookError, match="01_bad"):
        runner.raise_for_failures(runs)


@pytest.mark.slow
def test_cli_exit_codes(course, tmp_path, capsys):
    assert cli.main(["tutorial", "--notebooks", str(course), "--only", "00", "--out", str(tmp_path / "a"),
                     "-p", "SEED=3"]) == 0
    assert "00_good" in capsys.readouterr().out
    assert cli.main(["tutorial", "--notebooks", str(course), "--only", "01", "--out", str(tmp_path / "b")]) == 1
    assert "FAILED 01_bad" in capsys.readouterr().err


def test_cli_bad_input(capsys, tmp_path):
    assert cli.main(["tutorial", "--profile", "nope"]) == 2
    assert "unknown profile 'nope'" in capsys.readouterr().err
    assert cli.main(["tutorial", "--notebooks", str(tmp_path / "missing")]) == 2
    assert "notebooks folder not found" in capsys.readouterr().err
    assert cli.main(["tutorial", "-p", "NOEQUALS"]) == 2


def test_unknown_notebook_parameter(course, tmp_path):
    with pytest.raises(ConfigError) as err:
        runner.run_series("smoke", out=tmp_path, notebooks_dir=course, only="00", extra_parameters={"EPOCS": 3})
    assert "EPOCS" in str(err.value) and "SEED" in str(err.value)
    assert not (tmp_path / "00_good").exists()


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "brainkit.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "tutorial" in out.stdout and "doctor" in out.stdout


@pytest.mark.slow
def test_rerun_into_a_run_folder_keeps_earlier_records(course, tmp_path, capsys):
    out = tmp_path / "run"
    runner.run_series("smoke", out=out, only="00,03", seed=1, notebooks_dir=course)
    first = {n["name"]: n for n in json.loads((out / "run.json").read_text())["notebooks"]}
    runner.run_series("smoke", out=out, only="03", seed=1, notebooks_dir=course)
    record = json.loads((out / "run.json").read_text())
    again = {n["name"]: n for n in record["notebooks"]}
    assert list(again) == ["00_good", "03_after"]
    assert again["00_good"] == first["00_good"]  # kept as it was
    assert again["03_after"]["profile"] == "smoke" and again["03_after"]["seed"] == 1
    assert "00_good" in (out / "results.md").read_text()
    # the CLI prints the time table of what it ran
    assert cli.main(["tutorial", "--notebooks", str(course), "--only", "00", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "notebook" in printed and "seconds" in printed and "00_good" in printed and "total" in printed
