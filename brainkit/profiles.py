"""Profiles: one code path, three sizes (``smoke``, ``colab``, ``full``).

A profile is a frozen dataclass. Every size, epoch count, model id and layer index a notebook
uses comes from its profile; a notebook's ``parameters`` cell overrides single fields through
:func:`resolve`. Introduced in ``00_quickstart``.

``smoke`` runs on 2 CPU cores without network on generated data (BrainPhantom) and tiny or
package-shipped models; ``colab`` targets one 16 GB T4 with the real datasets and hub
checkpoints (language models in 4-bit); ``full`` is the papers' settings on one A100/H100.

Fields are flat and prefixed by the part of the course that reads them (``data_``, ``train_``,
and one prefix per method), so that ``resolve("smoke", train_grad_accum=2)`` names one field. Each method's
fields live in its own section, ``brainkit/methods/<method>/config.py``, with the ``smoke``, ``colab`` and
``full`` values side by side (:func:`brainkit.sections.per_profile`); :class:`Profile` composes the sections.
A new field goes into its method's section (CONTRIBUTING.md says how).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, replace

from .errors import ConfigError
from .methods.braingemma3d.config import BrainGemma3DSection
from .methods.brainmri_gpt.config import BrainMRIGPTSection
from .methods.brat.config import BratSection
from .methods.medvisionllama.config import MedVisionLlamaSection
from .sections import per_profile, profile_values

__all__ = ["Profile", "SharedSection", "PROFILES", "SMOKE", "COLAB", "FULL", "resolve", "names", "describe"]


@dataclass(frozen=True)
class SharedSection:
    """The settings every notebook shares: identity and hardware, the training loop's defaults, the data."""

    # -- identity and hardware -------------------------------------------------------------
    name: str = per_profile("smoke", colab='colab', full='full')
    description: str = per_profile("CPU, 2 cores, no network: BrainPhantom data, tiny or package-shipped models",
                                   colab="one T4 (16 GB): the real public datasets, hub checkpoints, language models in 4-bit",
                                   full="one A100/H100: the papers' settings")
    hardware: str = per_profile("CPU (2 cores)", colab='1x T4 16 GB', full='1x A100/H100')
    device: str = "auto"  # auto | cpu | cuda | mps
    mixed_precision: str = per_profile("no", colab='fp16', full='bf16')  # no | fp16 | bf16 (accelerate)
    num_workers: int = per_profile(0, colab=2, full=8)  # DataLoader workers
    # Time budget per notebook, minutes (training notebooks get the larger one).
    budget_minutes: float = per_profile(4.0, colab=120.0, full=1440.0)
    budget_training_minutes: float = per_profile(6.0, colab=120.0, full=1440.0)
    # -- training loop defaults (brainkit.train.fit) ----------------------------------------
    train_grad_accum: int = 1
    train_patience: int = 0  # early stopping patience in epochs; 0 = off
    train_log_every: int = 10  # steps between history entries
    # -- data (brainkit.data) -------------------------------------------------------------
    data_source: str = per_profile("phantom", colab='real')  # phantom | real
    data_subjects: int = per_profile(400, colab=0)  # phantom subjects generated once per run, all layouts (>= 60 test subjects in 2D sets)
    data_jobs: int = 2  # processes generating the phantom (capped by the CPU count)
    data_volume_shape: tuple[int, int, int] = per_profile((64, 64, 48), colab=(128, 128, 64), full=(128, 128, 128))  # phantom grid (X, Y, Z) in RAS voxel order
    data_slice_size: int = per_profile(128, colab=224, full=336)  # 2D slice side in pixels
    # Method input sizes as the papers state them, (D, H, W) = (axial slices, rows, columns);
    # brainkit.data.transforms turns them into RAS (X, Y, Z) = (W, H, D).
    data_gemma_volume_size: tuple[int, int, int] = per_profile((32, 64, 64), colab=(64, 128, 128))  # BrainGemma3D input; paper (64, 128, 128)
    data_msd_volume_size: tuple[int, int, int] = per_profile((48, 64, 64), colab=(96, 96, 96), full=(128, 128, 128))  # MedVisionLlama input; paper 128^3
    data_msd_spacing_mm: float = per_profile(4.0, colab=1.0)  # MSD chain resampling before resizing; 0 keeps the file's; MONAI/paper 1 mm
    data_brat_volume_size: tuple[int, int, int] = per_profile((32, 64, 64), colab=(32, 256, 256))  # brat input; paper (32, 256, 256)
    data_brat_spacing_mm: float = per_profile(4.0, colab=1.0)  # brat resampling before resizing; paper 1 mm
    data_cache: str = per_profile("memory", colab='disk')  # none | memory | disk: MONAI Dataset / CacheDataset / PersistentDataset


@dataclass(frozen=True)
class Profile(MedVisionLlamaSection, BratSection, BrainGemma3DSection, BrainMRIGPTSection, SharedSection):
    """The settings of one profile: the shared section and the four methods' sections, composed flat (fields in
    the order shared, BrainMRI-GPT, BrainGemma3D, brat, MedVisionLlama). Defaults are the ``smoke`` values."""

    def to_dict(self) -> dict[str, typing.Any]:
        """The profile as a plain dict (tuples kept), e.g. to record with a run's metrics."""
        return dataclasses.asdict(self)


SMOKE = Profile(**profile_values(Profile, "smoke"))
COLAB = Profile(**profile_values(Profile, "colab"))
FULL = Profile(**profile_values(Profile, "full"))

PROFILES: dict[str, Profile] = {p.name: p for p in (SMOKE, COLAB, FULL)}


def names() -> list[str]:
    """The valid profile names."""
    return list(PROFILES)


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Profile)


def _check_type(name: str, value: typing.Any, hint: typing.Any) -> typing.Any:
    """Check (and, for lists given where a tuple is declared, convert) one override."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"profile field {name!r}: expected a tuple, found {type(value).__name__} {value!r}")
        args = typing.get_args(hint)
        value = tuple(value)
        if args and args[-1] is not Ellipsis and len(args) != len(value):
            raise ConfigError(f"profile field {name!r}: expected {len(args)} values, found {len(value)}: {value!r}")
        elem = args[0] if args else None
        if elem in (int, float) and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"profile field {name!r}: expected numbers, found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint)]
        if value is None and type(None) in args:
            return value
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(name, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"profile field {name!r}: expected {hint}, found {type(value).__name__} {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not (hint is int and isinstance(value, bool))):
        raise ConfigError(f"profile field {name!r}: expected {hint.__name__}, found {type(value).__name__} {value!r}")
    return value


def resolve(name: str | Profile, /, **overrides: typing.Any) -> Profile:
    """Return the profile ``name`` with single fields overridden.

    >>> resolve("smoke", data_subjects=32).data_subjects
    32

    An unknown profile or field raises :class:`~brainkit.errors.ConfigError` listing the valid
    ones; a value of the wrong type raises too. ``None`` overrides are ignored, so a notebook
    parameter left at ``None`` keeps the profile's value.
    """
    if isinstance(name, Profile):
        base = name
    else:
        if not isinstance(name, str) or name not in PROFILES:
            raise ConfigError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
        base = PROFILES[name]
    hints = _field_types()
    unknown = sorted(k for k in overrides if k not in hints)
    if unknown:
        raise ConfigError(
            f"unknown profile field(s) {', '.join(map(repr, unknown))}: valid fields are {', '.join(hints)}"
        )
    checked = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "name":
            raise ConfigError("profile field 'name' cannot be overridden: pass another profile name instead")
        checked[key] = _check_type(key, value, hints[key])
    return replace(base, **checked)


def describe() -> list[dict[str, typing.Any]]:
    """Rows for a profiles table: one per field, with the value in each profile."""
    rows = []
    for f in dataclasses.fields(Profile):
        rows.append({"field": f.name, **{p: getattr(prof, f.name) for p, prof in PROFILES.items()}})
    return rows

