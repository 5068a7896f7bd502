"""Dataset manifests, verification, patient-level splits, and where the real data comes from.

Introduced in ``01_data_prep``.

``data_manifests/<name>.json`` describes one real dataset: source URL, licence, access
(``open`` or ``gated``, with the data-use steps), citation, the expected files and counts, and
the split rule. :func:`verify` checks a folder against it and lists every missing, extra and
corrupt file (``brainkit data verify NAME PATH``). A generated phantom set carries its own
manifest (``brainkit_manifest.json``, written by :func:`brainkit.data.layouts.write_phantom_dataset`)
with the sha256 of every file; :func:`verify` checks those hashes.

Manifest format (JSON; keys in the order they are written)::

    name, title, layout          identifiers; layout names the reader in brainkit.data.formats
    source_url, mirrors          where the data is published
    licence, access              "open" | "gated"; access_steps: the data-use steps, in order
    citation                     list of references to cite
    download                     {"method": "monai" | "manual", "url", "md5"}
    root_hints                   sub-folder names a download nests the data in
    expected                     entries, each one of
                                   {"template": "BraTS20_Training_{id:03d}/..._flair", "ids": [1, 369],
                                    "extensions": [".nii.gz", ".nii"], "kind": "nifti3d",
                                    "aliases": {"355": ["..."]}, "anywhere": false}
                                   {"glob": "Training/glioma/*.jpg", "count": 1321, "kind": "jpeg"}
    optional, ignore             glob patterns: allowed but not required / never reported
    extra_files                  "warn" (real downloads) | "error" (phantom sets)
    counts                       summary numbers (cases, files, classes ...)
    split                        group_by, stratify_by, fractions, seed, rule (prose)
    notes                        anything a user should know (quirks of the download)

File kinds checked for corruption: ``nifti3d``, ``nifti4d``, ``label:brats``, ``label:msd``,
``mat73``, ``jpeg``, ``text``, ``json``, ``any``.

Splits (:func:`make_splits`) are grouped by patient (no patient in two splits), stratified by
class or lesion side, and deterministic in the seed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.resources
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, MissingAssetError
from .splits import (  # handed on: part of this module's API
    check_no_leak,
    make_splits,
    split_counts,
    split_groups,
)

__all__ = ["manifest_dir", "list_manifests", "load_manifest", "sha256_file", "file_table", "VerifyReport",
           "verify", "split_groups", "make_splits", "check_no_leak", "split_counts", "access_instructions",
           "locate", "download_msd_task01", "ALIASES"]

log = logging.getLogger(__name__)

#: Short names accepted wherever a manifest name is.
ALIASES = {"figshare": "figshare_brain_tumor", "kaggle": "kaggle_brain_tumor_mri", "msd": "msd_task01",
           "brats": "brats2020", "task01": "msd_task01"}
_MANIFEST_FILE = "brainkit_manifest.json"


# ----------------------------------------------------------------------------------------------
# manifests
# ----------------------------------------------------------------------------------------------
def manifest_dir() -> Path:
    """The ``data_manifests`` folder: ``$BRAINKIT_MANIFESTS``, the repository's, or one shipped
    inside the package."""
    cands = []
    if os.environ.get("BRAINKIT_MANIFESTS"):
        cands.append(Path(os.environ["BRAINKIT_MANIFESTS"]).expanduser())
    cands.append(Path(__file__).resolve().parents[2] / "data_manifests")
    try:
        cands.append(Path(str(importlib.resources.files("brainkit") / "data_manifests")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover
        pass
    for c in cands:
        if c.is_dir():
            return c
    raise ConfigError(f"data_manifests folder not found (looked in {', '.join(map(str, cands))}); "
                      "set $BRAINKIT_MANIFESTS to the repository's data_manifests/")


def list_manifests() -> list[str]:
    """Names of the real-dataset manifests."""
    return sorted(p.stem for p in manifest_dir().glob("*.json"))


def load_manifest(name_or_path: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A manifest by name (``"brats2020"``, alias ``"brats"`` ...), by file path, or as a dict."""
    if isinstance(name_or_path, Mapping):
        man = dict(name_or_path)
        src: Any = man.get("name", "<dict>")
    else:
        p = Path(name_or_path)
        if not (p.suffix == ".json" and p.exists()):
            name = ALIASES.get(str(name_or_path), str(name_or_path))
            p = manifest_dir() / f"{name}.json"
            if not p.exists():
                raise ConfigError(f"unknown dataset manifest {str(name_or_path)!r}: expected one of "
                                  f"{', '.join(list_manifests())} (aliases {', '.join(ALIASES)}), 'phantom', "
                                  "or a manifest .json file")
        try:
            man = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(p, "JSON", "a valid manifest", f"{type(e).__name__}: {e}") from e
        src = p
    if "files" in man and man.get("format", "").startswith("brainkit-phantom"):
        return man
    for key in ("name", "layout", "expected", "access"):
        if key not in man:
            raise DataError(src, key, f"a manifest with a '{key}' entry", "missing")
    if man["access"] not in ("open", "gated"):
        raise DataError(src, "access", "'open' or 'gated'", man["access"])
    return man


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _walk(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return out


def file_table(root: str | os.PathLike, exclude: Sequence[str] = (_MANIFEST_FILE,)) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256", "bytes"}}`` for every file under ``root``."""
    root = Path(root)
    return {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
            for rel in _walk(root) if rel not in exclude}


# ----------------------------------------------------------------------------------------------
# verification
# ----------------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` is true when nothing is missing or corrupt (and, for
    manifests with ``extra_files: "error"`` such as phantom sets, nothing is extra)."""

    name: str
    root: Path
    expected: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    corrupt: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra_is_error: bool = False

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt and not (self.extra_is_error and self.extra)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.root}",
                 f"  {self.expected} files expected: {len(self.missing)} missing, {len(self.corrupt)} corrupt, "
                 f"{len(self.extra)} extra" + ("" if self.extra_is_error else " (extra files are only reported)")]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}):")
            lines += [f"    {m}" for m in self.missing]
        if self.corrupt:
            lines.append(f"  corrupt ({len(self.corrupt)}):")
            lines += [f"    {k}: {v}" for k, v in self.corrupt.items()]
        if self.extra:
            lines.append(f"  extra ({len(self.extra)}):")
            lines += [f"    {e}" for e in self.extra]
        lines.append(f"  result: {'OK' if self.ok else 'NOT OK'}")
        return "\n".join(lines)


def _check_file(path: Path, kind: str, deep: bool) -> None:
    """Raise DataError when ``path`` is not a readable file of ``kind``."""
    from . import formats

    if kind == "any":
        return
    if kind in ("nifti3d", "nifti4d") or kind.startswith("label:"):
        if not deep:
            import nibabel as nib

            try:
                img = nib.load(str(path))
            except Exception as e:
                raise DataError(path, "NIfTI header", "a readable NIfTI file", f"{type(e).__name__}: {e}") from e
            ndim = len([d for d in img.shape if d > 1]) if len(img.shape) > 3 else len(img.shape)
            want = 4 if kind == "nifti4d" else 3
            if ndim != want:
                raise DataError(path, "dimensions", f"a {want}D volume", f"shape {img.shape}")
            return
        if kind == "nifti3d":
            formats.load_volume(path)
        elif kind == "nifti4d":
            formats.load_volume(path, ndim=4, channels=4)
        else:
            formats.load_label(path, kind.split(":", 1)[1])
    elif kind == "mat73":
        if deep:
            formats.read_figshare_mat(path)
        else:
            import h5py

            if not h5py.is_hdf5(str(path)):
                raise DataError(path, "file format", "a MATLAB v7.3 (HDF5) MAT-file", "not HDF5")
    elif kind == "jpeg":
        if deep:
            formats.read_kaggle_image(path)
        else:
            from PIL import Image

            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as e:
                raise DataError(path, "image", "a readable JPEG", f"{type(e).__name__}: {e}") from e
    elif kind == "text":
        formats.read_report(path)
    elif kind == "json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(path, "JSON", "valid JSON", f"{type(e).__name__}: {e}") from e
    else:
        raise ConfigError(f"manifest file kind: unknown {kind!r}")


def _reason(e: DataError) -> str:
    parts = [p for p in (e.field,) if p]
    msg = ": ".join(parts + [f"expected {e.expected}"])
    return msg + (f", found {e.found}" if e.found is not None else "")


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in patterns)


def _expand(entry: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """``[(display path, [candidate relative paths])]`` of a template entry."""
    exts = entry.get("extensions", [""])
    first, last = entry.get("ids", [None, None])
    ids = [None] if first is None else range(int(first), int(last) + 1)
    aliases = entry.get("aliases", {})
    out = []
    for i in ids:
        stem = entry["template"].format(id=i) if i is not None else entry["template"]
        cands = [stem + e for e in exts] + list(aliases.get(str(i), []))
        out.append((stem + exts[0], cands))
    return out


def _find_root(path: Path, man: Mapping[str, Any], present: set[str]) -> Path:
    """``path`` or the first nested folder named in ``root_hints`` that holds the data."""
    entries = man["expected"]
    probe = next((e for e in entries if "template" in e), None)

    def holds(root: Path) -> bool:
        if probe is not None:
            cands = _expand(probe)[0][1]
            if probe.get("anywhere"):
                return any(root.rglob(Path(cands[0]).name))
            return any((root / c).exists() for c in cands)
        return any(root.glob(entries[0]["glob"]))

    if holds(path):
        return path
    for hint in man.get("root_hints", []):
        for cand in sorted(path.rglob(hint)):
            if cand.is_dir() and len(cand.relative_to(path).parts) <= 4 and holds(cand):
                return cand
    return path


def _verify_phantom(man: Mapping[str, Any], path: Path, rep: VerifyReport) -> VerifyReport:
    files: Mapping[str, Mapping[str, Any]] = man["files"]
    present = set(_walk(path)) - {_MANIFEST_FILE}
    rep.expected = len(files)
    rep.extra_is_error = True
    rep.missing = sorted(set(files) - present)
    rep.extra = sorted(present - set(files))
    for rel in sorted(set(files) & present):
        info = files[rel]
        p = path / rel
        if p.stat().st_size != int(info["bytes"]):
            rep.corrupt[rel] = f"size {p.stat().st_size} bytes, expected {info['bytes']}"
        elif sha256_file(p) != info["sha256"]:
            rep.corrupt[rel] = "sha256 differs from the manifest"
    return rep


def verify(name_or_manifest: str | os.PathLike | Mapping[str, Any], path: str | os.PathLike, *,
           deep: bool = True, n_jobs: int | None = None, progress: bool = False) -> VerifyReport:
    """Check the dataset folder ``path`` against a manifest; list every missing, extra, corrupt file.

    ``name_or_manifest`` is a manifest name (``brats2020``, ``textbrats``, ``msd_task01``,
    ``figshare_brain_tumor``, ``kaggle_brain_tumor_mri`` or an alias), ``"phantom"``, a manifest
    file or a dict. A folder that carries a phantom manifest (``brainkit_manifest.json``) is
    checked against it (sha256 of every file) when its layout matches the name. For real
    downloads, ``deep=True`` reads every file completely (a truncated ``.nii.gz`` is found,
    labels are checked against their convention); ``deep=False`` reads headers only.
    ``brainkit data verify NAME PATH`` prints the report and exits 1 when it is not ok.
    Introduced in ``01_data_prep``.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        rep = VerifyReport(name=str(name_or_manifest), root=path)
        rep.missing.append(f"{path} (no such folder)")
        return rep
    phantom_file = path / _MANIFEST_FILE
    if isinstance(name_or_manifest, str) and name_or_manifest == "phantom":
        if not phantom_file.exists():
            rep = VerifyReport(name="phantom", root=path)
            rep.missing.append(_MANIFEST_FILE)
            return rep
        name_or_manifest = phantom_file
    man = load_manifest(name_or_manifest)
    if "files" not in man and phantom_file.exists():
        pm = load_manifest(phantom_file)
        if pm.get("layout") == man.get("layout"):
            rep = VerifyReport(name=str(pm.get("name")), root=path)
            rep.notes.append(f"a generated phantom set: checked against its own {_MANIFEST_FILE} "
                             f"instead of the {man['name']} manifest's counts")
            return _verify_phantom(pm, path, rep)
    if "files" in man:
        return _verify_phantom(man, path, VerifyReport(name=str(man.get("name", "phantom")), root=path))

    rep = VerifyReport(name=man["name"], root=path, extra_is_error=man.get("extra_files", "warn") == "error")
    root = _find_root(path, man, set())
    if root != path:
        rep.notes.append(f"data found in {root.relative_to(path)}/")
        rep.root = root
    ignore = list(man.get("ignore", [])) + ["._*", ".DS_Store"]
    present = [r for r in _walk(root) if not _matches(r, ignore)]
    present_set = set(present)
    by_name: dict[str, list[str]] = defaultdict(list)
    for r in present:
        by_name[r.rsplit("/", 1)[-1]].append(r)
    matched: dict[str, str] = {}  # relative path -> kind
    for entry in man["expected"]:
        kind = entry.get("kind", "any")
        if "glob" in entry:
            hits = [r for r in present if fnmatch.fnmatch(r, entry["glob"])]
            want = int(entry.get("count", 0))
            rep.expected += want
            for r in hits:
                matched[r] = kind
            if len(hits) < want:
                rep.missing.append(f"{entry['glob']}: {want - len(hits)} of {want} files (found {len(hits)})")
            elif len(hits) > want:
                rep.notes.append(f"{entry['glob']}: {len(hits)} files, the manifest expects {want}")
            continue
        for display, cands in _expand(entry):
            rep.expected += 1
            hit = None
            for c in cands:
                if entry.get("anywhere"):
                    found = by_name.get(c.rsplit("/", 1)[-1], [])
                    hit = found[0] if found else None
                elif c in present_set:
                    hit = c
                if hit:
                    break
            if hit is None:
                rep.missing.append(display)
            else:
                matched[hit] = kind
    optional = list(man.get("optional", []))
    rep.extra = sorted(r for r in present if r not in matched and not _matches(r, optional))

    items = sorted(matched.items())
    n_jobs = n_jobs or min(4, os.cpu_count() or 1)

    def check(item: tuple[str, str]) -> tuple[str, str | None]:
        rel, kind = item
        try:
            _check_file(root / rel, kind, deep)
        except DataError as e:
            return rel, _reason(e)
        return rel, None

    if progress:
        from tqdm.auto import tqdm
    else:
        def tqdm(x: Any, **_: Any) -> Any:  # noqa: ANN401
            return x
    if n_jobs > 1 and len(items) > 8:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_jobs) as pool:
            results = list(tqdm(pool.map(check, items), total=len(items), desc=f"verify {man['name']}"))
    else:
        results = [check(it) for it in tqdm(items, desc=f"verify {man['name']}")]
    rep.corrupt = {rel: why for rel, why in results if why}
    return rep


# ----------------------------------------------------------------------------------------------
# obtaining the real data
# ----------------------------------------------------------------------------------------------
def access_instructions(name: str) -> str:
    """How to obtain a dataset: licence, access and the data-use steps of its manifest."""
    man = load_manifest(name)
    lines = [f"{man.get('title', man['name'])} ({man['access']} access, licence: {man.get('licence', '?')})",
             f"  source: {man.get('source_url', '?')}"]
    for i, step in enumerate(man.get("access_steps", []), 1):
        lines.append(f"  {i}. {step}")
    for c in man.get("citation", []):
        lines.append(f"  cite: {c}")
    return "\n".join(lines)


def download_msd_task01(data_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download and unpack MSD Task01_BrainTumour (about 7 GB) through MONAI into ``data_dir``.

    Uses the URL and md5 that ``monai.apps.DecathlonDataset`` knows; never called by tests or
    by the smoke profile. Returns ``<data_dir>/Task01_BrainTumour``.
    """
    from monai.apps import download_and_extract
    from monai.apps.datasets import DecathlonDataset

    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    task = "Task01_BrainTumour"
    download_and_extract(DecathlonDataset.resource[task], filepath=data_dir / f"{task}.tar", output_dir=data_dir,
                         hash_val=DecathlonDataset.md5[task], hash_type="md5", progress=progress)
    return data_dir / task


def locate(name: str, data_dir: str | os.PathLike, *, download: bool = False, check: bool = True,
           deep: bool = False) -> Path:
    """Find a real dataset under ``data_dir`` (``<data_dir>/<name>`` or a folder named in the
    manifest's ``root_hints``), verify it, and return its root.

    An absent open dataset that MONAI can fetch (MSD Task01) is downloaded when ``download``;
    an absent gated one raises :class:`~brainkit.errors.MissingAssetError` with the steps to
    obtain it; a verification failure raises :class:`DataError` with the report.
    """
    man = load_manifest(name)
    data_dir = Path(data_dir).expanduser()
    cands = [data_dir / man["name"], *[data_dir / h for h in man.get("root_hints", [])], data_dir / name]
    root = next((c for c in cands if c.is_dir()), None)
    if root is None and download and man.get("download", {}).get("method") == "monai":
        root = download_msd_task01(data_dir)
    if root is None:
        how = access_instructions(man["name"])
        raise MissingAssetError(f"dataset {man['name']!r} not found under {data_dir} (looked for "
                                f"{', '.join(c.name for c in cands)}).\n{how}\n  then unpack it to "
                                f"{data_dir / man['name']} and run: brainkit data verify {man['name']} "
                                f"{data_dir / man['name']}")
    if check:
        rep = verify(man, root, deep=deep)
        if not rep.ok:
            raise DataError(root, "dataset", f"a complete {man['name']} set", f"problems:\n{rep}")
        root = rep.root
    return root
