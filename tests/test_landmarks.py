"""Landmarks on a head in real Blender (the bpy module): stored on the object, assigned by hand in Edit
Mode, detected automatically from a front render (where mediapipe is installed), and never changing
anything else in the scene."""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from tests.blender_fixtures import addon  # noqa: E402,F401,F811 (fixtures)
from memorytalker_addon import compat, landmarks  # noqa: E402
from memorytalker_addon.models import BUNDLED_MODEL  # noqa: E402
from tests.test_addon import RecordingLayout  # noqa: E402

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE, reason="automatic landmarks need mediapipe 0.10.21 "
                                     "(pip install 'memorytalker[landmarks]'; Python 3.11/3.12 only)")
DEMO_LANDMARKS = json.loads((BUNDLED_MODEL / "demo_head.json").read_text())["landmarks"]
TOLERANCE_MM = 3.0


def test_unregister_removes_the_landmark_tools():
    import memorytalker_addon

    memorytalker_addon.register()
    assert hasattr(bpy.types.WindowManager, "memorytalker_show_landmarks")
    assert bpy.ops.memorytalker.detect_landmarks.get_rna_type() is not None
    memorytalker_addon.unregister()
    assert not hasattr(bpy.types.WindowManager, "memorytalker_show_landmarks")
    assert not hasattr(bpy.types, "MEMORYTALKER_PT_landmarks")


def test_the_names_are_the_retargeting_names():
    from model_core import retarget

    assert landmarks.LANDMARK_NAMES == retarget.LANDMARK_NAMES


@pytest.fixture
def grid(addon):
    """A 4 x 4 grid of vertices in a fresh scene, active and in Object Mode."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mesh = bpy.data.meshes.new("Grid")
    vertices = [(x * 0.01, 0.0, z * 0.01) for z in range(4) for x in range(4)]
    faces = [(z * 4 + x, z * 4 + x + 1, z * 4 + x + 5, z * 4 + x + 4) for z in range(3) for x in range(3)]
    mesh.from_pydata(vertices, [], faces)
    obj = bpy.data.objects.new("Grid", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    return obj


def edit_with_selected(obj, indices) -> None:
    import bmesh

    if obj.mode != 'EDIT':
        bpy.ops.object.mode_set(mode='EDIT')
    bpy.ops.mesh.select_all(action='DESELECT')
    mesh = bmesh.from_edit_mesh(obj.data)
    mesh.verts.ensure_lookup_table()
    for index in indices:
        mesh.verts[index].select = True
    bmesh.update_edit_mesh(obj.data)


def record(obj) -> str | None:
    return obj.get(landmarks.RECORD)


def test_assign_the_selected_vertex(grid):
    edit_with_selected(grid, [5])
    assert bpy.ops.memorytalker.assign_landmark(name="nose_tip") == {'FINISHED'}
    edit_with_selected(grid, [14])
    assert bpy.ops.memorytalker.assign_landmark(name="chin") == {'FINISHED'}
    edit_with_selected(grid, [6])
    assert bpy.ops.memorytalker.assign_landmark(name="nose_tip") == {'FINISHED'}  # assigning again moves it
    bpy.ops.object.mode_set(mode='OBJECT')
    assert json.loads(record(grid)) == {"vertex_count": 16, "points": {"chin": 14, "nose_tip": 6}}


@pytest.mark.parametrize("selected,message", [
    ([], "select exactly one vertex for the landmark 'chin' .none is selected."),
    ([1, 2], "select exactly one vertex for the landmark 'chin' .2 are selected."),
])
def test_assign_needs_exactly_one_selected_vertex(grid, selected, message):
    edit_with_selected(grid, [3])
    bpy.ops.memorytalker.assign_landmark(name="jaw_left")
    before = record(grid)
    edit_with_selected(grid, selected)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.memorytalker.assign_landmark(name="chin")
    assert record(grid) == before


def test_assign_needs_edit_mode_and_a_known_name(grid):
    with pytest.raises(RuntimeError, match="switch to Edit Mode, select one vertex and click Assign"):
        bpy.ops.memorytalker.assign_landmark(name="chin")
    edit_with_selected(grid, [0])
    with pytest.raises(RuntimeError, match="no landmark named 'lip'; the names are mouth_corner_left, "):
        bpy.ops.memorytalker.assign_landmark(name="lip")
    assert record(grid) is None


def test_clear_one_or_all(grid):
    for index, name in enumerate(("chin", "nose_tip", "jaw_left")):
        edit_with_selected(grid, [index])
        bpy.ops.memorytalker.assign_landmark(name=name)
    bpy.ops.object.mode_set(mode='OBJECT')
    assert bpy.ops.memorytalker.clear_landmarks(name="nose_tip") == {'FINISHED'}
    assert landmarks.stored(grid) == {"chin": 0, "jaw_left": 2}
    assert bpy.ops.memorytalker.clear_landmarks() == {'FINISHED'}
    assert record(grid) is None and landmarks.stored(grid) == {}


def test_landmarks_survive_save_and_reopen(grid, tmp_path):
    edit_with_selected(grid, [9])
    bpy.ops.memorytalker.assign_landmark(name="mouth_corner_left")
    bpy.ops.object.mode_set(mode='OBJECT')
    path = tmp_path / "head.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))
    assert landmarks.stored(bpy.data.objects["Grid"]) == {"mouth_corner_left": 9}


def test_landmarks_go_out_of_date_when_the_vertex_count_changes(grid):
    edit_with_selected(grid, [9])
    bpy.ops.memorytalker.assign_landmark(name="chin")
    bpy.ops.mesh.select_all(action='SELECT')
    bpy.ops.mesh.subdivide()  # in Edit Mode: the count changes before the mesh itself does
    message = "the landmarks of 'Grid' were placed on 16 vertices but the mesh now has 49; clear them and place"
    assert landmarks.out_of_date(grid).startswith(message)
    edit_with_selected(grid, [20])
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.memorytalker.assign_landmark(name="chin")
    bpy.ops.object.mode_set(mode='OBJECT')
    with pytest.raises(landmarks.LandmarkError, match=message):
        landmarks.stored(grid)
    assert bpy.ops.memorytalker.clear_landmarks() == {'FINISHED'} and landmarks.out_of_date(grid) == ""


class LandmarkPanelLayout(RecordingLayout):
    def _nested(self, *args, **kwargs):
        return LandmarkPanelLayout(self.drawn)

    box = row = column = _nested

    def operator_menu_enum(self, idname, enum, **kwargs):
        module, name = idname.split(".")
        assert enum in getattr(getattr(bpy.ops, module), name).get_rna_type().properties
        self.drawn.append(("operator_menu_enum", idname))


def draw_landmark_panel() -> list:
    from memorytalker_addon.ui import MEMORYTALKER_PT_landmarks

    drawn: list = []
    MEMORYTALKER_PT_landmarks.draw(type("Panel", (), {"layout": LandmarkPanelLayout(drawn)})(), bpy.context)
    return drawn


def test_the_landmark_panel_draws_in_every_state(grid):
    drawn = draw_landmark_panel()
    assert drawn.count(("operator", "memorytalker.assign_landmark")) == len(landmarks.LANDMARK_NAMES)
    assert ("operator", "memorytalker.detect_landmarks") in drawn
    assert ("operator_menu_enum", "memorytalker.detect_landmarks") in drawn
    assert ("label", "Assign: in Edit Mode, select one vertex") in drawn
    edit_with_selected(grid, [1])
    bpy.ops.memorytalker.assign_landmark(name="chin")
    drawn = draw_landmark_panel()
    assert drawn.count(("operator", "memorytalker.clear_landmarks")) == 2  # the chin's, and Clear all
    bpy.ops.object.mode_set(mode='OBJECT')
    grid.data.vertices.add(1)
    assert ("label", "Out of date: the vertex count changed") in draw_landmark_panel()


def scene_state() -> dict:
    """What detection must leave exactly as it was."""
    collections = ("scenes", "objects", "meshes", "cameras", "images", "worlds", "materials", "collections", "lights")
    state = {name: sorted(item.name for item in getattr(bpy.data, name)) for name in collections}
    state["scene settings"] = [(s.name, s.camera.name if s.camera else None, s.render.engine, s.render.resolution_x,
                                s.render.resolution_y, s.render.filepath, s.frame_current,
                                s.display.shading.light, s.view_settings.view_transform) for s in bpy.data.scenes]
    state["active"] = bpy.context.view_layer.objects.active.name
    state["records"] = {obj.name: obj.get(landmarks.RECORD) for obj in bpy.data.objects}
    state["window scene"] = bpy.context.scene.name
    return state


@pytest.fixture
def user_scene(addon):
    """A scene with the user's own camera and render settings."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    camera = bpy.data.objects.new("Shot camera", bpy.data.cameras.new("Shot camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.render.engine, scene.render.resolution_x, scene.render.filepath = 'CYCLES', 1280, "//shot_"
    return scene


def add_head(vertices, faces, name="Head"):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(np.asarray(vertices).tolist(), [], np.asarray(faces).tolist())
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    return obj


def errors_mm(obj, found: dict[str, int], truth: dict[str, int]) -> dict[str, float]:
    co = np.array([v.co for v in obj.data.vertices])
    return {name: 1000 * float(np.linalg.norm(co[found[name]] - co[index])) for name, index in truth.items()}


@needs_mediapipe
def test_detect_the_demo_head_it_adds(user_scene):
    bpy.ops.memorytalker.add_demo_head()  # y-up in its mesh, turned to face -Y by its object's rotation
    head = bpy.context.view_layer.objects.active
    placed_by_hand = 7
    edit_with_selected(head, [placed_by_hand])
    assert bpy.ops.memorytalker.assign_landmark(name="jaw_left") == {'FINISHED'}
    bpy.ops.object.mode_set(mode='OBJECT')
    before = scene_state()
    assert bpy.ops.memorytalker.detect_landmarks() == {'FINISHED'}
    found = landmarks.stored(head)
    # Every name but the jaw corners is detected; the jaw corner placed by hand stays.
    assert sorted(found) == sorted([*landmarks.DETECTED_NAMES, "jaw_left"])
    assert "jaw_right" not in found and found["jaw_left"] == placed_by_hand
    errors = errors_mm(head, found, DEMO_LANDMARKS)
    assert max(errors.values()) <= TOLERANCE_MM, errors
    assert found["upper_lip_center"] == DEMO_LANDMARKS["upper_lip_center"]  # not the lower lip's vertex at the
    assert found["lower_lip_center"] == DEMO_LANDMARKS["lower_lip_center"]  # same place (the mouth is closed)
    before["records"][head.name] = head[landmarks.RECORD]
    assert scene_state() == before


@needs_mediapipe
def test_detect_a_demo_head_of_another_topology(user_scene):
    from model_core.synthetic.head import demo_head

    if "columns" not in inspect.signature(demo_head).parameters:
        pytest.skip("this model_core builds the demo head on one grid only")
    head = demo_head(columns=80, rows=34)
    y_up_to_z_up = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])  # facing +Z with Y up -> facing -Y with Z up
    obj = add_head(head.vertices @ y_up_to_z_up.T, head.faces)
    assert bpy.ops.memorytalker.detect_landmarks(facing='NEG_Y') == {'FINISHED'}
    errors = errors_mm(obj, landmarks.stored(obj), {name: head.landmarks[name] for name in DEMO_LANDMARKS})
    assert max(errors.values()) <= TOLERANCE_MM, errors


@needs_mediapipe
def test_a_mesh_that_is_no_head_is_left_to_placing_by_hand(user_scene):
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.1)
    sphere = bpy.context.view_layer.objects.active
    before = scene_state()
    with pytest.raises(RuntimeError, match="no face was found in a front view of 'Sphere' .looking at a face "
                                           "towards -Y, .Z with Y up, .Y, .X, -X.; .*place the landmarks by hand: "
                                           "in Edit Mode"):
        bpy.ops.memorytalker.detect_landmarks()
    assert record(sphere) is None and scene_state() == before


def test_without_mediapipe_detection_asks_for_placing_by_hand(user_scene, monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe now raises ImportError
    bpy.ops.mesh.primitive_cube_add()
    before = scene_state()
    with pytest.raises(RuntimeError, match=r"automatic landmarks need the mediapipe package \(version 0.10.21, for "
                                           r"Python 3.11 or 3.12\), which this Blender's Python 3.\d+ does not have; "
                                           "place the landmarks by hand"):
        bpy.ops.memorytalker.detect_landmarks()
    assert scene_state() == before


def test_detection_needs_object_mode_and_faces(user_scene):
    obj = add_head([(0, 0, 0), (1, 0, 0), (0, 0, 1)], np.empty((0, 3), int), name="Points")
    with pytest.raises(RuntimeError, match="'Points' has no faces, so there is nothing to render; place the "):
        bpy.ops.memorytalker.detect_landmarks()
    bpy.ops.object.mode_set(mode='EDIT')
    with pytest.raises(RuntimeError, match="'Points' is in edit mode; switch to Object Mode to detect landmarks"):
        bpy.ops.memorytalker.detect_landmarks()
    bpy.ops.object.mode_set(mode='OBJECT')
    assert record(obj) is None


# Generating on a head of another topology ------------------------------------------------------

@pytest.fixture
def speech(tmp_path):
    import soundfile as sf

    from tests.conftest import speech_like

    path = tmp_path / "hello.wav"
    sf.write(path, speech_like(1.0, 16000, seed=5)[0], 16000)
    return path


@pytest.fixture
def other_head(addon, monkeypatch, tmp_path):
    """The demo head on a coarser grid (2660 vertices), facing -Y like a character, in a fresh scene; its
    bindings cached in a folder of this test's own."""
    from memorytalker_addon import takes
    from model_core.synthetic.head import demo_head

    if "columns" not in inspect.signature(demo_head).parameters:
        pytest.skip("this model_core builds the demo head on one grid only")
    monkeypatch.setattr(takes, "temp_cache_folder", lambda: tmp_path / "caches")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = 25
    head = demo_head(columns=80, rows=34)
    obj = add_head(head.vertices, head.faces)
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    return obj, head


def assign_by_hand(obj, points: dict[str, int]) -> None:
    for name, index in points.items():
        edit_with_selected(obj, [index])
        bpy.ops.memorytalker.assign_landmark(name=name)
    bpy.ops.object.mode_set(mode='OBJECT')


def test_generate_carries_the_motion_onto_a_head_of_another_topology(other_head, speech, tmp_path, capfd):
    from model_core import Animator, load_model
    from model_core.retarget import fit_binding, read_landmarks, read_obj

    obj, head = other_head
    assign_by_hand(obj, {name: head.landmarks[name] for name in landmarks.REQUIRED_NAMES})
    assert bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), mode='EXACT', device='CPU') == \
        {'FINISHED'}
    assert "Fitting the head" in capfd.readouterr().out
    model = load_model(BUNDLED_MODEL)
    motion = Animator(model, "cpu").animate(str(speech), fps=25).displacements
    _, source_faces = read_obj(BUNDLED_MODEL / "demo_head.obj")
    binding = fit_binding(model.template.numpy(), source_faces, read_landmarks(BUNDLED_MODEL / "demo_head.json"),
                          head.vertices, head.faces, landmarks.stored(obj))
    expected = binding.transfer(motion)
    assert np.abs(expected).max() > 1e-3  # the lips move
    for frame in (0, len(motion) // 2, len(motion) - 1):
        bpy.context.scene.frame_set(1 + frame)
        evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
        co = np.array([v.co for v in evaluated.vertices])
        assert np.abs(co - head.vertices - expected[frame]).max() < 1e-5
    assert len(list((tmp_path / "caches" / "bindings").glob("*.npz"))) == 1
    assert bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), device='CPU') == {'FINISHED'}
    assert "Fitting the head" not in capfd.readouterr().out  # the cached binding


def test_generate_on_another_topology_needs_the_landmarks(other_head, speech):
    obj, head = other_head
    assign_by_hand(obj, {name: head.landmarks[name] for name in ("chin", "nose_tip", "mouth_corner_left")})
    before = scene_state()
    with pytest.raises(RuntimeError, match="'Head' has 2660 vertices but the bundled demo model animates the demo "
                                           r"head \(4844\); click 'Add demo head', or place the head's landmarks so "
                                           r"that the motion can be carried onto it \(MemoryTalker > Landmarks: Detect "
                                           r"automatically, or Assign; missing: mouth_corner_right, upper_lip_center, "
                                           r"lower_lip_center\)"):
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), device='CPU')
    assert scene_state() == before and obj.data.shape_keys is None


def test_a_model_without_its_head_animates_only_its_own_topology(other_head, speech, tmp_path):
    from model_core import save_model
    from tests.conftest import tiny_model

    save_model(tiny_model(num_vertices=4844), tmp_path / "model")
    obj, head = other_head
    assign_by_hand(obj, {name: head.landmarks[name] for name in landmarks.REQUIRED_NAMES})
    with pytest.raises(RuntimeError, match="the model in .* animates only meshes of 4844 vertices: it has no head mesh "
                                           "with landmarks"):
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), device='CPU', model_source='FOLDER',
                                      model_folder=str(tmp_path / "model"))
    assert obj.data.shape_keys is None


def test_the_command_line_animates_a_head_of_another_topology_with_landmarks(other_head, speech, tmp_path, capsys):
    from memorytalker_addon import cli, takes

    obj, head = other_head
    assign_by_hand(obj, {name: head.landmarks[name] for name in landmarks.REQUIRED_NAMES})
    add_head(head.vertices, head.faces, name="Bare")  # the same head without landmarks
    shot, out = tmp_path / "shot.blend", tmp_path / "out.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(shot))
    original = shot.read_bytes()
    common = ["--audio", str(speech), "--blend", str(shot), "--out", str(out), "--device", "cpu", "--no-sound"]
    capsys.readouterr()
    assert cli.run(["generate", "--object", "Bare", *common]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: 'Bare' has 2660 vertices but the bundled demo model animates the demo head "
                            "(4844)"), error
    assert "place the head's landmarks" in error and "Detect automatically, or Assign" in error
    assert shot.read_bytes() == original and not out.exists()
    assert cli.run(["generate", "--object", "Head", *common]) == 0
    bpy.ops.wm.open_mainfile(filepath=str(out))
    assert list(takes.records(bpy.data.objects["Head"])) == ["hello"]
    assert bpy.data.objects["Bare"].data.shape_keys is None


@pytest.fixture
def flame_sized_head(addon, monkeypatch, tmp_path):
    """A head of another identity with FLAME's vertex count (5023) on a grid of its own, so not the bundled
    model's topology (4844), facing -Y, with the user's own shape keys and animation and its landmarks, in a
    fresh scene; its bindings cached in a folder of this test's own."""
    from memorytalker_addon import takes
    from model_core.synthetic.head import HeadShape, demo_head

    monkeypatch.setattr(takes, "temp_cache_folder", lambda: tmp_path / "caches")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = 25
    head = demo_head(111, 46, HeadShape(head_width=1.1, jaw_drop=0.006, nose_size=1.2))
    assert len(head.vertices) == 5023
    obj = add_head(head.vertices, head.faces)
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    assign_by_hand(obj, {name: head.landmarks[name] for name in landmarks.REQUIRED_NAMES})
    obj.shape_key_add(name="Basis", from_mix=False)
    smile = obj.shape_key_add(name="Smile", from_mix=False)
    smile.data.foreach_set("co", (head.vertices + 0.002).ravel())
    for frame, value in ((1, 0.3), (20, 0.8)):
        smile.value = value
        smile.keyframe_insert("value", frame=frame)
    obj.location = (1, 2, 3)
    obj.keyframe_insert("location", frame=1)
    return obj, head


def user_animation(obj) -> dict:
    """The user's shape keys and animation, which generating or cancelling must leave as they are."""
    smile = obj.data.shape_keys.key_blocks["Smile"]
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    smile.data.foreach_get("co", co)
    curves = compat.action_curves(obj.data.shape_keys.animation_data.action)
    return {"smile": co.tobytes(), "key action": obj.data.shape_keys.animation_data.action,
            "object action": obj.animation_data.action, "location": tuple(obj.location),
            "smile keys": [tuple(point.co) for curve in curves for point in curve.keyframe_points]}


def test_generate_on_a_flame_sized_head_of_another_topology_keeps_the_users_animation(flame_sized_head, speech):
    from memorytalker_addon import takes

    obj, head = flame_sized_head
    before = user_animation(obj)
    assert bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), device='CPU') == {'FINISHED'}
    assert list(takes.records(obj)) == ["hello"]
    assert user_animation(obj) == before
    bpy.context.scene.frame_set(20)
    assert obj.data.shape_keys.key_blocks["Smile"].value == pytest.approx(0.8)
    assert tuple(obj.location) == (1, 2, 3)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    smiling = head.vertices + 0.8 * 0.002
    assert np.abs(np.array([v.co for v in evaluated.vertices]) - smiling).max() > 1e-4  # the lips move on the smile


def test_a_generation_cancelled_while_fitting_the_head_leaves_the_scene_as_it_was(flame_sized_head, speech, tmp_path):
    from types import SimpleNamespace

    from memorytalker_addon import operators, takes

    obj, _ = flame_sized_head
    before, animation = scene_state(), user_animation(obj)
    generate = operators.MEMORYTALKER_OT_generate
    options = {"audio_path": str(speech), "device": 'CPU'}
    operator = SimpleNamespace(object_name="", take="", mute_other_takes=True,
                               properties=SimpleNamespace(is_property_set=options.__contains__), **options)
    job = operators.prepare_job(bpy.context, operator)
    worker = operators.worker_for(bpy.context)
    worker.submit(job.request)
    event = {}
    while not event.get("status", "").startswith("Fitting the head"):
        event = worker.wait(timeout=120)
        assert event["event"] == "progress", event
    # Esc reaches the modal operator while the worker fits: the operator's own cancel path runs.
    reports: list = []
    running = SimpleNamespace(_job=job, _timer=None, report=lambda kind, message: reports.append(message))
    running._end = lambda context: generate._end(running, context)
    assert generate.modal(running, bpy.context, SimpleNamespace(type='ESC')) == {'CANCELLED'}
    assert reports == ["Generation cancelled; the scene was not changed"]
    assert not worker.alive and not job.job_dir.exists()
    assert scene_state() == before and user_animation(obj) == animation
    assert takes.records(obj) == {} and not list((tmp_path / "caches").rglob("*.npz"))
