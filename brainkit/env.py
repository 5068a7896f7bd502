"""Run set-up for a notebook: seeds, deterministic flags, device, versions, folders.

Introduced in ``00_quickstart``. Every notebook's fourth cell calls :func:`setup`.

Folder resolution, first match wins:

- data: ``$BRAINKIT_DATA``, then the notebook's ``DATA_DIR`` parameter, then
  ``/content/brainkit/data`` on Colab, else ``~/.cache/brainkit/data``;
- cache (converted models, preprocessed volumes): ``$BRAINKIT_CACHE``, then
  ``/content/brainkit/cache`` on Colab, else ``~/.cache/brainkit``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .cache import _home_cache, in_colab, resolve_cache_dir  # handed on: part of this module's API
from .errors import ConfigError, DataError
from .train import seed_everything  # handed on: part of this module's API

if TYPE_CHECKING:
    from .profiles import Profile

__all__ = ["Env", "setup", "seed_everything", "pick_device", "in_colab", "resolve_data_dir",
           "resolve_cache_dir", "versions"]

log = logging.getLogger(__name__)

#: Packages whose versions :func:`setup` prints and ``brainkit doctor`` checks.
KEY_PACKAGES = ("torch", "transformers", "accelerate", "peft", "bitsandbytes", "monai", "nibabel",
                "nilearn", "scikit-learn", "papermill")


@dataclass(frozen=True)
class Env:
    """What :func:`setup` resolved for a run."""

    seed: int
    device: torch.device
    profile: Profile | None
    data_dir: Path
    cache_dir: Path
    output_dir: Path | None


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else Apple MPS, else CPU; an explicit name is checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ConfigError(f"device: expected auto | cpu | cuda | cuda:N | mps, found {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} was asked for but torch sees no CUDA device "
                          f"(torch {torch.__version__}); use device='auto' or 'cpu'")
    return torch.device(device)


def resolve_data_dir(parameter: str | os.PathLike | None = None) -> Path:
    """The data folder: ``$BRAINKIT_DATA``, then ``parameter``, then Colab's or the home cache."""
    env = os.environ.get("BRAINKIT_DATA")
    if env:
        return Path(env).expanduser().resolve()
    if parameter:
        return Path(parameter).expanduser().resolve()
    if in_colab():
        return Path("/content/brainkit/data")
    return _home_cache() / "data"


def versions(packages: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` for a missing one) plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def setup(seed: int = 0, device: str = "auto", *, profile: Profile | str | None = None,
          data_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None,
          deterministic: bool = True, verbose: bool = True) -> Env:
    """Seed everything, pick the device, resolve the folders and print what was chosen.

    ``device="auto"`` defers to the profile's ``device`` field when a profile is given. With a
    profile that reads real data (colab, full) the data folder must exist.
    The output folder is created; the data and cache folders are created on first write.
    """
    from .profiles import resolve

    prof = resolve(profile) if isinstance(profile, str) else profile
    if device == "auto" and prof is not None:
        device = prof.device
    seed_everything(seed, deterministic=deterministic)
    dev = pick_device(device)
    out = Path(output_dir).expanduser().resolve() if output_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    data = resolve_data_dir(data_dir)
    if prof is not None and prof.data_source == "real" and not data.is_dir():
        raise DataError(data, "data folder", f"an existing folder holding the downloaded datasets for profile "
                        f"{prof.name!r} (set BRAINKIT_DATA or the notebook's DATA_DIR; data_manifests/ says where "
                        "each dataset comes from)", "no such folder")
    env = Env(seed=seed, device=dev, profile=prof, data_dir=data,
              cache_dir=resolve_cache_dir(), output_dir=out)
    if verbose:
        v = versions()
        # Printing is this function's purpose: it is the notebook's record of the run's set-up.
        print("brainkit set-up")
        print(f"  profile  : {prof.name if prof else '-'}" + (f"  ({prof.description})" if prof else ""))
        print(f"  device   : {dev}" + (f"  ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
        print(f"  seed     : {seed}   threads: {torch.get_num_threads()}")
        print(f"  data     : {env.data_dir}")
        print(f"  cache    : {env.cache_dir}")
        if out is not None:
            print(f"  output   : {out}")
        print("  versions : " + ", ".join(f"{k} {val or 'missing'}" for k, val in v.items()))
    log.debug("setup: %s", env)
    return env
