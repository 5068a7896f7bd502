"""Metrics of a run: each notebook saves its own, and one table gathers them beside the papers'.

Introduced in ``00_quickstart``; every notebook's last cell calls :func:`save`, notebook 10 and
``brainkit tutorial`` call :func:`aggregate`.

Layout of a run folder (``runs/smoke`` by default)::

    runs/smoke/
      run.json                      the runner's record: profile, seed, per-notebook status and wall time
      results.md, results.csv       written by aggregate()
      00_quickstart/metrics.json    written by save() in each notebook (OUTPUT_DIR)
      00_quickstart/00_quickstart.ipynb  the executed notebook
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import DataError
from .profiles import Profile
from .train import atomic_write_text

__all__ = ["save", "load", "collect", "published", "rows", "aggregate", "readme_block", "update_readme"]

METRICS_FILE = "metrics.json"


def _check_metrics(metrics: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise DataError(where, "metrics", "non-empty string keys", repr(key))
        if value is None or isinstance(value, bool):
            out[key] = value
        elif isinstance(value, numbers.Real):
            v = float(value) if not isinstance(value, numbers.Integral) else int(value)
            if isinstance(v, float) and not math.isfinite(v):
                raise DataError(where, f"metrics[{key!r}]", "a finite number (or None with a reason in extra)", v)
            out[key] = v
        else:
            raise DataError(where, f"metrics[{key!r}]", "a number, a bool or None", type(value).__name__)
    return out


def save(metrics: Mapping[str, Any], output_dir: str | os.PathLike, *, notebook: str,
         profile: Profile | str, seed: int | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<output_dir>/metrics.json`` atomically and return its path.

    ``metrics`` maps names to numbers (or bools / None); NaN and infinities are refused, so a
    broken metric fails loudly instead of landing in the results table. ``extra`` holds anything
    JSON-serialisable a reader may want (per-seed values, tables, settings).
    """
    where = f"{notebook} metrics"
    checked = _check_metrics(metrics, where)
    record = {
        "notebook": notebook,
        "profile": profile.name if isinstance(profile, Profile) else str(profile),
        "seed": seed,
        "metrics": checked,
        "extra": dict(extra or {}),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        text = json.dumps(record, indent=2, sort_keys=False)
    except TypeError as exc:
        raise DataError(where, "extra", "JSON-serialisable values", str(exc)) from exc
    return atomic_write_text(Path(output_dir) / METRICS_FILE, text + "\n")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``metrics.json``; a malformed file raises :class:`~brainkit.errors.DataError`."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(path, None, "a metrics.json written by brainkit.results.save", "no such file") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, None, "valid JSON", str(exc)) from exc
    for key in ("notebook", "profile", "metrics"):
        if key not in record:
            raise DataError(path, key, "a field written by brainkit.results.save", "missing")
    record["metrics"] = _check_metrics(record["metrics"], str(path))
    return record


def collect(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every notebook's metrics in a run folder, in notebook order."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise DataError(runs_dir, None, "a run folder (brainkit tutorial --out ...)", "no such folder")
    return [load(p) for p in sorted(runs_dir.glob(f"*/{METRICS_FILE}"))]


def published() -> dict[str, Any]:
    """The papers' published numbers, keyed by notebook number (``"02"``, ...)."""
    text = resources.files("brainkit").joinpath("published.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def rows(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per metric of every notebook, with the paper's number where it published one."""
    paper = published()
    out = []
    for rec in collect(runs_dir):
        pub = paper.get(rec["notebook"][:2], {})
        for name, value in rec["metrics"].items():
            out.append({
                "notebook": rec["notebook"], "method": pub.get("method", ""), "metric": name, "ours": value,
                "paper": pub.get("metrics", {}).get(name), "profile": rec["profile"], "seed": rec.get("seed"),
            })
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def aggregate(runs_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``results.md`` and ``results.csv`` in ``runs_dir``; return their paths.

    The markdown has one table per notebook (our value, the paper's, the profile) and, when the
    runner's ``run.json`` is there, the notebooks' status and wall times.
    """
    runs_dir = Path(runs_dir)
    table = rows(runs_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["notebook", "method", "metric", "ours", "paper", "profile", "seed"])
    writer.writeheader()
    writer.writerows(table)
    csv_path = atomic_write_text(runs_dir / "results.csv", buf.getvalue())

    lines = ["# brainkit results", ""]
    run_file = runs_dir / "run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else None
    if run:
        lines += [f"Profile `{run.get('profile')}`, seed {run.get('seed')}, brainkit {run.get('brainkit_version')}, "
                  f"git {run.get('git_revision') or 'unknown'}.", ""]
    paper = published()
    by_nb: dict[str, list[dict]] = {}
    for r in table:
        by_nb.setdefault(r["notebook"], []).append(r)
    if not by_nb:
        lines += ["No notebook saved metrics in this run.", ""]
    for nb, rs in by_nb.items():
        pub = paper.get(nb[:2])
        title = f"## {nb}" + (f" — {pub['method']}" if pub else "")
        lines += [title, ""]
        if pub:
            lines += [f"Paper: {pub['source']}.", ""]
        lines += ["| metric | ours | paper | profile |", "|---|---|---|---|"]
        lines += [f"| {r['metric']} | {_fmt(r['ours'])} | {_fmt(r['paper'])} | {r['profile']} |" for r in rs]
        lines.append("")
    if run and run.get("notebooks"):
        lines += ["## Notebook runs", "", "| notebook | status | wall time (s) | limit (s) |", "|---|---|---|---|"]
        for nb in run["notebooks"]:
            lines.append(f"| {nb['name']} | {nb['status']} | {nb['seconds']:.0f} | {nb.get('timeout', '–')} |")
        total = sum(nb["seconds"] for nb in run["notebooks"])
        lines += [f"| **total** | | {total:.0f} | |", ""]
    md_path = atomic_write_text(runs_dir / "results.md", "\n".join(lines))
    return md_path, csv_path


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_block(runs_dir: str | os.PathLike, per_notebook: int = 6) -> str:
    """The README's results section: every metric that has a published counterpart, and up to
    ``per_notebook`` metrics of a notebook without one, then the wall times."""
    runs_dir = Path(runs_dir)
    table = rows(runs_dir)
    lines = ["| notebook | metric | ours | paper |", "|---|---|---|---|"]
    by_nb: dict[str, list[dict]] = {}
    for r in table:
        by_nb.setdefault(r["notebook"], []).append(r)
    for nb, rs in by_nb.items():
        with_paper = [r for r in rs if r["paper"] is not None]
        for r in with_paper or rs[:per_notebook]:
            lines.append(f"| {nb} | {r['metric']} | {_fmt(r['ours'])} | {_fmt(r['paper'])} |")
    run_file = runs_dir / "run.json"
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        lines += ["", f"Wall time per notebook (profile `{run.get('profile')}`, git {run.get('git_revision') or '?'}):", "",
                  "| notebook | status | seconds |", "|---|---|---|"]
        lines += [f"| {n['name']} | {n['status']} | {n['seconds']:.0f} |" for n in run.get("notebooks", [])]
        lines.append(f"| total | | {sum(n['seconds'] for n in run.get('notebooks', [])):.0f} |")
    return "\n".join(lines)


def update_readme(readme: str | os.PathLike, runs_dir: str | os.PathLike) -> Path:
    """Replace the text between the README's results markers with :func:`readme_block`."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise DataError(readme, "results section", f"the markers {README_START} and {README_END}", "missing")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return atomic_write_text(readme, f"{head}{README_START}\n{readme_block(runs_dir)}\n{README_END}{tail}")
