"""Execute the course's notebooks with papermill: the engine of ``brainkit tutorial``.

Introduced in ``00_quickstart``. Each notebook runs in its own papermill process with the
parameters ``PROFILE``, ``SEED``, ``OUTPUT_DIR`` and ``DATA_DIR`` injected, under a wall-time limit;
its executed copy, the kernel's stdout/stderr and papermill's log are kept in its output folder
even when it fails, and the runner goes on with the next notebook. ``run.json`` records every
notebook's status and wall time as the run goes, with the profile, seed, git revision and
``pip freeze`` of the environment.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nbformat

from .cache import atomic_write_text
from .errors import ConfigError, NotebookError
from .profiles import Profile, resolve

__all__ = ["NotebookRun", "find_notebooks_dir", "list_notebooks", "select", "run_notebook", "run_series",
           "notebook_budget", "raise_for_failures", "time_table"]

log = logging.getLogger(__name__)

_NB_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")


@dataclass
class NotebookRun:
    """The record of one executed notebook."""

    name: str
    status: str  # ok | failed | timeout
    seconds: float
    budget: float  # the profile's time budget for this notebook, seconds
    timeout: float  # the wall-time limit it ran under, seconds
    output: str  # executed notebook
    error: str = ""

    @property
    def over_budget(self) -> bool:
        return self.seconds > self.budget


def find_notebooks_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The course's ``notebooks/`` folder: ``explicit``, else beside the package (a clone or an
    editable install), else ``./notebooks``."""
    candidates = [Path(explicit)] if explicit else [
        Path(__file__).resolve().parent.parent / "notebooks", Path.cwd() / "notebooks"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.ipynb")):
            return c.resolve()
    raise ConfigError(f"notebooks folder not found (looked in {', '.join(map(str, candidates))}): run from a "
                      "clone of brainkit or pass --notebooks DIR")


def list_notebooks(folder: str | os.PathLike) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) of ``folder``, in order."""
    return sorted(p for p in Path(folder).glob("*.ipynb") if _NB_NAME.match(p.name))


def select(notebooks: list[Path], only: str | Iterable[str] | None) -> list[Path]:
    """Keep the notebooks named in ``only`` (``"02,05"``: numbers or full stems)."""
    if not only:
        return notebooks
    wanted = [w.strip() for w in (only.split(",") if isinstance(only, str) else only) if w.strip()]
    chosen, unknown = [], []
    for w in wanted:
        match = [p for p in notebooks if p.stem == w or p.name[:2] == w.zfill(2) or p.name == w]
        if not match:
            unknown.append(w)
        chosen += [m for m in match if m not in chosen]
    if unknown:
        raise ConfigError(f"--only: no notebook {', '.join(map(repr, unknown))}; valid: "
                          + ", ".join(p.stem for p in notebooks))
    return sorted(chosen)


def notebook_budget(path: str | os.PathLike, profile: Profile) -> float:
    """The time budget of a notebook in seconds: the profile's training budget for notebooks whose
    metadata says ``{"brainkit": {"training": true}}``, the general one otherwise."""
    nb = nbformat.read(str(path), as_version=4)
    training = bool(nb.metadata.get("brainkit", {}).get("training", False))
    return 60.0 * (profile.budget_training_minutes if training else profile.budget_minutes)


def _declared_parameters(path: Path) -> list[str]:
    """The names in a notebook's ``parameters`` cell."""
    import papermill

    return list(papermill.inspect_notebook(str(path)))


def _kill_tree(pid: int) -> None:
    """Kill a process and all its descendants (papermill starts the kernel in its own session)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with ipykernel
        os.kill(pid, signal.SIGKILL)
        return
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _last_error(executed: Path) -> str:
    """The first error output of an executed notebook, as ``EName: value``."""
    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # noqa: BLE001 - any unreadable file just gives no detail
        return ""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


def run_notebook(path: str | os.PathLike, out_dir: str | os.PathLike, parameters: Mapping[str, Any],
                 timeout: float, *, kernel: str = "python3") -> NotebookRun:
    """Execute one notebook with papermill in a subprocess; never raises for a failing notebook.

    Writes ``<out_dir>/<stem>.ipynb`` (executed), ``stdout.txt`` / ``stderr.txt`` (the kernel's
    streams) and ``papermill.log``.
    """
    path = Path(path).resolve()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    cmd = [sys.executable, "-m", "papermill", str(path), str(executed), "-y", json.dumps(dict(parameters)),
           "-k", kernel, "--cwd", str(out_dir), "--log-output", "--no-progress-bar",
           "--stdout-file", str(out_dir / "stdout.txt"), "--stderr-file", str(out_dir / "stderr.txt")]
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("MPLBACKEND", "Agg")
    t0 = time.perf_counter()
    status, error = "ok", ""
    with open(out_dir / "papermill.log", "w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            rc, status = None, "timeout"
            error = f"wall-time limit of {timeout:.0f} s exceeded"
    seconds = time.perf_counter() - t0
    if status == "ok" and rc != 0:
        status = "failed"
        error = _last_error(executed) or f"papermill exited with code {rc}; see {out_dir / 'papermill.log'}"
    return NotebookRun(name=path.stem, status=status, seconds=round(seconds, 2), budget=0.0,
                       timeout=round(timeout, 1), output=str(executed), error=error)


def _git_revision(folder: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty(folder: Path) -> bool | None:
    """Whether the clone has uncommitted changes (the revision alone then does not pin the code)."""
    try:
        out = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _pip_freeze() -> str:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120)
        return out.stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"# pip freeze failed: {exc}\n"


def run_series(profile: str | Profile = "smoke", *, out: str | os.PathLike | None = None,
               only: str | Iterable[str] | None = None, seed: int = 0,
               notebooks_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
               extra_parameters: Mapping[str, Any] | None = None, timeout_factor: float = 2.0,
               kernel: str = "python3", progress: Any = None) -> tuple[list[NotebookRun], Path]:
    """Execute the numbered notebooks in order, go on past failures, and write the results table.

    Each notebook gets ``OUTPUT_DIR=<out>/<stem>`` and ``DATA_DIR`` (default ``<out>/data``, shared
    by the notebooks of the run). Its wall-time limit is ``timeout_factor`` times its budget
    from the profile. Returns the records and the run folder; raise nothing for a failed notebook.
    ``progress(message)`` is called with one line per notebook (the CLI prints them).
    """
    prof = resolve(profile) if isinstance(profile, str) else profile
    if timeout_factor <= 0:
        raise ConfigError(f"timeout_factor: expected > 0, found {timeout_factor}")
    folder = find_notebooks_dir(notebooks_dir)
    chosen = select(list_notebooks(folder), only)
    if not chosen:
        raise ConfigError(f"{folder}: no numbered notebooks (NN_name.ipynb) to run")
    run_dir = Path(out or Path("runs") / prof.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir).resolve() if data_dir else run_dir / "data"
    say = progress or (lambda msg: log.info(msg))
    extra = dict(extra_parameters or {})
    declared = {nb: set(_declared_parameters(nb)) for nb in chosen}
    unknown = sorted(k for k in extra if not any(k in d for d in declared.values()))
    if unknown:
        valid = sorted(set().union(*declared.values()))
        raise ConfigError(f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}: the selected notebooks "
                          f"declare {', '.join(valid)}")

    from . import __version__
    record: dict[str, Any] = {
        "profile": prof.name, "seed": seed, "brainkit_version": __version__,
        "git_revision": _git_revision(folder), "git_dirty": _git_dirty(folder), "python": platform.python_version(),
        "platform": platform.platform(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": extra, "notebooks": [],
    }
    atomic_write_text(run_dir / "environment.txt", _pip_freeze())
    # Notebooks run earlier into this folder (``--only 10`` after a full run) keep their records.
    earlier: list[dict[str, Any]] = []
    try:
        old = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        earlier = [n for n in old.get("notebooks", []) if isinstance(n, dict) and "name" in n]
    except (OSError, ValueError):
        pass
    runs: list[NotebookRun] = []
    for nb in chosen:
        budget = notebook_budget(nb, prof)
        # Each notebook gets the extra parameters it declares (``-p EPOCHS=2`` reaches the training ones).
        params = {"PROFILE": prof.name, "SEED": seed, "OUTPUT_DIR": str(run_dir / nb.stem), "DATA_DIR": str(data),
                  **{k: v for k, v in extra.items() if k in declared[nb]}}
        say(f"running {nb.name} (budget {budget / 60:.0f} min, limit {budget * timeout_factor / 60:.0f} min) ...")
        r = run_notebook(nb, run_dir / nb.stem, params, budget * timeout_factor, kernel=kernel)
        r.budget = budget
        runs.append(r)
        note = f" — {r.error}" if r.error else ""
        say(f"  {r.status:7s} {r.seconds:7.1f} s{' (over budget)' if r.over_budget else ''}{note}")
        fresh = {x.name: {**asdict(x), "over_budget": x.over_budget, "profile": prof.name, "seed": seed,
                          "git_revision": record["git_revision"]} for x in runs}
        kept = [n for n in earlier if n["name"] not in fresh and n["name"] not in {p.stem for p in chosen}]
        record["notebooks"] = sorted(kept + list(fresh.values()), key=lambda n: n["name"])
        atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))
    from .results import aggregate
    aggregate(run_dir, folder)
    return runs, run_dir


def raise_for_failures(runs: list[NotebookRun]) -> None:
    """Raise :class:`~brainkit.errors.NotebookError` listing the notebooks that did not finish."""
    bad = [r for r in runs if r.status != "ok"]
    if bad:
        raise NotebookError("; ".join(f"{r.name}: {r.status} ({r.error})" for r in bad))


def time_table(runs: list[NotebookRun]) -> str:
    """A plain-text table of the notebooks' status and wall times."""
    width = max([len(r.name) for r in runs] + [8])
    lines = [f"{'notebook':{width}s}  status   seconds  budget", f"{'-' * width}  -------  -------  ------"]
    for r in runs:
        flag = "  over budget" if r.over_budget else ""
        lines.append(f"{r.name:{width}s}  {r.status:7s}  {r.seconds:7.1f}  {r.budget:6.0f}{flag}")
    lines.append(f"{'total':{width}s}           {sum(r.seconds for r in runs):7.1f}")
    return "\n".join(lines)

