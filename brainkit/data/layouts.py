"""BrainPhantom written in the real datasets' layouts, once per cohort and cached: which layouts a run needs,
the manifest beside each written set (its files with sha256, the phantom's subjects and cohort), the cache key
(phantom version, size, cohort specs, seed), and :func:`ensure_phantom`, which the notebooks call.

The readers and the per-layout writers are in :mod:`brainkit.data.formats`; the manifest checks in
:mod:`brainkit.data.manifests`. Introduced in ``01_data_prep``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import atomic_write_text
from ..errors import ConfigError
from .formats import (
    _SLICE_CONTRAST,
    LAYOUTS,
    MANIFEST_FILE,
    PHANTOM_FORMAT,
    brats_case_id,
    lesion_class,
    write_brats2020,
    write_figshare,
    write_kaggle,
    write_msd_task01,
    write_textbrats,
)
from .labels import laterality, whole_tumour
from .subject import Subject

__all__ = ['write_phantom_dataset', 'phantom_key', 'ensure_phantom']

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# phantom sets: atomic writing, manifest, cache
# ----------------------------------------------------------------------------------------------
def _subject_summary(s: Subject) -> dict[str, Any]:
    wt = whole_tumour(s.seg)
    voxel_ml = float(abs(np.linalg.det(s.affine[:3, :3]))) / 1000.0
    return {
        "subject_id": s.subject_id,
        "healthy": s.healthy,
        "lesion_type": lesion_class(s),
        "laterality": laterality(s.seg, s.brain_mask),
        "lesion_volume_ml": round(float(wt.sum()) * voxel_ml, 3),
        "findings": s.findings,
    }


def _write_layout(tmp: Path, layout: str, subjects: Sequence[Subject], *, slice_size: int,
                  slices_per_subject: int, seed: int, n_jobs: int,
                  spec: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write one layout into ``tmp``; return per-file records and the split rule."""
    from .cohorts import KAGGLE_TEST_FRACTION
    if layout == "brats2020":
        recs = write_brats2020(tmp, subjects, n_jobs=n_jobs)
        split = {"group_by": "case_id", "stratify_by": "laterality", "fractions": [0.7, 0.1, 0.2]}
    elif layout == "textbrats":
        recs = write_textbrats(tmp, [(brats_case_id(i + 1), s.report) for i, s in enumerate(subjects)])
        split = {"group_by": "case_id", "stratify_by": "laterality", "fractions": [0.7, 0.1, 0.2]}
    elif layout == "msd_task01":
        recs = write_msd_task01(tmp, subjects, n_jobs=n_jobs)
        split = {"group_by": "case_id", "stratify_by": "laterality", "fractions": [0.7, 0.1, 0.2]}
    elif layout == "figshare":
        recs = write_figshare(tmp, subjects, slice_size=slice_size, slices_per_subject=slices_per_subject, spec=spec)
        split = {"group_by": "pid", "stratify_by": "label", "fractions": [0.7, 0.1, 0.2]}
    elif layout == "kaggle":
        frac = KAGGLE_TEST_FRACTION
        recs = write_kaggle(tmp, subjects, slice_size=slice_size, slices_per_subject=slices_per_subject, seed=seed,
                            spec=spec, test_fraction=frac)
        split = {"group_by": "subject_id", "stratify_by": "class_name",
                 "rule": "Testing/ is the test split; Training/ is split 7:1 into train/val by subject"}
    else:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, found {layout!r}")
    return recs, split


def write_phantom_dataset(root: str | os.PathLike, layout: str, subjects: Sequence[Subject] | Any, *,
                          slice_size: int | None = None, slices_per_subject: int = 3, seed: int = 0,
                          overwrite: bool = False, n_jobs: int = 1,
                          generator: dict[str, Any] | None = None, spec: Any = None) -> Path:
    """Write BrainPhantom subjects in ``layout`` under ``root``, atomically, with a manifest.

    ``subjects`` is a list of :class:`~brainkit.data.subject.Subject` or a
    :class:`~brainkit.profiles.Profile`, from whose ``data_*`` fields a cohort is generated with the
    layout's cohort (:func:`brainkit.data.cohorts.cohort_for_layout`). ``spec`` (a
    :class:`~brainkit.data.cohorts.LayoutSpec`, default the layout's own) sets the slices per subject of
    the 2D layouts and is recorded in the manifest.
    Everything is written into a temporary sibling folder which is renamed to ``root`` only
    when complete, so a failure leaves nothing half-written. ``root/brainkit_manifest.json``
    holds the sha256 of every file, a summary of every subject (its findings included) and the
    per-file records of the 2D layouts; :func:`brainkit.data.manifests.verify` checks it.
    Introduced in ``01_data_prep``.
    """
    from .. import __version__
    from .cohorts import COHORTS, spec_for_layout
    from .manifests import file_table

    root = Path(root)
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, found {layout!r}")
    spec = spec_for_layout(layout) if spec is None else spec
    if not isinstance(subjects, (list, tuple)):
        cfg = subjects
        if not hasattr(cfg, "data_subjects"):
            raise ConfigError(f"subjects: expected a list of Subject or a Profile, found {type(cfg).__name__}")
        from .cohorts import cohort_for_layout

        subjects = _generate(cfg, seed, cohort_for_layout(layout), with_head=layout in ("figshare", "kaggle"),
                             n_jobs=n_jobs)
        slice_size = slice_size or cfg.data_slice_size
    if layout == "msd_task01":  # MSD's cases are BraTS gliomas: a cohort's controls are not written
        subjects = [s for s in subjects if not s.healthy]
    if not subjects:
        raise ConfigError("subjects: expected at least one subject, found none")
    if root.exists() and not overwrite:
        raise ConfigError(f"{root} exists: pass overwrite=True to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    old: Path | None = None
    try:
        t0 = time.perf_counter()
        recs, split = _write_layout(tmp, layout, subjects, slice_size=slice_size or 512,
                                    slices_per_subject=slices_per_subject, seed=seed, n_jobs=n_jobs, spec=spec)
        ids = {}
        if layout in ("brats2020", "textbrats", "msd_task01"):
            ids = {r["subject_id"]: r["case_id"] for r in recs} if layout != "textbrats" else \
                {s.subject_id: brats_case_id(i + 1) for i, s in enumerate(subjects)}
        summaries = []
        for s in subjects:
            d = _subject_summary(s)
            if s.subject_id in ids:
                d["case_id"] = ids[s.subject_id]
            summaries.append(d)
        manifest = {
            "format": PHANTOM_FORMAT,
            "name": f"phantom:{layout}",
            "layout": layout,
            "brainkit_version": __version__,
            "cohort": {"layout_spec": spec.name, "dataset": spec.dataset, "cohort": spec.cohort,
                       "cohort_fingerprint": COHORTS[spec.cohort].fingerprint() if spec.cohort in COHORTS else None,
                       "published": spec.published, "published_unit": spec.published_unit},
            "generator": dict(generator or {}, seed=seed, n_subjects=len(subjects),
                              volume_shape=list(subjects[0].shape), slice_size=slice_size,
                              slices_per_subject=slices_per_subject),
            "extra_files": "error",
            "split": split,
            "write_seconds": round(time.perf_counter() - t0, 2),
            "subjects": summaries,
            "records": recs if layout in ("figshare", "kaggle") else [],
            "files": file_table(tmp),
        }
        atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1, default=_json_default) + "\n")
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(root, old)
        try:
            os.replace(tmp, root)
        except OSError:
            if old is not None:
                os.replace(old, root)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    log.info("wrote %s (%d files)", root, len(manifest["files"]))
    return root


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def phantom_key(cfg: Any, seed: int = 0) -> str:
    """The cache folder name of a phantom set: the generator version, every generation parameter
    and the fingerprints of the cohort specs (:mod:`brainkit.data.cohorts`), so a set written from
    another spec is never reused."""
    from .cohorts import COHORTS, LAYOUT_SPECS
    from .phantoms import PHANTOM_VERSION

    shape = "x".join(str(int(v)) for v in cfg.data_volume_shape)
    every = list(COHORTS.values()) + list(LAYOUT_SPECS.values())
    specs = zlib.crc32("".join(s.fingerprint() for s in every).encode()) & 0xFFFF
    core = f"v{PHANTOM_VERSION}-n{cfg.data_subjects}-{shape}-c{specs:04x}-px{cfg.data_slice_size}-seed{seed}"
    return f"{core}-{zlib.crc32(core.encode()) & 0xFFFF:04x}"


def _generate(cfg: Any, seed: int, spec: Any, *, with_head: bool, n_jobs: int = 1) -> list[Subject]:
    from .phantoms import generate_cohort

    if int(cfg.data_subjects) <= 0:
        raise ConfigError(f"profile {getattr(cfg, 'name', '?')!r} has data_subjects={cfg.data_subjects}: "
                          "it reads real datasets (see data_manifests/); phantoms need data_subjects > 0")
    return generate_cohort(int(cfg.data_subjects), seed=seed, shape=tuple(cfg.data_volume_shape), spec=spec,
                           with_head=with_head, n_jobs=n_jobs,
                           head_contrasts=(_SLICE_CONTRAST,) if with_head else None)


def _jobs(cfg: Any, n_jobs: int | None) -> int:
    """``n_jobs``, or the profile's ``data_jobs`` (capped by the CPUs there are) when ``None``."""
    if n_jobs is not None:
        return max(1, int(n_jobs))
    return max(1, min(int(getattr(cfg, "data_jobs", 1)), os.cpu_count() or 1))


def ensure_phantom(cfg: Any, data_dir: str | os.PathLike, layouts: Sequence[str] = LAYOUTS, seed: int = 0,
                   *, n_jobs: int | None = None, verify: bool = True) -> dict[str, Path]:
    """Generate BrainPhantom once in each of ``layouts`` and reuse it afterwards.

    Sets live in ``<data_dir>/phantom/<key>/<layout>`` where the key names every generation
    parameter (profile fields ``data_subjects``, ``data_volume_shape``, ``data_slice_size``, ``seed``)
    and the cohort specs. An existing set is reused when its manifest verifies (sha256 of every
    file); a damaged one is regenerated. Each layout is written from the cohort of its dataset
    (:func:`brainkit.data.cohorts.cohort_for_layout`), generated once for all the layouts that share
    it: ``BraTS20_Training_007`` and its TextBraTS report are one subject, MSD's cases are the same
    cohort's gliomas, and the Kaggle tumour images come from the figshare patients. Returns
    ``{layout: folder}``. ``n_jobs`` processes generate the subjects (default: the profile's
    ``data_jobs``). Introduced in ``01_data_prep``; later notebooks call it.
    """
    n_jobs = _jobs(cfg, n_jobs)
    from .manifests import verify as verify_set

    for lay in layouts:
        if lay not in LAYOUTS:
            raise ConfigError(f"layout: expected one of {', '.join(LAYOUTS)}, found {lay!r}")
    base = Path(data_dir).expanduser() / "phantom" / phantom_key(cfg, seed)
    out: dict[str, Path] = {}
    todo = []
    for lay in layouts:
        p = base / lay
        if (p / MANIFEST_FILE).exists():
            if not verify:
                out[lay] = p
                continue
            rep = verify_set(p / MANIFEST_FILE, p, deep=False)
            if rep.ok:
                out[lay] = p
                continue
            log.warning("phantom set %s failed verification, regenerating:\n%s", p, rep)
        todo.append(lay)
    from .cohorts import COHORTS, spec_for_layout

    groups: dict[str, list[str]] = {}
    for lay in todo:
        groups.setdefault(spec_for_layout(lay).cohort, []).append(lay)
    for name, lays in groups.items():
        cohort = COHORTS[name]
        t0 = time.perf_counter()
        subjects = _generate(cfg, seed, cohort, with_head=any(lay in ("figshare", "kaggle") for lay in lays),
                             n_jobs=n_jobs)
        gen = {"generate_seconds": round(time.perf_counter() - t0, 2), "cohort": name,
               "healthy_fraction": cohort.healthy_fraction}
        for lay in lays:
            out[lay] = write_phantom_dataset(base / lay, lay, subjects, slice_size=int(cfg.data_slice_size),
                                             seed=seed, overwrite=True, n_jobs=n_jobs, generator=gen)
    return {lay: out[lay] for lay in layouts}
