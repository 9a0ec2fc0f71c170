"""Retargeting: the model's motion on its own head (the source) carried onto another head mesh (the
target) of any topology.

`fit_binding` binds the target to the source once per (target mesh, landmarks):
  1. a similarity transform (scale, rotation, translation) from the named landmarks, robust to a
     misplaced one, so a target in any units and orientation (a Z-up head in centimetres) lands
     on the source; then refined against the source's surface (point-to-plane closest points);
  2. a non-rigid fit: a smooth warp of Gaussian radial basis functions, refitted from coarse to
     fine, that keeps the mouth landmarks on the source's and pulls the target's surface onto the
     source's (closest points, ignoring pairs whose normals disagree); then the similarity of the
     mouth region alone, from the fitted pairs and the mouth landmarks, and the fit again from
     there. Displacements are scaled and rotated by that similarity: the lips move as far as the
     lips are large, whatever the chin or the skull;
  3. every target vertex bound to its closest point on the source surface (a triangle and
     barycentric weights), lip to lip: near the mouth each target vertex first gets a lip (by the
     paths along its own mesh, which round a mouth corner to reach the other lip of a slit, then
     by which of the source's lips is nearer, then by its nearest decided neighbours), and may
     then bind anywhere but on the other lip, so the two copies of a closed slit, which lie on one
     point, still part. Separate parts of the target that lie away from the source surface
     (eyeballs, teeth) are marked still.
`Binding.transfer` then maps source displacements to target displacements: a sparse matrix product,
scaled and rotated into the target's frame and units.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import MemoryTalkerError

LANDMARK_NAMES: tuple[str, ...] = (
    "mouth_corner_left", "mouth_corner_right", "upper_lip_center", "lower_lip_center", "chin", "nose_tip",
    "eye_outer_left", "eye_inner_left", "eye_inner_right", "eye_outer_right", "jaw_left", "jaw_right")
# The mouth (its corners and the two lip centres) places the lips; chin and nose tip fix the
# face's vertical axis and its size. Left and right are the subject's.
REQUIRED_LANDMARKS: tuple[str, ...] = LANDMARK_NAMES[:6]
BINDING_FORMAT = 1
BLOCK_BYTES = 2 ** 21  # transfer works through the frames in blocks whose result is about this size

KNN_CANDIDATES = 16  # triangles (nearest centroids) searched for each closest point
KNN_CHUNK = 2048  # query points per block of the distance matrix
KNN_BLOCK = 256  # query points per spatial block, which searches only the faces around it
FIT_SAMPLES = 2000  # target vertices that drive the non-rigid fit
FIT_CENTRES = 600  # radial basis centres of the warp
FIT_WIDTHS = (0.5, 0.25, 0.14)  # Gaussian widths of the successive fits, in landmark spreads
FIT_SMOOTHING = 1e-3  # ridge weight per sample: how much the warp prefers staying small to fitting
MOUTH_LANDMARKS = REQUIRED_LANDMARKS[:4]
MOUTH_LANDMARK_WEIGHT = 5.0  # a mouth landmark weighs as much as this many times all the samples together:
# the mouth is marked precisely and the fit keeps it
SIMILARITY_STEPS = 8  # closest-point refits of the similarity to the surface (the second half robust)
SURFACE_LANDMARK_WEIGHT = 0.1  # there, the landmarks together weigh this share of the sample's pairs
SURFACE_REACH = 3.0  # ... and the pairs are weighted by a Gaussian of this many landmark spreads
# around the mouth (the whole head, the face a little more)
FITS = 2  # non-rigid fits, each but the last followed by the mouth region's similarity
MOUTH_SIMILARITY_WEIGHT = 1.0  # ... in which the mouth landmarks weigh as much as the surface pairs
MOUTH_REACH = 1.5  # the mouth region whose similarity displacements go through: a Gaussian of this
# many half mouth widths around the mouth
LANDMARK_WEIGHT = 0.02  # other landmarks (rounded features, marked less precisely) guide the fit only
NORMAL_AGREEMENT = 0.5  # closest-point pairs whose normals meet at more than 60 degrees are ignored
OUTLIER_DISTANCE = 0.25  # ... and those farther apart than this many landmark spreads
LIP_MARGIN = 0.03  # within this share of the mouth's width from the mouth line, a vertex's lip is
# decided by its neighbours over the mesh rather than by its position
LIP_PATH_REACH = 1.6  # paths between the lips are followed this many half mouth widths around the mouth
LIP_SEED_OFFSET = 0.15  # the paths start this many half mouth widths above and below the lip centres
LIP_PATH_MARGIN = 0.2  # a vertex this many half mouth widths nearer one lip centre along the mesh is on its lip
STILL_DISTANCE = 0.05  # a separate part whose median distance from the source surface is more than
# this many landmark spreads does not move
MISMATCH = 0.25  # landmarks that stay this many spreads apart (RMS) after the similarity: refused

Progress = Callable[[float, str], None]


class RetargetError(MemoryTalkerError):
    """A mesh, landmark set or binding file that retargeting cannot use."""


# ---------------------------------------------------------------------------------------------
# The binding


@dataclass
class Binding:
    """Every target vertex bound to a point of the source surface."""
    triangles: np.ndarray  # (Vt,) int64: the source face each target vertex is bound to
    barycentric: np.ndarray  # (Vt, 3) float32: its weights on that face's three vertices
    scale: float  # target size / source size: displacements are multiplied by it
    rotation: np.ndarray  # (3, 3) float64: source frame -> target frame
    still: np.ndarray  # (Vt,) bool: target vertices that do not move (parts that are not skin)
    source_vertex_count: int
    source_faces: np.ndarray  # (Fs, 3) int64: the source's faces, to turn triangles into vertices
    _weights: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def target_vertex_count(self) -> int:
        return len(self.triangles)

    def error_gain(self) -> float:
        """How much a per-vertex error in source displacements can grow on the way to the target:
        the scale times the largest sum of |weights| of a moving vertex (1 inside a triangle). Motion
        encoded within e on the source head is, once transferred, within error_gain() * e."""
        moving = ~self.still
        if not moving.any():
            return 0.0
        return float(self.scale * np.abs(self.barycentric[moving]).sum(1).max())

    def _matrix(self) -> torch.Tensor:
        """The (Vt, Vs) sparse matrix of barycentric weights, zero rows for still vertices."""
        if self._weights is None:
            moving = ~self.still
            rows = np.repeat(np.nonzero(moving)[0], 3)
            columns = self.source_faces[self.triangles[moving]].reshape(-1)
            values = self.barycentric[moving].reshape(-1)
            coo = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, columns])),
                                          torch.from_numpy(values.astype(np.float32)),
                                          (self.target_vertex_count, self.source_vertex_count),
                                          check_invariants=True)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
                warnings.simplefilter("ignore", UserWarning)
                self._weights = coo.coalesce().to_sparse_csr()
        return self._weights

    def transfer(self, displacements: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Source displacements (T, Vs, 3) or (Vs, 3) -> target displacements (T, Vt, 3) or
        (Vt, 3), float32, in the target's frame and units. With `out` (a C-contiguous float32 array
        of that shape, e.g. a slice of a memory-mapped file) they are written there and it is
        returned: no array of the result's size is allocated, nor copied afterwards."""
        motion = np.asarray(displacements)
        single = motion.ndim == 2
        if single:
            motion = motion[None]
        if motion.ndim != 3 or motion.shape[1:] != (self.source_vertex_count, 3):
            raise RetargetError(f"the motion has shape {np.shape(displacements)}, but this binding is for a source "
                                f"of {self.source_vertex_count} vertices: give (frames, {self.source_vertex_count}, 3) "
                                "displacements of the head the binding was fitted from")
        shape = (len(motion), self.target_vertex_count, 3)
        expected = shape[1:] if single else shape
        if out is not None and (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != expected
                                or not out.flags.c_contiguous or not out.flags.writeable):
            raise RetargetError(f"transfer(out=...) needs a writable C-contiguous float32 array of shape {expected}, "
                                f"got {getattr(out, 'dtype', type(out).__name__)} {np.shape(out)}")
        # Blocks of frames small enough for their result to stay in cache: for each, rotate and
        # scale on the source side (fewer vertices), then one sparse product (Vt, Vs) @ (Vs, frames * 3).
        frames = len(motion)
        block = max(4, BLOCK_BYTES // (12 * self.target_vertex_count))
        linear = torch.from_numpy((self.scale * self.rotation).astype(np.float32)).T
        weights = self._matrix()
        source = torch.from_numpy(np.ascontiguousarray(motion, np.float32))
        result = torch.empty(shape) if out is None else torch.from_numpy(out).view(shape)
        for start in range(0, frames, block):
            rotated = source[start:start + block] @ linear
            count = len(rotated)
            columns = rotated.permute(1, 0, 2).reshape(self.source_vertex_count, count * 3)
            result[start:start + count] = (weights @ columns).view(self.target_vertex_count, count, 3).permute(1, 0, 2)
        if out is not None:
            return out
        return result[0].numpy() if single else result.numpy()

    def save(self, path: str | Path) -> None:
        np.savez(Path(path), format=np.int64(BINDING_FORMAT), triangles=self.triangles,
                 barycentric=self.barycentric, scale=np.float64(self.scale), rotation=self.rotation,
                 still=self.still, source_vertex_count=np.int64(self.source_vertex_count),
                 source_faces=self.source_faces)

    @classmethod
    def load(cls, path: str | Path) -> "Binding":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                data = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError) as error:
            raise RetargetError(f"{path}: not a readable binding file ({error}); fit the binding again") from None
        expected = {"format", "triangles", "barycentric", "scale", "rotation", "still", "source_vertex_count",
                    "source_faces"}
        if not expected <= set(data) or int(data["format"]) != BINDING_FORMAT:
            raise RetargetError(f"{path}: not a binding file of this version (it holds {sorted(data)}); "
                                "fit the binding again")
        binding = cls(triangles=data["triangles"].astype(np.int64), barycentric=data["barycentric"].astype(np.float32),
                      scale=float(data["scale"]), rotation=data["rotation"].astype(np.float64),
                      still=data["still"].astype(bool), source_vertex_count=int(data["source_vertex_count"]),
                      source_faces=data["source_faces"].astype(np.int64))
        count = len(binding.triangles)
        if (binding.barycentric.shape != (count, 3) or binding.still.shape != (count,)
                or binding.rotation.shape != (3, 3) or binding.source_faces.ndim != 2
                or binding.source_faces.shape[1] != 3 or len(binding.source_faces) == 0
                or (count and not 0 <= binding.triangles.min() <= binding.triangles.max() < len(binding.source_faces))
                or not 0 <= binding.source_faces.min() <= binding.source_faces.max() < binding.source_vertex_count):
            raise RetargetError(f"{path}: the binding's arrays do not fit together (a damaged file?); "
                                "fit the binding again")
        return binding


# ---------------------------------------------------------------------------------------------
# Input checks


def _vertices_of(vertices, what: str) -> np.ndarray:
    array = np.asarray(vertices, np.float64)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) < 3:
        raise RetargetError(f"the {what} vertices have shape {np.shape(vertices)}; give (V, 3) positions")
    if not np.isfinite(array).all():
        raise RetargetError(f"the {what} mesh has NaN or infinite vertex coordinates; fix or remove those vertices")
    return array


def _faces_of(faces, vertex_count: int, what: str) -> np.ndarray:
    array = np.asarray(faces)
    if array.ndim != 2 or array.shape[1] != 3 or len(array) == 0:
        raise RetargetError(f"the {what} faces have shape {np.shape(faces)}; give (F, 3) triangles "
                            "(triangulate quads and polygons first)")
    if not np.issubdtype(array.dtype, np.integer):
        raise RetargetError(f"the {what} faces are {array.dtype}, not vertex indices")
    if array.min() < 0 or array.max() >= vertex_count:
        raise RetargetError(f"the {what} faces use vertex indices from {array.min()} to {array.max()}, but the mesh "
                            f"has {vertex_count} vertices")
    return array.astype(np.int64)


def _landmarks_of(landmarks: dict, vertices: np.ndarray, what: str) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Landmark name -> position, and name -> vertex: the one given, or the nearest to the point
    given. (Of two vertices in one place, such as the copies along a closed mouth, only the index
    says which is meant.)"""
    if not isinstance(landmarks, dict):
        raise RetargetError(f"the {what} landmarks are a {type(landmarks).__name__}; give a dict of name -> vertex "
                            "index or [x, y, z]")
    unknown = sorted(set(landmarks) - set(LANDMARK_NAMES))
    if unknown:
        raise RetargetError(f"unknown {what} landmark {', '.join(map(str, unknown))}; the names are "
                            f"{', '.join(LANDMARK_NAMES)}")
    missing = [name for name in REQUIRED_LANDMARKS if name not in landmarks]
    if missing:
        raise RetargetError(f"the {what} landmarks lack {', '.join(missing)}; a fit needs at least "
                            f"{', '.join(REQUIRED_LANDMARKS)}")
    positions, indices = {}, {}
    for name, value in landmarks.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= value < len(vertices):
                raise RetargetError(f"{what} landmark {name} is vertex {value}, but the mesh has {len(vertices)} "
                                    "vertices (indices count from 0)")
            positions[name], indices[name] = vertices[int(value)], int(value)
            continue
        point = np.asarray(value, np.float64) if not isinstance(value, (str, bool)) else np.array(())
        if point.shape != (3,) or not np.isfinite(point).all():
            raise RetargetError(f"{what} landmark {name} is {value!r}; give a vertex index or a point [x, y, z]")
        positions[name], indices[name] = point, int(np.argmin(np.linalg.norm(vertices - point, axis=1)))
    return positions, indices


# ---------------------------------------------------------------------------------------------
# Geometry


def _face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted (unnormalised) face normals."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return np.cross(b - a, c - a)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    face_normals = _face_normals(vertices, faces)
    normals = np.zeros_like(vertices)
    for k in range(3):
        for axis in range(3):
            normals[:, axis] += np.bincount(faces[:, k], face_normals[:, axis], len(vertices))
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)


def _edges(faces: np.ndarray) -> np.ndarray:
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(edges, axis=0)


def _components(vertex_count: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label of each vertex (the smallest vertex index in its component):
    hooking roots onto smaller roots, then pointer jumping, until no edge joins two roots."""
    parent = np.arange(vertex_count)
    while True:
        first, second = parent[edges[:, 0]], parent[edges[:, 1]]
        apart = first != second
        if not apart.any():
            return parent
        np.minimum.at(parent, np.maximum(first, second)[apart], np.minimum(first, second)[apart])
        while True:
            grandparent = parent[parent]
            if np.array_equal(grandparent, parent):
                break
            parent = grandparent


def _spatial_blocks(points: np.ndarray, size: int) -> list[np.ndarray]:
    """Indices of `points` in compact blocks of at most `size`: halved along the longest side."""
    blocks, pending = [], [np.arange(len(points))]
    while pending:
        ids = pending.pop()
        if len(ids) <= size:
            blocks.append(ids)
            continue
        axis = int(np.argmax(points[ids].max(0) - points[ids].min(0)))
        order = ids[np.argsort(points[ids, axis], kind="stable")]
        pending += [order[:len(order) // 2], order[len(order) // 2:]]
    return blocks


class _Surface:
    """The source's triangles, for closest-point queries (float32 torch; coordinates relative to
    the source's centre, so squared distances keep their precision)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.origin = vertices.mean(axis=0)
        self.faces = faces
        corners = torch.from_numpy((vertices - self.origin)[faces].astype(np.float32))  # (F, 3, 3)
        self.corners = corners
        self.centroids = corners.mean(dim=1)
        normals = _face_normals(vertices, faces)
        self.normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-30)
        # Blocks of queries search only the centroids within this margin of the block; a query
        # whose k-th nearest centroid there is farther than the margin is searched again in full.
        probe = self.centroids[::max(1, len(faces) // 1000)]
        kth = torch.cdist(probe, self.centroids).topk(min(KNN_CANDIDATES, len(faces)), largest=False).values[:, -1]
        self.margin = 1.5 * float(kth.quantile(0.9))

    def _candidates(self, queries: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """The `KNN_CANDIDATES` faces (of `faces`) with the nearest centroids to each query."""
        centroids = self.centroids[faces]
        k = min(KNN_CANDIDATES, len(faces))
        found = torch.empty((len(queries), k), dtype=torch.int64)
        unresolved = []
        for ids in _spatial_blocks(queries.numpy(), KNN_BLOCK):
            ids = torch.from_numpy(ids)
            block = queries[ids]
            low, high = block.min(0).values - self.margin, block.max(0).values + self.margin
            near = torch.nonzero(((centroids >= low) & (centroids <= high)).all(1))[:, 0]
            if len(near) < k:
                unresolved.append(ids)
                continue
            distance, nearest = torch.cdist(block, centroids[near]).topk(k, dim=1, largest=False)
            exact = distance[:, -1] <= self.margin
            found[ids[exact]] = faces[near[nearest[exact]]]
            unresolved.append(ids[~exact])
        rest = torch.cat(unresolved)
        for start in range(0, len(rest), KNN_CHUNK):
            ids = rest[start:start + KNN_CHUNK]
            found[ids] = faces[torch.cdist(queries[ids], centroids).topk(k, dim=1, largest=False).indices]
        return found

    def closest(self, points: np.ndarray, allowed: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(face, barycentric (N, 3), distance) of the closest surface point to each point, among
        the faces `allowed` (indices; default all)."""
        faces = torch.arange(len(self.faces)) if allowed is None else torch.from_numpy(np.asarray(allowed, np.int64))
        if len(points) == 0 or len(faces) == 0:
            return (np.zeros(len(points), np.int64), np.zeros((len(points), 3), np.float32),
                    np.full(len(points), np.inf))
        queries = torch.from_numpy((points - self.origin).astype(np.float32))
        candidates = self._candidates(queries, faces)  # (n, k)
        best_face, best_weights, best_distance = [], [], []
        for start in range(0, len(queries), KNN_CHUNK):
            block, block_candidates = queries[start:start + KNN_CHUNK], candidates[start:start + KNN_CHUNK]
            weights, squared = _closest_on_triangles(block, self.corners[block_candidates])
            nearest = squared.argmin(dim=1, keepdim=True)
            best_face.append(block_candidates.gather(1, nearest)[:, 0])
            best_weights.append(weights.gather(1, nearest[:, :, None].expand(-1, 1, 3))[:, 0])
            best_distance.append(squared.gather(1, nearest)[:, 0].clamp_min(0).sqrt())
        return (torch.cat(best_face).numpy(), torch.cat(best_weights).numpy(),
                torch.cat(best_distance).numpy().astype(np.float64))

    def point(self, faces: np.ndarray, weights: np.ndarray) -> np.ndarray:
        corners = self.corners[torch.from_numpy(faces)].numpy().astype(np.float64)
        return np.einsum("nk,nkc->nc", weights.astype(np.float64), corners) + self.origin


def _closest_on_triangles(points: torch.Tensor, corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentric weights (n, k, 3) of the closest point on each of k triangles (n, k, 3, 3) to
    each point (n, 3), and its squared distance (n, k). The point's Voronoi region of the triangle
    (a vertex, an edge or the inside) decides the formula, as in Ericson's Real-Time Collision
    Detection, 5.1.5; here every region's answer is computed and the region selects one."""
    a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    p = points[:, None, :]
    ab, ac, ap, bp, cp = b - a, c - a, p - a, p - b, p - c
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    tiny = torch.finfo(points.dtype).tiny

    def safe(numerator, denominator):
        return numerator / torch.where(denominator.abs() > tiny, denominator, torch.full_like(denominator, tiny))

    total = va + vb + vc
    v, w = safe(vb, total), safe(vc, total)  # inside
    u = 1 - v - w
    edge_bc = safe(d4 - d3, (d4 - d3) + (d5 - d6))
    regions = [  # in reverse order of precedence: later ones win
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), 0 * u, 1 - edge_bc, edge_bc),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), 1 - safe(d2, d2 - d6), 0 * u, safe(d2, d2 - d6)),
        ((d6 >= 0) & (d5 <= d6), 0 * u, 0 * u, 0 * u + 1),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), 1 - safe(d1, d1 - d3), safe(d1, d1 - d3), 0 * u),
        ((d3 >= 0) & (d4 <= d3), 0 * u, 0 * u + 1, 0 * u),
        ((d1 <= 0) & (d2 <= 0), 0 * u + 1, 0 * u, 0 * u),
    ]
    for region, ru, rv, rw in regions:
        u, v, w = torch.where(region, ru, u), torch.where(region, rv, v), torch.where(region, rw, w)
    weights = torch.stack([u, v, w], dim=-1).clamp(0, 1)
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(tiny)
    closest = (weights[..., None] * corners).sum(-2)
    return weights, ((closest - p) ** 2).sum(-1)


def _similarity(target: np.ndarray, source: np.ndarray, weights: np.ndarray | None = None
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """s, R, t minimising sum w_k |s R target_k + t - source_k|^2 with R a rotation (Umeyama 1991)."""
    weights = np.ones(len(target)) if weights is None else weights
    weights = weights / weights.sum()
    target_mean, source_mean = weights @ target, weights @ source
    tc, sc = target - target_mean, source - source_mean
    u, singular, vt = np.linalg.svd((sc * weights[:, None]).T @ tc)
    sign = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign) / (weights @ (tc ** 2).sum(1)))
    return scale, rotation, source_mean - scale * rotation @ target_mean


def _robust_similarity(target: np.ndarray, source: np.ndarray, weights: np.ndarray | None = None
                       ) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity, refitted with pairs that fit badly weighted down (Cauchy weights on the
    residual over twice the weighted median residual): one misplaced landmark, or a chin that is
    longer than the source's, should not tilt or shrink the whole head."""
    prior = np.ones(len(target)) if weights is None else weights
    weights = prior
    for _ in range(10):
        scale, rotation, translation = _similarity(target, source, weights)
        residual = np.linalg.norm(target @ (scale * rotation).T + translation - source, axis=1)
        order = np.argsort(residual)
        typical = 2 * residual[order][np.searchsorted(np.cumsum(prior[order]), prior.sum() / 2)]
        if typical == 0:
            break
        weights = prior / (1 + (residual / typical) ** 2)
    return scale, rotation, translation


def _rotation_of(vector: np.ndarray) -> np.ndarray:
    """The rotation by |vector| radians about `vector` (Rodrigues)."""
    angle = float(np.linalg.norm(vector))
    if angle == 0:
        return np.eye(3)
    x, y, z = vector / angle
    cross = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _plane_similarity_step(points: np.ndarray, closest: np.ndarray, normals: np.ndarray, weights: np.ndarray,
                           landmarks: np.ndarray, targets: np.ndarray, landmark_share: float, robust: bool
                           ) -> tuple[float, np.ndarray, np.ndarray]:
    """(s, R, t) moving `points` towards the planes through `closest` with `normals`, and
    `landmarks` towards `targets` (together weighing `landmark_share` of the points' weight): one
    Gauss-Newton step of the linearised similarity p -> p + omega x p + sigma p + tau; if
    `robust`, with the points' large residuals weighted down (Cauchy, against twice their
    weighted median)."""
    centre = weights @ points / max(weights.sum(), 1e-30)  # linearise about the centre: better conditioned
    p, q = points - centre, landmarks - centre
    plane_residual = np.einsum("nc,nc->n", normals, closest - points)
    if robust:
        order = np.argsort(np.abs(plane_residual))
        typical = 2 * np.abs(plane_residual[order][np.searchsorted(np.cumsum(weights[order]), weights.sum() / 2)])
        weights = weights / (1 + (plane_residual / max(typical, 1e-12)) ** 2)
    plane_rows = np.concatenate([np.cross(p, normals), np.einsum("nc,nc->n", normals, p)[:, None], normals], axis=1)
    # A landmark gives three rows, one per axis: d/d(omega) of omega x q is -[q]x, and so on.
    cross = np.zeros((len(q), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = q[:, 2], -q[:, 1], q[:, 0]
    cross[:, 1, 0], cross[:, 2, 0], cross[:, 2, 1] = -q[:, 2], q[:, 1], -q[:, 0]
    landmark_rows = np.concatenate([cross, q[:, :, None], np.broadcast_to(np.eye(3), (len(q), 3, 3))], axis=2)
    landmark_weight = landmark_share * weights.sum() / len(q)
    rows = np.concatenate([plane_rows, landmark_rows.reshape(-1, 7)])
    residual = np.concatenate([plane_residual, (targets - landmarks).reshape(-1)])
    row_weights = np.concatenate([weights, np.full(3 * len(q), landmark_weight)])
    system = rows.T @ (rows * row_weights[:, None]) + 1e-12 * np.eye(7)
    omega, sigma, tau = np.split(np.linalg.solve(system, rows.T @ (row_weights * residual)), [3, 4])
    rotation = _rotation_of(omega)
    scale = 1.0 + float(sigma[0])
    # p -> scale * R (p - centre) + centre + tau, as s, R, t acting on p.
    return scale, rotation, centre + tau - scale * rotation @ centre


def _spread(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


class _Warp:
    """A smooth displacement field: Gaussian radial basis functions on fixed centres."""

    def __init__(self, centres: np.ndarray):
        self.centres = centres
        self.width = 1.0
        self.coefficients = np.zeros((len(centres), 3))

    def basis(self, points: np.ndarray, width: float, dtype=torch.float64) -> torch.Tensor:
        squared = torch.cdist(torch.from_numpy(points).to(dtype), torch.from_numpy(self.centres).to(dtype)) ** 2
        return torch.exp(-0.5 / width ** 2 * squared)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """The field at `points` (in float32: it is smooth and a few millimetres at most)."""
        coefficients = torch.from_numpy(self.coefficients.astype(np.float32))
        return np.concatenate([(self.basis(points[start:start + KNN_CHUNK], self.width, torch.float32) @ coefficients)
                               .numpy() for start in range(0, len(points), KNN_CHUNK)]).astype(np.float64)

    def fit(self, points: np.ndarray, offsets: np.ndarray, weights: np.ndarray, width: float) -> None:
        """The field of this width closest to `offsets` at `points` (weighted least squares with a
        ridge that keeps the field small where the points say little)."""
        basis = self.basis(points, width).numpy()
        weighted = basis * weights[:, None]
        system = basis.T @ weighted + FIT_SMOOTHING * weights.sum() / len(points) * np.eye(len(self.centres))
        self.coefficients = np.linalg.solve(system, weighted.T @ offsets)
        self.width = width


def _spread_out(points: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` points spread over the set (farthest-point sampling from the first)."""
    count = min(count, len(points))
    chosen = np.zeros(count, np.int64)
    distance = np.linalg.norm(points - points[0], axis=1)
    for i in range(1, count):
        chosen[i] = int(np.argmax(distance))
        distance = np.minimum(distance, np.linalg.norm(points - points[chosen[i]], axis=1))
    return chosen


# ---------------------------------------------------------------------------------------------
# Lips


@dataclass
class _Mouth:
    """The source's mouth in its own frame: lateral axis (towards the left corner), up, forward."""
    centre: np.ndarray
    axes: np.ndarray  # (3, 3) rows: lateral, up, forward
    half_width: float
    curve: np.ndarray  # quadratic coefficients of the mouth line's height over the lateral position

    @classmethod
    def of(cls, landmarks: dict[str, np.ndarray]) -> "_Mouth":
        left, right = landmarks["mouth_corner_left"], landmarks["mouth_corner_right"]
        centre = (landmarks["upper_lip_center"] + landmarks["lower_lip_center"]) / 2
        lateral = left - right
        half_width = float(np.linalg.norm(lateral)) / 2
        if half_width == 0:
            raise RetargetError("the mouth corners are the same point; mark the left and right corners of the mouth")
        lateral /= 2 * half_width
        up = landmarks["nose_tip"] - landmarks["chin"]
        up -= (up @ lateral) * lateral
        if np.linalg.norm(up) == 0:
            raise RetargetError("the chin and nose tip lie on the line through the mouth corners; check the landmarks")
        up /= np.linalg.norm(up)
        axes = np.stack([lateral, up, np.cross(lateral, up)])
        s, h = ((np.stack([right, centre, left]) - centre) @ axes[:2].T).T
        return cls(centre, axes, half_width, np.polyfit(s, h, 2))

    def local(self, points: np.ndarray) -> np.ndarray:
        """(lateral, height above the mouth line, forward) coordinates."""
        local = (points - self.centre) @ self.axes.T
        local[:, 1] -= np.polyval(self.curve, local[:, 0])
        return local


def _graph_distance(points: np.ndarray, edges: np.ndarray, seeds: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Length of the shortest path along mesh edges from the nearest of `seeds` to each vertex,
    inside `region` (a mask; infinite elsewhere and beyond): Bellman-Ford, every edge relaxed at
    once per round."""
    inside = edges[region[edges[:, 0]] & region[edges[:, 1]]]
    inside = np.concatenate([inside, inside[:, ::-1]])
    length = np.linalg.norm(points[inside[:, 0]] - points[inside[:, 1]], axis=1)
    distance = np.full(len(points), np.inf)
    distance[seeds] = 0.0
    while True:
        before = distance.copy()
        np.minimum.at(distance, inside[:, 1], distance[inside[:, 0]] + length)
        if np.array_equal(before, distance):
            return distance


def _propagate_lips(points: np.ndarray, labels: np.ndarray, undecided: np.ndarray, edges: np.ndarray,
                    fallback: np.ndarray) -> np.ndarray:
    """Gives each undecided vertex the lip of the decided vertex nearest to it along the mesh
    (mesh edges do not cross a slit: from one copy the way to the other lip leads round a mouth
    corner); any left that no decided vertex reaches take `fallback` (+1 upper, -1 lower)."""
    region = undecided | (labels != 0)
    to_upper = _graph_distance(points, edges, np.nonzero(region & (labels > 0))[0], region)
    to_lower = _graph_distance(points, edges, np.nonzero(region & (labels < 0))[0], region)
    labels = labels.copy()
    reached = undecided & (np.isfinite(to_upper) | np.isfinite(to_lower))
    labels[reached] = np.where(to_upper[reached] <= to_lower[reached], 1.0, -1.0)
    labels[undecided & ~reached] = fallback[undecided & ~reached]
    return labels


def _source_lip_labels(vertices: np.ndarray, faces: np.ndarray, mouth: _Mouth) -> np.ndarray:
    """+1 upper lip, -1 lower lip, 0 elsewhere, for the source's vertices around the mouth: by
    the side of the mouth line through the corners and lip centres, and over the mesh's edges
    where a vertex is on that line (the two copies of a closed slit)."""
    lateral, height, forward = mouth.local(vertices).T
    zone = ((np.abs(lateral) < 1.2 * mouth.half_width) & (np.abs(height) < 0.6 * mouth.half_width)
            & (np.abs(forward) < 0.6 * mouth.half_width))
    margin = LIP_MARGIN * 2 * mouth.half_width
    labels = np.where(zone & (np.abs(height) > margin), np.sign(height), 0.0)
    edges = _edges(faces)
    inside = zone[edges[:, 0]] & zone[edges[:, 1]]
    fallback = np.where(height >= 0, 1.0, -1.0)
    return _propagate_lips(vertices, labels, zone & (labels == 0), edges[inside], fallback).astype(np.int8) * zone


def _lip_faces(faces: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the upper-lip and lower-lip faces: those with two or three vertices of
    that lip (a mouth corner, shared by both lips, may carry either label)."""
    corner_labels = labels[faces]
    return (corner_labels == 1).sum(1) >= 2, (corner_labels == -1).sum(1) >= 2


def _bind(surface: _Surface, points: np.ndarray, edges: np.ndarray, upper_faces: np.ndarray,
          lower_faces: np.ndarray, mouth: _Mouth, lip_centres: tuple[int, int]
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest-point binding of `points` (target vertices in the source frame), lip to lip.

    Which lip a target vertex near the mouth is on: first by the mesh's own paths, when the two
    lip centres are separate vertices (a slit, closed or open: from one copy of a slit to the
    other the way leads round a mouth corner, so a vertex much nearer one centre is on its lip);
    then by the surface: whichever of the source's lips is nearer; and for the vertices too close
    to the mouth line to tell, by their neighbours over the mesh (which do not cross a slit)."""
    faces, weights, distance = surface.closest(points)
    zone = upper_faces[faces] | lower_faces[faces]
    if not zone.any():
        return faces, weights, distance
    near = np.nonzero(zone)[0]
    upper_ids, lower_ids = np.nonzero(upper_faces)[0], np.nonzero(lower_faces)[0]
    to_upper = surface.closest(points[near], upper_ids)[2]
    to_lower = surface.closest(points[near], lower_ids)[2]
    surface_score = np.zeros(len(points))
    surface_score[near] = to_lower - to_upper  # > 0: nearer the upper lip
    margin = LIP_MARGIN * 2 * mouth.half_width
    labels = np.where(zone & (np.abs(surface_score) > margin), np.sign(surface_score), 0.0)
    if lip_centres[0] != lip_centres[1]:
        region = np.linalg.norm(points - mouth.centre, axis=1) < LIP_PATH_REACH * mouth.half_width
        region[list(lip_centres)] = True
        to_lower_centre = _graph_distance(points, edges, np.array([lip_centres[1]]), region)
        to_upper_centre = _graph_distance(points, edges, np.array([lip_centres[0]]), region)
        reached = np.isfinite(to_lower_centre) | np.isfinite(to_upper_centre)
        path_score = np.zeros(len(points))
        with np.errstate(invalid="ignore"):  # inf - inf where both are out of reach: left at 0
            path_score[reached] = to_lower_centre[reached] - to_upper_centre[reached]
        by_path = zone & (np.abs(path_score) > LIP_PATH_MARGIN * mouth.half_width)
        both = by_path & (labels != 0)
        if both.any() and np.mean(np.sign(path_score[both]) == labels[both]) < 0.5:
            path_score = -path_score  # the centres were given the other way round
        labels[by_path] = np.sign(path_score[by_path])
    zone_edges = edges[zone[edges[:, 0]] & zone[edges[:, 1]]]
    labels = _propagate_lips(points, labels, zone & (labels == 0), zone_edges, np.where(surface_score >= 0, 1.0, -1.0))
    all_faces = np.arange(len(upper_faces))
    for label, other in ((1, lower_faces), (-1, upper_faces)):
        chosen = np.nonzero(zone & (labels == label))[0]
        if len(chosen):
            faces[chosen], weights[chosen], distance[chosen] = surface.closest(points[chosen], all_faces[~other])
    return faces, weights, distance


# ---------------------------------------------------------------------------------------------
# Fitting


def fit_binding(source_vertices, source_faces, source_landmarks: dict, target_vertices, target_faces,
                target_landmarks: dict, source_lips: tuple[np.ndarray, np.ndarray] | None = None,
                progress: Progress | None = None) -> Binding:
    """Binds every vertex of the target mesh to the source surface (see the module's docstring).

    Landmarks: name (LANDMARK_NAMES; at least REQUIRED_LANDMARKS, on both meshes) -> a vertex
    index or a point [x, y, z] on the surface. The names both meshes have are used. source_lips:
    (upper lip vertex indices, lower lip vertex indices) of the source; by default they are found
    from the mouth landmarks. progress(fraction, stage) is called as the fit goes.
    """
    report = progress or (lambda fraction, stage: None)
    source = _vertices_of(source_vertices, "source")
    target = _vertices_of(target_vertices, "target")
    source_tris = _faces_of(source_faces, len(source), "source")
    target_tris = _faces_of(target_faces, len(target), "target")
    source_marks = _landmarks_of(source_landmarks, source, "source")[0]
    target_marks, target_mark_vertices = _landmarks_of(target_landmarks, target, "target")
    names = [name for name in LANDMARK_NAMES if name in source_marks and name in target_marks]

    report(0.0, "Aligning the landmarks")
    source_points = np.stack([source_marks[n] for n in names])
    target_points = np.stack([target_marks[n] for n in names])
    spread = _spread(source_points)
    centred = target_points - target_points.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    if singular[1] <= 1e-3 * singular[0]:
        raise RetargetError("the target landmarks lie on one line (or one point); check that each marks its own "
                            "feature")
    scale, rotation, translation = _robust_similarity(target_points, source_points)
    aligned_points = target_points @ (scale * rotation).T + translation
    mismatch = _spread(aligned_points - source_points + source_points.mean(0)) / spread
    if mismatch > MISMATCH:
        raise RetargetError(f"the target landmarks do not match the source's (after the best scale and rotation they "
                            f"are {mismatch:.0%} of the face's size apart); check that each name marks the same "
                            "feature, with left and right the subject's")

    surface = _Surface(source, source_tris)
    target_edges = _edges(target_tris)
    component = _components(len(target), target_edges)
    skin = np.isin(component, component[[target_mark_vertices[n] for n in names]])

    rng = np.random.default_rng(0)
    skin_ids = np.nonzero(skin)[0]
    samples = np.sort(rng.choice(skin_ids, min(FIT_SAMPLES, len(skin_ids)), replace=False))
    mouth = _Mouth.of(source_marks)

    def pairs(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest source points of `points`, the source's normals there, and whether each pair is
        usable (the normals agree and the points are not far apart)."""
        faces, weights, distance = surface.closest(points)
        agree = np.einsum("nc,nc->n", normals, surface.normals[faces]) > NORMAL_AGREEMENT
        return (surface.point(faces, weights), surface.normals[faces],
                agree & (distance < OUTLIER_DISTANCE * spread))

    # The similarity again, from the surface: the sample against the source's tangent planes at
    # its closest points (which converges in a few steps where point-to-point pairs crawl), with
    # the landmarks as a few more pairs. Landmarks a few millimetres off (a rounded chin, a nose
    # tip a grid row away) leave the scale a few per cent off, which the whole head corrects.
    target_normals = _vertex_normals(target, target_tris)[samples]
    for step in range(SIMILARITY_STEPS):
        report(0.05 + 0.3 * step / SIMILARITY_STEPS, "Aligning the surface")
        moved = target[samples] @ (scale * rotation).T + translation
        fitted, fitted_normals, use = pairs(moved, target_normals @ rotation.T)
        face = np.exp(-0.5 * (np.linalg.norm(fitted - mouth.centre, axis=1) / (SURFACE_REACH * spread)) ** 2)
        update = _plane_similarity_step(moved, fitted, fitted_normals, use * face,
                                        target_points @ (scale * rotation).T + translation, source_points,
                                        SURFACE_LANDMARK_WEIGHT, robust=2 * step >= SIMILARITY_STEPS)
        scale, rotation, translation = (update[0] * scale, update[1] @ rotation,
                                        update[0] * update[1] @ translation + update[2])

    # The non-rigid fit from there, from coarse to fine: mouth landmarks onto mouth landmarks,
    # surface onto surface. Then, from the pairs near the mouth and the mouth landmarks, the
    # similarity of the mouth region itself (a longer chin or a wider skull tilt and scale the
    # whole head's), and the fit again from there. Displacements go through that similarity.
    landmark_weights = len(samples) * np.array([MOUTH_LANDMARK_WEIGHT if n in MOUTH_LANDMARKS else LANDMARK_WEIGHT
                                                for n in names])
    for fit in range(FITS):
        aligned = target @ (scale * rotation).T + translation  # the target in the source's frame
        aligned_points = target_points @ (scale * rotation).T + translation
        sample_points, sample_normals = aligned[samples], target_normals @ rotation.T
        warp = _Warp(sample_points[_spread_out(sample_points, FIT_CENTRES)])
        for step, width in enumerate(FIT_WIDTHS):
            report(0.35 + 0.2 * fit + 0.2 * step / len(FIT_WIDTHS), "Fitting the shape")
            fitted, _, use = pairs(sample_points + warp(sample_points), sample_normals)
            warp.fit(np.concatenate([sample_points, aligned_points]),
                     np.concatenate([fitted - sample_points, source_points - aligned_points]),
                     np.concatenate([use.astype(np.float64), landmark_weights]), width * spread)
        if fit < FITS - 1:
            distance = np.linalg.norm(fitted - mouth.centre, axis=1)
            near_mouth = use * np.exp(-0.5 * (distance / (MOUTH_REACH * mouth.half_width)) ** 2)
            mouth_marks = np.array([n in MOUTH_LANDMARKS for n in names])
            share = MOUTH_SIMILARITY_WEIGHT * near_mouth.sum() / mouth_marks.sum()
            scale, rotation, translation = _robust_similarity(
                np.concatenate([target[samples], target_points[mouth_marks]]),
                np.concatenate([fitted, source_points[mouth_marks]]),
                np.concatenate([near_mouth, np.full(mouth_marks.sum(), share)]))

    report(0.75, "Binding the vertices")
    placed = aligned + warp(aligned)
    if source_lips is None:
        source_labels = _source_lip_labels(source, source_tris, mouth)
    else:
        source_labels = np.zeros(len(source), np.int8)
        for label, indices in ((1, source_lips[0]), (-1, source_lips[1])):
            indices = np.asarray(indices, np.int64)
            if indices.ndim != 1 or len(indices) == 0 or indices.min() < 0 or indices.max() >= len(source):
                raise RetargetError("source_lips: give two non-empty lists of source vertex indices (upper lip, "
                                    "lower lip)")
            source_labels[indices] = label
    upper_faces, lower_faces = _lip_faces(source_tris, source_labels)
    # Seeds of the paths that tell the lips apart: the target vertices nearest to points a little
    # above the upper lip centre and below the lower one (whether the landmarks are vertices or
    # points, and whichever copy of a closed slit they name).
    up = mouth.axes[1] * LIP_SEED_OFFSET * mouth.half_width
    lip_centres = tuple(int(np.argmin(np.linalg.norm(placed - (point + side * up), axis=1)))
                        for point, side in ((placed[target_mark_vertices["upper_lip_center"]], 1.0),
                                            (placed[target_mark_vertices["lower_lip_center"]], -1.0)))
    faces, weights, distance = _bind(surface, placed, target_edges, upper_faces, lower_faces, mouth, lip_centres)

    report(0.9, "Finding the parts that do not move")
    still = np.zeros(len(target), bool)
    for part in np.unique(component[~skin]):
        members = component == part
        still[members] = np.median(distance[members]) > STILL_DISTANCE * spread

    report(1.0, "Done")
    return Binding(triangles=faces.astype(np.int64), barycentric=weights.astype(np.float32), scale=1.0 / scale,
                   rotation=rotation.T.copy(), still=still, source_vertex_count=len(source), source_faces=source_tris)


def mesh_signature(vertices, faces, landmarks: dict) -> str:
    """A hash of a mesh and its landmarks: the key under which to cache its binding."""
    digest = hashlib.sha256(b"memorytalker-retarget-1")
    digest.update(np.ascontiguousarray(vertices, "<f4").tobytes())
    digest.update(np.ascontiguousarray(faces, "<i8").tobytes())
    canonical = {str(name): (int(value) if isinstance(value, (int, np.integer))
                             else [float(x) for x in np.asarray(value, np.float32)])
                 for name, value in landmarks.items()}
    digest.update(json.dumps(canonical, sort_keys=True).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Files


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) and triangles (F, 3) of a Wavefront OBJ file; polygons are split into fans."""
    path = Path(path)
    vertices, faces = [], []
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                kind, *fields = line.split() or [""]
                try:
                    if kind == "v":
                        vertices.append([float(x) for x in fields[:3]])
                        if len(vertices[-1]) != 3:
                            raise ValueError("a vertex needs three coordinates")
                    elif kind == "f":
                        corners = [int(f.split("/")[0]) for f in fields]
                        corners = [c - 1 if c > 0 else len(vertices) + c for c in corners]  # negative: relative
                        if len(corners) < 3:
                            raise ValueError("a face needs three corners")
                        faces += [(corners[0], corners[i], corners[i + 1]) for i in range(1, len(corners) - 1)]
                except ValueError as error:
                    raise RetargetError(f"{path}, line {number}: cannot read {line.strip()!r} ({error})") from None
    except OSError as error:
        raise RetargetError(f"{path}: cannot read the mesh ({error.strerror or error})") from None
    if not vertices:
        raise RetargetError(f"{path}: no vertices (v lines); export the head as a Wavefront OBJ mesh")
    if not faces:
        raise RetargetError(f"{path}: no faces (f lines), only a point cloud; export the mesh with its faces")
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise RetargetError(f"{path}: faces refer to vertices that the file does not have (it has {len(vertices)})")
    return vertices, faces


def read_landmarks(path: str | Path) -> dict:
    """A landmarks JSON file: {name: vertex index or [x, y, z]}, or a head description that has
    them under "landmarks" (as demo_head.json)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RetargetError(f"{path}: cannot read the landmarks ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RetargetError(f"{path}: not a JSON file ({error}); write {{name: vertex index or [x, y, z]}}") from None
    if isinstance(data, dict) and isinstance(data.get("landmarks"), dict):
        data = data["landmarks"]
    if not isinstance(data, dict):
        raise RetargetError(f"{path}: expected a JSON object {{name: vertex index or [x, y, z]}}, got a "
                            f"{type(data).__name__}")
    return data


def read_motion(path: str | Path) -> tuple[np.ndarray, float, dict]:
    """Displacements (T, V, 3), frame rate and metadata of a .npz motion file as `animate` writes it."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise RetargetError(f"{path}: give a .npz motion file (as written by `python -m model_core animate --out "
                            "NAME.npz`); it carries the frame rate the others lack")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "displacements" not in archive.files or "fps" not in archive.files:
                raise RetargetError(f"{path}: not a motion file (it holds {sorted(archive.files)}, not displacements "
                                    "and fps); give a .npz written by animate")
            displacements, fps = archive["displacements"], float(archive["fps"])
            metadata = json.loads(str(archive["metadata"])) if "metadata" in archive.files else {}
    except (OSError, ValueError, EOFError) as error:
        raise RetargetError(f"{path}: cannot read the motion file ({error})") from None
    if displacements.ndim != 3 or displacements.shape[2] != 3:
        raise RetargetError(f"{path}: the displacements have shape {displacements.shape}; "
                            "expected (frames, vertices, 3)")
    return displacements, fps, metadata if isinstance(metadata, dict) else {}


def read_model_head(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The source head of a model folder: vertices, triangles and landmarks of its demo_head.obj and
    demo_head.json. Models whose head is the demo head get the demo head's full landmark set
    (older demo_head.json files list only the mouth, chin and nose)."""
    folder = Path(folder)
    mesh, description = folder / "demo_head.obj", folder / "demo_head.json"
    for needed in (mesh, description):
        if not needed.is_file():
            raise RetargetError(f"{folder} has no {needed.name}: retargeting needs the model's own head mesh and its "
                                "landmarks beside the weights; use a model folder that has both (the bundled demo "
                                "model does)")
    vertices, faces = read_obj(mesh)
    landmarks = read_landmarks(description)
    if set(LANDMARK_NAMES) - set(landmarks):
        from .synthetic.head import demo_head

        demo = demo_head()
        if vertices.shape == demo.vertices.shape and np.allclose(vertices, demo.vertices, atol=1e-6):
            landmarks = {**demo.landmarks, **landmarks}
    return vertices, faces, landmarks
