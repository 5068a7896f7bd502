"""Content-addressed cache folders: a fingerprint of the inputs, and a folder written whole or not at all.

The smoke stand-ins (``standin_clip``, ``standin_siglip``) and the offline model conversions are cached under
``<cache_dir>/<kind>/<key>``. A folder is built in a temporary sibling and renamed into place when complete,
so an interrupted run never leaves a half-written model where the next run would load it.

Single files are written the same way (:func:`atomic_write_text`, :func:`atomic_save_tensors`, and
:func:`atomic_write` for any other writer): a temporary file
in the target's folder, renamed onto it by :func:`publish`. Checkpoints, metrics, run records and stage caches all
go through them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

__all__ = ["in_colab", "resolve_cache_dir", "fingerprint", "building_folder", "publish", "atomic_write", "atomic_write_text", "atomic_save_tensors"]


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def _home_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "brainkit"


def resolve_cache_dir() -> Path:
    """The cache folder for converted models and preprocessed data."""
    env = os.environ.get("BRAINKIT_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    if in_colab():
        return Path("/content/brainkit/cache")
    return _home_cache()


def fingerprint(*parts: Any) -> str:
    """16 hex digits of a SHA-256 over ``parts``: tensors by their bytes, everything else as sorted JSON.

    Two calls agree exactly when every tensor has the same bytes (dtype and layout included, after
    ``contiguous``) and every other part the same JSON, so any change of data or setting gives a new key.
    """
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Rename the finished temporary file ``tmp`` onto ``path`` (atomic within a folder), first giving it the
    permissions a plain ``open(path, "w")`` would have (``tempfile.mkstemp`` makes files owner-only)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)
    return Path(path)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a temporary file in ``path``'s folder (keeping its extension, ``.nii.gz`` included, for
    writers that read it), then :func:`publish` it onto ``path``; on any error the temporary file is removed.
    For writers of other formats (NIfTI, JPEG, MAT); text and tensors have the two functions below."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                        metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as safetensors to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def building_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; on success it is renamed to ``folder`` (an existing one, a cache
    entry being rebuilt, is removed first), on any error deleted."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
