"""One canonical anatomical orientation for every volume, from its direction cosines.

The same physical image can be stored with its voxel axes permuted or flipped (NIfTI from nibabel is often RAS-
stored, DICOM sagittal/coronal acquisitions put the slice axis elsewhere). Before slices are chosen each volume is
brought, by an exact permutation and flip of its voxel axes (no resampling), to the storage whose axes point as
closely as possible along ITK's LPS patient axes: i towards the patient's left, j towards posterior, k towards
superior — so k, the slice axis, is the axis closest to the superior-inferior axis. An image already stored that way
(identity-like direction, as ITK/DICOM axial series and this project's synthetic data are) is left untouched.
`to_stored` maps a volume on the canonical grid back onto the stored grid exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Reorientation:
    """Canonical voxel axis a (x, y, z order) = stored axis perm[a], reversed where flip[a]."""

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def to_dict(self) -> dict[str, Any]:
        return {"perm": list(self.perm), "flip": list(self.flip)}


def reorientation(direction: Any) -> Reorientation:
    """The axis permutation + flips that make a 3x3 direction matrix (row-major, columns = voxel axes in LPS)
    closest to the identity: the permutation maximising the summed |cosines|, ties broken towards no change."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    best, best_score = (0, 1, 2), -1.0
    for perm in itertools.permutations(range(3)):
        # canonical physical axis a is served by stored voxel axis perm[a]
        score = sum(abs(d[a, perm[a]]) for a in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    flip = tuple(bool(d[a, best[a]] < 0) for a in range(3))
    return Reorientation(perm=best, flip=flip)  # type: ignore[arg-type]


def canonical(image: Any) -> tuple[Any, Reorientation]:
    """(the SimpleITK image in canonical storage, the reorientation applied). Physical positions are unchanged."""
    import SimpleITK as sitk

    r = reorientation(image.GetDirection())
    if r.identity:
        return image, r
    out = sitk.PermuteAxes(image, list(r.perm)) if r.perm != (0, 1, 2) else image
    if any(r.flip):
        out = sitk.Flip(out, list(r.flip), flipAboutOrigin=False)
    return out, r


def to_stored(vol: np.ndarray, r: Reorientation) -> np.ndarray:
    """A numpy volume [k, j, i] on the canonical grid, rearranged onto the stored grid (exact inverse of canonical)."""
    if r.identity:
        return vol
    # numpy axis of voxel axis a is 2 - a. Undo the flips (done after the permutation), then the permutation.
    out = vol
    for a in range(3):
        if r.flip[a]:
            out = np.flip(out, axis=2 - a)
    # canonical axis a = stored axis perm[a]  ->  stored numpy axis (2 - perm[a]) comes from canonical numpy axis 2 - a
    order = [0, 0, 0]
    for a in range(3):
        order[2 - r.perm[a]] = 2 - a
    return np.ascontiguousarray(np.transpose(out, order))
