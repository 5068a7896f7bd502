"""MNI152 anatomy for BrainPhantom: the template's tissue maps and a lobe map in MNI coordinates.

Introduced in ``01_data_prep``. The MNI152 (2009, symmetric) T1 template, its grey- and
white-matter probability maps and its brain mask ship inside the ``nilearn`` package, so they load
without any download (``nilearn.datasets.load_mni152_*``; never ``fetch_*``). They are loaded once
per resolution and cached.

The lobe map is a set of geometric rules on MNI millimetres (planes and ellipsoids placed at the
central sulcus, the Sylvian fissure, the parieto-occipital boundary, the tentorium, the brainstem
and the deep grey nuclei). It is an approximation, good to about a centimetre, which is what a
report's "right frontal lobe" needs; it is not a parcellation atlas.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "LOBES",
    "LOBE_NAMES",
    "Atlas",
    "load_atlas",
    "lobe_labels_at",
    "lobe_map",
    "grid_affine",
    "deep_structure_at",
    "brainstem_part_at",
]

#: The lobes a lesion is placed in and a report names (``deep`` = insula, basal ganglia, thalamus).
LOBES = ("frontal", "parietal", "temporal", "occipital", "deep", "cerebellum", "brainstem")
#: ``LOBE_NAMES[k]`` is the name of label ``k`` in :func:`lobe_map` (0 is outside the brain).
LOBE_NAMES = ("outside",) + LOBES

#: Bounding box of nilearn's MNI152 brain mask, millimetres (x: left->right, y: post->ant, z: inf->sup).
BRAIN_BBOX_MM = ((-72.0, 72.0), (-107.0, 73.0), (-72.0, 82.0))


def lobe_labels_at(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lobe label (1..7, in :data:`LOBES` order) of MNI points, by geometric rules.

    Defined everywhere (also outside the brain): mask with the brain mask where that matters.
    Precedence: brainstem, cerebellum, deep (insula / basal ganglia / thalamus), temporal,
    occipital, frontal, parietal.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    z = np.asarray(z, dtype=np.float32)
    ax = np.abs(x)
    out = np.full(np.broadcast(x, y, z).shape, LOBES.index("parietal") + 1, dtype=np.uint8)

    # frontal: anterior to the central sulcus, which runs up and back (y=-10 at z=20, -27 at z=70)
    y_cs = -10.0 - 0.35 * (z - 20.0)
    out[y > y_cs] = LOBES.index("frontal") + 1
    # occipital: behind the parieto-occipital boundary
    out[y < -70.0] = LOBES.index("occipital") + 1
    # temporal: lateral, below the Sylvian fissure (which rises posteriorly), in front of y=-70
    z_sylv = np.where(y < 0, -0.38 * y, -0.8 * y)
    temporal = (ax > np.where(z < -8.0, 14.0, 22.0)) & (z < z_sylv) & (y < 28.0) & (y >= -70.0)
    out[temporal] = LOBES.index("temporal") + 1
    # deep grey nuclei and insula: one ellipsoid per hemisphere
    deep = ((ax - 22.0) / 20.0) ** 2 + ((y + 5.0) / 30.0) ** 2 + ((z - 6.0) / 16.0) ** 2 < 1.0
    out[deep] = LOBES.index("deep") + 1
    # cerebellum: posterior fossa, below the tentorium (which slopes down laterally and posteriorly)
    z_tent = -4.0 - 0.22 * ax - 0.2 * np.maximum(0.0, -y - 50.0)
    cereb = (z < z_tent) & (y < -38.0)
    out[cereb] = LOBES.index("cerebellum") + 1
    # brainstem: a column leaning back as it descends (midbrain, pons, medulla)
    y_c = -22.0 + 0.4 * (z + 10.0)
    half_w = np.where(z > -42.0, 14.0, 9.0)
    stem = (z < -2.0) & (z > -75.0) & (ax < half_w) & (np.abs(y - y_c) < 13.0)
    out[stem] = LOBES.index("brainstem") + 1
    return out


def deep_structure_at(x: float, y: float, z: float) -> str:
    """Which deep structure an MNI point of the ``deep`` region is nearest to (for report wording)."""
    ax = abs(x)
    if ax > 31.0:
        return "insula"
    if y < -8.0 and ax < 22.0:
        return "thalamus"
    return "basal ganglia"


def brainstem_part_at(x: float, y: float, z: float) -> str:
    """Midbrain, pons or medulla for an MNI point of the ``brainstem`` region (for report wording)."""
    if z > -15.0:
        return "midbrain"
    if z > -42.0:
        return "pons"
    return "medulla"


@dataclass(frozen=True)
class Atlas:
    """MNI152 maps on the template's grid (float32, arrays indexed [x, y, z] in RAS order).

    ``gm``, ``wm``, ``csf`` are tissue probabilities (csf = brain mask minus GM and WM),
    ``mask`` the brain mask (0/1 as float), ``surface_mm`` the distance of each voxel to the
    outside of the brain mask in millimetres, ``affine`` voxel -> MNI mm.
    """

    resolution: int
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray
    surface_mm: np.ndarray
    affine: np.ndarray

    @property
    def inv_affine(self) -> np.ndarray:
        return np.linalg.inv(self.affine)


@functools.lru_cache(maxsize=4)
def load_atlas(resolution: int = 2) -> Atlas:
    """Load nilearn's packaged MNI152 template maps at ``resolution`` mm (1 or 2), cached.

    Introduced in ``01_data_prep``. Makes no network call (the maps are package data).
    """
    from nilearn import datasets  # imported lazily: nilearn is slow to import

    if resolution not in (1, 2):
        from ..errors import ConfigError

        raise ConfigError(f"load_atlas: resolution: expected 1 or 2 (mm), found {resolution!r}")
    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    gm = np.clip(np.asarray(gm_img.dataobj, dtype=np.float32), 0, 1)
    wm = np.clip(np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32), 0, 1)
    mask = (np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).dataobj) > 0.5).astype(np.float32)
    gm *= mask
    wm *= mask
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(mask - gm - wm, 0, 1).astype(np.float32)
    surface = ndimage.distance_transform_edt(mask > 0, sampling=float(resolution)).astype(np.float32)
    affine = np.asarray(gm_img.affine, dtype=np.float64)
    for a in (gm, wm, csf, mask, surface):
        a.setflags(write=False)
    return Atlas(resolution, gm, wm, csf, mask, surface, affine)


def grid_affine(shape: tuple[int, int, int], margin_mm: float = 12.0) -> np.ndarray:
    """The RAS affine of a phantom grid of ``shape`` covering the MNI brain box plus a margin.

    The field of view is the MNI152 brain mask's bounding box, widened by ``margin_mm`` on every
    side but the bottom (the template stops at the lower medulla) so that skull and scalp fit.
    Voxels are anisotropic when the box and ``shape`` have different proportions: at the smoke
    shape (64, 64, 48) they are about 2.6 x 3.2 x 3.5 mm.
    """
    lo = np.array([BRAIN_BBOX_MM[0][0] - margin_mm, BRAIN_BBOX_MM[1][0] - margin_mm, BRAIN_BBOX_MM[2][0]])
    hi = np.array([BRAIN_BBOX_MM[0][1] + margin_mm, BRAIN_BBOX_MM[1][1] + margin_mm, BRAIN_BBOX_MM[2][1] + margin_mm])
    shape_arr = np.asarray(shape, dtype=np.float64)
    spacing = (hi - lo) / shape_arr
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = lo + spacing / 2.0  # voxel centres
    return affine


def _voxel_world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (3, *shape) of every voxel centre."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = affine[:3, :3].astype(np.float32) @ idx + affine[:3, 3:4].astype(np.float32)
    return world.reshape((3,) + tuple(shape))


def lobe_map(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Lobe labels of a grid whose ``affine`` maps voxels to MNI millimetres.

    Introduced in ``01_data_prep``. Returns ``(labels, names)``: ``labels`` is a ``uint8`` array of
    ``shape`` with 0 outside nilearn's MNI152 brain mask and ``k`` (1..7) inside, where
    ``names[k]`` names it; ``names == LOBE_NAMES == ("outside", "frontal", "parietal",
    "temporal", "occipital", "deep", "cerebellum", "brainstem")``. Hemisphere is the sign of the
    MNI x coordinate (negative = left), not a label.
    """
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=np.float64)
    world = _voxel_world(shape, affine)
    labels = lobe_labels_at(world[0], world[1], world[2])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    res = 1 if spacing.min() < 2.0 else 2
    atlas = load_atlas(res)
    vox = np.tensordot(atlas.inv_affine[:3, :3].astype(np.float32), world, axes=1)
    vox += atlas.inv_affine[:3, 3].astype(np.float32).reshape(3, 1, 1, 1)
    inside = ndimage.map_coordinates(atlas.mask, vox, order=1, mode="constant", cval=0.0) > 0.5
    labels[~inside] = 0
    return labels.astype(np.uint8), LOBE_NAMES
