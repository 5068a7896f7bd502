"""Patient-level splits: every patient (or case) in exactly one split, stratified, deterministic in the seed,
and the leak check. Introduced in ``01_data_prep``; :mod:`brainkit.data.manifests` hands these names on
with the manifests (a dataset's files and its splits), and the phantom writers of :mod:`brainkit.data.formats`
use them directly.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ['split_groups', 'make_splits', 'check_no_leak', 'split_counts']

log = logging.getLogger(__name__)


_DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


# ----------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------
def _fractions(fractions: Mapping[str, float] | Sequence[float]) -> tuple[list[str], np.ndarray]:
    if isinstance(fractions, Mapping):
        names, values = list(fractions), [float(v) for v in fractions.values()]
    else:
        values = [float(v) for v in fractions]
        names = ["train", "val", "test"][: len(values)] if len(values) <= 3 else [f"split{i}" for i in range(len(values))]
    fr = np.asarray(values, dtype=float)
    if len(fr) == 0 or (fr < 0).any() or fr.sum() <= 0:
        raise ConfigError(f"split fractions: expected non-negative numbers with a positive sum, found {fractions!r}")
    return names, fr / fr.sum()


def split_groups(groups: Sequence[Any], strata: Sequence[Any] | None = None,
                 fractions: Mapping[str, float] | Sequence[float] = _DEFAULT_FRACTIONS,
                 seed: int = 0) -> dict[str, str]:
    """Assign every group (patient) to one split; ``{group: split name}``.

    Groups are stratified by ``strata`` (per item; a group takes its most common stratum):
    within each stratum the groups are shuffled with a generator seeded by ``(seed, stratum)``
    and dealt out by the fractions, carrying the rounding over to the next stratum so that
    the totals follow the fractions too. Deterministic: the same input gives the same split
    in any order. Introduced in ``01_data_prep``.
    """
    names, fr = _fractions(fractions)
    groups = [str(g) for g in groups]
    strata_list = ["all"] * len(groups) if strata is None else [str(s) for s in strata]
    if len(strata_list) != len(groups):
        raise ConfigError(f"split_groups: {len(groups)} groups but {len(strata_list)} strata")
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for g, s in zip(groups, strata_list):
        per[g][s] += 1
    by: dict[str, list[str]] = defaultdict(list)
    for g, c in per.items():
        by[min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]].append(g)
    carry = np.zeros(len(names))
    out: dict[str, str] = {}
    for s in sorted(by):
        gs = sorted(by[s])
        rng = np.random.default_rng([int(seed), zlib.crc32(s.encode())])
        gs = [gs[i] for i in rng.permutation(len(gs))]
        n = len(gs)
        ideal = n * fr + carry
        counts = np.maximum(np.floor(ideal), 0).astype(int)
        while counts.sum() > n:
            counts[int(np.argmax(counts - ideal))] -= 1
        while counts.sum() < n:
            counts[int(np.argmax(ideal - counts))] += 1
        carry = ideal - counts
        start = 0
        for name, k in zip(names, counts):
            for g in gs[start:start + k]:
                out[g] = name
            start += k
    return out


def make_splits(records: Sequence[Mapping[str, Any]], *, group_key: str = "patient_id",
                stratify_key: str | None = None,
                fractions: Mapping[str, float] | Sequence[float] = _DEFAULT_FRACTIONS,
                seed: int = 0) -> dict[str, list[Mapping[str, Any]]]:
    """Split records by patient: ``{split: [records]}``, grouped, stratified, deterministic.

    A record without ``group_key`` (the Kaggle set has no patient ids) is its own group, with a
    warning: de-duplicate such sets first. See :func:`split_groups`.
    """
    names, _ = _fractions(fractions)
    groups = []
    missing = 0
    for i, r in enumerate(records):
        g = r.get(group_key)
        if g is None or g == "":
            missing += 1
            g = f"__record_{i}"
        groups.append(g)
    if missing:
        log.warning("%d records have no %r: each is its own group, so near-duplicate images of one patient "
                    "may land in different splits", missing, group_key)
    strata = None if stratify_key is None else [r.get(stratify_key) for r in records]
    assign = split_groups(groups, strata, fractions, seed)
    out: dict[str, list[Mapping[str, Any]]] = {n: [] for n in names}
    for g, r in zip(groups, records):
        out[assign[str(g)]].append(r)
    return out


def check_no_leak(splits: Mapping[str, Sequence[Mapping[str, Any]]], group_key: str = "patient_id") -> None:
    """Raise :class:`DataError` if a patient (``group_key``) appears in two splits."""
    seen: dict[str, str] = {}
    for name, recs in splits.items():
        for r in recs:
            g = r.get(group_key)
            if g is None:
                continue
            if seen.setdefault(str(g), name) != name:
                raise DataError(None, "splits", f"each {group_key} in one split only",
                                f"{g!r} in {seen[str(g)]!r} and {name!r}")


def split_counts(splits: Mapping[str, Sequence[Mapping[str, Any]]], key: str | None = None,
                 group_key: str | None = None) -> dict[str, dict[str, int]]:
    """Counts per split (and per ``key`` value): ``{split: {"n": ..., "groups": ..., value: n}}``."""
    out = {}
    for name, recs in splits.items():
        row: dict[str, int] = {"n": len(recs)}
        if group_key:
            row["groups"] = len({r.get(group_key) for r in recs})
        if key:
            for v, n in sorted(Counter(str(r.get(key)) for r in recs).items()):
                row[v] = n
        out[name] = row
    return out
