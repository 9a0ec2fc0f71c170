"""Named landmarks on a head mesh, so that the model's motion can be carried onto a head of another
topology (model_core.retarget fits the binding from the landmarks of both heads).

A landmark is a vertex of the object's mesh. The set lives on the object as JSON
(`memorytalker_landmarks`: the vertex count it was placed on and name -> vertex index), so it is saved
with the .blend, and it goes out of date (with a message saying so) when the mesh's vertex count
changes. Landmarks are assigned by hand from the vertex selected in Edit Mode, or detected
automatically: the head is rendered front-on, untextured, in a temporary scene that is removed
afterwards; mediapipe's face mesh finds the face in the picture; each point is carried back onto the
mesh by a ray from the camera, then the mouth, the nose tip and the chin are settled on the mesh's own
shape. The jaw corners are placed by hand only (DETECTED_NAMES says why). mediapipe is imported only
when detection runs (it has no build for Python 3.13, so Blender 5.1+ has manual placement only).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import bmesh
import bpy
import numpy as np

from . import compat, takes

# The names model_core.retarget.LANDMARK_NAMES expects, in its order. They are repeated here because
# importing model_core in Blender would load torch (and a build without torch cannot import it at all);
# tests/test_landmarks.py checks that the two agree. Left and right are the subject's.
LANDMARK_NAMES = ("mouth_corner_left", "mouth_corner_right", "upper_lip_center", "lower_lip_center", "chin",
                  "nose_tip", "eye_outer_left", "eye_inner_left", "eye_inner_right", "eye_outer_right",
                  "jaw_left", "jaw_right")
# The ones without which the motion cannot be carried over (model_core.retarget.REQUIRED_LANDMARKS).
REQUIRED_NAMES = LANDMARK_NAMES[:6]
RECORD = "memorytalker_landmarks"

# mediapipe face-mesh points for each name (for a picture of the face, not a mirror image: 291 lies on the
# subject's left). The lip centres are the inner-lip points, where the lips meet; the chin is the front of
# the chin (the lowest point, 152, is seen edge-on from the front, so a ray to it grazes the surface).
MEDIAPIPE_POINTS = {"mouth_corner_left": 291, "mouth_corner_right": 61, "upper_lip_center": 13,
                    "lower_lip_center": 14, "chin": 175, "nose_tip": 1, "eye_outer_left": 263,
                    "eye_inner_left": 362, "eye_inner_right": 133, "eye_outer_right": 33}
# What detection places: all but the jaw corners. mediapipe's jaw points (397, 172) lie on the face's
# outline in a front view, where a ray grazes the surface: on the demo head's grids they landed 10-43 mm
# from the jaw corners (a ray meeting the cheek in front instead of the side of the jaw), and carried
# motion with them was worse than with none (lips 0.11 mm RMS and 1.9 mm at most against 0.025 and
# 0.60 mm on the 96 x 44 grid), while the detected eye corners (4-13 mm off) leave the lips as they are
# and set the head's scale (1.003 against 1.032 without them on a wider head).
DETECTED_NAMES = tuple(name for name in LANDMARK_NAMES if name in MEDIAPIPE_POINTS)
UPPER_LIP_TOP, LOWER_LIP_BOTTOM = 0, 17  # the outer edges of the lips on the face's middle line

# Where a head may face, in world axes: (label, direction the face looks, up). Automatic tries them in
# order and keeps the first view in which a face is found.
FRONT_VIEWS = {
    'NEG_Y': ("-Y", (0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),  # a Blender character: Front view looks along +Y
    'POS_Z': ("+Z with Y up", (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),  # a FLAME or OBJ head imported as it is
    'POS_Y': ("+Y", (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
    'POS_X': ("+X", (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    'NEG_X': ("-X", (-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
}
FACING_ITEMS = [('AUTO', "Automatic", "Try -Y (a character's front), then +Z with Y up, +Y, +X and -X")] + [
    (key, f"Faces {label}", f"The face looks along {label} in world space")
    for key, (label, _, _) in FRONT_VIEWS.items()]
LIP_STEP = 0.1  # of the lips' height: how far above and below the mouth line a closed mouth's lips are looked for
OUTLINE_REACH, OUTLINE_STEPS = 0.15, 15  # how far towards the face's middle a point off the outline may move
CHIN_DOWN = 0.6  # the chin's point faces forward and this much down (about 30 degrees)
# mediapipe's default (0.5) finds a face in a plain sphere seen from its pole (0.53); untextured demo heads
# score 0.80-0.85.
FACE_CONFIDENCE = 0.7
RENDER_SIZE = 512  # pixels; mediapipe crops the face to 192 x 192 itself, so more buys nothing
MANUAL_HINT = ("place the landmarks by hand: in Edit Mode select one vertex and click Assign next to its name "
               "(MemoryTalker panel > Landmarks)")


class LandmarkError(Exception):
    """Landmarks cannot be stored or found; nothing was changed."""


# Storage -------------------------------------------------------------------------------------------

def vertex_count(obj: bpy.types.Object) -> int:
    """The mesh's vertex count, including what Edit Mode has added or removed so far."""
    if obj.mode == 'EDIT':
        return len(bmesh.from_edit_mesh(obj.data).verts)
    return len(obj.data.vertices)


def _record(obj: bpy.types.Object) -> dict:
    raw = obj.get(RECORD)
    return json.loads(raw) if isinstance(raw, str) else {}


def out_of_date(obj: bpy.types.Object) -> str:
    """Why the stored landmarks no longer fit the mesh, or "" when they do (or there are none)."""
    record = _record(obj)
    placed_on, now = record.get("vertex_count"), vertex_count(obj)
    if record and placed_on != now:
        return (f"the landmarks of '{obj.name}' were placed on {placed_on} vertices but the mesh now has {now}; "
                "clear them and place them again")
    return ""


def stored(obj: bpy.types.Object) -> dict[str, int]:
    """The landmarks of `obj` (name -> vertex index); raises LandmarkError when they are out of date."""
    problem = out_of_date(obj)
    if problem:
        raise LandmarkError(problem)
    return dict(_record(obj).get("points", {}))


def _save(obj: bpy.types.Object, points: dict[str, int], count: int) -> None:
    if points:
        ordered = {name: int(points[name]) for name in LANDMARK_NAMES if name in points}
        obj[RECORD] = json.dumps({"vertex_count": int(count), "points": ordered})
    elif RECORD in obj:
        del obj[RECORD]


def _check_name(name: str) -> None:
    if name not in LANDMARK_NAMES:
        raise LandmarkError(f"there is no landmark named {name!r}; the names are {', '.join(LANDMARK_NAMES)}")


def assign_selected_vertex(obj: bpy.types.Object, name: str) -> int:
    """Makes the one vertex selected in Edit Mode the landmark `name`; returns its index."""
    _check_name(name)
    if obj is None or obj.type != 'MESH' or obj.mode != 'EDIT':
        raise LandmarkError("to assign a landmark, select the head mesh, switch to Edit Mode, select one vertex "
                            "and click Assign next to the landmark's name")
    points = stored(obj)
    mesh = bmesh.from_edit_mesh(obj.data)
    selected = [vertex for vertex in mesh.verts if vertex.select]
    if len(selected) != 1:
        raise LandmarkError(f"select exactly one vertex for the landmark '{name}' "
                            f"({'none is' if not selected else f'{len(selected)} are'} selected)")
    mesh.verts.index_update()  # the order Blender writes the vertices in when Edit Mode ends
    points[name] = selected[0].index
    _save(obj, points, len(mesh.verts))
    return selected[0].index


def clear(obj: bpy.types.Object, name: str = "") -> None:
    """Removes the landmark `name`, or all of them (also an out-of-date set) when `name` is empty."""
    if not name:
        _save(obj, {}, 0)
        return
    _check_name(name)
    points = stored(obj)
    points.pop(name, None)
    _save(obj, points, vertex_count(obj))


# Automatic detection -----------------------------------------------------------------------------

@dataclass
class Detection:
    points: dict[str, int]
    view: str  # the front that was used, e.g. "-Y"
    seconds: float
    not_found: list[str]  # names whose ray missed the mesh


@dataclass
class FrontCamera:
    """An orthographic camera looking at the face. Image points are (x right, y down), 0..1 across the
    picture."""
    location: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray  # the direction the face looks: towards the camera
    size: float  # the width and height the picture covers, in world units

    def ray_origin(self, xy) -> np.ndarray:
        return self.location + (xy[0] - 0.5) * self.size * self.right + (0.5 - xy[1]) * self.size * self.up

    def image_points(self, points: np.ndarray) -> np.ndarray:
        relative = np.atleast_2d(points) - self.location
        return np.column_stack([relative @ self.right / self.size + 0.5, 0.5 - relative @ self.up / self.size])

    def height(self, xy) -> float:
        """How high image point `xy` lies, in world units along `up`."""
        return float(self.ray_origin(xy) @ self.up)


def _face_landmark_model():
    try:
        import mediapipe
    except ImportError:
        raise LandmarkError(
            "automatic landmarks need the mediapipe package (version 0.10.21, for Python 3.11 or 3.12), which "
            f"this Blender's Python {sys.version_info.major}.{sys.version_info.minor} does not have; "
            + MANUAL_HINT) from None
    return mediapipe.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1,
                                                  min_detection_confidence=FACE_CONFIDENCE)


def _find_face(model, image_path: Path) -> np.ndarray | None:
    """mediapipe's 478 face points (image x, y), or None when it sees no face."""
    import cv2  # installed with mediapipe

    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    found = model.process(image).multi_face_landmarks
    if not found:
        return None
    return np.array([(point.x, point.y) for point in found[0].landmark])


class _FrontRenderer:
    """Renders a copy of the object's neutral shape front-on with Workbench in a scene of its own, and
    answers questions about that shape. Only data created here is changed, and all of it is removed on
    exit."""

    def __init__(self, obj: bpy.types.Object):
        matrix = np.array(obj.matrix_world)
        self.vertices = takes.rest_positions(obj).astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
        mesh = obj.data
        self.loop_vertices = np.empty(len(mesh.loops), np.int64)
        mesh.loops.foreach_get("vertex_index", self.loop_vertices)
        self.loop_starts = np.empty(len(mesh.polygons), np.int64)
        mesh.polygons.foreach_get("loop_start", self.loop_starts)
        self.polygons = np.split(self.loop_vertices, self.loop_starts[1:])
        self.mirrored = np.linalg.det(matrix[:3, :3]) < 0

    def __enter__(self) -> _FrontRenderer:
        from mathutils.bvhtree import BVHTree

        # A mirrored object's faces are reversed so that their outside faces the light.
        faces = [polygon[::-1].tolist() if self.mirrored else polygon.tolist() for polygon in self.polygons]
        self.tree = BVHTree.FromPolygons(self.vertices.tolist(), faces)
        self.had_render_result = "Render Result" in bpy.data.images
        self.folder = Path(tempfile.mkdtemp(prefix="memorytalker-landmarks-"))
        self.scene = bpy.data.scenes.new("MemoryTalker landmarks")
        self.camera = bpy.data.objects.new("MemoryTalker landmarks camera", bpy.data.cameras.new("MemoryTalker"))
        self.head = bpy.data.objects.new("MemoryTalker landmarks head", bpy.data.meshes.new("MemoryTalker landmarks"))
        try:
            self.head.data.from_pydata(self.vertices.tolist(), [], faces)
            self.head.data.shade_smooth()
            self.scene.collection.objects.link(self.head)
            self.scene.collection.objects.link(self.camera)
            self.scene.camera = self.camera
            render = self.scene.render
            render.engine = 'BLENDER_WORKBENCH'  # renders headless without a GPU, in about a second
            render.resolution_x = render.resolution_y = RENDER_SIZE
            render.resolution_percentage = 100
            render.image_settings.file_format = 'PNG'
            render.filepath = str(self.folder / "front.png")
            shading = self.scene.display.shading
            shading.light, shading.color_type = 'STUDIO', 'SINGLE'
            shading.show_shadows = True  # shade under the nose, lips and brows: mediapipe finds the features better
            self.scene.view_settings.view_transform = 'Standard'
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_) -> None:
        mesh, camera = self.head.data, self.camera.data
        bpy.data.objects.remove(self.head)
        bpy.data.objects.remove(self.camera)
        bpy.data.meshes.remove(mesh)
        bpy.data.cameras.remove(camera)
        bpy.data.scenes.remove(self.scene)
        render_result = bpy.data.images.get("Render Result")
        if render_result is not None and not self.had_render_result:
            bpy.data.images.remove(render_result)
        shutil.rmtree(self.folder, ignore_errors=True)

    def render(self, forward, up) -> tuple[Path, FrontCamera]:
        from mathutils import Matrix

        forward, up = np.asarray(forward, np.float64), np.asarray(up, np.float64)
        right = np.cross(up, forward)
        across, along, depth = self.vertices @ right, self.vertices @ up, self.vertices @ forward
        size = 1.1 * max(np.ptp(across), np.ptp(along))
        margin = 0.1 * size
        centre = (across.min() + across.max()) / 2 * right + (along.min() + along.max()) / 2 * up
        location = centre + (depth.max() + margin) * forward
        camera = self.camera.data
        camera.type, camera.ortho_scale = 'ORTHO', size
        camera.clip_start, camera.clip_end = margin / 2, np.ptp(depth) + 2 * margin
        placement = np.eye(4)  # the camera looks down its -Z with +Y up: its axes are (right, up, forward)
        placement[:3, 0], placement[:3, 1], placement[:3, 2], placement[:3, 3] = right, up, forward, location
        self.camera.matrix_world = Matrix(placement.tolist())
        bpy.ops.render.render(write_still=True, scene=self.scene.name)
        return Path(self.scene.render.filepath), FrontCamera(location, right, up, forward, size)

    def cast(self, camera: FrontCamera, xy) -> tuple[np.ndarray, int] | None:
        """Where the camera's ray through image point `xy` first meets the mesh: (point, polygon index)."""
        location, _, polygon, _ = self.tree.ray_cast(camera.ray_origin(xy).tolist(), (-camera.forward).tolist())
        return None if location is None else (np.array(location), polygon)

    def vertex_near(self, point: np.ndarray, polygon: int) -> int:
        """The vertex of `polygon` closest to `point`: one of the surface the ray met, never one of the other
        lip lying at the same place."""
        corners = self.polygons[polygon]
        return int(corners[np.argmin(np.linalg.norm(self.vertices[corners] - point, axis=1))])

    @cached_property
    def _edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The mesh's edges (E, 2) and how many faces each belongs to."""
        sizes = np.diff(np.append(self.loop_starts, len(self.loop_vertices)))
        following = np.arange(len(self.loop_vertices)) + 1
        following[self.loop_starts + sizes - 1] = self.loop_starts
        edges = np.sort(np.column_stack([self.loop_vertices, self.loop_vertices[following]]), axis=1)
        return np.unique(edges, axis=0, return_counts=True)

    def boundary_vertices(self) -> np.ndarray:
        """Vertices on an edge with one face: the edges of holes such as a mouth opening or slit."""
        edges, faces = self._edges
        return np.unique(edges[faces == 1])

    @cached_property
    def _neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """Each vertex's neighbours over the edges: vertex v's are indices[offsets[v]:offsets[v + 1]]."""
        edges, _ = self._edges
        both = np.concatenate([edges, edges[:, ::-1]])
        both = both[np.argsort(both[:, 0], kind="stable")]
        return np.searchsorted(both[:, 0], np.arange(len(self.vertices) + 1)), both[:, 1]

    def climb(self, start: int, direction: np.ndarray, allowed: np.ndarray) -> int:
        """From vertex `start`, over the edges and through `allowed` vertices, to where the surface stands
        out furthest along `direction` (a local maximum: the tip of the bump `start` lies on)."""
        offsets, indices = self._neighbours
        height = self.vertices @ direction
        current = start
        while True:
            around = indices[offsets[current]:offsets[current + 1]]
            around = around[allowed[around]]
            if not around.size or height[around].max() <= height[current]:
                return current
            current = int(around[height[around].argmax()])

    def face_offsets(self, vertices: np.ndarray) -> np.ndarray:
        """For each of `vertices`, from the vertex to the mean centre of its faces: which side its faces lie on."""
        sizes = np.diff(np.append(self.loop_starts, len(self.loop_vertices)))
        centres = np.add.reduceat(self.vertices[self.loop_vertices], self.loop_starts) / sizes[:, None]
        total = np.zeros_like(self.vertices)
        np.add.at(total, self.loop_vertices, np.repeat(centres, sizes, axis=0))
        count = np.bincount(self.loop_vertices, minlength=len(self.vertices))
        return total[vertices] / np.maximum(count[vertices], 1)[:, None] - self.vertices[vertices]


def _mouth_opening(renderer: _FrontRenderer, camera: FrontCamera, face: np.ndarray,
                   corners: list[int]) -> np.ndarray:
    """The edge vertices of a mouth opening or slit (FLAME's, the demo head's), or none for a closed mouth:
    vertices on an edge with one face, between the lips' outer edges and a little past the corners, not far
    behind them."""
    corner_points = renderer.vertices[corners]
    mouth_width = float(np.linalg.norm(corner_points[0] - corner_points[1]))
    corner_x = camera.image_points(corner_points)[:, 0]
    slack = 0.25 * (corner_x.max() - corner_x.min())
    edge = renderer.boundary_vertices()
    if not edge.size:
        return edge
    x, y = camera.image_points(renderer.vertices[edge]).T
    depth = renderer.vertices[edge] @ camera.forward
    return edge[(x > corner_x.min() - slack) & (x < corner_x.max() + slack)
                & (y > face[UPPER_LIP_TOP][1]) & (y < face[LOWER_LIP_BOTTOM][1])
                & (depth > (corner_points @ camera.forward).mean() - mouth_width / 2)]


def _settle_mouth(renderer: _FrontRenderer, camera: FrontCamera, face: np.ndarray,
                  points: dict[str, int]) -> None:
    """Settles the mouth corners and the lip centres on the mouth's own shape.

    mediapipe places the mouth corners within a vertex or so, but its lip points can sit several
    millimetres off on a stylised head. On a mouth with an opening or a slit, the corners are the ends of
    the opening, and the lip centres its vertices nearest the middle: the upper one among those whose
    faces lie above, the lower one below, so that lips whose vertices coincide at rest each get their own.
    A closed mouth keeps mediapipe's corners, and its lip centres come from the surface just above and
    below where mediapipe's inner-lip points meet, midway between the corners."""
    corners = [points["mouth_corner_left"], points["mouth_corner_right"]]
    opening = _mouth_opening(renderer, camera, face, corners)
    if opening.size:
        x = camera.image_points(renderer.vertices[opening])[:, 0]
        points["mouth_corner_left"], points["mouth_corner_right"] = int(opening[x.argmax()]), int(opening[x.argmin()])
        corners = [points["mouth_corner_left"], points["mouth_corner_right"]]
        inside = (x > x.min()) & (x < x.max())
        lip_edge, off_middle = opening[inside], np.abs(x[inside] - (x.min() + x.max()) / 2)
        side = renderer.face_offsets(lip_edge) @ camera.up
        if (side > 0).any() and (side < 0).any():
            points["upper_lip_center"] = int(lip_edge[side > 0][off_middle[side > 0].argmin()])
            points["lower_lip_center"] = int(lip_edge[side < 0][off_middle[side < 0].argmin()])
            return
    middle_x = camera.image_points(renderer.vertices[corners])[:, 0].mean()
    meeting_xy = np.array([middle_x, (face[MEDIAPIPE_POINTS["upper_lip_center"]][1]
                                      + face[MEDIAPIPE_POINTS["lower_lip_center"]][1]) / 2])
    step = np.array([0.0, LIP_STEP * (face[LOWER_LIP_BOTTOM][1] - face[UPPER_LIP_TOP][1])])
    meeting, above, below = (renderer.cast(camera, xy) for xy in (meeting_xy, meeting_xy - step, meeting_xy + step))
    if meeting is not None and above is not None and below is not None:
        points["upper_lip_center"] = renderer.vertex_near(meeting[0], above[1])
        points["lower_lip_center"] = renderer.vertex_near(meeting[0], below[1])


def _cast_inside(renderer: _FrontRenderer, camera: FrontCamera, xy: np.ndarray, centre: np.ndarray):
    """`renderer.cast`, moving a point that lies just off the head's outline towards the middle of the
    face until its ray meets the mesh."""
    for step in range(OUTLINE_STEPS + 1):
        hit = renderer.cast(camera, xy + step / OUTLINE_STEPS * OUTLINE_REACH * (centre - xy))
        if hit is not None:
            return hit
    return None


def _landmarks_from_face(renderer: _FrontRenderer, camera: FrontCamera,
                         face: np.ndarray) -> tuple[dict[str, int], list[str]]:
    hits = {name: _cast_inside(renderer, camera, face[index], face[MEDIAPIPE_POINTS["nose_tip"]])
            for name, index in MEDIAPIPE_POINTS.items()}
    points = {name: renderer.vertex_near(*hit) for name, hit in hits.items() if hit is not None}
    if "mouth_corner_left" in points and "mouth_corner_right" in points:
        _settle_mouth(renderer, camera, face, points)
    # The nose tip and the chin are where the shape stands out, which mediapipe can miss by a centimetre or
    # two on a stylised head (a long jaw, a big nose): from its point, climb to the furthest forward above
    # the lips for the nose, to the furthest forward and down (about 30 degrees below the front) below them
    # for the chin.
    height = renderer.vertices @ camera.up
    for name, direction, allowed in (
            ("nose_tip", camera.forward, height > camera.height(face[UPPER_LIP_TOP])),
            ("chin", camera.forward - CHIN_DOWN * camera.up, height < camera.height(face[LOWER_LIP_BOTTOM]))):
        if name in points and allowed[points[name]]:
            points[name] = renderer.climb(points[name], direction, allowed)
    return points, [name for name in DETECTED_NAMES if name not in points]


def detect(obj: bpy.types.Object, facing: str = 'AUTO') -> Detection:
    """Finds the landmarks of `obj` in a front view. Changes nothing: `store_detected` stores them."""
    if obj is None or obj.type != 'MESH':
        raise LandmarkError("select the head mesh to find its landmarks")
    if obj.mode != 'OBJECT':
        raise LandmarkError(f"'{obj.name}' is in {obj.mode.replace('_', ' ').lower()} mode; "
                            "switch to Object Mode to detect landmarks")
    if not obj.data.polygons:
        raise LandmarkError(f"'{obj.name}' has no faces, so there is nothing to render; " + MANUAL_HINT)
    started = time.monotonic()
    views = list(FRONT_VIEWS.values()) if facing == 'AUTO' else [FRONT_VIEWS[facing]]
    with _face_landmark_model() as model, _FrontRenderer(obj) as renderer:
        for label, forward, up in views:
            image, camera = renderer.render(forward, up)
            face = _find_face(model, image)
            if face is not None:
                points, not_found = _landmarks_from_face(renderer, camera, face)
                return Detection(points, label, time.monotonic() - started, not_found)
    looked = ", ".join(label for label, _, _ in views)
    raise LandmarkError(f"no face was found in a front view of '{obj.name}' (looking at a face towards {looked}); "
                        "if the head faces another way, choose its direction next to Detect, or " + MANUAL_HINT)


def store_detected(obj: bpy.types.Object, detection: Detection) -> None:
    """Stores the detected landmarks over the current ones; a name that was not found keeps its own."""
    points = {} if out_of_date(obj) else stored(obj)
    points.update(detection.points)
    _save(obj, points, vertex_count(obj))


# Drawing in the viewport -------------------------------------------------------------------------

POINT_COLOR = (1.0, 0.8, 0.1, 1.0)
POINT_SIZE = 8.0
LABEL_SIZE = 12
_draw_handlers: list = []


def _placed(context) -> list[tuple[str, object]]:
    """(name, world position) of the active object's landmarks, or none when they are hidden or out of date."""
    obj = context.active_object
    if (obj is None or obj.type != 'MESH' or not context.window_manager.memorytalker_show_landmarks
            or out_of_date(obj)):
        return []
    points = _record(obj).get("points", {})
    if obj.mode == 'EDIT':  # the mesh itself is updated only when Edit Mode ends
        vertices = bmesh.from_edit_mesh(obj.data).verts
        vertices.ensure_lookup_table()
    else:
        vertices = obj.data.vertices
    return [(name, obj.matrix_world @ vertices[index].co) for name, index in points.items()]


def _draw_points() -> None:
    placed = _placed(bpy.context)
    if placed:
        compat.draw_points([position for _, position in placed], POINT_COLOR, POINT_SIZE)


def _draw_labels() -> None:
    import blf
    from bpy_extras.view3d_utils import location_3d_to_region_2d

    context = bpy.context
    blf.size(0, LABEL_SIZE * context.preferences.system.ui_scale)
    blf.color(0, *POINT_COLOR)
    for name, position in _placed(context):
        xy = location_3d_to_region_2d(context.region, context.region_data, position)
        if xy is not None:
            blf.position(0, xy.x + 6, xy.y + 4, 0)
            blf.draw(0, label(name))


def label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def register() -> None:
    bpy.types.WindowManager.memorytalker_show_landmarks = bpy.props.BoolProperty(
        name="Show landmarks", default=True, description="Draw the active head's landmarks in the 3D Viewport")
    if not bpy.app.background:  # no viewport to draw in
        space = bpy.types.SpaceView3D
        _draw_handlers.append(space.draw_handler_add(_draw_points, (), 'WINDOW', 'POST_VIEW'))
        _draw_handlers.append(space.draw_handler_add(_draw_labels, (), 'WINDOW', 'POST_PIXEL'))


def unregister() -> None:
    while _draw_handlers:
        bpy.types.SpaceView3D.draw_handler_remove(_draw_handlers.pop(), 'WINDOW')
    del bpy.types.WindowManager.memorytalker_show_landmarks
