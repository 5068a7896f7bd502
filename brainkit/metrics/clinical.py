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

__all__ = ["set_f1", "clinical_per_case", "clinical_metrics", "CATEGORIES"]

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


def clinical_per_case(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """One value per case for each metric of :func:`clinical_metrics` (``lat_f1``, ``anat_f1``, ``path_f1``, the
    ``_released`` variants, ``healthy_specificity``), NaN where the case does not count (strict: both entity sets
    empty; specificity: a reference with a lesion). The metric is the mean of its non-NaN values, so the lists
    are what a paired bootstrap over cases resamples."""
    from ..data.reports import extract_findings

    if isinstance(hypotheses, str) or isinstance(references, str) or len(hypotheses) != len(references):
        raise DataError(None, "hypotheses", "a sequence with one report per reference",
                        f"{type(hypotheses).__name__} of {len(hypotheses)} for {len(references)} references")
    if not references:
        raise DataError(None, "references", "at least one report", "none")
    H = [extract_findings(h) for h in hypotheses]
    R = [extract_findings(r) for r in references]
    nan = float("nan")
    short = {"laterality": "lat", "anatomy": "anat", "pathology": "path"}
    out: dict[str, list[float]] = {}
    for cat in CATEGORIES:
        strict = [set_f1(h[cat], r[cat], empty=None) for h, r in zip(H, R)]
        out[f"{short[cat]}_f1"] = [nan if v is None else v for v in strict]
        out[f"{short[cat]}_f1_released"] = [set_f1(h[cat], r[cat], empty=1.0) for h, r in zip(H, R)]
    out["healthy_specificity"] = [float(h["pathology"] == {"normal"}) if r["pathology"] == {"normal"} else nan
                                  for h, r in zip(H, R)]
    return out


def clinical_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{lat_f1, anat_f1, path_f1}`` (strict), the same with ``_released``, and ``healthy_specificity``
    (NaN when the references hold no healthy case): the means of :func:`clinical_per_case`."""
    cases = clinical_per_case(hypotheses, references)
    out: dict[str, float] = {}
    for key, values in cases.items():
        kept = [v for v in values if v == v]  # NaN: the case does not count
        out[key] = float(sum(kept) / len(kept)) if kept else float("nan")
    out["n_healthy"] = float(sum(v == v for v in cases["healthy_specificity"]))
    return out
