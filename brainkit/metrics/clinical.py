"""Clinical-entity F1 of generated reports: laterality, anatomy, pathology; healthy specificity.

Introduced in ``06_braingemma3d_evaluation`` (BrainGemma3D's clinical metrics). Entities are read from
the generated and the reference report by the same rule-based extractor,
:func:`brainkit.data.reports.extract_findings` (sides, lobes/structures, pathology words with
negation handled).

Per report and per category, F1 of the two entity sets. Two variants:

- ``strict``: a report where both sets are empty contributes 0 to the mean and is *counted*
  only if either set is non-empty — i.e. empty-vs-empty reports are left out of the average
  (nothing was there to get right);
- ``released``: as the released code, empty-vs-empty counts 1.0 — which inflates the scores
  with every healthy control whose report names no side or lobe.

For pathology, a report with no lesion entity has the entity ``normal``, so healthy reports are
scored in both variants. Healthy specificity: among reference-healthy cases, the fraction whose
generated report names no lesion (``pathology == {"normal"}``).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import DataError

__all__ = ["set_f1", "clinical_metrics", "CATEGORIES"]

CATEGORIES = ("laterality", "anatomy", "pathology")


def set_f1(pred: set[str], ref: set[str], *, empty: float | None) -> float | None:
    """F1 of two entity sets; ``empty`` is returned when both are empty (``None``: leave the case out)."""
    if not pred and not ref:
        return empty
    tp = len(pred & ref)
    if tp == 0:
        return 0.0
    p, r = tp / len(pred), tp / len(ref)
    return 2 * p * r / (p + r)


def clinical_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{lat_f1, anat_f1, path_f1}`` (strict), the same with ``_released``, and ``healthy_specificity``
    (NaN when the references hold no healthy case)."""
    from ..data.reports import extract_findings

    if isinstance(hypotheses, str) or isinstance(references, str) or len(hypotheses) != len(references):
        raise DataError(None, "hypotheses", "a sequence with one report per reference",
                        f"{type(hypotheses).__name__} of {len(hypotheses)} for {len(references)} references")
    if not references:
        raise DataError(None, "references", "at least one report", "none")
    H = [extract_findings(h) for h in hypotheses]
    R = [extract_findings(r) for r in references]
    short = {"laterality": "lat", "anatomy": "anat", "pathology": "path"}
    out: dict[str, float] = {}
    for cat in CATEGORIES:
        strict = [set_f1(h[cat], r[cat], empty=None) for h, r in zip(H, R)]
        strict = [v for v in strict if v is not None]
        released = [set_f1(h[cat], r[cat], empty=1.0) for h, r in zip(H, R)]
        out[f"{short[cat]}_f1"] = float(sum(strict) / len(strict)) if strict else float("nan")
        out[f"{short[cat]}_f1_released"] = float(sum(released) / len(released))
    healthy = [h["pathology"] == {"normal"} for h, r in zip(H, R) if r["pathology"] == {"normal"}]
    out["healthy_specificity"] = float(sum(healthy) / len(healthy)) if healthy else float("nan")
    out["n_healthy"] = float(len(healthy))
    return out
