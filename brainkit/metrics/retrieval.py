"""Image-report retrieval metrics: R@k, median and mean rank, finding-based P@5(F) and R@5(F).

Introduced in ``09_brat_evaluation`` (the retrieval table of brat and its ablations beside the paper's
Table 2).

Conventions
-----------
- ``sim`` is an ``(N, N)`` similarity matrix, ``sim[i, j]`` = image ``i`` vs report ``j``; the true
  pairs sit on the diagonal. **image->text** (``i2t``) queries with image ``i`` and ranks the reports of
  row ``i``; **text->image** (``t2i``) queries with report ``j`` and ranks the images of column ``j``.
- **Rank** of the true match is 1-based and *pessimistic on ties*: ``1 + #{candidates other than the
  true one whose score is >= the true score}``. A model that gives every candidate the same score gets
  rank ``N`` for every query (no credit), never rank 1.
- **R@k** = fraction of queries whose true match has rank <= k (k may exceed N: then it is 1).
  **MdR** / **MnR** = median / mean of the ranks (lower is better).

Finding-based metrics (brat, section 4)
---------------------------------------
Each item (an image-report pair) carries a set of positive findings; the query's reference set is the
findings of its true match. The top-5 list is the 5 highest-scoring candidates, ties broken by lower
index (stable sort), and it *includes* the true match when that is retrieved.

- **P@5(F)**: for each query, the fraction of its top-5 candidates that share at least one positive
  finding with the reference; averaged over queries.
- **R@5(F)**: for each query, 1 if at least one top-5 candidate has exactly the reference's set of
  findings, else 0; averaged over queries.

The paper evaluates only MRIs with at least one positive finding ("negative reports usually apply to all
negative images"), so by default (``positives_only=True``) both are averaged over the queries whose
reference has at least one finding; with ``positives_only=False`` every query counts (a query without
findings then has P@5(F) = 0 by definition and R@5(F) = 1 when another finding-free item is retrieved).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["ranks", "recall_at_k", "finding_sets", "finding_metrics", "retrieval_metrics"]


def _as_sim(sim) -> np.ndarray:
    try:
        import torch

        if isinstance(sim, torch.Tensor):
            sim = sim.detach().cpu().double().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ConfigError(f"sim: expected a square (N, N) similarity matrix with N >= 1, found shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ConfigError(
            f"sim: expected finite similarities, found {int(np.isnan(sim).sum())} NaN and "
            f"{int(np.isinf(sim).sum())} infinite entries"
        )
    return sim


def ranks(sim) -> np.ndarray:
    """1-based rank of the true match (the diagonal) for each ROW query of ``sim``, pessimistic on ties.

    For image->text pass ``sim``; for text->image pass ``sim.T``.
    """
    sim = _as_sim(sim)
    true = np.diag(sim)[:, None]
    # candidates scoring >= the true one, the true one itself included once -> rank
    return (sim >= true).sum(axis=1).astype(np.int64)


def recall_at_k(rank: np.ndarray, k: int) -> float:
    """Fraction of queries with rank <= k."""
    if k < 1:
        raise ConfigError(f"k: expected a positive integer, found {k}")
    rank = np.asarray(rank)
    return float((rank <= k).mean())


def finding_sets(findings, n: int | None = None) -> list[frozenset]:
    """Normalise per-item findings to a list of frozensets of positive findings.

    Accepts a boolean / 0-1 matrix ``(N, K)`` (column ``k`` positive -> finding ``k``), or a sequence of
    iterables of hashable finding names (``[{"enhancing_lesion", "oedema"}, set(), ...]``), or a
    sequence of ``{name: bool}`` mappings (names with a true value are positive).
    """
    if isinstance(findings, np.ndarray) or (hasattr(findings, "shape") and hasattr(findings, "dim")):
        arr = np.asarray(findings.detach().cpu() if hasattr(findings, "detach") else findings)
        if arr.ndim != 2:
            raise ConfigError(f"findings: expected an (N, K) label matrix, found shape {arr.shape}")
        out = [frozenset(np.flatnonzero(row).tolist()) for row in arr.astype(bool)]
    elif isinstance(findings, Sequence) and not isinstance(findings, (str, bytes)):
        out = []
        for i, item in enumerate(findings):
            if isinstance(item, dict):
                out.append(frozenset(k for k, v in item.items() if v))
            elif isinstance(item, Iterable) and not isinstance(item, (str, bytes)):
                items = list(item)
                if not all(isinstance(x, Hashable) for x in items):
                    raise ConfigError(f"findings[{i}]: expected hashable finding names, found {items!r}")
                out.append(frozenset(items))
            else:
                raise ConfigError(
                    f"findings[{i}]: expected a set of finding names or a {{name: bool}} mapping, found {item!r}"
                )
    else:
        raise ConfigError(
            f"findings: expected an (N, K) label matrix or a sequence of finding sets, found {type(findings).__name__}"
        )
    if n is not None and len(out) != n:
        raise ConfigError(f"findings: expected one entry per item ({n}), found {len(out)}")
    return out


def _topk(sim: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-sim, axis=1, kind="stable")
    return order[:, : min(k, sim.shape[1])]


def finding_metrics(sim, findings, *, k: int = 5, positives_only: bool = True) -> dict[str, float | int]:
    """P@k(F) and R@k(F) for the ROW queries of ``sim`` (pass ``sim.T`` for text->image).

    Returns ``{"p_f": ..., "r_f": ..., "n_queries": ...}``; ``p_f`` / ``r_f`` are NaN when no query
    qualifies (``n_queries`` = 0). See the module docstring for the definitions.
    """
    sim = _as_sim(sim)
    if k < 1:
        raise ConfigError(f"k: expected a positive integer, found {k}")
    sets = finding_sets(findings, sim.shape[0])
    top = _topk(sim, k)
    p_vals, r_vals = [], []
    for q, cand in enumerate(top):
        ref = sets[q]
        if positives_only and not ref:
            continue
        p_vals.append(np.mean([bool(sets[c] & ref) for c in cand]))
        r_vals.append(float(any(sets[c] == ref for c in cand)))
    n = len(p_vals)
    return {
        "p_f": float(np.mean(p_vals)) if n else float("nan"),
        "r_f": float(np.mean(r_vals)) if n else float("nan"),
        "n_queries": n,
    }


def retrieval_metrics(sim, *, ks: Sequence[int] = (1, 5, 10), findings=None, finding_k: int = 5,
                      positives_only: bool = True) -> dict[str, float]:
    """All retrieval metrics of brat's Table 2, both directions, from one ``(N, N)`` similarity matrix.

    Keys (``d`` in ``i2t`` / ``t2i``): ``{d}_r{k}`` for each k in ``ks``, ``{d}_median_rank``,
    ``{d}_mean_rank``; with ``findings`` also ``{d}_p{finding_k}_f`` and ``{d}_r{finding_k}_f``
    (omitted when no query has a positive finding). ``chance_r{k}`` = ``min(k, N) / N`` is added for
    reference. NaN or infinite similarities -> ConfigError.
    """
    sim = _as_sim(sim)
    n = sim.shape[0]
    out: dict[str, float] = {}
    for name, m in (("i2t", sim), ("t2i", sim.T)):
        r = ranks(m)
        for k in ks:
            out[f"{name}_r{k}"] = recall_at_k(r, k)
        out[f"{name}_median_rank"] = float(np.median(r))
        out[f"{name}_mean_rank"] = float(np.mean(r))
        if findings is not None:
            fm = finding_metrics(m, findings, k=finding_k, positives_only=positives_only)
            if fm["n_queries"]:
                out[f"{name}_p{finding_k}_f"] = fm["p_f"]
                out[f"{name}_r{finding_k}_f"] = fm["r_f"]
    for k in ks:
        out[f"chance_r{k}"] = min(k, n) / n
    return out
