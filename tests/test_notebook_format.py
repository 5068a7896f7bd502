"""Every notebook follows the skeleton of the design: title with Colab badge and runtime table,
conditional set-up cell, annotated `parameters` cell, profile + set-up calls, metrics saved,
exercises, outputs stripped, no sibling imports."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]


def test_there_are_notebooks_and_all_are_numbered():
    assert NOTEBOOKS, "no notebooks found"
    for p in NOTEBOOKS:
        assert re.match(r"^\d\d_[a-z0-9_]+\.ipynb$", p.name), p.name
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), "two notebooks share a number"


@pytest.fixture(params=NOTEBOOKS, ids=IDS)
def nb(request):
    return request.param, nbformat.read(str(request.param), as_version=4)


def code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_valid_and_stripped(nb):
    path, book = nb
    nbformat.validate(book)
    for c in code(book):
        assert not c.outputs and c.execution_count is None, f"{path.name}: commit notebooks with outputs stripped"
    assert book.metadata.kernelspec.name == "python3"


def test_title_badge_runtime_table(nb):
    path, book = nb
    first = book.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.name[:2]} ")
    assert "colab-badge.svg" in first.source and f"notebooks/{path.name}" in first.source
    table = [line for line in first.source.splitlines() if line.startswith("|")]
    text = "\n".join(table)
    for profile in ("smoke", "colab", "full"):
        assert re.search(rf"^\|\s*{profile}\s*\|", text, re.M), f"{path.name}: runtime table lacks {profile}"


def test_setup_cell_installs_only_when_missing(nb):
    _, book = nb
    src = code(book)[0].source
    assert 'find_spec("brainkit") is None' in src and "pip" in src


def test_parameters_cell_annotated_and_commented(nb):
    path, book = nb
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters'"
    cell = tagged[0]
    assert code(book).index(cell) == 1, "the parameters cell comes right after the set-up cell"
    tree = ast.parse(cell.source)
    names = []
    for stmt in tree.body:
        assert isinstance(stmt, ast.AnnAssign), f"{path.name}: unannotated parameter: {ast.unparse(stmt)}"
        names.append(stmt.target.id)
    for line in cell.source.splitlines():
        if line.strip():
            assert "#" in line, f"{path.name}: parameter without a comment: {line}"
    assert {"PROFILE", "SEED", "OUTPUT_DIR", "DATA_DIR"} <= set(names)


def test_papermill_help_shows_types(nb):
    path, _ = nb
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "PROFILE: str" in out.stdout and "Unknown type" not in out.stdout


def test_resolve_setup_save_exercises(nb):
    path, book = nb
    src = "\n".join(c.source for c in code(book))
    assert "profiles.resolve(PROFILE" in src and "env.setup(SEED" in src
    assert "results.save(" in code(book)[-1].source, f"{path.name}: the last code cell saves the metrics"
    assert f'notebook="{path.stem}"' in code(book)[-1].source
    last_md = [c for c in book.cells if c.cell_type == "markdown"][-1]
    assert last_md.source.lstrip().startswith("## Exercises")
    assert len(re.findall(r"^\d\.", last_md.source, re.M)) in (2, 3, 4)


def test_no_sibling_imports_and_no_literal_epochs(nb):
    path, book = nb
    siblings = {p.stem for p in (ROOT / "notebooks").glob("*.py")}
    for c in code(book):
        tree = ast.parse("\n".join(line for line in c.source.splitlines() if not line.lstrip().startswith(("!", "%"))))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in siblings for m in mods), f"{path.name} imports a sibling file"
        if "parameters" not in c.metadata.get("tags", []):
            assert not re.search(r"^\s*epochs\s*=\s*\d", c.source, re.M | re.I), f"{path.name}: literal epoch count"


def test_training_flag_is_declared(nb):
    _, book = nb
    assert isinstance(book.metadata.get("brainkit", {}).get("training"), bool)


def test_json_is_nbformat_4():
    for p in NOTEBOOKS:
        assert json.loads(p.read_text())["nbformat"] == 4
