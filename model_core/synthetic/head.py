"""The demo head: a deterministic, code-generated head mesh with a mouth that opens.

The surface is a smooth union of simple solids (cranium, lower face, chin, cheeks, nose, lips,
brow, eyes, ears, neck), sampled along rays from a point inside the head on a latitude-longitude
grid that is denser at the front of the face and around the mouth and eyes. The lips are parted by
a slit in the grid: along the mouth line the vertices are duplicated, the upper copies belonging to
the upper lip and the lower copies to the lower lip; at rest the copies coincide (a closed mouth)
and the rig pulls them apart. The result is one connected, manifold surface with two boundaries,
the neck opening and the lips, like FLAME's. Coordinates follow FLAME: metres, y up, the face
looking down +z, +x on the subject's left.

`demo_head()` is the head the bundled model animates. `demo_head(columns, rows, shape)` rebuilds the
same kind of head on another grid (another topology of the same surface) or with another identity
(`HeadShape`, parameters of the signed-distance function); the retargeting tests use these heads
as ground truth, since the rig's motion is a function of position on whichever head it is built on.
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


@dataclass(frozen=True)
class HeadShape:
    """The identity of a demo head: parameters of its signed-distance function. The defaults give
    the bundled model's head; the lips are left as they are, so the rig works on any shape."""
    head_width: float = 1.0  # scales the cranium and ears across (x)
    jaw_drop: float = 0.0  # metres the chin reaches further down (a longer jaw)
    nose_size: float = 1.0  # scales the nose tip, bridge and nostril wings


def head_distance(p: np.ndarray, shape: HeadShape = HeadShape()) -> np.ndarray:
    """Approximate signed distance to the head surface (negative inside)."""
    wide, drop, nose = shape.head_width, shape.jaw_drop, shape.nose_size
    d = _ellipsoid(p, (0, 0.02, -0.012), (0.076 * wide, 0.097, 0.100))  # cranium
    d = _union(d, _ellipsoid(p, (0, -0.040, 0.020), (0.063, 0.070, 0.074)), 0.02)  # lower face and jaw
    d = _union(d, _ellipsoid(p, (0, -0.092 - drop, 0.060), (0.024, 0.020 + drop / 2, 0.022)), 0.02)  # chin
    for side in (-1, 1):
        d = _union(d, _ellipsoid(p, (side * 0.042, -0.014, 0.052), (0.027, 0.025, 0.027)), 0.02)  # cheek
        d = _union(d, _ellipsoid(p, (side * 0.078 * wide, 0.004, -0.012), (0.010, 0.030, 0.018)), 0.006)  # ear
        d = _union(d, _ellipsoid(p, (side * 0.012 * nose, -0.020, 0.093), (0.009 * nose, 0.007 * nose, 0.008 * nose)),
                   0.006)  # nostril wing
        d = _subtract(d, _ellipsoid(p, (side * 0.031, 0.028, 0.100), (0.016, 0.010, 0.014)), 0.012)  # eye socket
        d = _union(d, _ellipsoid(p, (side * 0.031, 0.027, 0.081), (0.012, 0.010, 0.012)), 0.004)  # eyeball
    d = _union(d, _ellipsoid(p, (0, 0.047, 0.079), (0.050, 0.008, 0.012)), 0.02)  # brow
    d = _union(d, _capsule(p, (0, 0.026, 0.088), (0, -0.008, 0.103), 0.007 * nose), 0.012)  # nose bridge
    d = _union(d, _ellipsoid(p, (0, -0.012, 0.103), (0.0095 * nose, 0.009 * nose, 0.0095 * nose)), 0.006)  # nose tip
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


def _surface_points(directions: np.ndarray, shape: HeadShape, far: float = 0.32, steps: int = 96) -> np.ndarray:
    """The outermost surface crossing along each ray from CENTRE (bisection after a coarse march)."""
    flat = directions.reshape(-1, 3)
    t = np.linspace(far, 0.0, steps)
    samples = head_distance(CENTRE + t[None, :, None] * flat[:, None, :], shape)
    first_inside = np.argmax(samples <= 0, axis=1)
    low, high = t[first_inside], t[np.maximum(first_inside - 1, 0)]  # inside at low, outside at high
    for _ in range(40):
        middle = (low + high) / 2
        inside = head_distance(CENTRE + middle[:, None] * flat, shape) <= 0
        low, high = np.where(inside, middle, low), np.where(inside, high, middle)
    return (CENTRE + ((low + high) / 2)[:, None] * flat).reshape(directions.shape)


def _longitudes(columns: int) -> np.ndarray:
    """Longitude 0 is the front; columns crowd around the face."""
    u = _warp(np.arange(columns) / columns, [0.0, 1.0, 0.5], [0.09, 0.09, 0.2], [3.0, 3.0, -0.5])
    return np.sort(np.where(u > 0.5, u - 1.0, u) * 2 * np.pi)


def _mouth_corner_longitudes() -> tuple[float, float]:
    """The longitudes of the demo head's mouth corners (right, left): the outermost of its columns
    within MOUTH_HALF_ANGLE of the front. Heads on other grids put a column on each, so every head
    has its corners, and so its rig, in the same place."""
    longitude = _longitudes(COLUMNS)
    mouth = longitude[np.abs(longitude) < MOUTH_HALF_ANGLE]
    return float(mouth[0]), float(mouth[-1])


def _landmark_vertex(vertices: np.ndarray, longitude: float, latitude: float, shape: HeadShape) -> int:
    """The vertex nearest to where the ray from CENTRE at (longitude, latitude) leaves the head."""
    point = _surface_points(_directions(np.array([longitude]), np.array([latitude])), shape)[0, 0]
    return int(np.argmin(np.linalg.norm(vertices - point, axis=1)))


@lru_cache(maxsize=8)
def demo_head(columns: int = COLUMNS, rows: int = ROWS, shape: HeadShape = HeadShape()) -> DemoHead:
    """The demo head sampled on a grid of `columns` longitudes and `rows` latitudes (the defaults
    are the bundled model's topology), with the identity `shape`."""
    if columns < 24 or rows < 12:
        raise ValueError(f"a demo head needs at least 24 columns and 12 rows, got {columns} x {rows}")
    longitude = _longitudes(columns)
    right_corner, left_corner = _mouth_corner_longitudes()
    for corner in (right_corner, left_corner):
        longitude[np.argmin(np.abs(longitude - corner))] = corner
    # Rows crowd around the mouth and eyes.
    mouth_latitude = np.arctan2(-0.0485 - CENTRE[1], 0.095)
    v = np.linspace(0, 1, rows)
    mouth_v = (mouth_latitude - LOWEST_LATITUDE) / (np.pi / 2 - LOWEST_LATITUDE)
    eyes_v = (np.arctan2(0.04, 0.09) - LOWEST_LATITUDE) / (np.pi / 2 - LOWEST_LATITUDE)
    v = _warp(v, [mouth_v, eyes_v], [0.05, 0.06], [3.0, 1.2])
    latitude = LOWEST_LATITUDE + v * (np.pi / 2 - LOWEST_LATITUDE)
    mouth_row = int(np.argmin(np.abs(latitude - mouth_latitude)))
    latitude[mouth_row] = mouth_latitude
    latitude = latitude[:-1]  # the top row is replaced by one pole vertex
    grid = _surface_points(_directions(longitude, latitude), shape)
    pole = _surface_points(np.array([[[0.0, 1.0, 0.0]]]), shape)[0, 0]
    rows, columns = grid.shape[:2]
    index = np.arange(rows * columns).reshape(rows, columns)
    vertices = [grid.reshape(-1, 3), pole[None]]
    pole_index = rows * columns

    # The mouth slit: interior mouth-line vertices get a lower-lip copy; the corners stay shared.
    mouth_columns = np.nonzero((longitude >= right_corner) & (longitude <= left_corner))[0]
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
    # Eye corners: the creases where the eyeball meets the nose bridge (inner) and the socket's rim
    # (outer); jaw corners: low on the jaw, below and in front of the ears. Nearest vertices to
    # fixed rays, so every grid has them within half its spacing of the same points.
    eye_latitude, jaw_latitude = np.arctan2(0.028 - CENTRE[1], 0.09), -0.825
    for side, name in ((1.0, "left"), (-1.0, "right")):
        landmarks[f"eye_outer_{name}"] = _landmark_vertex(vertices, side * 0.51, eye_latitude, shape)
        landmarks[f"eye_inner_{name}"] = _landmark_vertex(vertices, side * 0.20, eye_latitude, shape)
        landmarks[f"jaw_{name}"] = _landmark_vertex(vertices, side * 1.2, jaw_latitude, shape)
    mouth_centre = vertices[landmarks["upper_lip_center"]]
    offset = (vertices - mouth_centre) / np.array([0.034, 0.020, 0.03])
    lip_indices = np.nonzero((np.linalg.norm(offset, axis=1) < 1.0) & (vertices[:, 2] > 0.06))[0]
    upper_face_indices = np.nonzero((vertices[:, 1] > 0.012) & (vertices[:, 2] > 0.03))[0]
    return DemoHead(vertices, faces, landmarks, lip_indices.astype(np.int64), upper_face_indices.astype(np.int64),
                    upper_slit, lower_slit,
                    {"columns": columns, "rows": rows, "mouth_row": mouth_row,
                     "vertex_count": int(len(vertices)), "face_count": int(len(faces))})
