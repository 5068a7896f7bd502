"""The in-memory record of one subject, shared by the phantom generator and the format writers.

Introduced in ``01_data_prep``. Arrays are in RAS voxel order: axis 0 runs left→right (X),
axis 1 posterior→anterior (Y), axis 2 inferior→superior (Z), and ``affine`` maps voxel indices
to millimetres in that orientation (the nibabel convention). An axial slice is ``arr[:, :, k]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

CONTRASTS = ("t1", "t1ce", "t2", "flair")

#: BraTS 2020 label convention (seg files): 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing.
BRATS_LABELS = (0, 1, 2, 4)
#: MSD Task01 convention: 1 oedema, 2 non-enhancing tumour, 3 enhancing tumour.
MSD_LABELS = (0, 1, 2, 3)


@dataclass
class Subject:
    """One subject: four contrasts, BraTS labels, brain mask, findings and report.

    - ``images``: ``{"t1", "t1ce", "t2", "flair"} -> float32`` arrays, skull-stripped
      (zero outside ``brain_mask``), as the BraTS / MSD layouts hold them.
    - ``head``: the same contrasts *with* skull and scalp, for the 2D slice sets
      (figshare, Kaggle), or ``None`` when not generated.
    - ``seg``: ``uint8`` BraTS labels (0, 1, 2, 4); all zero for a healthy control.
    - ``findings``: JSON-serialisable structured findings (see ``brainkit.data.phantoms``).
    - ``report``: the radiology-style report written from the findings.
    """

    subject_id: str
    images: dict[str, np.ndarray]
    seg: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    findings: dict[str, Any]
    report: str
    head: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.seg.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, from the affine's column norms."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def healthy(self) -> bool:
        return not bool(self.seg.any())
