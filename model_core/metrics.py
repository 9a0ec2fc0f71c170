"""Evaluation metrics of this line of work, in the data's own units (metres for VOCASET).

All functions take per-sequence arrays shaped (T, V, 3). Definitions (also in docs/metrics.md):

- LVE: per frame, the maximum over lip vertices of the squared L2 distance between prediction and
  ground truth; the mean over all frames of all sequences (FaceFormer/CodeTalker).
- FVE: the squared L2 distance averaged over all vertices and all frames of all sequences.
- Lip-max: per frame, the maximum over lip vertices of the (unsquared) L2 distance; mean over all frames.
- LDTW: per sequence, dynamic time warping between the predicted and true lip trajectories
  (each frame = the lip vertices' coordinates as one vector; local cost = Euclidean distance
  between frames; steps (1,0), (0,1), (1,1)); the accumulated cost of the best path divided by
  the number of frames of the ground truth; mean over sequences.
- FDD (CodeTalker): per sequence, for each upper-face vertex the standard deviation over time of its
  squared displacement from the template, averaged over those vertices; ground truth minus
  prediction (signed); mean over sequences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def squared_distances(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.square(pred - gt).sum(-1)  # (T, V)


def dtw_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Accumulated Euclidean cost of the best monotonic alignment of (Ta, D) and (Tb, D)."""
    cost = np.sqrt(np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0))
    acc = np.full((len(a) + 1, len(b) + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, len(a) + 1):
        row = cost[i - 1]
        diag_up = np.minimum(acc[i - 1, :-1], acc[i - 1, 1:])  # from (i-1, j-1) or (i-1, j)
        current = acc[i]
        for j in range(1, len(b) + 1):
            current[j] = row[j - 1] + min(diag_up[j - 1], current[j - 1])
    return float(acc[-1, -1])


@dataclass
class MetricAccumulator:
    lip_indices: np.ndarray
    upper_face_indices: np.ndarray | None = None
    lve_frames: list[np.ndarray] = field(default_factory=list)
    lipmax_frames: list[np.ndarray] = field(default_factory=list)
    fve_frames: list[np.ndarray] = field(default_factory=list)
    ldtw: list[float] = field(default_factory=list)
    fdd: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray, template: np.ndarray) -> None:
        frames = min(len(pred), len(gt))
        pred, gt = pred[:frames].astype(np.float64), gt[:frames].astype(np.float64)
        sq = squared_distances(pred, gt)
        lips = sq[:, self.lip_indices]
        self.lve_frames.append(lips.max(1))
        self.lipmax_frames.append(np.sqrt(lips.max(1)))
        self.fve_frames.append(sq.mean(1))
        lip_traj = lambda x: x[:, self.lip_indices].reshape(frames, -1)  # noqa: E731
        self.ldtw.append(dtw_distance(lip_traj(pred), lip_traj(gt)) / frames)
        if self.upper_face_indices is not None:
            def motion_std(x: np.ndarray) -> float:
                disp = np.square(x[:, self.upper_face_indices] - template[self.upper_face_indices]).sum(-1)
                return float(disp.std(0).mean())
            self.fdd.append(motion_std(gt) - motion_std(pred))

    def result(self) -> dict[str, float]:
        cat = lambda xs: float(np.concatenate(xs).mean())  # noqa: E731
        out = {"LVE": cat(self.lve_frames), "FVE": cat(self.fve_frames), "LDTW": float(np.mean(self.ldtw)),
               "Lip-max": cat(self.lipmax_frames),
               "sequences": len(self.ldtw), "frames": int(sum(len(x) for x in self.lve_frames))}
        if self.fdd:
            out["FDD"] = float(np.mean(self.fdd))
        return out
