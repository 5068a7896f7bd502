"""How sure a number is: the paired bootstrap interval of a difference between two systems scored on the same
cases. Introduced in ``06_braingemma3d_evaluation`` (the report model against baselines that cannot see the image).

Cases are resampled with replacement (``scipy.stats.bootstrap``, ``paired=True``, percentile interval); each
system's metric is the mean of its per-case values with NaN left out (a case that does not count for that system,
as :func:`brainkit.metrics.clinical.clinical_per_case` marks them).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..errors import DataError

__all__ = ["paired_bootstrap_difference"]


def paired_bootstrap_difference(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000,
                                confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``mean(a) - mean(b)`` over the cases (NaN left out) and its ``confidence`` bootstrap interval.

    ``a`` and ``b`` hold one value per case, in the same case order. Returns ``{"difference", "low", "high",
    "n_cases"}``; the interval lies above 0 when ``low > 0``."""
    from scipy.stats import bootstrap

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise DataError(None, "a, b", "two 1-D sequences of per-case values of one length (>= 2)",
                        f"shapes {x.shape} and {y.shape}")
    if np.isnan(x).all() or np.isnan(y).all():
        raise DataError(None, "a, b", "at least one case that counts (not NaN) in each", "all NaN")
    if not 0 < confidence < 1:
        raise DataError(None, "confidence", "a number in (0, 1)", confidence)

    def diff(u, v, axis=-1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample in which no case counts gives NaN
            return np.nanmean(u, axis=axis) - np.nanmean(v, axis=axis)

    res = bootstrap((x, y), diff, paired=True, vectorized=True, n_resamples=int(n_resamples),
                    confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return {"difference": float(diff(x, y)), "low": float(res.confidence_interval.low),
            "high": float(res.confidence_interval.high), "n_cases": int(len(x))}
