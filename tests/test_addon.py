"""The Blender extension in real Blender (the bpy module): a tiny model on a 5023-vertex mesh."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

bpy = pytest.importorskip("bpy")

from tests.blender_fixtures import addon, model_dir, speech  # noqa: E402,F401,F811 (fixtures)
from tests.blender_fixtures import (  # noqa: E402
    add_head, evaluated_positions, FLAME_VERTICES, generate,
    HAS_AUDIO, head_vertices, max_vertex_error, model_motion, new_file)
from memorytalker_addon import compat  # noqa: E402
from model_core import Animator, load_model  # noqa: E402
from model_core.motion_io import read_pc2  # noqa: E402
from model_core.checkpoint import save_model  # noqa: E402
from tests.conftest import speech_like, tiny_model  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture
def scene(addon, tmp_path):
    scene = new_file()
    add_head(scene.collection)
    return scene


def scene_snapshot(scene, obj) -> dict:
    key = obj.data.shape_keys
    return {"keys": [b.name for b in key.key_blocks] if key else [], "actions": sorted(a.name for a in bpy.data.actions),
            "modifiers": [m.name for m in obj.modifiers], "range": (scene.frame_start, scene.frame_end),
            "strips": len(compat.all_strips(scene)),
            "props": sorted(obj.keys())}


def test_registration_imports_neither_torch_nor_transformers():
    code = ("import sys, bpy, memorytalker_addon as a; a.register(); "
            "print('torch' in sys.modules, 'transformers' in sys.modules); a.unregister()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert out[-2:] == ["False", "False"]


def test_unregister_leaves_nothing_behind():
    import memorytalker_addon

    memorytalker_addon.register()
    assert hasattr(bpy.types.Scene, "memorytalker") and hasattr(bpy.types, "MEMORYTALKER_PT_panel")
    memorytalker_addon.unregister()
    assert not hasattr(bpy.types.Scene, "memorytalker")
    assert not hasattr(bpy.types.Action, "memorytalker_intensity")
    assert not any(hasattr(bpy.types.WindowManager, n) for n in ("memorytalker_progress", "memorytalker_running"))
    assert not any(name.startswith("MEMORYTALKER_") for name in dir(bpy.types))
    with pytest.raises(KeyError):
        bpy.ops.memorytalker.generate.get_rna_type()


def test_generate_creates_a_take_that_reproduces_the_model(scene, model_dir, speech):
    obj = bpy.data.objects["Head"]
    assert generate(model_dir, speech, start_frame=5) == {'FINISHED'}
    motion = model_motion(model_dir, speech, 24)
    assert len(motion) == 36  # 1.5 s at 24 fps
    key = obj.data.shape_keys
    ours = [b for b in key.key_blocks if b.name.startswith("hello_world.")]
    assert key.key_blocks[0].name == "Basis" and 0 < len(ours) <= 36
    assert bpy.data.actions.get("MT hello_world") is not None
    track = key.animation_data.nla_tracks["MT hello_world"]
    assert track.strips[0].action.name == "MT hello_world" and track.strips[0].frame_start == 4  # one neutral frame before the clip
    if HAS_AUDIO:
        strip = next(s for s in compat.all_strips(scene) if s.name == "hello_world")
        assert strip.frame_start == 5 and strip.type == 'SOUND'
    assert (scene.frame_start, scene.frame_end) == (1, 5 + 36 - 1)
    assert max_vertex_error(obj, motion, 5) <= TOLERANCE * 1.01
    assert np.allclose(evaluated_positions(obj, 4), head_vertices())  # neutral before the clip


def test_a_take_on_a_head_in_centimetres_and_z_up_reproduces_the_model_within_the_tolerance(scene, speech, tmp_path):
    """The keys are fitted on the model's head and carried (x 100, turned): the take still keeps to
    the tolerance in the mesh's own units."""
    model = tiny_model(seed=3, num_vertices=FLAME_VERTICES)
    model.template.copy_(torch.from_numpy(head_vertices()))  # the head the model learned on, in metres, y up
    with torch.no_grad():  # motion of a face's size (millimetres, not the random model's metre)
        model.output_proj.weight.mul_(0.01)
        model.output_proj.bias.mul_(0.01)
    model_dir = save_model(model, tmp_path / "model")
    y_up_to_z_up = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)
    rest = 100 * head_vertices() @ y_up_to_z_up.T
    mesh = bpy.data.meshes.new("Head in cm")
    mesh.from_pydata(rest.tolist(), [], [])
    obj = bpy.data.objects.new("Head in cm", mesh)
    scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    # 1 mm, read as 0.001 mesh units (0.01 mm on a head in centimetres): a tolerance that the fit,
    # done in the model's metres, must divide by 100 to keep.
    assert generate(model_dir, speech, start_frame=1, tolerance_mm=1.0) == {'FINISHED'}
    motion = 100 * model_motion(model_dir, speech, 24) @ y_up_to_z_up.T
    error = max(float(np.linalg.norm(evaluated_positions(obj, 1 + f) - rest - motion[f], axis=1).max())
                for f in range(len(motion)))
    assert error <= 1e-3 * 1.01


@pytest.mark.parametrize("fps,fps_base", [(25, 1.0), (30000, 1001.0), (60, 1.0)])
def test_motion_follows_the_scene_frame_rate(scene, model_dir, speech, fps, fps_base):
    scene.render.fps, scene.render.fps_base = fps, fps_base
    assert generate(model_dir, speech, mode='EXACT') == {'FINISHED'}
    motion = model_motion(model_dir, speech, fps / fps_base)
    assert len(motion) == round(1.5 * fps / fps_base)
    obj = bpy.data.objects["Head"]
    assert len(obj.data.shape_keys.key_blocks) == 1 + len(motion)
    assert max_vertex_error(obj, motion, 1) < 1e-6  # exact keys: the model output bit for bit (float32 sums)


def test_user_shape_keys_and_animation_are_untouched(scene, model_dir, speech):
    obj = bpy.data.objects["Head"]
    obj.shape_key_add(name="Basis", from_mix=False)
    smile = obj.shape_key_add(name="Smile", from_mix=False)
    smile_co = head_vertices() + 0.01
    smile.data.foreach_set("co", smile_co.ravel())
    smile.value = 0.3
    smile.keyframe_insert("value", frame=1)
    smile.value = 0.8
    smile.keyframe_insert("value", frame=20)
    obj.location = (1, 2, 3)
    obj.keyframe_insert("location", frame=1)
    user_key_action = obj.data.shape_keys.animation_data.action
    user_object_action = obj.animation_data.action
    assert generate(model_dir, speech) == {'FINISHED'}
    assert generate(model_dir, speech) == {'FINISHED'}  # regenerate too
    co = np.empty(FLAME_VERTICES * 3, np.float32)
    obj.data.shape_keys.key_blocks["Smile"].data.foreach_get("co", co)
    assert np.array_equal(co.reshape(-1, 3), smile_co)
    assert obj.data.shape_keys.animation_data.action == user_key_action
    assert obj.animation_data.action == user_object_action
    bpy.context.scene.frame_set(20)
    assert obj.data.shape_keys.key_blocks["Smile"].value == pytest.approx(0.8)
    assert tuple(obj.location) == (1, 2, 3)


def test_regenerate_replaces_only_that_take(scene, model_dir, speech, tmp_path):
    other = tmp_path / "second_line.wav"
    sf.write(other, speech_like(1.0, 16000, seed=9)[0], 16000)
    obj = bpy.data.objects["Head"]
    generate(model_dir, speech)
    generate(model_dir, other)
    first = scene_snapshot(scene, obj)
    generate(model_dir, speech, style_strength=0.5)
    again = scene_snapshot(scene, obj)
    assert sorted(again["keys"]) != [] and again["actions"] == first["actions"] == ["MT hello_world", "MT second_line"]
    assert all(re.fullmatch(r"Basis|(hello_world|second_line)\.\d{3}", name) for name in again["keys"])
    assert sum(name.startswith("second_line.") for name in again["keys"]) == \
        sum(name.startswith("second_line.") for name in first["keys"])
    assert again["strips"] == (2 if HAS_AUDIO else 0)
    tracks = obj.data.shape_keys.animation_data.nla_tracks
    assert sorted(t.name for t in tracks) == ["MT hello_world", "MT second_line"]
    assert tracks["MT second_line"].mute and not tracks["MT hello_world"].mute
    assert max_vertex_error(obj, model_motion_strength(model_dir, speech, 0.5), 1) <= TOLERANCE * 1.01


def model_motion_strength(model_dir, audio, strength):
    return Animator(load_model(model_dir), "cpu").animate(audio, fps=24, style_strength=strength).displacements


def test_one_undo_step_removes_the_whole_generation(scene, model_dir, speech):
    obj = bpy.data.objects["Head"]
    before = scene_snapshot(scene, obj)
    bpy.ops.ed.undo_push(message="before")
    generate(model_dir, speech)
    # What the interface does after an operator with the UNDO flag finishes (a script call in
    # background mode does not push); the generation itself pushes nothing in between.
    bpy.ops.ed.undo_push(message="Generate lip-sync")
    assert scene_snapshot(bpy.context.scene, bpy.data.objects["Head"]) != before
    bpy.ops.ed.undo()
    assert scene_snapshot(bpy.context.scene, bpy.data.objects["Head"]) == before


def test_bad_targets_leave_the_scene_untouched(scene, model_dir, speech):
    small = bpy.data.objects.new("Cube", bpy.data.meshes.new("Cube"))
    small.data.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    scene.collection.objects.link(small)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    before = [scene_snapshot(scene, o) for o in (small, bpy.data.objects["Head"])]
    with pytest.raises(RuntimeError, match="'Cube' has 3 vertices but the model animates 5023"):
        generate(model_dir, speech, object_name="Cube")
    with pytest.raises(RuntimeError, match=r"'Camera' is not a mesh \(its type is camera\)"):
        generate(model_dir, speech, object_name="Camera")
    with pytest.raises(RuntimeError, match="does not exist"):
        generate(model_dir, speech.with_name("missing.wav"))
    with pytest.raises(RuntimeError, match="not a MemoryTalker model folder"):
        generate(model_dir.parent, speech)
    assert [scene_snapshot(scene, o) for o in (small, bpy.data.objects["Head"])] == before


def test_a_failure_while_writing_rolls_back(scene, model_dir, speech, monkeypatch):
    from memorytalker_addon import takes

    obj = bpy.data.objects["Head"]
    before = scene_snapshot(scene, obj)

    def broken(self, *args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(takes.TakeWriter, "_sound_strip", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(model_dir, speech)
    assert scene_snapshot(scene, obj) == before and obj.data.shape_keys is None


def test_worker_cancel_and_crash(scene, model_dir, speech, tmp_path):
    from memorytalker_addon.worker_client import Worker, WorkerError

    before = scene_snapshot(scene, bpy.data.objects["Head"])
    worker = Worker()
    (tmp_path / "job").mkdir()
    np.save(tmp_path / "job" / "mesh.npy", head_vertices())
    request = {"op": "generate", "job_dir": str(tmp_path / "job"), "model": str(model_dir), "device": "cpu",
               "audio": str(speech), "fps": 30, "mode": "exact"}
    worker.submit(request)
    worker.stop()  # cancel: the process ends at once, nothing comes back
    assert not worker.alive
    # Blender writes only when the worker reports "done": a cancelled generation leaves the scene as it was.
    assert all(event["event"] != "done" for event in worker.poll())
    assert scene_snapshot(scene, bpy.data.objects["Head"]) == before
    result = worker.run(request)  # the next generation starts a fresh worker
    assert result["frames"] == 45 and (tmp_path / "job" / "displacements.npy").exists()
    assert worker.run(request)["frames"] == 45  # and it stays alive with the model loaded
    worker.stop()
    with pytest.raises(WorkerError, match="no config.json|not a MemoryTalker|config.json"):
        Worker().run({**request, "model": str(tmp_path)})
    crashing = Worker(python="/bin/false")
    with pytest.raises(WorkerError, match="stopped \\(exit code 1\\)"):
        crashing.run(request)


def test_intensity_scales_the_take(scene, model_dir, speech):
    obj = bpy.data.objects["Head"]
    generate(model_dir, speech)
    motion = model_motion(model_dir, speech, 24)
    action = bpy.data.actions["MT hello_world"]
    action.memorytalker_intensity = 0.5
    assert max_vertex_error(obj, motion, 1, scale=0.5) <= TOLERANCE
    action.memorytalker_intensity = 1.5
    assert max_vertex_error(obj, motion, 1, scale=1.5) <= 1.5 * TOLERANCE * 1.01


def test_mesh_cache_mode(scene, model_dir, speech, tmp_path):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    generate(model_dir, speech, mode='PC2', start_frame=3)
    obj = bpy.data.objects["Head"]
    modifier = obj.modifiers["MT hello_world"]
    assert modifier.type == 'MESH_CACHE' and modifier.filepath.startswith("//")
    cache = tmp_path / "Head_hello_world.pc2"
    positions, _, _ = read_pc2(cache)
    motion = model_motion(model_dir, speech, 24)
    assert np.allclose(positions, head_vertices() + motion, atol=1e-6)
    assert max_vertex_error(obj, motion, 3) < 1e-5


def test_command_line_generate_and_batch(scene, model_dir, speech, tmp_path):
    from memorytalker_addon import cli

    source = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(source))
    out = tmp_path / "out.blend"
    args = ["--blend", str(source), "--out", str(out), "--model", str(model_dir), "--device", "cpu"]
    assert cli.run(["generate", "--audio", str(speech), "--object", "Head", "--fps", "25", *args]) == 0
    bpy.ops.wm.open_mainfile(filepath=str(out))
    head = bpy.data.objects["Head"]
    assert "hello_world" in json_takes(head) and bpy.context.scene.render.fps == 25
    assert bpy.context.scene.frame_end == round(1.5 * 25)

    assert cli.run(["generate", "--audio", str(speech), "--object", "Nobody", *args]) == 2
    assert cli.run(["generate", "--audio", str(tmp_path / "missing.wav"), "--object", "Head", *args]) == 2

    folder = tmp_path / "lines"
    folder.mkdir()
    for index, seconds in enumerate((1.0, 0.6)):
        sf.write(folder / f"line{index}.wav", speech_like(seconds, 16000, seed=index)[0], 16000)
    (folder / "broken.wav").write_bytes(b"not audio")
    assert cli.run(["batch", "--folder", str(folder), "--object", "Head", "--gap", "10", *args]) == 1
    bpy.ops.wm.open_mainfile(filepath=str(out))
    recorded = json_takes(bpy.data.objects["Head"])
    assert sorted(recorded) == ["line0", "line1"]
    assert (recorded["line0"]["start"], recorded["line1"]["start"]) == (1, 1 + 24 + 10)

    if not HAS_AUDIO:
        return
    bpy.ops.wm.open_mainfile(filepath=str(source))
    for index, start in enumerate((1, 40)):
        strip = compat.sound_strip_collection(bpy.context.scene).new_sound(name=f"line{index}", filepath=str(folder / f"line{index}.wav"),
                                        channel=1 + index, frame_start=start)
        strip["memorytalker_object"] = "Head"
    bpy.ops.wm.save_as_mainfile(filepath=str(source))
    assert cli.run(["batch", "--strips", *args]) == 0
    bpy.ops.wm.open_mainfile(filepath=str(out))
    recorded = json_takes(bpy.data.objects["Head"])
    assert {name: r["start"] for name, r in recorded.items()} == {"line0": 1, "line1": 40}
    assert len(compat.all_strips(bpy.context.scene)) == 2  # no duplicate sound strips


def json_takes(obj) -> dict:
    from memorytalker_addon.takes import records

    return records(obj)


class RecordingLayout:
    """Stands in for UILayout (there is no window in background mode): checks that every property
    and operator the panel draws exists, and records what it drew."""

    def __init__(self, drawn: list):
        self.drawn = drawn
        self.enabled = True

    def _nested(self, *args, **kwargs):
        return RecordingLayout(self.drawn)

    box = row = column = _nested

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name}"
        self.drawn.append(("prop", name))

    def prop_search(self, data, name, search_data, search_name, **kwargs):
        assert name in data.bl_rna.properties and search_name in search_data.bl_rna.properties
        self.drawn.append(("prop_search", name))

    def operator(self, idname, **kwargs):
        module, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()
        self.drawn.append(("operator", idname))

        class Properties:
            def __setattr__(self, key, value):
                assert key in rna.properties, f"{idname} has no property {key}"

        return Properties()

    def label(self, **kwargs):
        self.drawn.append(("label", kwargs.get("text", "")))

    def progress(self, **kwargs):
        self.drawn.append(("progress", kwargs.get("text", "")))


def draw_panel(context) -> list:
    from memorytalker_addon.ui import MEMORYTALKER_PT_panel

    drawn: list = []
    panel = type("Panel", (), {"layout": RecordingLayout(drawn),
                               "draw_takes": staticmethod(MEMORYTALKER_PT_panel.draw_takes)})()
    MEMORYTALKER_PT_panel.draw(panel, context)
    return drawn


def test_the_panel_draws_in_every_state(scene, model_dir, speech):
    context = bpy.context
    options = scene.memorytalker
    drawn = draw_panel(context)
    assert ("operator", "memorytalker.generate") in drawn and ("prop", "audio_path") in drawn
    assert ("operator", "memorytalker.add_demo_head") in drawn  # the bundled model is the default
    options.audio_source, options.model_source, options.mode = 'STRIP', 'FOLDER', 'PC2'
    drawn = draw_panel(context)
    assert ("prop", "model_folder") in drawn and ("prop", "tolerance_mm") not in drawn
    options.audio_source, options.mode = 'FILE', 'SHAPEKEYS'
    generate(model_dir, speech)
    generate(model_dir, speech, take="second", mode='PC2')
    drawn = draw_panel(context)
    assert ("label", "hello_world") in drawn and ("label", "second") in drawn
    assert ("prop", "memorytalker_intensity") in drawn and ("prop", "factor") in drawn
    context.window_manager.memorytalker_running = True
    drawn = draw_panel(context)
    assert ("operator", "memorytalker.cancel") in drawn and ("operator", "memorytalker.generate") not in drawn
    context.window_manager.memorytalker_running = False


def test_the_bundled_model_animates_the_demo_head_it_adds(scene, speech):
    with pytest.raises(RuntimeError, match="the bundled demo model animates the demo head .4844.; click 'Add demo head'"):
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), device='CPU')  # the bundled model
    assert "Head" in bpy.data.objects and bpy.data.objects["Head"].data.shape_keys is None
    assert bpy.ops.memorytalker.add_demo_head() == {'FINISHED'}
    head = bpy.context.view_layer.objects.active
    assert head.name == "DemoHead" and len(head.data.vertices) == 4844 and head.select_get()
    assert bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(speech), device='CPU') == {'FINISHED'}
    names = [key.name for key in head.data.shape_keys.key_blocks]
    assert names[0] == "Basis" and len(names) > 1


def warm_scene_settings(scene, model_dir) -> None:
    options = scene.memorytalker
    options.model_source, options.model_folder, options.device = 'FOLDER', str(model_dir), 'CPU'


def test_a_worker_warmed_up_before_the_first_click_serves_it_and_leaves_nothing_behind(scene, model_dir, speech):
    from memorytalker_addon import operators, worker_client

    worker_client.stop_shared_worker()
    warm_scene_settings(scene, model_dir)
    obj = bpy.data.objects["Head"]
    before = scene_snapshot(scene, obj)
    operators.warm_up(bpy.context)
    worker = worker_client.shared_worker(None)
    assert worker.alive and worker.warmed == (str(model_dir), "cpu")
    process, log = worker.process, worker.log_path
    operators.warm_up(bpy.context)  # drawn again: the same worker, no second request
    assert worker.process is process and scene_snapshot(scene, obj) == before

    # The first click is served by the warmed worker, and its take is the model's motion.
    assert generate(model_dir, speech) == {'FINISHED'}
    assert worker.process is process
    assert max_vertex_error(obj, model_motion(model_dir, speech, 24), 1) <= TOLERANCE * 1.01

    # Warmed and never used: ended with Blender (unregister and exit run this), its log removed.
    operators.warm_up(bpy.context)
    worker_client.stop_shared_worker()
    assert process.poll() is not None and not log.exists()


def test_a_model_that_fails_to_warm_up_is_reported_by_the_click(scene, model_dir, speech, tmp_path):
    from memorytalker_addon import operators, worker_client

    worker_client.stop_shared_worker()
    broken = tmp_path / "broken model"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    warm_scene_settings(scene, broken)
    operators.warm_up(bpy.context)
    with pytest.raises(RuntimeError, match="unreadable weights"):
        generate(broken, speech)
    assert generate(model_dir, speech) == {'FINISHED'}  # the same worker goes on
    worker_client.stop_shared_worker()


@pytest.mark.parametrize("in_memory_limit", [2 ** 28, 1000])
def test_the_worker_keeps_a_long_lines_motion_in_a_file_for_the_key_fit(tmp_path, monkeypatch, in_memory_limit):
    from memorytalker_addon import worker_main

    monkeypatch.setattr(worker_main, "MOTION_IN_MEMORY_BYTES", in_memory_limit)
    motion = np.random.default_rng(0).normal(size=(50, 7, 3)).astype(np.float32)
    blocks = ((start, motion[start:start + 8]) for start in range(0, 50, 8))
    read = worker_main.Session._kept_motion(blocks, 50, 7, tmp_path)
    assert np.array_equal(read(3, 41), motion[3:41])
    assert (tmp_path / "motion.f32").exists() == (in_memory_limit == 1000)


def test_the_worker_collects_garbage_again_once_its_first_model_is_in_and_frees_a_model_it_replaces(tmp_path):
    import gc
    import weakref

    from memorytalker_addon import worker_main

    first, second = (save_model(tiny_model(seed=seed), tmp_path / f"model{seed}") for seed in (1, 2))
    gc.disable()  # as the worker's main() starts
    try:
        session = worker_main.Session(start_up_gc_paused=True)
        with pytest.raises(Exception):
            session.animator_for(str(tmp_path / "no-model"), "cpu", lambda event: None)
        assert gc.isenabled()  # a model that fails to load does not leave the collector off
        session = worker_main.Session(start_up_gc_paused=True)
        gc.disable()
        loaded = weakref.ref(session.animator_for(str(first), "cpu", lambda event: None).model)
        assert gc.isenabled() and gc.get_freeze_count() > 0
        session.animator_for(str(second), "cpu", lambda event: None)
        assert loaded() is None and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.enable()
