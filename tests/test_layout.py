"""The package's layout rules (README, layout): one folder per method; a method imports the shared layers and
never another method; nothing outside ``brainkit/methods`` imports a method, except ``profiles.py``, which
composes the methods' ``config.py`` sections; each method imports (all of its modules) without the other three."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "brainkit"
METHODS = sorted(p.name for p in (PKG / "methods").iterdir() if (p / "__init__.py").exists())


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every brainkit module that ``path`` imports (relative imports resolved), at any depth in the file."""
    mod = _module_of(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("brainkit")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("brainkit"):
                out.add(name)
                out |= {f"{name}.{a.name}" for a in node.names}
    return out


def _method_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["brainkit", "methods"] and parts[2] in METHODS else None


def test_the_four_method_folders_have_their_files():
    assert METHODS == ["braingemma3d", "brainmri_gpt", "brat", "medvisionllama"]
    for m in METHODS:
        for f in ("config.py", "model.py"):
            assert (PKG / "methods" / m / f).exists(), (m, f)
    assert not (PKG / "models").exists(), "brainkit/models/ was split into brainkit/methods/ and brainkit/hub.py"


def test_no_method_imports_another_and_no_shared_layer_imports_a_method():
    bad = []
    for path in PKG.rglob("*.py"):
        mine = _method_of(_module_of(path))
        for imp in _imports(path):
            other = _method_of(imp)
            if other is None or other == mine:
                continue
            if path == PKG / "profiles.py" and imp.startswith(f"brainkit.methods.{other}.config"):
                continue  # the profile composes the methods' sections
            bad.append(f"{path.relative_to(ROOT)} imports {imp}")
    assert not bad, "\n".join(bad)


def test_methods_and_shared_layers_import_nothing_that_composes_them():
    # profiles.py composes the methods' sections, and env / results / runner / cli sit above it: a method or a
    # shared layer importing one of them would be an import that runs back up (and pull in all four methods)
    above = ("brainkit.profiles", "brainkit.env", "brainkit.results", "brainkit.runner", "brainkit.cli")
    low = [p for p in PKG.rglob("*.py") if "methods" in p.parts or p.parent.name in ("data", "metrics")
           or p.name in ("train.py", "losses.py", "hub.py", "generation.py", "cache.py", "sections.py", "faces.py")]
    bad = [f"{p.relative_to(ROOT)} imports {imp}" for p in low for imp in _imports(p)
           if imp.startswith(above)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("method", ["braingemma3d", "brainmri_gpt", "brat", "medvisionllama"])
def test_a_method_imports_without_the_other_three(method):
    code = (f"import sys, brainkit.methods.{method} as m\n"
            "for name in dir(m): getattr(m, name)\n"  # every module of the method's face, imported
            f"others = sorted({{k.split('.')[2] for k in sys.modules if k.startswith('brainkit.methods.')}} - {{'{method}'}})\n"
            "print(others)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing {method} imported {out.stdout.strip()}"


def test_reading_the_profiles_imports_no_method_networks():
    out = subprocess.run([sys.executable, "-c", "import sys, brainkit.profiles; print('torch' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr or out.stdout
