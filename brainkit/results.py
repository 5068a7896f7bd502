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
import re
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .cache import atomic_write_text
from .errors import DataError
from .profiles import Profile

__all__ = ["save", "load", "collect", "published", "table", "rows", "by_method", "run_record", "timings", "missing",
           "claims_statement", "markdown", "aggregate", "readme_block", "update_readme", "SERIES"]

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


# The series as the course map of 00_quickstart lists it: number -> (name, method).
SERIES: dict[str, tuple[str, str]] = {
    "00": ("quickstart", "course"),
    "01": ("data_prep", "data"),
    "02": ("clip_localisation", "BrainMRI-GPT"),
    "03": ("llm_explanations", "BrainMRI-GPT"),
    "04": ("inflating_encoders", "BrainGemma3D"),
    "05": ("braingemma3d_training", "BrainGemma3D"),
    "06": ("braingemma3d_evaluation", "BrainGemma3D"),
    "07": ("medvisionllama_segmentation", "MedVisionLlama"),
    "08": ("brat_pretraining", "brat"),
    "09": ("brat_evaluation", "brat"),
    "10": ("results", "summary"),
}
METHOD_ORDER = ["course", "data", "BrainMRI-GPT", "BrainGemma3D", "MedVisionLlama", "brat", "other"]

_SEED = re.compile(r"(?:^|_)seed(\d+)(?=_|$)")


def _method(notebook: str) -> str:
    return SERIES.get(notebook[:2], ("", "other"))[1]


def _paper_name(metric: str, method: str) -> list[str]:
    """The names under which a paper may list our ``metric``: itself, without a ``_mean`` suffix,
    without the method's own prefix (``medvisionllama_dice_mean`` -> ``dice``)."""
    prefix = re.sub(r"[^a-z0-9]", "", method.lower()) + "_"
    names = [metric]
    base = metric[:-5] if metric.endswith("_mean") else metric
    names.append(base)
    if base.startswith(prefix):
        names.append(base[len(prefix):])
    return names


def table(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """THE results table (notebook 10, ``results.md``, the README): one row per reported metric.

    Confidence intervals and per-seed values are folded into the row they belong to instead of
    standing as rows of their own: ``X_ci_low`` / ``X_ci_high`` give the interval of ``X`` (or
    ``X_mean``), and a ``seedN`` token in a name (``vit_seed1_dice``) makes it seed N's value of
    ``vit_dice`` (or ``vit_dice_mean``). Each row: notebook, method, metric, ours, ci_low, ci_high,
    seeds (list of per-seed values), paper, paper_metric, profile, seed. Notebook 10's own record
    (a summary of the run) is left out.
    """
    paper = published()
    out: list[dict[str, Any]] = []
    for rec in collect(runs_dir):
        if rec["notebook"][:2] == "10":
            continue
        method = _method(rec["notebook"])
        pub = paper.get(rec["notebook"][:2], {}).get("metrics", {})
        metrics = rec["metrics"]

        def owner(base: str, metrics: dict[str, Any] = metrics) -> str | None:
            for cand in (base, base + "_mean"):
                if cand in metrics and not cand.endswith(("_ci_low", "_ci_high")) and not _SEED.search(cand):
                    return cand
            return None

        ci: dict[str, dict[str, float]] = {}
        seeds: dict[str, list[tuple[int, float]]] = {}
        plain: list[str] = []
        for name, value in metrics.items():  # in the notebook's order
            if name.endswith(("_ci_low", "_ci_high")) and owner(name.rsplit("_ci_", 1)[0]):
                base, side = name.rsplit("_ci_", 1)
                ci.setdefault(owner(base), {})[side] = value
            elif _SEED.search(name) and owner(_SEED.sub("", name, count=1).strip("_")) \
                    and isinstance(value, (int, float)) and not isinstance(value, bool):
                seeds.setdefault(owner(_SEED.sub("", name, count=1).strip("_")), []).append(
                    (int(_SEED.search(name).group(1)), float(value)))
            else:
                plain.append(name)
        folded_ci, folded_seeds = ci, {k: sorted(v) for k, v in seeds.items()}
        for name in plain:
            paper_metric = next((n for n in _paper_name(name, method) if n in pub), None)
            interval = folded_ci.get(name, {})
            out.append({
                "notebook": rec["notebook"], "method": method, "metric": name, "ours": metrics[name],
                "ci_low": interval.get("low"), "ci_high": interval.get("high"),
                "seeds": [v for _, v in folded_seeds.get(name, [])],
                "paper": pub.get(paper_metric) if paper_metric else None, "paper_metric": paper_metric,
                "profile": rec["profile"], "seed": rec.get("seed"),
            })
    return out


def rows(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """:func:`table`, flattened for ``results.csv`` (per-seed values joined by ``;``)."""
    return [{**r, "seeds": ";".join(f"{v:.6g}" for v in r["seeds"])} for r in table(runs_dir)]


def by_method(tab: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of :func:`table` grouped per method, in the course's order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in tab:
        groups.setdefault(r["method"], []).append(r)
    return {m: groups[m] for m in sorted(groups, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)}


def run_record(runs_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The runner's ``run.json`` of a run folder, or None when the folder has none."""
    path = Path(runs_dir) / "run.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, None, "the JSON the runner writes", str(exc)) from exc


def timings(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Each notebook's status, wall time, budget and limit from ``run.json`` (empty without one)."""
    run = run_record(runs_dir) or {}
    return [{"notebook": n["name"], "status": n["status"], "seconds": float(n["seconds"]),
             "budget": n.get("budget"), "timeout": n.get("timeout"), "over_budget": n.get("over_budget", False),
             "profile": n.get("profile", run.get("profile")),
             "git_revision": n.get("git_revision", run.get("git_revision"))} for n in run.get("notebooks", [])]


def missing(runs_dir: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None,
            upto: str = "09") -> list[dict[str, str]]:
    """The notebooks of the series (00 to ``upto``) that left no metrics in this run, and why:
    not in this clone yet, not run, failed, timed out, or ran without saving metrics."""
    runs_dir = Path(runs_dir)
    have = {rec["notebook"][:2] for rec in collect(runs_dir)}
    ran = {n["notebook"][:2]: n for n in timings(runs_dir)}
    present: dict[str, str] | None = None
    if notebooks_dir is not None and Path(notebooks_dir).is_dir():
        present = {p.name[:2]: p.stem for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb")}
    out = []
    for num, (name, method) in SERIES.items():
        if num > upto or num in have:
            continue
        stem = (present or {}).get(num, f"{num}_{name}")
        if num in ran and ran[num]["status"] != "ok":
            why = f"{ran[num]['status']} in this run"
        elif num in ran:
            why = "ran but saved no metrics"
        elif present is not None and num not in present:
            why = "not in this clone yet"
        else:
            why = "not run in this run"
        out.append({"notebook": stem, "method": method, "reason": why})
    return out


def claims_statement(profiles: set[str] | list[str]) -> str:
    """What a run of these profiles can and cannot say about the papers' claims, in plain words."""
    profiles = set(profiles)
    if not profiles:
        return "No notebook saved metrics, so this run says nothing about the papers' claims."
    parts = []
    if "smoke" in profiles:
        parts.append(
            "Smoke numbers come from BrainPhantom (generated brains and reports) and tiny or stand-in models "
            "trained for minutes on a CPU. They CAN say that each pipeline runs end to end, that its models "
            "learn (the gates compare them with chance and with simple baselines), that the package's fast code "
            "equals the literal version of each key idea, and how methods rank on this phantom within one run. "
            "They CANNOT confirm or refute a paper's number: the data, the model sizes, the pretrained weights "
            "and the training length all differ, so a smoke value above or below the paper's column means "
            "nothing about the paper. Differences between methods inside a smoke run are evidence only where "
            "the confidence intervals over seeds do not overlap, and only about the phantom.")
    if profiles & {"colab", "full"}:
        parts.append(
            "Colab/full numbers come from the real datasets and checkpoints: they are comparable with the "
            "papers' columns where the split and the metric definition match the paper's (the notebooks say "
            "where they do not), and a single seed's difference is not a refutation.")
    return " ".join(parts)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _ci(r: dict[str, Any]) -> str:
    if r["ci_low"] is not None:
        return f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
    return f"{len(r['seeds'])} seeds" if r["seeds"] else ""


def markdown(runs_dir: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None, *,
             only_paper: bool = False, per_method: int | None = None, heading: str = "##") -> str:
    """The results as markdown: one table per method (ours, 95% CI, the paper's, the profile), the
    notebooks missing from the run, the wall times, and :func:`claims_statement`.

    ``only_paper`` keeps, for a method the papers give numbers for, only the metrics with a published
    counterpart; ``per_method`` caps the rows of the others (the README uses both)."""
    runs_dir = Path(runs_dir)
    tab = table(runs_dir)
    paper = published()
    lines: list[str] = []
    if not tab:
        lines += ["No notebook saved metrics in this run.", ""]
    for method, rs in by_method(tab).items():
        sources = sorted({paper[r["notebook"][:2]]["source"] for r in rs if r["notebook"][:2] in paper})
        with_paper = [r for r in rs if r["paper"] is not None]
        shown = with_paper if (only_paper and with_paper) else rs
        if per_method is not None and not (only_paper and with_paper):
            shown = shown[:per_method]
        lines += [f"{heading} {method}", ""]
        if sources:
            lines += ["Paper: " + "; ".join(sources) + ".", ""]
        lines += ["| notebook | metric | ours | 95% CI | paper | profile |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['notebook']} | {r['metric']} | {_fmt(r['ours'])} | {_ci(r)} | {_fmt(r['paper'])} | "
                  f"{r['profile']} |" for r in shown]
        if len(shown) < len(rs):
            lines.append(f"\n({len(rs) - len(shown)} more metrics in results.csv.)")
        lines.append("")
    gone = missing(runs_dir, notebooks_dir)
    if gone:
        lines += [f"{heading} Missing from this run", "", "| notebook | method | why |", "|---|---|---|"]
        lines += [f"| {g['notebook']} | {g['method']} | {g['reason']} |" for g in gone]
        lines.append("")
    times = timings(runs_dir)
    if times:
        run = run_record(runs_dir) or {}
        lines += [f"{heading} Wall time per notebook", "",
                  f"Profile `{run.get('profile')}`, seed {run.get('seed')}; the git revision each notebook ran at "
                  "(the runner keeps the records of notebooks run earlier into the same folder).", "",
                  "| notebook | status | seconds | budget (s) | git |", "|---|---|---|---|---|"]
        lines += [f"| {t['notebook']} | {t['status']} | {t['seconds']:.0f} | "
                  f"{_fmt(t['budget']) if t['budget'] else '–'}{' (over)' if t['over_budget'] else ''} | "
                  f"{t['git_revision'] or '?'} |" for t in times]
        lines += [f"| total | | {sum(t['seconds'] for t in times):.0f} | | |", ""]
    lines += [f"{heading} What these numbers can say", "", claims_statement({r["profile"] for r in tab}), ""]
    return "\n".join(lines)


def aggregate(runs_dir: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``results.md`` (:func:`markdown`) and ``results.csv`` (:func:`rows`) in ``runs_dir``."""
    runs_dir = Path(runs_dir)
    table_rows = rows(runs_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["notebook", "method", "metric", "ours", "ci_low", "ci_high", "seeds",
                                             "paper", "paper_metric", "profile", "seed"])
    writer.writeheader()
    writer.writerows(table_rows)
    csv_path = atomic_write_text(runs_dir / "results.csv", buf.getvalue())
    lines = ["# brainkit results", ""]
    run = run_record(runs_dir)
    if run:
        lines += [f"Profile `{run.get('profile')}`, seed {run.get('seed')}, brainkit {run.get('brainkit_version')}, "
                  f"git {run.get('git_revision') or 'unknown'}.", ""]
    md_path = atomic_write_text(runs_dir / "results.md",
                                "\n".join(lines) + markdown(runs_dir, notebooks_dir) + "\n")
    return md_path, csv_path


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_block(runs_dir: str | os.PathLike, notebooks_dir: str | os.PathLike | None = None,
                 per_method: int = 6) -> str:
    """The README's results section: :func:`markdown` with, per method, the metrics that have a
    published counterpart (or the first ``per_method`` ones), under level-3 headings."""
    return markdown(runs_dir, notebooks_dir, only_paper=True, per_method=per_method, heading="###").rstrip()


def update_readme(readme: str | os.PathLike, runs_dir: str | os.PathLike,
                  notebooks_dir: str | os.PathLike | None = None) -> Path:
    """Replace the text between the README's results markers with :func:`readme_block`."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise DataError(readme, "results section", f"the markers {README_START} and {README_END}", "missing")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return atomic_write_text(readme, f"{head}{README_START}\n{readme_block(runs_dir, notebooks_dir)}\n{README_END}{tail}")
