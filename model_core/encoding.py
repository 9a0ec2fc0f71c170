"""Motion -> what Blender stores: displacements carried into the target mesh's frame, and a compact
shape-key basis with per-frame weights.

The basis is the smallest truncated SVD of the (frames x 3V) displacement matrix whose largest
per-vertex reconstruction error stays under a tolerance. A randomised range finder (power
iterations) gives it in a fraction of a second for a minute of motion, where a full SVD of the same
matrix takes about ten seconds; the rank grows until the tolerance holds, so the bound is exact
whatever the spectrum.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_TOLERANCE = 1e-4  # 0.1 mm in FLAME's metre units
WINDOW_BYTES = 2 ** 26  # the basis reads the motion in windows of frames of about this size


@dataclass
class ShapeBasis:
    shapes: np.ndarray  # (keys, vertices, 3): each key's displacement at weight 1
    weights: np.ndarray  # (frames, keys): in [-1, 1]; each key reaches +-1 on some frame
    max_error: float  # largest per-vertex distance between the reconstruction and the motion

    def reconstruct(self) -> np.ndarray:
        return np.einsum("fk,kvc->fvc", self.weights, self.shapes)


def mesh_alignment(template: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """3x3 matrix (rotation x uniform scale) carrying motion from the model's frame into the mesh's.

    A FLAME head imported into Blender is often turned Y-up -> Z-up or scaled (metres to
    centimetres); the least-squares similarity between the model's neutral template and the
    target's rest shape finds that. A model without a template (all zeros) or an exact match gives
    the identity.
    """
    template = np.asarray(template, np.float64)
    mesh = np.asarray(mesh, np.float64)
    a = template - template.mean(0)
    b = mesh - mesh.mean(0)
    spread = float((a ** 2).sum())
    if spread == 0.0:
        return np.eye(3, dtype=np.float32)
    u, s, vt = np.linalg.svd(b.T @ a)
    reflection = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ reflection @ vt
    scale = float((s * np.diag(reflection)).sum() / spread)
    linear = scale * rotation
    if np.allclose(linear, np.eye(3), atol=1e-6):
        return np.eye(3, dtype=np.float32)
    return linear.astype(np.float32)


def to_mesh_frame(displacements: np.ndarray, alignment: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Displacements turned and scaled by `alignment`; a per-vertex error grows by at most its
    largest singular value (the scale). With `out` (float32, the displacements' shape) they are
    written there and it is returned."""
    identity = np.array_equal(alignment, np.eye(3, dtype=alignment.dtype))
    if out is None:
        if identity:
            return np.asarray(displacements, np.float32)
        return (np.asarray(displacements, np.float32) @ alignment.T).astype(np.float32)
    if identity:
        out[...] = displacements
    else:
        np.matmul(np.asarray(displacements, np.float32), np.asarray(alignment, np.float32).T, out=out)
    return out


def _max_vertex_error(matrix: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                      give_up_above: float = float("inf"), block: int = 64) -> float:
    """Largest per-vertex residual norm of matrix - left @ right, computed in cache-sized blocks of
    frames; stops early (returning the first value over `give_up_above`) when only a verdict is needed."""
    worst = 0.0
    for start in range(0, matrix.shape[0], block):
        # One fused product-and-subtract, then squared lengths: the square root of the largest only
        # (a norm over each vertex's 3 values is a slow strided reduction; this is a third faster).
        residual = torch.addmm(matrix[start:start + block], left[start:start + block], right, alpha=-1)
        if residual.numel():
            worst = max(worst, float(residual.square_().view(-1, 3).sum(-1).max()) ** 0.5)
        if worst > give_up_above:
            break
    return worst


def shape_basis(displacements: np.ndarray, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> ShapeBasis:
    """The fewest shape keys that reproduce `displacements` (frames, V, 3) within `tolerance`."""
    motion = np.asarray(displacements, np.float32)  # converted once, not window by window
    frames, vertices, _ = motion.shape
    return streamed_shape_basis(lambda start, stop: motion[start:stop], frames, vertices, tolerance, seed)


def streamed_shape_basis(read: Callable[[int, int], np.ndarray], frames: int, vertices: int,
                         tolerance: float = DEFAULT_TOLERANCE, seed: int = 0) -> ShapeBasis:
    """shape_basis of motion that `read(start, stop)` gives a window of frames at a time, as
    (stop - start, V, 3): memory holds one window and the (frames x keys) weights, never the whole
    motion, which can stay on disk. Each product with the motion is one pass over it."""
    if tolerance <= 0:
        raise ValueError(f"the tolerance must be positive, got {tolerance}")
    width = 3 * vertices
    window = max(1, WINDOW_BYTES // (4 * width))

    def windows():
        for start in range(0, frames, window):
            block = np.ascontiguousarray(read(start, min(start + window, frames)), np.float32)
            yield start, torch.from_numpy(block.reshape(len(block), width))

    def times(right: torch.Tensor) -> torch.Tensor:  # motion @ right
        return torch.cat([matrix @ right for _, matrix in windows()])

    def transposed_times(left: torch.Tensor) -> torch.Tensor:  # motion.T @ left
        out = torch.zeros((width, left.shape[1]))
        for start, matrix in windows():
            out.addmm_(matrix.T, left[start:start + len(matrix)])
        return out

    def error(left: torch.Tensor, right: torch.Tensor, give_up_above: float = float("inf")) -> float:
        worst = 0.0
        for start, matrix in windows():
            worst = max(worst, _max_vertex_error(matrix, left[start:start + len(matrix)], right, give_up_above))
            if worst > give_up_above:
                break
        return worst

    def orthonormal(columns: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(columns).Q

    # Stops at the first block that moves more than the tolerance: only silence is read through.
    still_error = error(torch.zeros((frames, 0)), torch.zeros((0, width)), tolerance)
    if still_error <= tolerance:  # no motion worth a key (e.g. silence)
        return ShapeBasis(np.zeros((0, vertices, 3), np.float32), np.zeros((frames, 0), np.float32), still_error)
    full_rank = min(frames, width)
    rank = min(32, full_rank)
    generator = torch.Generator().manual_seed(seed)
    while True:
        # A randomised range finder (torch.svd_lowrank's algorithm, one pass per product): with 16
        # columns of oversampling, one power iteration keeps the leading `rank` singular vectors
        # accurate enough. On 60 s of the bundled model's motion (speech-like and recorded speech) and
        # of the rig's, at 0.01, 0.1 and 1 mm, it gave the same keys as two (none added one key once);
        # each saved iteration saves two passes over the motion. The error check below holds the
        # tolerance in any case.
        q = min(full_rank, rank + 16)
        range_basis = orthonormal(times(orthonormal(transposed_times(
            orthonormal(times(torch.randn(width, q, generator=generator)))))))
        u, s, right = torch.linalg.svd(transposed_times(range_basis).T, full_matrices=False)
        left = range_basis @ (u * s)
        if q == full_rank or error(left, right, tolerance) <= tolerance:
            break
        rank *= 2
    # Smallest rank within tolerance (the error does not grow with the rank). Doubling up from one
    # key first, then bisecting: a rank that fails stops its check at the first block of frames over
    # the tolerance, while one that passes reads the whole motion, and lines need few keys against
    # the q found above, so this reads the motion two or three times fewer than bisecting 1..q.
    # A passing check reads all the motion, so its value is the exact error of that rank: kept, the
    # chosen rank's error needs no pass of its own.
    passed: dict[int, float] = {}

    def within_tolerance(keys: int) -> bool:
        worst = error(left[:, :keys], right[:keys], tolerance)
        if worst <= tolerance:
            passed[keys] = worst
        return worst <= tolerance

    low, high = 1, q
    probe = 1
    while probe < q:
        if within_tolerance(probe):
            high = probe
            break
        low, probe = probe + 1, 2 * probe
    while low < high:
        middle = (low + high) // 2
        if within_tolerance(middle):
            high = middle
        else:
            low = middle + 1
    left, right = left[:, :low], right[:low]
    # Scale each key so its weight peaks at +-1: sliders in [-1, 1], shapes at full amplitude.
    peak = left.abs().amax(0).clamp_min(1e-20)
    weights, shapes = left / peak, right * peak[:, None]
    max_error = passed[low] if low in passed else error(weights, shapes)
    return ShapeBasis(shapes.reshape(low, vertices, 3).numpy(), weights.contiguous().numpy(), max_error)
