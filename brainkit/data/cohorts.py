"""Cohort specifications: what each real dataset holds, so that BrainPhantom's layouts resemble it.

Introduced in ``01_data_prep``. BrainPhantom is written in the layouts of five real datasets. Two
small frozen dataclasses describe them, every number with its source in a comment:

- a :class:`CohortSpec` is what the phantom *generates*: lesion types and weights, glioma grades and
  sizes, the lobes, the share of gliomas that reach both hemispheres, the share of healthy controls,
  the report style. There are two: :data:`BRATS_GLIOMAS` (BraTS 2020 / TextBraTS, whose gliomas are
  also MSD Task01's cases) and :data:`SLICE_TUMOURS` (the figshare patients, whose images the Kaggle
  set contains, plus controls for Kaggle's ``notumor``).
- a :class:`LayoutSpec` is what a *layout* takes from its cohort: which classes, how many slices per
  patient in the 2D sets, and the published class proportions it is checked against.

:func:`brainkit.data.layouts.ensure_phantom` generates each cohort once and writes its layouts
from it (subjects are shared where the datasets share cases), and :meth:`CohortSpec.fingerprint`
is part of the cache key, so a set written from another spec is never reused. Mappings are stored
as tuples of ``(name, value)`` pairs (a frozen dataclass must be hashable) and read through the
properties of the same name without ``_pairs``. Bad numbers (weights that do not sum to 1, an
unknown lesion type, an inverted size range, a healthy fraction outside [0, 1]) raise
:class:`~brainkit.errors.ConfigError` naming the spec and the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .anatomy import LOBES

__all__ = ["LESION_TYPES", "GRADES", "CohortSpec", "LayoutSpec", "COHORTS", "LAYOUT_SPECS", "CLINICAL_MIX",
           "BRATS_GLIOMAS", "SLICE_TUMOURS", "spec_for_layout", "cohort_for_layout", "allocate", "published_check"]

#: Lesion types the phantom can draw.
LESION_TYPES = ("glioma", "meningioma", "metastasis", "pituitary")
#: Glioma grades: ``hgg`` (enhancing rim, usually necrosis) and ``lgg`` (mostly non-enhancing).
GRADES = ("hgg", "lgg")
_REPORT_STYLES = ("clinical", "textbrats")
_TOL = 1e-6
# Weyl-sequence steps of allocate()'s streams: irrationals far from each other and from simple fractions.
_WEYL = ((math.sqrt(5.0) - 1.0) / 2.0, math.sqrt(2.0) - 1.0, math.sqrt(3.0) - 1.0, math.pi - 3.0)


class _Checks:
    """The field checks shared by the two spec classes (they name the spec and the field)."""

    name: str
    _kind = "cohort spec"

    def fingerprint(self) -> str:
        """A short hash of every number of the spec (part of the phantom's cache key)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]


    def _fail(self, fld: str, expected: str, found: Any) -> None:
        raise ConfigError(f"{self._kind} {self.name!r}: {fld}: expected {expected}, found {found!r}")

    def _weights(self, fld: str, pairs: Any, names: tuple[str, ...] | None) -> None:
        if not isinstance(pairs, tuple) or not pairs or not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            self._fail(fld, "a non-empty tuple of (name, weight) pairs", pairs)
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            self._fail(fld, "each name once", keys)
        for k, w in pairs:
            if names is not None and k not in names:
                self._fail(fld, f"names from {', '.join(names)}", k)
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                self._fail(fld, f"a weight >= 0 for {k!r}", w)
        total = sum(float(w) for _, w in pairs)
        if abs(total - 1.0) > 1e-3:
            self._fail(fld, "weights that sum to 1", round(total, 6))


@dataclass(frozen=True)
class CohortSpec(_Checks):
    """A generated cohort: what the phantom draws for each subject (see the module docstring).

    - ``lesion_weights_pairs``: lesion type -> share of the lesional subjects (sums to 1).
    - ``glioma_grade_pairs``: ``hgg`` / ``lgg`` -> share of the gliomas (sums to 1).
    - ``healthy_fraction``: share of healthy controls among all subjects.
    - ``glioma_radius_mm``: (low, high) of the glioma core radius, drawn log-uniformly; the whole
      tumour (with oedema) is about 1.3-2x this radius. ``glioma_radius_cap_scale`` scales the
      largest radius that fits each lobe.
    - ``glioma_lobe_pairs``: main lobe of a glioma -> weight (sums to 1; names from ``LOBES``).
    - ``glioma_crossing_fraction``: share of gliomas that reach the other hemisphere too.
    - ``report_style``: ``clinical`` (varied free text) or ``textbrats`` (TextBraTS's four sentences:
      lesion, oedema, necrosis, ventricular compression).
    """

    name: str
    dataset: str
    lesion_weights_pairs: tuple[tuple[str, float], ...]
    healthy_fraction: float
    glioma_grade_pairs: tuple[tuple[str, float], ...] = (("hgg", 0.8), ("lgg", 0.2))
    glioma_radius_mm: tuple[float, float] = (6.0, 24.0)
    glioma_radius_cap_scale: float = 1.0
    glioma_lobe_pairs: tuple[tuple[str, float], ...] = (
        ("frontal", 0.28), ("parietal", 0.16), ("temporal", 0.22), ("occipital", 0.08), ("deep", 0.12),
        ("cerebellum", 0.07), ("brainstem", 0.07))
    glioma_crossing_fraction: float = 0.0
    report_style: str = "clinical"
    source: str = ""

    def __post_init__(self) -> None:
        self.validate()

    # -- mappings -------------------------------------------------------------------------------
    @property
    def lesion_weights(self) -> dict[str, float]:
        return dict(self.lesion_weights_pairs)

    @property
    def glioma_grades(self) -> dict[str, float]:
        return dict(self.glioma_grade_pairs)

    @property
    def glioma_lobes(self) -> dict[str, float]:
        return dict(self.glioma_lobe_pairs)

    def validate(self) -> CohortSpec:
        """Raise :class:`ConfigError` naming the spec and the field for any inconsistent number."""
        self._weights("lesion_weights_pairs", self.lesion_weights_pairs, LESION_TYPES)
        self._weights("glioma_grade_pairs", self.glioma_grade_pairs, GRADES)
        self._weights("glioma_lobe_pairs", self.glioma_lobe_pairs, LOBES)
        hf = self.healthy_fraction
        if not isinstance(hf, (int, float)) or not math.isfinite(hf) or not 0.0 <= hf <= 1.0:
            self._fail("healthy_fraction", "a fraction in [0, 1]", hf)
        lo_hi = self.glioma_radius_mm
        if (not isinstance(lo_hi, tuple) or len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi)
                or not 0 < lo_hi[0] <= lo_hi[1]):
            self._fail("glioma_radius_mm", "(low, high) with 0 < low <= high", lo_hi)
        if not 0 < self.glioma_radius_cap_scale <= 3:
            self._fail("glioma_radius_cap_scale", "a factor in (0, 3]", self.glioma_radius_cap_scale)
        if not 0.0 <= self.glioma_crossing_fraction <= 1.0:
            self._fail("glioma_crossing_fraction", "a fraction in [0, 1]", self.glioma_crossing_fraction)
        if self.report_style not in _REPORT_STYLES:
            self._fail("report_style", " or ".join(_REPORT_STYLES), self.report_style)
        return self

    def replace(self, **changes: Any) -> CohortSpec:
        """A copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class LayoutSpec(_Checks):
    """What one real dataset's layout holds, and which generated cohort it is written from.

    - ``cohort``: the name of the :class:`CohortSpec` whose subjects the layout takes; layouts that
      share a cohort share its subjects (``BraTS20_Training_007``, its TextBraTS report and, for a
      glioma, its MSD case are one brain).
    - ``classes``: the classes written (lesion types and ``none`` for healthy controls); subjects of
      other classes in the cohort are left out of this layout.
    - ``slices_pairs``: class -> slices per subject (the 2D layouts; ``()`` for the 3D ones).
    - ``published_pairs``: class -> published fraction, counted in ``published_unit`` (``subjects``,
      ``slices`` or ``images``): what notebook 01 checks the written layout against (within 3 points).
    """

    _kind = "layout spec"

    name: str
    dataset: str
    cohort: str
    classes: tuple[str, ...]
    published_pairs: tuple[tuple[str, float], ...]
    published_unit: str = "subjects"
    slices_pairs: tuple[tuple[str, int], ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def slices(self) -> dict[str, int]:
        return dict(self.slices_pairs)

    @property
    def published(self) -> dict[str, float]:
        return dict(self.published_pairs)

    def slices_for(self, cls: str, default: int = 3) -> int:
        """Slices a subject of class ``cls`` gives in a 2D layout."""
        return int(self.slices.get(cls, default))

    def validate(self) -> LayoutSpec:
        names = LESION_TYPES + ("none",)
        if not self.classes or not set(self.classes) <= set(names):
            self._fail("classes", f"names from {', '.join(names)}", self.classes)
        self._weights("published_pairs", self.published_pairs, names)
        if set(self.published) != set(self.classes):
            self._fail("published_pairs", f"one fraction per class of {self.classes}", tuple(self.published))
        if self.published_unit not in ("subjects", "slices", "images"):
            self._fail("published_unit", "subjects, slices or images", self.published_unit)
        for k, v in self.slices_pairs:
            if k not in names or not isinstance(v, int) or v < 1:
                self._fail("slices_pairs", "(class, slice count >= 1) pairs", (k, v))
        return self

    def replace(self, **changes: Any) -> LayoutSpec:
        return dataclasses.replace(self, **changes)


def allocate(index: int, weights: dict[str, float], stream: int = 0) -> str:
    """The class of subject ``index`` under ``weights``, by a low-discrepancy (Weyl) sequence.

    Deterministic in ``index`` and independent of the cohort size; over any run of ``n`` consecutive
    indices each class's share is within about ``log(n) / n`` of its weight, so a 300-subject
    phantom matches a dataset's published proportions to a point or two (random draws would miss
    them by several points). ``stream`` (0-3) picks an independent sequence (type, grade, crossing).
    """
    if not 0 <= stream < len(_WEYL):
        raise ConfigError(f"allocate: stream: expected 0..{len(_WEYL) - 1}, found {stream!r}")
    alpha = _WEYL[stream]
    u = (index * alpha + 0.5 * alpha) % 1.0
    acc = 0.0
    keys = list(weights)
    total = sum(weights.values())
    for k in keys:
        acc += weights[k] / total
        if u < acc - _TOL:
            return k
    return keys[-1]


# ------------------------------------------------------------------------------------------------
# the generated cohorts

#: The phantom's general mix (glioma / meningioma / metastasis as seen in a general clinical series),
#: used when a subject is generated without naming a cohort; no layout is written from it.
CLINICAL_MIX = CohortSpec(
    name="clinical_mix", dataset="BrainPhantom general mix (no dataset)",
    lesion_weights_pairs=(("glioma", 0.5), ("meningioma", 0.2), ("metastasis", 0.3)),
    healthy_fraction=0.25,
    source="BrainPhantom v3 default: no published cohort; kept for direct calls of generate_subject",
)

#: BraTS 2020 training (369 cases, each with its TextBraTS report) + BrainGemma3D's healthy controls.
#: MSD Task01's cases are BraTS 2016/2017 gliomas, so the MSD layout takes this cohort's gliomas.
BRATS_GLIOMAS = CohortSpec(
    name="brats", dataset="BraTS 2020 training + TextBraTS (+ BrainGemma3D's healthy controls); MSD Task01",
    # adult diffuse gliomas only: no metastases, meningiomas or pituitary tumours (the BraTS cohorts are
    # pre-operative glioma scans: Menze et al. 2015, Bakas et al. 2018)
    lesion_weights_pairs=(("glioma", 1.0),),
    # BraTS 2020 training: 293 HGG + 76 LGG (its name_mapping.csv). MSD's source, BraTS 2017 training,
    # has 210 HGG + 75 LGG (74 / 26): close enough that one cohort serves both layouts.
    glioma_grade_pairs=(("hgg", 293 / 369), ("lgg", 76 / 369)),
    # BraTS itself has no healthy subjects; BrainGemma3D's cohort adds 99 healthy controls from
    # elsewhere: 99 / (369 + 99) = 21.2 % (BrainGemma3D model card). The phantom writes them into the
    # BraTS layout with empty segmentations, so one reader serves the whole cohort; MSD gets none.
    healthy_fraction=99 / 468,
    # whole tumour (with oedema) in BraTS: tens to a few hundred cm3, median near 100 cm3, few cases
    # below 10 cm3 (published BraTS whole-tumour volumetry). The glioma core radius is set so that the
    # phantom's whole tumours fall in that range (notebook 01 checks it: median 50-150 cm3, at most 10 %
    # below 10 cm3).
    glioma_radius_mm=(11.6, 30.0),
    glioma_radius_cap_scale=1.6,
    # mostly supratentorial: TextBraTS's lobe mentions over 369 reports are parietal 299, frontal 275,
    # temporal 152, occipital 69 (a report names every lobe a tumour reaches); the main lobe is drawn
    # from these, with a few deep (insular / thalamic) gliomas and no infratentorial ones (adult BraTS)
    glioma_lobe_pairs=(("frontal", 0.33), ("parietal", 0.30), ("temporal", 0.22), ("occipital", 0.08),
                       ("deep", 0.07)),
    # TextBraTS sides: left-only 156, right-only 141, both 66 -> 66 / 363 = 18 % reach both hemispheres
    glioma_crossing_fraction=66 / 363,
    report_style="textbrats",
    source="BraTS 2020 (Menze 2015, Bakas 2017/2018), TextBraTS (Shi et al. 2025), BrainGemma3D model card, "
           "MSD (Simpson et al. 2019, Antonelli et al. 2022)",
)

# Slices per subject of the 2D layouts. figshare: meningioma 708 / 82 patients = 8.6, glioma 1,426 / 89 =
# 16.0, pituitary 930 / 62 = 15.0 (Cheng et al. 2015); the phantom writes about a quarter (2 / 4 / 4).
_FIGSHARE_SLICES = (("meningioma", 2), ("glioma", 4), ("pituitary", 4))
# Kaggle: chosen so that the image shares of a cohort with figshare's patient mix match Kaggle's
# class folders (below): glioma 2, meningioma 2, pituitary 3, notumor 3 per subject.
_KAGGLE_SLICES = (("glioma", 2), ("meningioma", 2), ("pituitary", 3), ("none", 3))
# figshare's patients: meningioma 82, glioma 89, pituitary 62 of 233 (Cheng et al. 2015)
_FIGSHARE_PATIENTS = (("meningioma", 82 / 233), ("glioma", 89 / 233), ("pituitary", 62 / 233))
# Kaggle notumor: 2,000 of 7,023 images (Training 1,595 + Testing 405)
_KAGGLE_NOTUMOR = 2000 / 7023


def _slice_cohort_healthy_fraction() -> float:
    """The control share h at which Kaggle's notumor images make 2,000 / 7,023 of the layout:
    notumor images h * s_none against tumour images (1 - h) * sum_c p_c s_c; solved for h."""
    per_tumour = sum(w * dict(_KAGGLE_SLICES)[c] for c, w in _FIGSHARE_PATIENTS)
    s_none, q = dict(_KAGGLE_SLICES)["none"], _KAGGLE_NOTUMOR
    return q * per_tumour / (s_none * (1.0 - q) + q * per_tumour)


#: The 2D slice sets' subjects: figshare's patient mix (the Kaggle set contains the figshare images:
#: Kaggle's dataset description lists figshare, SARTAJ and Br35H), plus healthy controls for Kaggle's
#: notumor class (figshare writes no controls).
SLICE_TUMOURS = CohortSpec(
    name="slices", dataset="figshare brain tumour (Cheng et al. 2015) + Kaggle brain-tumor-mri-dataset",
    lesion_weights_pairs=_FIGSHARE_PATIENTS,
    healthy_fraction=_slice_cohort_healthy_fraction(),
    source="Cheng et al. 2015 (figshare 1512427); Kaggle masoudnickparvar/brain-tumor-mri-dataset",
)

#: Every generated cohort, by name.
COHORTS = {s.name: s for s in (BRATS_GLIOMAS, SLICE_TUMOURS)}

# ------------------------------------------------------------------------------------------------
# the layouts

LAYOUT_SPECS = {s.name: s for s in (
    LayoutSpec(
        name="brats2020", dataset="BraTS 2020 training (+ BrainGemma3D's 99 healthy controls)", cohort="brats",
        classes=("glioma", "none"), published_pairs=(("glioma", 369 / 468), ("none", 99 / 468)),
        source="BraTS 2020: 369 training cases; BrainGemma3D model card: 99 healthy controls"),
    LayoutSpec(
        name="textbrats", dataset="TextBraTS (a report for each BraTS 2020 training case)", cohort="brats",
        classes=("glioma", "none"), published_pairs=(("glioma", 369 / 468), ("none", 99 / 468)),
        source="TextBraTS (Shi et al. 2025); controls as in brats2020"),
    LayoutSpec(
        name="msd_task01", dataset="MSD Task01 BrainTumour (484 training volumes of BraTS 2016/2017 gliomas)",
        cohort="brats", classes=("glioma",), published_pairs=(("glioma", 1.0),),
        source="Simpson et al. 2019; Antonelli et al. 2022"),
    LayoutSpec(
        name="figshare", dataset="figshare brain tumour: 3,064 T1-CE slices of 233 patients", cohort="slices",
        classes=("meningioma", "glioma", "pituitary"),
        # slices: meningioma 708, glioma 1,426, pituitary 930 of 3,064 (Cheng et al. 2015)
        published_pairs=(("meningioma", 708 / 3064), ("glioma", 1426 / 3064), ("pituitary", 930 / 3064)),
        published_unit="slices", slices_pairs=_FIGSHARE_SLICES, source="Cheng et al. 2015 (figshare 1512427)"),
    LayoutSpec(
        name="kaggle", dataset="Kaggle brain-tumor-mri-dataset (7,023 images in four class folders)",
        cohort="slices", classes=("glioma", "meningioma", "none", "pituitary"),
        # images, Training + Testing: glioma 1,321 + 300, meningioma 1,339 + 306, notumor 1,595 + 405,
        # pituitary 1,457 + 300 (the class folder counts)
        published_pairs=(("glioma", 1621 / 7023), ("meningioma", 1645 / 7023), ("none", 2000 / 7023),
                         ("pituitary", 1757 / 7023)),
        published_unit="images", slices_pairs=_KAGGLE_SLICES,
        source="Kaggle masoudnickparvar/brain-tumor-mri-dataset (class folder counts)"),
)}
#: The share of the Kaggle images in ``Testing/``: 1,311 of 7,023 (class folder counts).
KAGGLE_TEST_FRACTION = 1311 / 7023


def spec_for_layout(layout: str) -> LayoutSpec:
    """The :class:`LayoutSpec` of a layout."""
    if layout not in LAYOUT_SPECS:
        raise ConfigError(f"layout: expected one of {', '.join(LAYOUT_SPECS)}, found {layout!r}")
    return LAYOUT_SPECS[layout]


def cohort_for_layout(layout: str) -> CohortSpec:
    """The :class:`CohortSpec` whose subjects a layout is written from."""
    return COHORTS[spec_for_layout(layout).cohort]


def published_check(layout: str, counts: dict[str, int], tolerance: float = 0.03) -> dict[str, Any]:
    """A written layout's class fractions beside the published ones: ``{"fractions", "published",
    "max_deviation", "ok"}`` (``ok`` when every class is within ``tolerance``, 3 points by default)."""
    spec = spec_for_layout(layout)
    total = sum(counts.get(c, 0) for c in spec.classes)
    if total == 0:
        raise ConfigError(f"published_check: {layout}: expected written items of {spec.classes}, found none")
    frac = {c: counts.get(c, 0) / total for c in spec.classes}
    dev = max(abs(frac[c] - spec.published[c]) for c in spec.classes)
    return {"fractions": frac, "published": spec.published, "unit": spec.published_unit,
            "max_deviation": dev, "ok": dev <= tolerance}
