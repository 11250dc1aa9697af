"""Sparse points from structure from motion or triangulation, with how well each was measured.

A share of the well-measured points (seen in at least 3 photos, reprojected within 1 px) is held back
from the Gaussians' initialisation, so that `eval` can score the mesh against points it never saw.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

MIN_TRACK = 3          # photos that see a point for it to count as well measured
MAX_ERROR_PX = 1.0     # its mean reprojection error
SCORED_EVERY = 5       # every 5th well-measured point is held back for scoring


class SparsePoints(NamedTuple):
    xyz: np.ndarray      # (P,3) float64 world positions
    colors: np.ndarray   # (P,3) float32 in [0,1]
    track: np.ndarray    # (P,) int32 photos that see the point; 0 where unknown
    error: np.ndarray    # (P,) float32 mean reprojection error in pixels; nan where unknown

    @classmethod
    def from_arrays(cls, xyz, colors, track=None, error=None) -> "SparsePoints":
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        n = len(xyz)
        return cls(xyz, np.asarray(colors, np.float32).reshape(-1, 3),
                   np.zeros(n, np.int32) if track is None else np.asarray(track, np.int32).reshape(n),
                   np.full(n, np.nan, np.float32) if error is None else np.asarray(error, np.float32).reshape(n))

    @classmethod
    def from_reconstruction(cls, rec) -> "SparsePoints":
        """The points of a pycolmap Reconstruction, ordered by point id."""
        ids = sorted(rec.point3D_ids())
        pts = [rec.points3D[i] for i in ids]
        return cls.from_arrays([p.xyz for p in pts], np.array([p.color for p in pts], np.float32).reshape(-1, 3) / 255.0,
                               [p.track.length() for p in pts], [p.error for p in pts])

    def __len__(self) -> int:
        return len(self.xyz)

    def subset(self, mask: np.ndarray) -> "SparsePoints":
        return SparsePoints(*(a[mask] for a in self))

    def well_measured(self) -> np.ndarray:
        return (self.track >= MIN_TRACK) & (self.error <= MAX_ERROR_PX)

    def split_scored(self, every: int = SCORED_EVERY) -> tuple["SparsePoints", "SparsePoints"]:
        """(points for the initialisation, points held back to score the mesh): every `every`-th
        well-measured point, in a fixed order, so the split is the same on every run."""
        good = np.flatnonzero(self.well_measured())
        scored = np.zeros(len(self), bool)
        scored[good[every - 1::every]] = True
        return self.subset(~scored), self.subset(scored)

    def save(self, path: Path) -> Path:
        from milo_backend.atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, xyz=self.xyz, colors=self.colors, track=self.track, error=self.error)
        return path

    @classmethod
    def load(cls, path: Path) -> "SparsePoints":
        with np.load(path) as data:
            return cls.from_arrays(data["xyz"], data["colors"], data["track"], data["error"])
