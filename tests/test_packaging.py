"""pyproject.toml and environment.yml list the same dependencies with lower bounds only;
CITATION.cff validates with cffconvert."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(.*)$")


def parse(req: str) -> tuple[str, str]:
    name, _, bound = SPEC.match(req).groups()
    name = CONDA_NAMES.get(name, name).lower().replace("_", "-")
    return name, bound.replace(" ", "")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def environment():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += [d for d in dep["pip"] if not d.startswith("-e")]
        elif not dep.startswith(("python=", "pip")) or dep.startswith("pip>"):
            conda.append(dep)
    return env, conda, pip


def test_only_lower_bounds():
    proj = pyproject()
    reqs = proj["dependencies"] + [r for extra in proj["optional-dependencies"].values() for r in extra]
    for req in reqs:
        name, bound = parse(req)
        assert bound.startswith(">="), f"{req}: expected a lower bound only (>=)"
        assert not re.search(r"==|<|~=|!=", bound), f"{req}: no upper bounds or pins"
    assert "torch>=2.4" in proj["dependencies"]  # at or below the torch this machine installs


def test_required_course_dependencies_present():
    names = {parse(r)[0] for r in pyproject()["dependencies"]}
    for need in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "monai", "nibabel", "nilearn",
                 "scikit-image", "scikit-learn", "scipy", "h5py", "safetensors", "huggingface-hub", "papermill",
                 "ipykernel", "ipywidgets", "jupyterlab", "matplotlib", "tqdm"):
        assert need in names, need
    extras = pyproject()["optional-dependencies"]
    assert {parse(r)[0] for r in extras["dev"]} >= {"pytest", "ruff", "nbformat"}
    assert [parse(r)[0] for r in extras["viz3d"]] == ["itkwidgets"]
    assert "itkwidgets" not in names  # optional: it pulls ipywidgets back to 7


def test_environment_yml_in_step_with_pyproject():
    env, conda, pip = environment()
    assert env["channels"] == ["conda-forge"]
    assert "python=3.11" in env["dependencies"]
    listed = dict(parse(d) for d in conda + pip)
    proj = dict(parse(r) for r in pyproject()["dependencies"])
    dev = dict(parse(r) for r in pyproject()["optional-dependencies"]["dev"])
    assert {k: v for k, v in listed.items() if k not in dev or k in proj} == proj
    assert {k: v for k, v in listed.items() if k in dev} == dev
    pip_section = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert any(d.startswith("-e") and "[dev]" in d for d in pip_section)


def _cffconvert() -> str | None:
    venv_tool = Path(sys.executable).parent.parent / "tools" / "cff" / "bin" / "cffconvert"
    return str(venv_tool) if venv_tool.exists() else shutil.which("cffconvert")


def test_citation_validates_with_cffconvert():
    exe = _cffconvert()
    if exe is None:
        pytest.fail("cffconvert not found: `make setup` installs it into .venv/tools/cff "
                    "(it cannot share the course's environment: it needs jsonschema<4, jupyterlab >=4.18)")
    out = subprocess.run([exe, "--validate", "-i", str(ROOT / "CITATION.cff")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in (out.stdout + out.stderr).lower()
