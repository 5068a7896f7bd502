"""BrainPhantom: deterministic synthetic brain-MRI subjects with tumours, findings and reports.

Introduced in ``01_data_prep``. The smoke profile cannot download the real datasets, so it
generates subjects from real anatomy (nilearn's packaged MNI152 template and tissue maps, see
:mod:`brainkit.data.anatomy`) and writes them in the real datasets' layouts.

One subject, step by step (all on the output grid, with ``scipy.ndimage``):

1. **Anatomy.** A backward map from subject millimetres to MNI millimetres: a random affine
   (rotation, anisotropic scaling, translation) plus a smooth elastic field drawn on a coarse grid
   and interpolated. Grey matter, white matter and CSF probabilities are sampled through it.
2. **Lesions** (unless a healthy control), drawn from the cohort spec of the dataset the subject stands
   in for (:mod:`brainkit.data.cohorts`: types, glioma grades and sizes, lobes). Glioma-like (irregular necrotic core label 1,
   enhancing rim label 4, oedema label 2 that spreads along white matter), meningioma-like
   (extra-axial, dural-based at the brain surface, homogeneously enhancing, little or no
   necrosis), or metastases (one to six small ring- or nodular-enhancing lesions with
   disproportionate oedema), or pituitary adenomas (sellar / suprasellar, midline, avidly enhancing,
   1-3 cm). High-grade gliomas have an enhancing rim and usually necrosis, low-grade ones are mostly
   non-enhancing; some gliomas reach the other hemisphere. Each is placed by hemisphere and lobe of the MNI lobe map. Its
   **mass effect** is a volume-inserting displacement ``r -> (r^3 - k R^3)^(1/3)`` around its centre,
   damped near the brain surface (the skull holds the outline), so tissue is pushed away, sulci
   and ventricles are compressed and, for large lesions, the midline shifts (measured, in mm).
3. **Distractors in every subject**: white-matter hyperintensities (bright in FLAIR/T2, never
   labelled) and vessel-like and choroid-plexus enhancement in T1ce, so "bright means tumour" fails.
4. **Contrasts** T1, T1ce, T2, FLAIR from tissue fractions (T1: WM > GM > CSF; T2: CSF > GM > WM;
   FLAIR: GM > WM, CSF dark; T1ce as T1 plus enhancement), lesion compartments blended with
   partial volume and texture, a smooth multiplicative bias field, a per-contrast scanner scale
   and Rician noise. ``images`` are skull-stripped (zero outside ``brain_mask``); with
   ``with_head=True`` the ``head`` volumes carry diploe, skull tables and scalp fat too.
5. **Findings** are measured on the generated labels (volumes, diameters along principal axes,
   lobes of the lesion voxels, midline shift of the displacement), and a report is written from
   them by :func:`brainkit.data.reports.write_report`.

Everything is deterministic in ``(seed, index)``: subject ``i`` is the same whatever the cohort
size or order, and its anatomy does not depend on whether it carries a lesion.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation
from scipy.special import expit

from ..errors import ConfigError
from .anatomy import (
    LOBES,
    brainstem_part_at,
    deep_structure_at,
    grid_affine,
    load_atlas,
    lobe_labels_at,
)
from .cohorts import CLINICAL_MIX, LESION_TYPES, CohortSpec, allocate
from .reports import write_report
from .subject import CONTRASTS, Subject

__all__ = [
    "LESION_TYPES",
    "LOBES",
    "lobe_map",
    "generate_subject",
    "generate_cohort",
    "is_control",
    "control_indices",
    "lesion_plan",
    "MIDLINE_SHIFT_REPORT_MM",
    "realism_stats",
]

from .anatomy import lobe_map  # noqa: E402  (re-exported: part of this module's API)

log = logging.getLogger(__name__)

#: Midline shifts at least this large (mm) are reported; smaller ones count as "no midline shift".
MIDLINE_SHIFT_REPORT_MM = 2.0
#: Peak tissue displacement (mm) from which a lesion is said to exert mass effect.
MASS_EFFECT_MM = 3.0
# Strength of the far-field part of the mass displacement (see _mass_displacement); must stay < 3.
_FAR_FIELD = 2.5
#: Generator version: part of the cache key of written sets, bumped when subjects change.
#: v4: one cohort spec per dataset (brainkit.data.cohorts), BraTS-sized gliomas with grades, gliomas
#: crossing the midline, pituitary adenomas, TextBraTS-ordered reports.
PHANTOM_VERSION = 4

_TYPE_WEIGHTS = {"glioma": 0.5, "meningioma": 0.2, "metastasis": 0.3}
_LOBE_WEIGHTS = {
    "glioma": {"frontal": 0.28, "parietal": 0.16, "temporal": 0.22, "occipital": 0.08, "deep": 0.12,
               "cerebellum": 0.07, "brainstem": 0.07},
    "meningioma": {"frontal": 0.34, "parietal": 0.28, "temporal": 0.14, "occipital": 0.12, "cerebellum": 0.12},
    "metastasis": {"frontal": 0.24, "parietal": 0.18, "temporal": 0.14, "occipital": 0.1, "deep": 0.08,
                   "cerebellum": 0.18, "brainstem": 0.08},
}
# Pituitary adenoma (figshare, Kaggle): radius of a 1-3 cm sellar / suprasellar mass (mm).
_PITUITARY_RADIUS = (5.0, 15.0)
# Largest core radius (mm) that fits a lobe.
_MAX_RADIUS = {"frontal": 26.0, "parietal": 24.0, "temporal": 22.0, "occipital": 18.0, "deep": 15.0,
               "cerebellum": 16.0, "brainstem": 8.0}

# Relative signal of each tissue / compartment per contrast (before bias, scale and noise).
_TISSUE = {
    "t1": {"gm": 0.62, "wm": 0.88, "csf": 0.22},
    "t1ce": {"gm": 0.62, "wm": 0.88, "csf": 0.22},
    "t2": {"gm": 0.72, "wm": 0.52, "csf": 1.30},
    "flair": {"gm": 0.78, "wm": 0.62, "csf": 0.14},
}
_COMPARTMENT = {
    "oedema": {"t1": 0.55, "t1ce": 0.56, "t2": 1.12, "flair": 1.06},
    "enhancing": {"t1": 0.62, "t1ce": 1.35, "t2": 0.95, "flair": 0.98},
    "necrosis": {"t1": 0.32, "t1ce": 0.34, "t2": 1.35, "flair": 0.6},
    "nonenhancing": {"t1": 0.50, "t1ce": 0.50, "t2": 1.15, "flair": 1.05},
    "meningioma": {"t1": 0.60, "t1ce": 1.30, "t2": 0.80, "flair": 0.85},
    # pituitary macroadenoma: T1 iso to grey matter, avid enhancement, T2 iso to slightly bright
    "pituitary": {"t1": 0.60, "t1ce": 1.28, "t2": 0.82, "flair": 0.80},
    "wmh": {"t1": 0.72, "t1ce": 0.72, "t2": 0.98, "flair": 1.02},
    "vessel": {"t1": 0.70, "t1ce": 1.40, "t2": 0.35, "flair": 0.30},
    "choroid": {"t1": 0.55, "t1ce": 1.25, "t2": 1.00, "flair": 0.55},
}
_HEAD = {  # layers outside the brain mask, inner to outer
    "bone": {"t1": 0.06, "t1ce": 0.06, "t2": 0.05, "flair": 0.05},
    "marrow": {"t1": 0.85, "t1ce": 0.88, "t2": 0.60, "flair": 0.62},
    "fat": {"t1": 1.05, "t1ce": 1.05, "t2": 0.80, "flair": 0.85},
    "skin": {"t1": 0.50, "t1ce": 0.55, "t2": 0.45, "flair": 0.45},
}
_BRAIN_CENTRE = np.array([0.0, -17.0, 5.0])  # MNI mm, the centre of rotation of the random affine
_WMH_GRADES = ("none", "mild", "moderate", "marked")


# --------------------------------------------------------------------------------------------
# cached anatomy at the resolution a grid needs


@functools.lru_cache(maxsize=8)
def _sampling_maps(resolution: int, spacing_key: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """GM, WM, mask and surface distance, pre-smoothed against aliasing for a target spacing."""
    atlas = load_atlas(resolution)
    sigma = [math.sqrt(max(s * s - resolution * resolution, 0.0)) / (2.355 * resolution) for s in spacing_key]
    out = []
    for arr in (atlas.gm, atlas.wm, atlas.mask):
        a = ndimage.gaussian_filter(arr, sigma) if max(sigma) > 0.1 else np.array(arr)
        a.setflags(write=False)
        out.append(a)
    out.append(atlas.surface_mm)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _candidates() -> dict[str, np.ndarray]:
    """Points of the 2 mm MNI brain mask with their tissue, lobe and distances (for placement)."""
    atlas = load_atlas(2)
    idx = np.argwhere(atlas.mask > 0.5)
    xyz = (idx @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]).astype(np.float32)
    sel = tuple(idx.T)
    deep_csf = (atlas.csf > 0.6) & (atlas.surface_mm > 20.0)
    vent_dist = ndimage.distance_transform_edt(~deep_csf, sampling=2.0).astype(np.float32)
    grad = np.stack(np.gradient(atlas.surface_mm.astype(np.float32)), axis=-1)
    out = {
        "xyz": xyz,
        "gm": atlas.gm[sel],
        "wm": atlas.wm[sel],
        "csf": atlas.csf[sel],
        "surf": atlas.surface_mm[sel],
        "vent": vent_dist[sel],
        "lobe": lobe_labels_at(xyz[:, 0], xyz[:, 1], xyz[:, 2]),
        "inward": grad[sel],
    }
    for v in out.values():
        v.setflags(write=False)
    return out


@functools.lru_cache(maxsize=8)
def _grid(shape: tuple[int, int, int], margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid affine and the world coordinates (3, N) of its voxel centres."""
    affine = grid_affine(shape, margin_mm)
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    world.setflags(write=False)
    return affine, world


def _interp_matrix(n_out: int, n_coarse: int, smooth: float = 0.8) -> np.ndarray:
    """Gaussian interpolation weights (n_out, n_coarse) from a coarse grid spanning the axis."""
    x = (np.arange(n_out) + 0.5) / n_out * (n_coarse - 1)
    g = np.arange(n_coarse)
    w = np.exp(-0.5 * ((x[:, None] - g[None, :]) / smooth) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _smooth_field(rng: np.random.Generator, coarse: tuple[int, int, int], shape: tuple[int, int, int],
                  n: int = 1) -> np.ndarray:
    """``n`` smooth random fields of ``shape`` (unit-ish std), drawn on a coarse grid and upsampled."""
    c = rng.standard_normal((n,) + tuple(coarse)).astype(np.float32)
    wx, wy, wz = (_interp_matrix(s, k) for s, k in zip(shape, coarse))
    f = np.einsum("ia,jb,kc,nabc->nijk", wx, wy, wz, c, optimize=True)
    f /= f.reshape(n, -1).std(axis=1).reshape(n, 1, 1, 1) + 1e-6
    return f


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    return Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()


# --------------------------------------------------------------------------------------------
# which subjects are controls, and which side their lesion is on


def is_control(index: int, healthy_fraction: float = 0.25) -> bool:
    """Whether subject ``index`` of a cohort is a healthy control.

    A low-discrepancy rule independent of the cohort size: the first ``n`` subjects hold exactly
    ``floor(n * healthy_fraction + 0.5)`` controls (round half up) for every ``n``.
    """
    hf = float(healthy_fraction)
    return math.floor((index + 1) * hf + 0.5) - math.floor(index * hf + 0.5) == 1


def control_indices(n: int, healthy_fraction: float = 0.25) -> list[int]:
    """The indices of the controls among subjects ``0..n-1`` (see :func:`is_control`)."""
    return [i for i in range(n) if is_control(i, healthy_fraction)]


def _hemisphere(index: int, seed: int) -> str:
    """Block-randomised side: subjects 2b and 2b+1 get opposite hemispheres, in a random order."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index) // 2, 0xB1A7]))
    order = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    return order[index % 2]


# --------------------------------------------------------------------------------------------
# lesion planning (in MNI space; cheap, no volumes)


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _side_ok(x: np.ndarray, hemisphere: str, lobe: str) -> np.ndarray:
    lo = 3.0 if lobe == "brainstem" else 8.0
    return (x <= -lo) if hemisphere == "left" else (x >= lo)


def _choose_centre(rng, kind: str, lobe: str, hemisphere: str, radius: float,
                   avoid: list[tuple[np.ndarray, float]], *, x_max: float | None = None,
                   near: tuple[np.ndarray, float] | None = None) -> tuple[np.ndarray, float, np.ndarray] | None:
    """A centre (MNI mm) for a lesion, shrinking the radius until one fits; None if none fits.

    ``x_max`` keeps the centre within that distance of the midline (a glioma that crosses it);
    ``near`` = (point, distance) keeps it within ``distance`` of ``point`` (its contralateral part)."""
    c = _candidates()
    in_lobe = (c["lobe"] == LOBES.index(lobe) + 1) & _side_ok(c["xyz"][:, 0], hemisphere, lobe)
    if x_max is not None:
        in_lobe &= np.abs(c["xyz"][:, 0]) <= x_max
    if near is not None:
        in_lobe &= np.linalg.norm(c["xyz"] - near[0], axis=1) <= near[1]
    if kind == "meningioma":
        tissue = (c["surf"] >= 1.5) & (c["surf"] <= 5.0)
    elif kind == "metastasis":
        tissue = (c["gm"] > 0.25) & (c["gm"] < 0.75) & (c["wm"] > 0.2)
        if lobe in ("deep", "brainstem", "cerebellum"):
            tissue = (c["gm"] + c["wm"]) > 0.7
    else:
        tissue = c["wm"] > 0.45 if lobe not in ("deep", "brainstem", "cerebellum") else (c["gm"] + c["wm"]) > 0.7
    base = in_lobe & tissue
    r = radius
    for _ in range(12):
        ok = base.copy()
        if kind != "meningioma":
            ok &= c["surf"] >= 0.6 * r + 3.0
        for centre, rad in avoid:
            ok &= np.linalg.norm(c["xyz"] - centre, axis=1) >= rad + r + 10.0
        cand = np.flatnonzero(ok)
        if cand.size:
            j = int(cand[rng.integers(cand.size)])
            inward = c["inward"][j].astype(np.float64)
            norm = np.linalg.norm(inward)
            inward = inward / norm if norm > 1e-6 else np.array([0.0, 0.0, -1.0])
            return c["xyz"][j].astype(np.float64), r, inward
        r *= 0.85
        if r < 3.5:
            break
    return None


def lesion_plan(index: int, *, seed: int = 0, lesion_type: str | None = None,
                spec: CohortSpec | None = None) -> dict[str, Any]:
    """The lesion plan of subject ``index`` (type, side, lesions with MNI centres and sizes).

    Introduced in ``01_data_prep``. Cheap (no volumes): it is what :func:`generate_subject` draws
    for a lesional subject, so a sweep over many indices shows the placement statistics. ``spec``
    (a :class:`~brainkit.data.cohorts.CohortSpec`, default the general mix) sets the lesion types,
    the glioma grades, sizes and lobes and the share of gliomas crossing the midline; a dataset spec
    allocates the type, grade and crossing by a low-discrepancy rule (:func:`~brainkit.data.cohorts.allocate`),
    so a cohort's proportions match the spec's at any size.
    """
    spec = CLINICAL_MIX if spec is None else spec
    mixed = spec is CLINICAL_MIX
    # the allocation runs over the cohort's lesional subjects (subject index minus the controls before it,
    # see is_control), so the proportions hold among them whatever the share of controls
    rank = int(index) - (math.floor(int(index) * float(spec.healthy_fraction) + 0.5))
    ss = np.random.SeedSequence([int(seed), int(index)])
    streams = ss.spawn(6)
    rng = np.random.default_rng(streams[1])
    if lesion_type is None:
        lesion_type = _pick(rng, _TYPE_WEIGHTS) if mixed else allocate(rank, spec.lesion_weights, stream=0)
        if not mixed:
            rng.random()  # keep the stream aligned with the mixed cohort's draw
    else:
        rng.random()  # keep the stream aligned with the drawn case
    if lesion_type not in LESION_TYPES:
        raise ConfigError(f"lesion_type: expected one of {', '.join(LESION_TYPES)}, found {lesion_type!r}")
    hemisphere = _hemisphere(index, seed)
    crossing = False
    if lesion_type == "glioma":
        weights = spec.glioma_lobes
        if not mixed and spec.glioma_crossing_fraction > 0:
            f = spec.glioma_crossing_fraction
            crossing = allocate(rank, {"cross": f, "one": 1.0 - f}, stream=2) == "cross"
        if crossing:  # a glioma reaches the other hemisphere through the corpus callosum or the deep nuclei
            weights = {k: v for k, v in weights.items() if k in ("frontal", "parietal", "occipital", "deep")}
        lobe = _pick(rng, weights)
    elif lesion_type == "pituitary":
        lobe, hemisphere = "sellar", "midline"
    else:
        lobe = _pick(rng, _LOBE_WEIGHTS[lesion_type])
    lesions: list[dict[str, Any]] = []
    if lesion_type == "glioma":
        u_grade = rng.random()
        grade = ("hgg" if u_grade < 0.8 else "lgg") if mixed else allocate(rank, spec.glioma_grades, stream=1)
        lo, hi = spec.glioma_radius_mm
        r = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        r = min(r, _MAX_RADIUS[lobe] * spec.glioma_radius_cap_scale)
        # HGG: an enhancing rim (necrotic when large); LGG: non-enhancing (a dataset spec lets 15 % of
        # them enhance faintly, as low-grade gliomas sometimes do)
        enhancing = grade == "hgg" or (not mixed and rng.random() < 0.15)
        lesions.append({
            "kind": "glioma", "lobe": lobe, "hemisphere": hemisphere, "radius": r, "grade": grade,
            "enhancing": bool(enhancing),
            "necrotic": bool(grade == "hgg" and (r > 10.0 or rng.random() < 0.5)),
            "oedema_extent": float(rng.uniform(0.35, 1.1) if grade == "hgg" else rng.uniform(0.25, 0.8)),
            "mass_k": float(rng.uniform(0.55, 0.95) if grade == "hgg" else rng.uniform(0.3, 0.7)),
            "irregularity": float(rng.uniform(0.12, 0.25)),
        })
        if crossing:
            other = "left" if hemisphere == "right" else "right"
            lesions.append({
                "kind": "glioma", "lobe": lobe, "hemisphere": other, "radius": r * float(rng.uniform(0.45, 0.7)),
                "grade": grade, "enhancing": bool(enhancing), "necrotic": False, "crossing_part": True,
                "oedema_extent": lesions[0]["oedema_extent"], "mass_k": 0.5 * lesions[0]["mass_k"],
                "irregularity": lesions[0]["irregularity"],
            })
    elif lesion_type == "pituitary":
        r = float(np.exp(rng.uniform(np.log(_PITUITARY_RADIUS[0]), np.log(_PITUITARY_RADIUS[1]))))
        lesions.append({
            "kind": "pituitary", "lobe": "sellar", "hemisphere": "midline", "radius": r,
            "enhancing": True, "necrotic": False, "oedema_extent": 0.0,
            "mass_k": float(rng.uniform(0.3, 0.6)), "irregularity": float(rng.uniform(0.03, 0.08)),
        })
    elif lesion_type == "meningioma":
        r = float(np.exp(rng.uniform(np.log(6.0), np.log(22.0))))
        parafalcine = lobe in ("frontal", "parietal", "occipital") and rng.random() < 0.2
        lesions.append({
            "kind": "meningioma", "lobe": lobe, "hemisphere": hemisphere, "radius": min(r, 20.0 if lobe == "cerebellum" else 22.0),
            "enhancing": True, "necrotic": bool(rng.random() < 0.15),
            "oedema_extent": float(rng.uniform(0.2, 0.8)) if rng.random() < 0.45 else 0.0,
            "mass_k": float(rng.uniform(0.75, 1.0)), "irregularity": float(rng.uniform(0.03, 0.08)),
            "parafalcine": bool(parafalcine),
        })
    else:
        u = rng.random()
        count = 1 if u < 0.45 else 2 if u < 0.65 else 3 if u < 0.8 else int(rng.integers(4, 7))
        for i in range(count):
            lb = lobe if i == 0 else _pick(rng, _LOBE_WEIGHTS["metastasis"])
            side = hemisphere if (i == 0 or rng.random() < 0.5) else ("left" if hemisphere == "right" else "right")
            r = float(rng.uniform(4.0, 11.0) if i == 0 else rng.uniform(3.5, 8.0))
            r = min(r, _MAX_RADIUS[lb])
            ring = r >= 5.5
            lesions.append({
                "kind": "metastasis", "lobe": lb, "hemisphere": side, "radius": r,
                "enhancing": True, "necrotic": bool(ring),
                "oedema_extent": float(rng.uniform(1.0, 2.6)) if rng.random() < 0.9 else 0.0,
                "mass_k": float(rng.uniform(0.4, 0.8)), "irregularity": float(rng.uniform(0.04, 0.1)),
            })
    # centres (MNI), shrinking a lesion until it fits its lobe; drop metastases that do not fit
    placed: list[dict[str, Any]] = []
    avoid: list[tuple[np.ndarray, float]] = []
    for les in lesions:
        kind = les["kind"]
        if kind == "pituitary":
            got = _choose_sellar(rng, les["radius"])
        elif les.get("parafalcine"):
            got = _choose_parafalcine(rng, les["lobe"], les["hemisphere"], les["radius"])
        elif les.get("crossing_part"):
            if not placed:
                continue
            main = np.asarray(placed[0]["centre_mni"])
            got = _choose_centre(rng, kind, les["lobe"], les["hemisphere"], les["radius"], [],
                                 x_max=_CROSSING_X_MM, near=(main, 2.0 * placed[0]["radius"] + 10.0))
        elif crossing:
            got = _choose_centre(rng, kind, les["lobe"], les["hemisphere"], les["radius"], avoid, x_max=_CROSSING_X_MM)
            if got is None:  # no room near the midline in this lobe: a one-sided glioma
                got = _choose_centre(rng, kind, les["lobe"], les["hemisphere"], les["radius"], avoid)
        else:
            got = _choose_centre(rng, kind, les["lobe"], les["hemisphere"], les["radius"], avoid)
        if got is None:
            continue
        centre, r, inward = got
        les.update(centre_mni=[float(v) for v in centre], radius=float(r), inward=[float(v) for v in inward])
        placed.append(les)
        avoid.append((centre, r))
    if not placed:  # cannot happen with the shipped atlas; guard anyway
        raise ConfigError(f"lesion_plan: could not place any {lesion_type} lesion for subject {index}")
    return {"lesion_type": lesion_type, "hemisphere": hemisphere, "lobe": lobe, "lesions": placed}


# A glioma that crosses the midline has its centre (and its contralateral part's) this close to it (mm).
_CROSSING_X_MM = 24.0


@functools.lru_cache(maxsize=1)
def _sella_mni() -> np.ndarray:
    """The floor of the brain in the midline above the pituitary fossa (MNI mm), from the atlas."""
    c = _candidates()
    x, y, z = c["xyz"][:, 0], c["xyz"][:, 1], c["xyz"][:, 2]
    sel = (np.abs(x) <= 3.0) & (y >= -6.0) & (y <= 8.0) & (z < 10.0) & (c["lobe"] != LOBES.index("brainstem") + 1)
    if not sel.any():
        return np.array([0.0, 2.0, -18.0])
    k = np.flatnonzero(sel)[int(np.argmin(z[sel]))]
    return c["xyz"][k].astype(np.float64)


def _choose_sellar(rng, radius: float):
    """A pituitary adenoma's centre: in the sella below the brain's midline floor, growing upwards
    (suprasellar) as it enlarges; its base is the skull base, so it is extra-axial."""
    floor = _sella_mni()
    centre = floor + np.array([rng.normal(0.0, 0.8), rng.normal(0.0, 1.5), 0.1 * radius - 3.0])
    return centre, float(radius), np.array([0.0, 0.0, 1.0])


def _choose_parafalcine(rng, lobe: str, hemisphere: str, radius: float):
    c = _candidates()
    x = c["xyz"][:, 0]
    side = (x <= -2.0) & (x >= -7.0) if hemisphere == "left" else (x >= 2.0) & (x <= 7.0)
    ok = side & (c["xyz"][:, 2] > 10.0) & (c["lobe"] == LOBES.index(lobe) + 1) & (c["csf"] > 0.3)
    cand = np.flatnonzero(ok)
    if not cand.size:
        return _choose_centre(rng, "meningioma", lobe, hemisphere, radius, [])
    j = int(cand[rng.integers(cand.size)])
    sign = -1.0 if hemisphere == "left" else 1.0
    inward = np.array([sign, 0.0, 0.0])
    r = min(radius, 16.0)
    centre = c["xyz"][j].astype(np.float64)
    # the dural base is the falx: the flattened mass (half-thickness about 0.7 r along x) grows into
    # its own hemisphere, so its centre sits that far off the midline (it must not straddle it)
    centre[0] = sign * max(abs(centre[0]), 0.85 * r + 1.0)
    return centre, r, inward


# --------------------------------------------------------------------------------------------
# the generator


class _Warp:
    """Backward map subject mm -> MNI mm: q = M (p - c0) + c0 + t + e(p)."""

    def __init__(self, rng: np.random.Generator, shape, world: np.ndarray, strength: float = 1.0):
        angles = rng.normal(0.0, 4.0, size=3).clip(-9, 9) * strength
        scales = np.exp(rng.normal(0.0, 0.04, size=3).clip(-0.09, 0.09) * strength + rng.normal(0, 0.03) * strength)
        self.M = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ np.diag(1.0 / scales)
        self.t = rng.normal(0.0, 2.5, size=3).clip(-6, 6) * strength
        self.coarse = (6, 7, 6)
        self.e = _smooth_field(rng, self.coarse, tuple(shape), n=3) * np.float32(2.5 * strength)
        self.shape = tuple(shape)
        self.world = world

    def forward_grid(self) -> np.ndarray:
        """q0 for every voxel (3, N), float32."""
        p = self.world.astype(np.float64) - _BRAIN_CENTRE[:, None]
        q = self.M @ p + (_BRAIN_CENTRE + self.t)[:, None]
        return (q + self.e.reshape(3, -1)).astype(np.float32)

    def inverse(self, q: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Subject mm of MNI points q (k, 3), by fixed-point iteration through the elastic field."""
        q = np.atleast_2d(np.asarray(q, dtype=np.float64))
        minv = np.linalg.inv(self.M)
        ainv = np.linalg.inv(affine)
        p = (minv @ (q - _BRAIN_CENTRE - self.t).T).T + _BRAIN_CENTRE
        for _ in range(3):
            vox = (ainv[:3, :3] @ p.T + ainv[:3, 3:4])
            e = np.stack([ndimage.map_coordinates(self.e[i], vox, order=1, mode="nearest") for i in range(3)], 1)
            p = (minv @ (q - _BRAIN_CENTRE - self.t - e).T).T + _BRAIN_CENTRE
        return p


def _mass_displacement(points: np.ndarray, lesions: list[dict[str, Any]], surf: np.ndarray | None) -> np.ndarray:
    """Displacement u (3, N) at subject points (3, N): tissue moves by u away from each lesion."""
    u = np.zeros_like(points, dtype=np.float32)
    for les in lesions:
        c = np.asarray(les["centre_subject"], dtype=np.float32)[:, None]
        d = points - c
        r = np.sqrt((d * d).sum(0)).astype(np.float32)
        r = np.maximum(r, 1e-3)
        vol = np.float32(les["mass_k"] * les["radius_min"] ** 3)
        src = np.cbrt(np.maximum(r**3 - vol, 0.0))
        mag = r - src
        # far field: the lesion with its oedema (radius about R (1 + 0.75 E)) inserts a volume V
        # ~ k (4 pi / 3) R_tot^3, which pushes incompressible tissue by V / (4 pi r^2) far away; the
        # closed skull pushes more towards the falx, hence the factor _FAR_FIELD. Smoothed to
        # F (k / 3) R_tot^3 r / (r^2 + R_tot^2)^(3/2): slope F k / 3 < 1 at the centre, so the map
        # stays one-to-one. Only large lesions shift the midline by millimetres.
        big = np.float32(les["radius"] * (1.0 + 0.75 * max(float(les["oedema_extent"]), 0.0)))
        far = np.float32(_FAR_FIELD * les["mass_k"] / 3.0) * big**3 * r / (r * r + big * big) ** 1.5
        mag = mag + far
        if surf is not None:
            w = np.maximum(np.clip(surf / 15.0, 0.0, 1.0), np.exp(-((r / (2.0 * les["radius"])) ** 2)))
            mag = mag * w
        u += d / r * mag
    return u


def _paint_lesion(les: dict[str, Any], rng: np.random.Generator, grid: dict[str, Any], fields: dict[str, np.ndarray]):
    """Paint one lesion's soft compartments and hard labels into ``fields`` (crop-wise)."""
    shape = grid["shape"]
    affine = grid["affine"]
    spacing = grid["spacing"]
    c = np.asarray(les["centre_subject"])
    radii = np.asarray(les["radii"])
    ext = float(radii.max()) * (1.0 + 1.5 * max(les["oedema_extent"], 0.2) * 1.4 + les["irregularity"]) + 6.0
    ainv = np.linalg.inv(affine)
    cv = ainv[:3, :3] @ c + ainv[:3, 3]
    half = ext / spacing
    lo = np.maximum(np.floor(cv - half).astype(int), 0)
    hi = np.minimum(np.ceil(cv + half).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    cshape = tuple(int(b - a) for a, b in zip(lo, hi))
    idx = np.indices(cshape, dtype=np.float32).reshape(3, -1) + lo[:, None].astype(np.float32)
    p = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    d = les["rotation"].T.astype(np.float32) @ (p - c[:, None].astype(np.float32))
    rho0 = np.sqrt(((d / radii[:, None].astype(np.float32)) ** 2).sum(0)).reshape(cshape)
    # smooth noise fields in the crop: correlation ~ a third of the radius
    sig = np.maximum(0.35 * float(radii.mean()) / spacing, 0.6)
    noise = rng.standard_normal((4,) + cshape).astype(np.float32)
    for i in range(4):
        noise[i] = ndimage.gaussian_filter(noise[i], sig, mode="nearest")
        noise[i] /= noise[i].std() + 1e-6
    irr = les["irregularity"]
    rho = rho0 * (1.0 + irr * noise[0])
    tau = 0.55 * float(spacing.mean()) / float(radii.mean())
    wm = fields["wm"][sl]
    tissue = (fields["gm"][sl] + wm) > 0.35
    core_hard = rho < 1.0
    s_core = expit((1.0 - rho) / tau)
    # the boundary noise can pinch off islands of "core" far from the lesion (up to several radii
    # away, which made 16 cm diameters): keep the largest connected piece, in labels and image alike
    pieces, n_pieces = ndimage.label(core_hard)
    if n_pieces > 1:
        main = pieces == (1 + int(np.argmax(np.bincount(pieces.ravel())[1:])))
        core_hard = main
        s_core = s_core * ndimage.binary_dilation(main, iterations=1)
    kind = les["kind"]
    # necrosis
    if les["necrotic"]:
        f_nec = les["necrosis_fraction"] * (1.0 + 0.12 * noise[1])
        nec_hard = rho < f_nec
        s_nec = expit((f_nec - rho) / tau)
    else:
        nec_hard = np.zeros(cshape, bool)
        s_nec = np.zeros(cshape, np.float32)
    # oedema: spreads along white matter, fades towards its edge
    E = les["oedema_extent"]
    if E > 0:
        rho_oed = 1.0 + E * (0.3 + 0.9 * wm) * (1.0 + 0.3 * noise[2])
        oed_hard = (rho < rho_oed) & ~core_hard & tissue
        lin = np.clip((rho_oed - rho) / np.maximum(rho_oed - 1.0, 1e-3), 0.0, 1.0)
        o = (0.3 + 0.7 * lin**0.8) * expit((rho_oed - rho) / tau)
        o *= (1.0 - s_core) * np.clip((fields["gm"][sl] + wm) * 1.5, 0.0, 1.0)
    else:
        oed_hard = np.zeros(cshape, bool)
        o = np.zeros(cshape, np.float32)
    # core compartment intensities (with texture)
    texture = 1.0 + 0.07 * noise[3]
    if kind in ("meningioma", "pituitary"):
        solid = kind
    elif les["enhancing"]:
        solid = "enhancing"
    else:
        solid = "nonenhancing"
    # an incomplete rim: parts of a glioma's wall do not enhance
    rim_gap = np.zeros(cshape, bool)
    if kind == "glioma" and les["enhancing"]:
        rim_gap = noise[1] < les["rim_gap_threshold"]
    inten = les["intensity"]
    for con in CONTRASTS:
        img = fields["img_" + con][sl]
        img += o * (inten["oedema"][con] - img)
        solid_val = np.where(rim_gap, inten["nonenhancing"][con], inten[solid][con])
        core_val = (s_nec * inten["necrosis"][con] + (1.0 - s_nec) * solid_val) * texture
        img += s_core * (core_val - img)
        fields["img_" + con][sl] = img
    # hard labels (core takes precedence over oedema from any lesion)
    seg = fields["seg"][sl]
    owner = fields["owner"][sl]
    lab_core = np.where(nec_hard, 1, np.where(rim_gap | (solid == "nonenhancing"), 1, 4)).astype(np.uint8)
    core_new = core_hard & ((seg == 0) | (seg == 2))
    seg[core_new] = lab_core[core_new]
    owner[core_new] = les["id"]
    oed_new = oed_hard & (seg == 0)
    seg[oed_new] = 2
    owner[oed_new] = les["id"]
    fields["nec"][sl] |= core_hard & nec_hard
    if kind in ("meningioma", "pituitary"):
        fields["extra_axial"][sl] |= core_hard


def _lesion_details(les: dict[str, Any], rng: np.random.Generator, contrast_jitter: dict[str, float]) -> None:
    """Per-lesion shape, orientation and compartment intensities (drawn once, in place)."""
    r = les["radius"]
    if les["kind"] == "pituitary":
        ratios = np.array([1.0, 0.95, 1.15]) * rng.uniform(0.9, 1.1, 3)  # taller than wide (snowman)
        rot = np.eye(3)
    elif les["kind"] == "meningioma":
        ratios = np.array([0.7, 1.2, 1.2]) * rng.uniform(0.9, 1.1, 3)
        inward = np.asarray(les["inward_subject"])
        # first axis along the surface normal: the mass is flattened against the dura
        a = inward / np.linalg.norm(inward)
        b = np.cross(a, [0.0, 0.0, 1.0] if abs(a[2]) < 0.9 else [1.0, 0.0, 0.0])
        b /= np.linalg.norm(b)
        rot = np.stack([a, b, np.cross(a, b)], axis=1)
    else:
        ratios = rng.uniform(0.78, 1.28, 3)
        rot = _random_rotation(rng)
    ratios /= np.prod(ratios) ** (1.0 / 3.0)
    radii = r * ratios
    les["rotation"] = rot
    les["radii"] = radii
    # the collapsed zone of the mass displacement must stay inside the painted core
    les["radius_min"] = float(min(r, radii.min() * (1.0 - 2.0 * les["irregularity"]))) * 0.95
    les["necrosis_fraction"] = float(rng.uniform(0.35, 0.72) if les["kind"] != "meningioma" else rng.uniform(0.2, 0.35))
    les["rim_gap_threshold"] = float(rng.uniform(-3.0, -0.8))
    inten: dict[str, dict[str, float]] = {}
    for comp, vals in _COMPARTMENT.items():
        j = rng.uniform(0.9, 1.1)
        inten[comp] = {c: float(v * j * contrast_jitter[c]) for c, v in vals.items()}
    # necrosis is dark to bright in FLAIR (fluid may or may not be suppressed); meningioma iso to bright
    inten["necrosis"]["flair"] = float(rng.uniform(0.3, 1.05) * contrast_jitter["flair"])
    inten["meningioma"]["flair"] = float(rng.uniform(0.72, 1.0) * contrast_jitter["flair"])
    inten["oedema"]["flair"] = float(rng.uniform(0.9, 1.18) * contrast_jitter["flair"])
    les["intensity"] = inten


def _paint_blob(fields, key_prefix: str, centre_subject: np.ndarray, radii: np.ndarray, rot: np.ndarray,
                values: dict[str, float], grid: dict[str, Any], strength: float = 1.0, weight_key: str | None = None):
    """Blend a soft ellipsoidal blob of ``values`` into the images (distractors)."""
    affine, spacing, shape = grid["affine"], grid["spacing"], grid["shape"]
    ainv = np.linalg.inv(affine)
    cv = ainv[:3, :3] @ centre_subject + ainv[:3, 3]
    half = 2.0 * radii.max() / spacing + 1
    lo = np.maximum(np.floor(cv - half).astype(int), 0)
    hi = np.minimum(np.ceil(cv + half).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    cshape = tuple(int(b - a) for a, b in zip(lo, hi))
    idx = np.indices(cshape, dtype=np.float32).reshape(3, -1) + lo[:, None].astype(np.float32)
    p = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    d = rot.T.astype(np.float32) @ (p - centre_subject[:, None].astype(np.float32))
    rho2 = ((d / radii[:, None].astype(np.float32)) ** 2).sum(0).reshape(cshape)
    s = strength * np.exp(-1.5 * rho2)
    if weight_key is not None:
        s = s * fields[weight_key][sl]
    for con in CONTRASTS:
        img = fields[key_prefix + con][sl]
        img += s * (values[con] - img)


def _wmh(rng, warp: _Warp, grid, fields, contrast_jitter) -> str:
    """White-matter hyperintensities (never labelled); returns the burden grade."""
    u = rng.random()
    grade = "none" if u < 0.25 else "mild" if u < 0.65 else "moderate" if u < 0.9 else "marked"
    count = {"none": int(rng.integers(0, 3)), "mild": int(rng.integers(3, 9)),
             "moderate": int(rng.integers(8, 17)), "marked": int(rng.integers(15, 26))}[grade]
    c = _candidates()
    supra = (c["lobe"] <= LOBES.index("deep") + 1) & (c["wm"] > 0.6)
    peri = supra & (c["vent"] < 8.0)
    deep_wm = supra & (c["surf"] > 10.0)
    pools = [np.flatnonzero(peri), np.flatnonzero(deep_wm)]
    centres, radii, rots = [], [], []
    for _i in range(count):
        pool = pools[0] if (grade in ("moderate", "marked") and rng.random() < 0.5) else pools[1]
        j = int(pool[rng.integers(pool.size)])
        centres.append(c["xyz"][j])
        big = 6.0 if grade in ("moderate", "marked") else 4.0
        r = rng.uniform(1.8, big) * np.array([1.0, *rng.uniform(0.6, 1.6, 2)])
        radii.append(r)
        rots.append(_random_rotation(rng))
    if centres:
        subj = warp.inverse(np.asarray(centres), grid["affine"])
        wm_vals = {con: v * contrast_jitter[con] for con, v in _COMPARTMENT["wmh"].items()}
        for k in range(len(centres)):
            vals = dict(wm_vals)
            vals["flair"] = wm_vals["flair"] * float(rng.uniform(0.9, 1.15))
            _paint_blob(fields, "img_", subj[k], radii[k], rots[k], vals, grid, strength=float(rng.uniform(0.6, 1.0)),
                        weight_key="wm")
    return grade


def _vessels(rng, warp: _Warp, grid, fields, contrast_jitter) -> None:
    """Vessel-like tubes (sulcal vessels) and choroid plexus, enhancing in T1ce."""
    shape, affine = grid["shape"], grid["affine"]
    c = _candidates()
    pool = np.flatnonzero((c["csf"] > 0.45) & (c["surf"] < 25.0) & (c["lobe"] <= LOBES.index("cerebellum") + 1))
    n = int(rng.integers(10, 22))
    starts = warp.inverse(c["xyz"][pool[rng.integers(pool.size, size=n)]], affine)
    ainv = np.linalg.inv(affine)
    spacing = grid["spacing"]
    vol = np.zeros(shape, np.float32)
    pts = []
    for k in range(n):
        p = starts[k].copy()
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        steps = int(rng.integers(12, 40))
        for _ in range(steps):
            pts.append(p.copy())
            direction = direction + 0.35 * rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            p = p + 1.5 * direction
    pts_arr = np.asarray(pts)
    vox = np.rint(ainv[:3, :3] @ pts_arr.T + ainv[:3, 3:4]).astype(int)
    keep = np.all((vox >= 0) & (vox < np.asarray(shape)[:, None]), axis=0)
    np.add.at(vol, tuple(vox[:, keep]), 1.0)
    vol = ndimage.gaussian_filter(vol, 0.9 / spacing * 1.2)
    vol = np.clip(vol / (vol.max() + 1e-6) * 2.5, 0.0, 1.0)
    vol *= np.clip(fields["csf"] + 0.5 * fields["gm"], 0.0, 1.0) * rng.uniform(0.6, 1.0)
    for con in CONTRASTS:
        img = fields["img_" + con]
        img += vol * (_COMPARTMENT["vessel"][con] * contrast_jitter[con] - img)
    # choroid plexus in the atria of the lateral ventricles
    cp = warp.inverse(np.array([[-27.0, -40.0, 14.0], [27.0, -40.0, 14.0]]), affine)
    vals = {con: v * contrast_jitter[con] for con, v in _COMPARTMENT["choroid"].items()}
    for k in range(2):
        _paint_blob(fields, "img_", cp[k], np.array([4.0, 6.0, 3.5]) * rng.uniform(0.8, 1.2), np.eye(3), vals, grid,
                    strength=float(rng.uniform(0.6, 1.0)), weight_key="csf")


def _principal_extents(points_mm: np.ndarray, voxel_mm: float) -> list[float]:
    """Extents (cm, descending) of a point set along its principal axes."""
    if len(points_mm) < 2:
        return [round(voxel_mm / 10.0, 1)] * 3
    centred = points_mm - points_mm.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt.T
    ext = proj.max(0) - proj.min(0) + voxel_mm
    ext = np.sort(ext)[::-1]
    ext = np.pad(ext, (0, 3 - len(ext)), constant_values=voxel_mm)
    return [round(float(e) / 10.0, 1) for e in ext[:3]]


def generate_subject(index: int, *, seed: int = 0, shape=(64, 64, 48), healthy: bool | None = None,
                     with_head: bool = False, lesion_type: str | None = None, healthy_fraction: float = 0.25,
                     margin_mm: float = 12.0, keep_maps: bool = False,
                     head_contrasts: tuple[str, ...] | None = None, spec: CohortSpec | None = None) -> Subject:
    """Generate BrainPhantom subject ``index``; deterministic in ``(seed, index)``.

    Introduced in ``01_data_prep``.

    - ``healthy``: ``True`` for a control, ``False`` for a lesional subject, ``None`` to draw it
      with probability ``healthy_fraction`` (:func:`generate_cohort` instead fixes the count).
      The anatomy, distractors and noise of subject ``index`` are the same either way.
    - ``lesion_type``: one of :data:`LESION_TYPES` to force it (implies a lesional subject).
    - ``with_head``: also return ``head`` volumes with skull and scalp (for 2D slice sets);
      ``head_contrasts`` keeps only those contrasts of them (memory: the 2D sets use T1-CE only).
    - ``shape``: grid (X, Y, Z) in RAS voxel order over the MNI brain box plus ``margin_mm``.
    - ``keep_maps``: put the sampled tissue maps and the lobe labels into ``subject.meta``.
    - ``spec``: the :class:`~brainkit.data.cohorts.CohortSpec` whose lesion types, grades, sizes and
      report style the subject follows (default: the general mix, ``CLINICAL_MIX``); the anatomy,
      distractors and noise of subject ``index`` do not depend on it.

    ``subject.findings`` keys: ``normal`` (bool), ``lesion_count`` (int), ``lesion_type``
    (str or None), ``grade`` (a glioma's "hgg" | "lgg", else None), ``hemisphere`` ("left" | "right" |
    "bilateral", or None for a control or a midline pituitary adenoma), ``lobes`` (list of
    :data:`LOBES` names, main first), ``location`` (list of str, e.g. "thalamus", "convexity"),
    ``largest_diameter_cm`` (float), ``dimensions_cm`` (list of 3 floats, descending),
    ``volume_cm3`` / ``core_volume_cm3`` / ``enhancing_volume_cm3`` / ``necrosis_volume_cm3`` /
    ``oedema_volume_cm3`` (float), ``enhancement`` (bool), ``enhancement_pattern``
    ("ring" | "heterogeneous" | "homogeneous" | "nodular" | "none"), ``oedema`` (bool),
    ``oedema_extent`` ("none" | "mild" | "moderate" | "marked"), ``necrosis`` (bool),
    ``mass_effect`` (bool), ``mass_effect_grade`` ("none" | "mild" | "moderate" | "marked"),
    ``midline_shift_mm`` (float), ``midline_shift_direction`` ("left" | "right" or None),
    ``wmh`` (white-matter hyperintensity burden, "none" | "mild" | "moderate" | "marked"),
    ``lesions`` (list of per-lesion dicts). Controls have ``normal=True``, zero counts and volumes,
    ``None`` type/side and empty lists.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ConfigError(f"generate_subject: shape: expected 3 sizes >= 8, found {shape!r}")
    if lesion_type is not None and lesion_type not in LESION_TYPES:
        raise ConfigError(f"generate_subject: lesion_type: expected one of {', '.join(LESION_TYPES)}, found {lesion_type!r}")
    if healthy and lesion_type is not None:
        raise ConfigError(f"generate_subject: healthy=True contradicts lesion_type={lesion_type!r}")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ConfigError(f"generate_subject: healthy_fraction: expected a value in [0, 1], found {healthy_fraction!r}")
    ss = np.random.SeedSequence([int(seed), int(index)])
    s_anat, s_les, s_dis, s_noise, s_head, s_rep = ss.spawn(6)
    if healthy is None:
        healthy = lesion_type is None and bool(np.random.default_rng(s_rep.spawn(1)[0]).random() < healthy_fraction)
    rng_anat = np.random.default_rng(s_anat)
    affine, world = _grid(shape, float(margin_mm))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    grid = {"shape": shape, "affine": affine, "spacing": spacing}
    res = 1 if spacing.min() < 2.0 else 2
    gm_src, wm_src, mask_src, surf_src = _sampling_maps(res, tuple(round(float(s), 2) for s in spacing))
    atlas = load_atlas(res)
    ainv_src = atlas.inv_affine

    # 1. anatomy: per-subject affine + elastic warp; contrast jitter
    warp = _Warp(rng_anat, shape, world)
    jitter = {c: 1.0 for c in CONTRASTS}
    tissue_mu = {c: {t: v * float(rng_anat.uniform(0.93, 1.07)) for t, v in _TISSUE[c].items()} for c in CONTRASTS}
    q0 = warp.forward_grid()

    # 2. lesions: plan in MNI, map centres into the subject, displacement
    lesions: list[dict[str, Any]] = []
    plan = None
    if not healthy:
        plan = lesion_plan(index, seed=seed, lesion_type=lesion_type, spec=spec)
        rng_les = np.random.default_rng(s_les)
        lesions = [dict(les) for les in plan["lesions"]]
        centres = warp.inverse(np.asarray([les["centre_mni"] for les in lesions]), affine)
        for k, les in enumerate(lesions):
            les["id"] = k + 1
            les["centre_subject"] = centres[k]
            tip = warp.inverse(np.asarray(les["centre_mni"]) + 10.0 * np.asarray(les["inward"]), affine)[0]
            les["inward_subject"] = (tip - centres[k]) / (np.linalg.norm(tip - centres[k]) + 1e-9)
            _lesion_details(les, rng_les, jitter)

    def to_src_vox(q: np.ndarray) -> np.ndarray:
        return ainv_src[:3, :3].astype(np.float32) @ q + ainv_src[:3, 3:4].astype(np.float32)

    if lesions:
        surf0 = ndimage.map_coordinates(surf_src, to_src_vox(q0), order=1, mode="constant", cval=0.0)
        u = _mass_displacement(world, lesions, surf0)
        q = q0 - (warp.M.astype(np.float32) @ u)
    else:
        u = None
        q = q0
    vq = to_src_vox(q)
    gm = ndimage.map_coordinates(gm_src, vq, order=1, mode="constant").reshape(shape)
    wm = ndimage.map_coordinates(wm_src, vq, order=1, mode="constant").reshape(shape)
    mask_p = ndimage.map_coordinates(mask_src, vq, order=1, mode="constant").reshape(shape)
    np.clip(gm, 0, 1, out=gm)
    np.clip(wm, 0, 1, out=wm)
    csf = np.clip(mask_p - gm - wm, 0.0, 1.0)
    brain = mask_p > 0.5

    fields: dict[str, Any] = {"gm": gm, "wm": wm, "csf": csf}
    for con in CONTRASTS:
        mu = tissue_mu[con]
        fields["img_" + con] = (gm * mu["gm"] + wm * mu["wm"] + csf * mu["csf"]).astype(np.float32)
    # 3. distractors (own stream: identical for the healthy and lesional version of a subject)
    rng_dis = np.random.default_rng(s_dis)
    wmh_grade = _wmh(rng_dis, warp, grid, fields, jitter)
    _vessels(rng_dis, warp, grid, fields, jitter)

    # lesions painted over anatomy and distractors
    seg = np.zeros(shape, np.uint8)
    fields.update(seg=seg, owner=np.zeros(shape, np.uint8), nec=np.zeros(shape, bool),
                  extra_axial=np.zeros(shape, bool))
    if lesions:
        rng_paint = np.random.default_rng(s_les.spawn(1)[0])
        for les in lesions:
            _paint_lesion(les, rng_paint, grid, fields)
        brain = brain | fields["extra_axial"]
        seg[~brain] = 0
        brain = ndimage.binary_fill_holes(brain)
    # 4. bias field, scanner scale, Rician noise (noise drawn over the whole grid, always)
    rng_noise = np.random.default_rng(s_noise)
    bias_common = _smooth_field(rng_noise, (4, 4, 3), shape, n=1)[0]
    bias_own = _smooth_field(rng_noise, (4, 4, 3), shape, n=len(CONTRASTS))
    beta = float(rng_noise.uniform(0.08, 0.2))
    noise_level = float(rng_noise.uniform(0.02, 0.05))
    scales = {c: float(rng_noise.uniform(300.0, 1500.0)) for c in CONTRASTS}
    noise = rng_noise.standard_normal((len(CONTRASTS), 2) + shape, dtype=np.float32)

    head_layers = None
    if with_head:
        head_layers = _head_layers(np.random.default_rng(s_head), brain, grid)
    images: dict[str, np.ndarray] = {}
    head: dict[str, np.ndarray] | None = {} if with_head else None
    for k, con in enumerate(CONTRASTS):
        img = fields["img_" + con]
        if head_layers is not None:
            outside = ~brain
            for name, weight in head_layers.items():
                img[outside] += weight[outside] * _HEAD[name][con]
        bias = np.exp(beta * (0.8 * bias_common + 0.45 * bias_own[k]))
        img = img * bias * scales[con]
        sigma = noise_level * tissue_mu[con]["wm"] * scales[con] if con != "t2" else noise_level * 0.7 * scales[con]
        img = np.sqrt((img + sigma * noise[k, 0]) ** 2 + (sigma * noise[k, 1]) ** 2).astype(np.float32)
        images[con] = np.where(brain, img, np.float32(0.0)).astype(np.float32)
        if head is not None and (head_contrasts is None or con in head_contrasts):
            head[con] = img

    # 5. findings from the generated labels
    findings, details = _findings(lesions, seg, fields, q, u, warp, grid, wmh_grade, plan)
    spec = CLINICAL_MIX if spec is None else spec
    report = write_report(findings, np.random.default_rng(s_rep), style=spec.report_style)
    meta: dict[str, Any] = {
        "generator": "brainkit.data.phantoms",
        "version": PHANTOM_VERSION,
        "seed": int(seed),
        "index": int(index),
        "spacing_mm": [round(float(s), 4) for s in spacing],
        "healthy": bool(healthy),
        "cohort": spec.name,
    }
    if keep_maps:
        meta["maps"] = {"gm": gm, "wm": wm, "csf": csf, "lobes": details["lobes_map"]}
        if u is not None:
            meta["displacement_mm"] = u.reshape((3,) + shape)
    prefix = "phantom" if spec is CLINICAL_MIX else f"phantom-{spec.name}"
    return Subject(
        subject_id=f"{prefix}-s{int(seed)}-{int(index):05d}",
        images=images,
        seg=seg,
        brain_mask=brain.astype(np.uint8),
        affine=affine.copy(),
        findings=findings,
        report=report,
        head=head,
        meta=meta,
    )


def _head_layers(rng: np.random.Generator, brain: np.ndarray, grid: dict[str, Any]) -> dict[str, np.ndarray]:
    """Soft skull and scalp layers outside the brain (weights in [0, 1] per layer)."""
    spacing = grid["spacing"]
    dist = ndimage.distance_transform_edt(~brain, sampling=spacing).astype(np.float32)
    # an irregular outer contour: perturb the distance with a smooth field
    wobble = _smooth_field(rng, (5, 5, 4), grid["shape"], n=1)[0] * np.float32(0.8)
    d = dist + wobble
    t_inner = rng.uniform(1.3, 2.2)
    t_marrow = rng.uniform(1.8, 3.5)
    t_outer = rng.uniform(1.2, 2.0)
    t_fat = rng.uniform(2.5, 5.0)
    t_skin = rng.uniform(1.0, 2.0)
    edges = np.cumsum([0.0, t_inner, t_marrow, t_outer, t_fat, t_skin])
    soft = 0.5 * float(spacing.mean())

    def band(a, b):
        return (1.0 / (1.0 + np.exp(-(d - a) / soft))) * (1.0 / (1.0 + np.exp((d - b) / soft)))

    bone = band(edges[0], edges[1]) + band(edges[2], edges[3])
    return {
        "bone": bone.astype(np.float32),
        "marrow": band(edges[1], edges[2]).astype(np.float32),
        "fat": band(edges[3], edges[4]).astype(np.float32),
        "skin": band(edges[4], edges[5]).astype(np.float32),
    }


def _grade(value: float, cuts: tuple[float, float, float]) -> str:
    return "none" if value < cuts[0] else "mild" if value < cuts[1] else "moderate" if value < cuts[2] else "marked"


def _findings(lesions, seg, fields, q, u, warp: _Warp, grid, wmh_grade: str, plan) -> tuple[dict, dict]:
    shape, affine, spacing = grid["shape"], grid["affine"], grid["spacing"]
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    lobes_map = lobe_labels_at(q[0], q[1], q[2]).reshape(shape)
    details = {"lobes_map": lobes_map}
    normal = not lesions or not seg.any()
    base = {
        "normal": True, "lesion_count": 0, "lesion_type": None, "hemisphere": None, "lobes": [], "location": [],
        "largest_diameter_cm": 0.0, "dimensions_cm": [], "volume_cm3": 0.0, "core_volume_cm3": 0.0,
        "enhancing_volume_cm3": 0.0, "necrosis_volume_cm3": 0.0, "oedema_volume_cm3": 0.0,
        "enhancement": False, "enhancement_pattern": "none", "oedema": False, "oedema_extent": "none",
        "necrosis": False, "mass_effect": False, "mass_effect_grade": "none", "midline_shift_mm": 0.0,
        "midline_shift_direction": None, "wmh": wmh_grade, "lesions": [], "grade": None,
    }
    if normal:
        return base, details
    owner = fields["owner"]
    nec = fields["nec"]
    mm = (affine[:3, :3] @ np.indices(shape).reshape(3, -1) + affine[:3, 3:4]).T
    flat_owner = owner.reshape(-1)
    flat_seg = seg.reshape(-1)
    per = []
    for les in lesions:
        core = (flat_owner == les["id"]) & ((flat_seg == 1) | (flat_seg == 4))
        n_core = int(core.sum())
        if n_core == 0:
            continue
        lobe_ids = lobes_map.reshape(-1)[core]
        counts = np.bincount(lobe_ids, minlength=len(LOBES) + 1)
        main = les["lobe"]
        if les["kind"] == "pituitary":  # extra-axial, in the midline: no lobe, no side
            lobes = []
        else:
            lobes = [main] + [LOBES[k - 1] for k in np.argsort(-counts) if k > 0 and LOBES[k - 1] != main
                              and counts[k] >= 0.3 * n_core]
        dims = _principal_extents(mm[core], float(spacing.mean()))
        whole = flat_owner == les["id"]
        x, y, z = les["centre_mni"]
        if les["kind"] == "pituitary":
            where = "sellar and suprasellar" if dims[0] >= 1.5 else "sellar"
        elif les["kind"] == "meningioma":
            where = "parafalcine" if les.get("parafalcine") else ("tentorial" if main == "cerebellum" else "convexity")
        elif main == "deep":
            where = deep_structure_at(x, y, z)
        elif main == "brainstem":
            where = brainstem_part_at(x, y, z)
        elif main == "cerebellum":
            where = "cerebellar hemisphere"
        else:
            where = f"{main} lobe"
        n_nec = int(((flat_owner == les["id"]) & nec.reshape(-1)).sum())
        n_enh = int(((flat_owner == les["id"]) & (flat_seg == 4)).sum())
        n_oed = int(((flat_owner == les["id"]) & (flat_seg == 2)).sum())
        per.append({
            "type": les["kind"], "hemisphere": None if les["kind"] == "pituitary" else les["hemisphere"],
            "lobe": None if les["kind"] == "pituitary" else main, "lobes": lobes, "location": where,
            "grade": les.get("grade"),
            "centre_mni_mm": [round(float(v), 1) for v in les["centre_mni"]],
            "diameter_cm": dims[0], "dimensions_cm": dims,
            "volume_cm3": round(int(whole.sum()) * voxel_cm3, 2), "core_volume_cm3": round(n_core * voxel_cm3, 2),
            "enhancing": n_enh > 0, "necrosis": n_nec > 0, "oedema": n_oed > 0,
            "_ring": les["kind"] != "meningioma" and n_nec > 0,
            "_enh_frac": n_enh / max(n_core, 1),
        })
    if not per:
        return base, details
    per.sort(key=lambda d: -d["core_volume_cm3"])
    kind = lesions[0]["kind"]
    sides = {p["hemisphere"] for p in per if p["hemisphere"]}
    hemisphere = "bilateral" if len(sides) > 1 else sides.pop() if sides else None
    lobes: list[str] = []
    for p in per:
        for lb in p["lobes"]:
            if lb not in lobes:
                lobes.append(lb)
    location = []
    for p in per:
        if p["location"] not in location:
            location.append(p["location"])
    n_core_all = int(((seg == 1) | (seg == 4)).sum())
    n_enh = int((seg == 4).sum())
    n_nec = int(nec.sum())
    n_oed = int((seg == 2).sum())
    enhancement = n_enh > 0
    if not enhancement:
        pattern = "none"
    elif kind in ("meningioma", "pituitary"):
        pattern = "homogeneous"
    elif any(p["_ring"] for p in per):
        pattern = "ring" if kind == "metastasis" or per[0]["_enh_frac"] > 0.5 else "heterogeneous"
    elif kind == "metastasis":
        pattern = "nodular"
    else:
        pattern = "heterogeneous"
    ratio = n_oed / max(n_core_all, 1)
    oedema_extent = "none" if n_oed == 0 else _grade(ratio, (0.0, 1.0, 3.0)) if ratio >= 0 else "none"
    if n_oed and oedema_extent == "none":
        oedema_extent = "mild"
    # mass effect: peak tissue displacement; midline shift: displacement of the MNI midsagittal plane
    peak = float(np.sqrt((u * u).sum(0)).max()) if u is not None else 0.0
    ys, zs = np.meshgrid(np.arange(-30.0, 25.0, 5.0), np.arange(0.0, 35.0, 5.0))
    mid = np.stack([np.zeros(ys.size), ys.ravel(), zs.ravel()], 1)
    mid_subj = warp.inverse(mid, affine).T.astype(np.float32)
    surf_mid = np.full(mid_subj.shape[1], 40.0, np.float32)
    um = _mass_displacement(mid_subj, lesions, surf_mid)
    j = int(np.argmax(np.abs(um[0])))
    shift = round(float(abs(um[0, j])), 1)
    if kind == "pituitary":  # a midline mass below the brain does not push the falx sideways
        shift = 0.0
    direction = ("right" if um[0, j] > 0 else "left") if shift > 0 else None
    findings = dict(base)
    findings.update({
        "normal": False,
        "lesion_count": len(per),
        "lesion_type": kind,
        "grade": lesions[0].get("grade"),
        "hemisphere": hemisphere,
        "lobes": lobes,
        "location": location,
        "largest_diameter_cm": max(p["diameter_cm"] for p in per),
        "dimensions_cm": per[0]["dimensions_cm"],
        "volume_cm3": round(int((seg > 0).sum()) * voxel_cm3, 2),
        "core_volume_cm3": round(n_core_all * voxel_cm3, 2),
        "enhancing_volume_cm3": round(n_enh * voxel_cm3, 2),
        "necrosis_volume_cm3": round(n_nec * voxel_cm3, 2),
        "oedema_volume_cm3": round(n_oed * voxel_cm3, 2),
        "enhancement": enhancement,
        "enhancement_pattern": pattern,
        "oedema": n_oed > 0,
        "oedema_extent": oedema_extent,
        "necrosis": n_nec > 0,
        "mass_effect": bool(peak >= MASS_EFFECT_MM or shift >= MIDLINE_SHIFT_REPORT_MM),
        "mass_effect_grade": _grade(peak, (MASS_EFFECT_MM, 6.0, 10.0)) if peak >= MASS_EFFECT_MM or shift >= MIDLINE_SHIFT_REPORT_MM else "none",
        "midline_shift_mm": shift,
        "midline_shift_direction": direction,
        "lesions": [{k: v for k, v in p.items() if not k.startswith("_")} for p in per],
    })
    if findings["mass_effect"] and findings["mass_effect_grade"] == "none":
        findings["mass_effect_grade"] = "mild"
    return findings, details


# --------------------------------------------------------------------------------------------
# cohorts


def _cohort_worker(args: tuple) -> Subject:
    index, kwargs = args
    return generate_subject(index, **kwargs)


_POOL_LIMITS: Any = None


def _one_thread_per_worker() -> None:
    """Pool initializer: one BLAS/OpenMP thread per worker process (``n_jobs`` processes already
    use the cores; nested threads oversubscribe them and run several times slower)."""
    global _POOL_LIMITS
    from threadpoolctl import threadpool_limits

    _POOL_LIMITS = threadpool_limits(1)


def generate_cohort(n: int, *, seed: int = 0, shape=(64, 64, 48), healthy_fraction: float | None = None,
                    with_head: bool = False, n_jobs: int = 1, start: int = 0, spec: CohortSpec | None = None,
                    **kwargs: Any) -> list[Subject]:
    """Generate subjects ``start .. start+n-1`` with exactly ``floor(n*healthy_fraction + 0.5)`` controls.

    Introduced in ``01_data_prep``. ``spec`` is the dataset's :class:`~brainkit.data.cohorts.CohortSpec`
    (default: the general mix); ``healthy_fraction`` defaults to the spec's. Which subjects are
    controls follows :func:`is_control`, so subject ``i`` is identical whatever ``n`` is (for
    ``start=0``). ``n_jobs > 1`` generates in that many processes (same result as ``n_jobs=1``).
    Extra keyword arguments go to :func:`generate_subject`.
    """
    if n < 0:
        raise ConfigError(f"generate_cohort: n: expected a count >= 0, found {n!r}")
    spec = CLINICAL_MIX if spec is None else spec
    if healthy_fraction is None:
        healthy_fraction = spec.healthy_fraction
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ConfigError(f"generate_cohort: healthy_fraction: expected a value in [0, 1], found {healthy_fraction!r}")
    shape = tuple(int(s) for s in shape)
    jobs = []
    for i in range(start, start + n):
        kw = dict(seed=seed, shape=shape, healthy=is_control(i, healthy_fraction), with_head=with_head, spec=spec,
                  **kwargs)
        jobs.append((i, kw))
    if n_jobs is None or n_jobs <= 1 or n < 4:
        return [_cohort_worker(j) for j in jobs]
    # warm the caches before forking so that workers inherit them
    spacing = np.linalg.norm(grid_affine(shape, kwargs.get("margin_mm", 12.0))[:3, :3], axis=0)
    res = 1 if spacing.min() < 2.0 else 2
    _sampling_maps(res, tuple(round(float(s), 2) for s in spacing))
    _candidates()
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork") if "fork" in methods else mp.get_context()
    with ProcessPoolExecutor(max_workers=int(n_jobs), mp_context=ctx, initializer=_one_thread_per_worker) as ex:
        return list(ex.map(_cohort_worker, jobs, chunksize=max(1, n // (4 * int(n_jobs)))))


# --------------------------------------------------------------------------------------------
# realism statistics (the checks of notebook 01 and tests/test_phantoms.py)


def realism_stats(subjects: list[Subject], *, contrast: str = "flair", z_max: float = 6.0,
                  n_thresholds: int = 121) -> dict[str, Any]:
    """The numbers behind BrainPhantom's realism checks, for a generated cohort.

    Introduced in ``01_data_prep``.

    - ``flair_threshold_dice``: the whole-tumour Dice of the **best single global threshold** on
      the FLAIR image, z-scored within each subject's brain mask (a fair baseline: raw scanner
      scales differ per subject). Two ways of pooling, and the larger is reported: Dice of all
      voxels of all subjects pooled (controls' false positives count), and the mean per-subject
      Dice over lesional subjects. If "bright on FLAIR means tumour" worked, this would be high;
      the check wants it at most 0.6.
    - ``volume_cm3_min`` / ``_p01`` / ``_p50`` / ``_p99`` / ``_max``: whole-tumour volumes (oedema
      included) of the lesional subjects.
    - ``hemisphere_counts`` and ``hemisphere_balance`` (min/max of the left and right counts).
    - ``lobe_counts`` (subjects whose lesions touch each lobe) and ``lobes_unused``.
    - ``control_label_voxels``: label voxels in the healthy controls (must be 0).
    - ``report_agreement``: fraction of subjects whose report, read back by
      :func:`brainkit.data.reports.extract_findings`, gives exactly the entities of their
      findings, per key (``laterality``, ``anatomy``, ``pathology``) and ``all``.
    """
    from .reports import entities_from_findings, extract_findings

    if not subjects:
        raise ConfigError("realism_stats: expected at least one subject, found none")
    edges = np.linspace(-z_max, z_max, n_thresholds)
    tp_hist = np.zeros(len(edges) + 1)
    fp_hist = np.zeros(len(edges) + 1)
    per_subject = []
    n_gt = 0
    for s in subjects:
        m = s.brain_mask > 0
        v = s.images[contrast][m].astype(np.float64)
        z = (v - v.mean()) / (v.std() + 1e-9)
        g = s.seg[m] > 0
        idx = np.searchsorted(edges, z, side="left")  # z > edges[k]  <=>  idx > k
        t = np.bincount(idx[g], minlength=len(edges) + 1).astype(float)
        f = np.bincount(idx[~g], minlength=len(edges) + 1).astype(float)
        tp_hist += t
        fp_hist += f
        if g.any():
            # predicted positives above threshold k: sum of bins > k
            tp_k = np.cumsum(t[::-1])[::-1][1:]
            fp_k = np.cumsum(f[::-1])[::-1][1:]
            per_subject.append(2 * tp_k / (tp_k + fp_k + g.sum()))
        n_gt += int(g.sum())
    tp = np.cumsum(tp_hist[::-1])[::-1][1:]
    fp = np.cumsum(fp_hist[::-1])[::-1][1:]
    pooled = 2 * tp / np.maximum(tp + fp + n_gt, 1)
    k = int(np.argmax(pooled))
    mean_dice = np.mean(per_subject, axis=0) if per_subject else np.zeros(len(edges))
    km = int(np.argmax(mean_dice))

    lesional = [s for s in subjects if not s.findings.get("normal", True)]
    controls = [s for s in subjects if s.meta.get("healthy", s.findings.get("normal", False))]
    vols = np.array([float(s.findings["volume_cm3"]) for s in lesional]) if lesional else np.zeros(1)
    hemis = {h: sum(1 for s in lesional if s.findings.get("hemisphere") == h) for h in ("left", "right", "bilateral")}
    lobes = {lb: sum(1 for s in lesional if lb in s.findings.get("lobes", [])) for lb in LOBES}
    agree = {key: 0 for key in ("laterality", "anatomy", "pathology", "all")}
    for s in subjects:
        got, want = extract_findings(s.report), entities_from_findings(s.findings)
        for key in ("laterality", "anatomy", "pathology"):
            agree[key] += int(got[key] == want[key])
        agree["all"] += int(got == want)
    lr = (hemis["left"], hemis["right"])
    return {
        "n_subjects": len(subjects),
        "n_lesional": len(lesional),
        "n_controls": len(controls),
        "flair_threshold_dice": round(float(max(pooled[k], mean_dice[km])), 4),
        "flair_threshold_dice_pooled": round(float(pooled[k]), 4),
        "flair_threshold_z_pooled": round(float(edges[k]), 3),
        "flair_threshold_dice_mean": round(float(mean_dice[km]), 4),
        "flair_threshold_z_mean": round(float(edges[km]), 3),
        "volume_cm3_min": round(float(vols.min()), 2),
        "volume_cm3_p01": round(float(np.percentile(vols, 1)), 2),
        "volume_cm3_p50": round(float(np.median(vols)), 2),
        "volume_cm3_p99": round(float(np.percentile(vols, 99)), 2),
        "volume_cm3_max": round(float(vols.max()), 2),
        "hemisphere_counts": hemis,
        "hemisphere_balance": round(min(lr) / max(max(lr), 1), 3),
        "lobe_counts": lobes,
        "lobes_unused": [lb for lb, c in lobes.items() if c == 0],
        "control_label_voxels": int(sum(int((s.seg > 0).sum()) for s in controls)),
        "report_agreement": {key: round(v / len(subjects), 4) for key, v in agree.items()},
    }
