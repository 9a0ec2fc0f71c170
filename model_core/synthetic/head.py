"""The demo head: a deterministic, code-generated head mesh with a mouth that opens.

The surface is a smooth union of simple solids (cranium, lower face, chin, cheeks, nose, lips,
brow, eyes, ears, neck), sampled along rays from a point inside the head on a latitude-longitude
grid that is denser at the front of the face and around the mouth and eyes. The lips are parted by
a slit in the grid: along the mouth line the vertices are duplicated, the upper copies belonging to
the upper lip and the lower copies to the lower lip; at rest the copies coincide (a closed mouth)
and the rig pulls them apart. The result is one connected, manifold surface with two boundaries,
the neck opening and the lips, like FLAME's. Coordinates follow FLAME: metres, y up, the face
looking down +z, +x on the subject's left.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

CENTRE = np.array([0.0, -0.01, 0.0])
COLUMNS = 112
ROWS = 44
MOUTH_HALF_ANGLE = 0.30  # radians either side of the front: the mouth corners
LOWEST_LATITUDE = -1.20  # radians below the horizontal where the neck ends


def _ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    q = (p - np.asarray(centre)) / np.asarray(radii)
    k0 = np.linalg.norm(q, axis=-1)
    k1 = np.linalg.norm(q / np.asarray(radii), axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)  # the usual ellipsoid distance estimate


def _capsule(p: np.ndarray, a, b, radius: float) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1) - radius


def _union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _subtract(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 - 0.5 * (a + b) / k, 0.0, 1.0)
    return a * (1 - h) + (-b) * h + k * h * (1 - h)


def head_distance(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the head surface (negative inside)."""
    d = _ellipsoid(p, (0, 0.02, -0.012), (0.076, 0.097, 0.100))  # cranium
    d = _union(d, _ellipsoid(p, (0, -0.040, 0.020), (0.063, 0.070, 0.074)), 0.02)  # lower face and jaw
    d = _union(d, _ellipsoid(p, (0, -0.092, 0.060), (0.024, 0.020, 0.022)), 0.02)  # chin
    for side in (-1, 1):
        d = _union(d, _ellipsoid(p, (side * 0.042, -0.014, 0.052), (0.027, 0.025, 0.027)), 0.02)  # cheek
        d = _union(d, _ellipsoid(p, (side * 0.078, 0.004, -0.012), (0.010, 0.030, 0.018)), 0.006)  # ear
        d = _union(d, _ellipsoid(p, (side * 0.012, -0.020, 0.093), (0.009, 0.007, 0.008)), 0.006)  # nostril wing
        d = _subtract(d, _ellipsoid(p, (side * 0.031, 0.028, 0.100), (0.016, 0.010, 0.014)), 0.012)  # eye socket
        d = _union(d, _ellipsoid(p, (side * 0.031, 0.027, 0.081), (0.012, 0.010, 0.012)), 0.004)  # eyeball
    d = _union(d, _ellipsoid(p, (0, 0.047, 0.079), (0.050, 0.008, 0.012)), 0.02)  # brow
    d = _union(d, _capsule(p, (0, 0.026, 0.088), (0, -0.008, 0.103), 0.007), 0.012)  # nose bridge
    d = _union(d, _ellipsoid(p, (0, -0.012, 0.103), (0.0095, 0.009, 0.0095)), 0.006)  # nose tip
    d = _union(d, _ellipsoid(p, (0, -0.043, 0.093), (0.025, 0.0075, 0.011)), 0.006)  # upper lip
    d = _union(d, _ellipsoid(p, (0, -0.054, 0.090), (0.022, 0.0080, 0.011)), 0.006)  # lower lip
    d = _union(d, _capsule(p, (0, -0.06, -0.02), (0, -0.25, -0.02), 0.052), 0.03)  # neck
    return d


def _warp(u: np.ndarray, centres, widths, gains) -> np.ndarray:
    """A monotone map [0,1] -> [0,1] that samples more densely near `centres`."""
    fine = np.linspace(0, 1, 4097)
    density = np.ones_like(fine)
    for c, w, g in zip(centres, widths, gains):
        density += g * np.exp(-0.5 * ((fine - c) / w) ** 2)
    cumulative = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    cumulative /= cumulative[-1]
    return np.interp(u, cumulative, fine)


@dataclass
class DemoHead:
    vertices: np.ndarray  # (V, 3) float32, metres
    faces: np.ndarray  # (F, 3) int32 triangles
    landmarks: dict[str, int]
    lip_indices: np.ndarray  # the lip region (LVE)
    upper_face_indices: np.ndarray  # forehead, eyes and nose bridge (FDD)
    upper_lip_slit: np.ndarray  # the duplicated mouth-line vertices of the upper lip (left to right)
    lower_lip_slit: np.ndarray  # and of the lower lip
    metadata: dict = field(default_factory=dict)


def _directions(longitude: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    lon, lat = np.meshgrid(longitude, latitude)  # (rows, columns)
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1)


def _surface_points(directions: np.ndarray, far: float = 0.32, steps: int = 96) -> np.ndarray:
    """The outermost surface crossing along each ray from CENTRE (bisection after a coarse march)."""
    flat = directions.reshape(-1, 3)
    t = np.linspace(far, 0.0, steps)
    samples = head_distance(CENTRE + t[None, :, None] * flat[:, None, :])
    first_inside = np.argmax(samples <= 0, axis=1)
    low, high = t[first_inside], t[np.maximum(first_inside - 1, 0)]  # inside at low, outside at high
    for _ in range(40):
        middle = (low + high) / 2
        inside = head_distance(CENTRE + middle[:, None] * flat) <= 0
        low, high = np.where(inside, middle, low), np.where(inside, high, middle)
    return (CENTRE + ((low + high) / 2)[:, None] * flat).reshape(directions.shape)


@lru_cache(maxsize=1)
def demo_head() -> DemoHead:
    # Longitude 0 is the front; columns crowd around the face, rows around the mouth and eyes.
    u = _warp(np.arange(COLUMNS) / COLUMNS, [0.0, 1.0, 0.5], [0.09, 0.09, 0.2], [3.0, 3.0, -0.5])
    longitude = np.where(u > 0.5, u - 1.0, u) * 2 * np.pi
    order = np.argsort(longitude)
    longitude = longitude[order]
    mouth_latitude = np.arctan2(-0.0485 - CENTRE[1], 0.095)
    v = np.linspace(0, 1, ROWS)
    mouth_v = (mouth_latitude - LOWEST_LATITUDE) / (np.pi / 2 - LOWEST_LATITUDE)
    eyes_v = (np.arctan2(0.04, 0.09) - LOWEST_LATITUDE) / (np.pi / 2 - LOWEST_LATITUDE)
    v = _warp(v, [mouth_v, eyes_v], [0.05, 0.06], [3.0, 1.2])
    latitude = LOWEST_LATITUDE + v * (np.pi / 2 - LOWEST_LATITUDE)
    mouth_row = int(np.argmin(np.abs(latitude - mouth_latitude)))
    latitude[mouth_row] = mouth_latitude
    latitude = latitude[:-1]  # the top row is replaced by one pole vertex
    grid = _surface_points(_directions(longitude, latitude))
    pole = _surface_points(np.array([[[0.0, 1.0, 0.0]]]))[0, 0]
    rows, columns = grid.shape[:2]
    index = np.arange(rows * columns).reshape(rows, columns)
    vertices = [grid.reshape(-1, 3), pole[None]]
    pole_index = rows * columns

    # The mouth slit: interior mouth-line vertices get a lower-lip copy; the corners stay shared.
    mouth_columns = np.nonzero(np.abs(longitude) < MOUTH_HALF_ANGLE)[0]
    interior = mouth_columns[1:-1]
    lower_copy = {int(c): pole_index + 1 + k for k, c in enumerate(interior)}
    vertices.append(grid[mouth_row, interior])
    vertices = np.concatenate(vertices).astype(np.float32)

    faces = []
    for r in range(rows - 1):
        for c in range(columns):
            c2 = (c + 1) % columns
            a, b, d, e = index[r, c], index[r, c2], index[r + 1, c2], index[r + 1, c]
            if r + 1 == mouth_row:  # the quad's top edge is the lower lip: use the lower copies
                d = lower_copy.get(c2, d)
                e = lower_copy.get(c, e)
            faces += [(a, b, d), (a, d, e)]
    for c in range(columns):
        faces.append((index[rows - 1, c], index[rows - 1, (c + 1) % columns], pole_index))
    faces = np.asarray(faces, np.int32)
    # Drop the slivers that would close the slit: faces made of mouth-line vertices only are none,
    # because the slit is between the copies, so nothing to drop; the quads above use the originals.

    corner_left, corner_right = int(index[mouth_row, mouth_columns[-1]]), int(index[mouth_row, mouth_columns[0]])
    centre_column = int(np.argmin(np.abs(longitude)))
    upper_slit = np.array([index[mouth_row, c] for c in interior])
    lower_slit = np.array([lower_copy[int(c)] for c in interior])
    front = index[:, centre_column]
    nose_tip = int(front[np.argmax(vertices[front, 2])])
    below_mouth = front[:mouth_row]
    chin = int(below_mouth[np.argmax(vertices[below_mouth, 2] - 0.6 * vertices[below_mouth, 1])])
    landmarks = {"upper_lip_center": int(index[mouth_row, centre_column]),
                 "lower_lip_center": int(lower_copy[centre_column]),
                 "mouth_corner_left": corner_left, "mouth_corner_right": corner_right,
                 "chin": chin, "nose_tip": nose_tip}
    mouth_centre = vertices[landmarks["upper_lip_center"]]
    offset = (vertices - mouth_centre) / np.array([0.034, 0.020, 0.03])
    lip_indices = np.nonzero((np.linalg.norm(offset, axis=1) < 1.0) & (vertices[:, 2] > 0.06))[0]
    upper_face_indices = np.nonzero((vertices[:, 1] > 0.012) & (vertices[:, 2] > 0.03))[0]
    return DemoHead(vertices, faces, landmarks, lip_indices.astype(np.int64), upper_face_indices.astype(np.int64),
                    upper_slit, lower_slit,
                    {"columns": columns, "rows": rows, "mouth_row": mouth_row,
                     "vertex_count": int(len(vertices)), "face_count": int(len(faces))})
