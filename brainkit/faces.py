"""A method folder's face: ``from brainkit.methods import brat as B; B.pretrain(...)`` finds ``pretrain`` in
the folder's modules, importing a module the first time one of its names is asked for.

Lazy, so that :mod:`brainkit.profiles` can read a method's ``config.py`` without importing its networks
(torch, transformers), and a method imports nothing of another. Introduced in ``00_quickstart``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["lazy_face"]


def lazy_face(package: str, modules: Sequence[str], submodules: Sequence[str] = ()) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the ``__init__.py`` of ``package``: a name listed in the ``__all__`` of one
    of ``modules`` resolves to it; a name in ``modules`` or ``submodules`` is that module itself."""

    def __getattr__(name: str) -> Any:
        if name in modules or name in submodules:
            return importlib.import_module(f".{name}", package)
        for mod in modules:
            module = importlib.import_module(f".{mod}", package)
            if name in getattr(module, "__all__", ()):
                return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r} (its modules: {', '.join(modules)})")

    def __dir__() -> list[str]:
        names = [*modules, *submodules]
        for mod in modules:
            names += list(getattr(importlib.import_module(f".{mod}", package), "__all__", ()))
        return sorted(set(names))

    return __getattr__, __dir__
