"""Profile sections: the settings of one part of the course, with each field's ``smoke``, ``colab`` and
``full`` values side by side.

Each method keeps its section in ``brainkit/methods/<method>/config.py``; :mod:`brainkit.profiles` composes
them (and its own shared section) into one flat :class:`~brainkit.profiles.Profile`. A field whose value is
the same in every profile is a plain default; one that differs is declared with :func:`per_profile`::

    brat_lr_bert: float = per_profile(0.0002, colab=5e-05)  # colab and full both 5e-5

Introduced in ``00_quickstart``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["PROFILE_NAMES", "per_profile", "profile_values"]

#: The profiles, smallest first: the default of a field is its ``smoke`` value.
PROFILE_NAMES = ("smoke", "colab", "full")
_UNSET = object()


def per_profile(smoke: Any, *, colab: Any = _UNSET, full: Any = _UNSET) -> Any:
    """A dataclass field whose value depends on the profile: ``smoke`` is the default; ``colab`` defaults to
    ``smoke``; ``full`` defaults to ``colab`` (the papers' settings usually serve both GPU profiles)."""
    colab_value = smoke if colab is _UNSET else colab
    full_value = colab_value if full is _UNSET else full
    return dataclasses.field(default=smoke, metadata={"smoke": smoke, "colab": colab_value, "full": full_value})


def profile_values(cls: type, profile: str) -> dict[str, Any]:
    """``{field: value}`` of the dataclass ``cls`` (a section, or a class composed of sections) in ``profile``."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"profile {profile!r}: expected one of {', '.join(PROFILE_NAMES)}")
    return {f.name: f.metadata.get(profile, f.default) for f in dataclasses.fields(cls)}
