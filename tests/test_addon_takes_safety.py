"""Takes that must not be lost or damaged: linked data, duplicated heads, takes of mixed output modes,
audio files of the same name, and PC2 caches of files not saved yet (real Blender, the bpy module)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

bpy = pytest.importorskip("bpy")

from tests.blender_fixtures import addon, model_dir, speech  # noqa: E402,F401,F811 (fixtures)
from tests.blender_fixtures import (  # noqa: E402
    add_head, generate, HAS_AUDIO,
    head_vertices, max_vertex_error, model_motion, new_file)
from memorytalker_addon import compat  # noqa: E402
from model_core import Animator, load_model  # noqa: E402
from model_core.motion_io import read_pc2  # noqa: E402
from tests.conftest import speech_like  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def temp_folder(tmp_path, monkeypatch) -> Path:
    """The system temp folder, where caches of unsaved files go, is this test's own here."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def other_line(tmp_path) -> Path:
    path = tmp_path / "second_line.wav"
    sf.write(path, speech_like(1.0, 16000, seed=9)[0], 16000)
    return path


@pytest.fixture
def scene(addon):
    scene = new_file()
    add_head(scene.collection)
    return scene


def takes_of(obj) -> dict:
    from memorytalker_addon.takes import records

    return records(obj)


def cache_of(obj, take: str) -> Path:
    modifier = obj.modifiers[takes_of(obj)[take]["modifier"]]
    return Path(bpy.path.abspath(modifier.filepath))


def select_only(obj) -> None:
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


# -- 1. linked data and library overrides ------------------------------------------------------------
def write_library(path: Path, model_dir, speech) -> None:
    """A character file whose head already has a take, as an animator would link it into a shot."""
    new_file()
    rig = bpy.data.collections.new("HeadRig")
    bpy.context.scene.collection.children.link(rig)
    add_head(rig)
    assert generate(model_dir, speech, object_name="Head") == {'FINISHED'}
    bpy.ops.wm.save_as_mainfile(filepath=str(path))


def link_head(library: Path, kind: str) -> bpy.types.Object:
    scene = new_file()
    with bpy.data.libraries.load(str(library), link=True) as (_, into):
        into.collections = ["HeadRig"]
    rig = into.collections[0]
    scene.collection.children.link(rig)
    if kind == "override":
        rig.override_hierarchy_create(scene, bpy.context.view_layer, do_fully_editable=True)
    head = bpy.data.objects["Head"]  # the local override when there is one, else the linked object
    assert (head.override_library is not None) if kind == "override" else (head.library is not None)
    return head


def saved_state(scene, obj) -> dict:
    key = obj.data.shape_keys
    return {"keys": [b.name for b in key.key_blocks] if key else [],
            "actions": sorted(a.name for a in bpy.data.actions), "modifiers": [m.name for m in obj.modifiers],
            "strips": len(compat.all_strips(scene)), "takes": takes_of(obj)}


@pytest.mark.parametrize("kind", ["linked", "override"])
def test_a_take_on_linked_data_is_refused_and_making_it_local_keeps_it(addon, model_dir, speech, other_line,
                                                                       tmp_path, kind):
    """Blender saves neither shape keys added to linked or overridden meshes nor custom properties
    added to an override: a take there would vanish on save, leaving its action and strip orphaned."""
    library = tmp_path / "head_library.blend"
    write_library(library, model_dir, speech)
    head = link_head(library, kind)
    scene = bpy.context.scene
    before = saved_state(scene, head)
    what = "is linked from" if kind == "linked" else "is a library override"
    # An object of a linked collection made local on its own would be in no collection of the shot.
    make_local = {"linked": ('ALL', "All"), "override": ('SELECT_OBDATA', "Selected Objects and Data")}[kind]
    for mode in ('SHAPEKEYS', 'PC2'):
        with pytest.raises(RuntimeError, match=f"'Head' {what} .*head_library.blend.*lost on save.*"
                                               f"Object > Relations > Make Local > {make_local[1]}"):
            generate(model_dir, other_line, object_name="Head", mode=mode)
        assert saved_state(scene, head) == before
    with pytest.raises(RuntimeError, match=f"'Head' {what} .*Make Local"):
        bpy.ops.memorytalker.remove_take(object_name="Head", take="hello_world")
    assert saved_state(scene, head) == before
    shot = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(shot))
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    head = bpy.data.objects["Head"]
    assert saved_state(bpy.context.scene, head) == before  # nothing orphaned, nothing lost

    # What the message tells the animator to do; the new take survives saving and reopening.
    select_only(head)
    assert bpy.ops.object.make_local(type=make_local[0]) == {'FINISHED'}
    head = bpy.data.objects["Head"]
    assert head.library is None and head.override_library is None and head.data.library is None
    assert generate(model_dir, other_line, object_name="Head") == {'FINISHED'}
    bpy.ops.wm.save_as_mainfile(filepath=str(shot))
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    head = bpy.data.objects["Head"]
    record = takes_of(head)["second_line"]
    track = head.data.shape_keys.animation_data.nla_tracks[record["track"]]
    assert track.strips[0].action.name == record["action"] and record["keys"][0] in head.data.shape_keys.key_blocks
    assert max_vertex_error(head, model_motion(model_dir, other_line), 1) <= TOLERANCE * 1.01


# -- 2. duplicated heads --------------------------------------------------------------------------
def duplicate(obj) -> bpy.types.Object:
    """Shift+D with the default preferences: the mesh (with its shape keys) is copied, the shape keys'
    action is shared, the object's custom properties (the take record) are copied."""
    select_only(obj)
    assert bpy.ops.object.duplicate() == {'FINISHED'}
    copy = bpy.context.view_layer.objects.active
    assert copy != obj and copy.data != obj.data and takes_of(copy) == takes_of(obj)
    return copy


def assert_take_plays(obj, take: str, motion: np.ndarray, tolerance: float = TOLERANCE * 1.01) -> None:
    record = takes_of(obj)[take]
    if record["track"]:
        strip = obj.data.shape_keys.animation_data.nla_tracks[record["track"]].strips[0]
        assert strip.action is not None and strip.action.name == record["action"]
    if HAS_AUDIO and record["sound_strip"]:
        assert record["sound_strip"] in [s.name for s in compat.all_strips(bpy.context.scene)]
    assert max_vertex_error(obj, motion, 1) <= tolerance


def test_a_duplicated_head_leaves_the_original_take_alone(scene, model_dir, speech):
    head = bpy.data.objects["Head"]
    generate(model_dir, speech)
    motion = model_motion(model_dir, speech)
    regenerated, removed = duplicate(head), duplicate(head)
    assert generate(model_dir, speech, object_name=regenerated.name) == {'FINISHED'}
    assert_take_plays(head, "hello_world", motion)
    assert_take_plays(regenerated, "hello_world", motion)
    assert takes_of(regenerated)["hello_world"]["action"] != takes_of(head)["hello_world"]["action"]
    for copy in (regenerated, removed):
        assert bpy.ops.memorytalker.remove_take(object_name=copy.name, take="hello_world") == {'FINISHED'}
        assert takes_of(copy) == {} and copy.data.shape_keys is None
        assert_take_plays(head, "hello_world", motion)
    assert sorted(a.name for a in bpy.data.actions) == ["MT hello_world"]  # the copies' own are gone
    assert len(compat.all_strips(scene)) == (1 if HAS_AUDIO else 0)


def test_regenerating_the_original_leaves_the_copy_its_take(scene, model_dir, speech):
    head = bpy.data.objects["Head"]
    generate(model_dir, speech)
    copy = duplicate(head)
    assert generate(model_dir, speech, style_strength=0.0) == {'FINISHED'}
    assert_take_plays(copy, "hello_world", model_motion(model_dir, speech))
    generic = Animator(load_model(model_dir), "cpu").animate(speech, fps=24, style_strength=0.0).displacements
    assert_take_plays(head, "hello_world", generic)


def test_a_duplicated_head_keeps_the_original_mesh_cache(scene, model_dir, speech, tmp_path):
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    head = bpy.data.objects["Head"]
    generate(model_dir, speech, mode='PC2')
    motion = model_motion(model_dir, speech)
    regenerated, removed = duplicate(head), duplicate(head)
    assert cache_of(removed, "hello_world") == cache_of(head, "hello_world")
    assert generate(model_dir, speech, object_name=regenerated.name, mode='PC2') == {'FINISHED'}
    assert cache_of(regenerated, "hello_world") != cache_of(head, "hello_world")
    for copy in (regenerated, removed):
        assert bpy.ops.memorytalker.remove_take(object_name=copy.name, take="hello_world") == {'FINISHED'}
        assert cache_of(head, "hello_world").is_file()
        assert_take_plays(head, "hello_world", motion, tolerance=1e-5)
    assert sorted(p.name for p in tmp_path.glob("*.pc2")) == ["Head_hello_world.pc2"]


def test_a_head_sharing_its_mesh_is_refused(scene, model_dir, speech):
    """Alt+D: both objects use one mesh, so a take in its shape keys could not be one object's alone."""
    head = bpy.data.objects["Head"]
    generate(model_dir, speech)
    select_only(head)
    bpy.ops.object.duplicate(linked=True)
    twin = bpy.context.view_layer.objects.active
    before = saved_state(scene, head)
    with pytest.raises(RuntimeError, match="shares its mesh with 'Head'.*Make Single User"):
        generate(model_dir, speech, object_name=twin.name)
    with pytest.raises(RuntimeError, match="shares its mesh with 'Head'.*Make Single User"):
        bpy.ops.memorytalker.remove_take(object_name=twin.name, take="hello_world")
    assert saved_state(scene, head) == before


# -- 3. takes of different output modes -------------------------------------------------------------
@pytest.mark.parametrize("first,second", [('PC2', 'SHAPEKEYS'), ('SHAPEKEYS', 'PC2')])
def test_a_new_take_plays_alone_whatever_the_modes(scene, model_dir, speech, other_line, first, second):
    head = bpy.data.objects["Head"]
    generate(model_dir, speech, mode=first)
    generate(model_dir, other_line, mode=second)
    tolerance = 1e-5 if second == 'PC2' else TOLERANCE * 1.01
    assert max_vertex_error(head, model_motion(model_dir, other_line), 1) <= tolerance
    recorded = takes_of(head)
    by_mode = {first: recorded["hello_world"], second: recorded["second_line"]}
    cache_on = head.modifiers[by_mode['PC2']["modifier"]].show_viewport
    keys_muted = head.data.shape_keys.animation_data.nla_tracks[by_mode['SHAPEKEYS']["track"]].mute
    assert (cache_on, keys_muted) == ((True, True) if second == 'PC2' else (False, False))


# -- 6. audio files of the same name ------------------------------------------------------------------
def test_files_of_the_same_name_from_different_folders_get_their_own_takes(scene, model_dir, tmp_path, capfd):
    first, second = tmp_path / "day1" / "line.wav", tmp_path / "day2" / "line.wav"
    for seed, path in enumerate((first, second)):
        path.parent.mkdir()
        sf.write(path, speech_like(1.0, 16000, seed=seed)[0], 16000)
    head = bpy.data.objects["Head"]
    generate(model_dir, first)
    capfd.readouterr()
    generate(model_dir, second)
    report = capfd.readouterr().out
    assert "Take 'line (2)'" in report and str(first) in report
    recorded = takes_of(head)
    assert {name: r["audio"] for name, r in recorded.items()} == {"line": str(first), "line (2)": str(second)}
    generate(model_dir, second, style_strength=0.5)  # the same file again: its take is replaced
    assert sorted(takes_of(head)) == ["line", "line (2)"]
    assert sorted(a.name for a in bpy.data.actions) == ["MT line", "MT line (2)"]


# -- 7. PC2 caches of unsaved files ---------------------------------------------------------------
def test_caches_of_unsaved_files_are_their_own_and_move_beside_the_blend(addon, model_dir, speech, tmp_path):
    caches = []
    for _session in range(2):  # two unsaved files (two Blender sessions) with the same head and line
        add_head(new_file().collection)
        assert generate(model_dir, speech, mode='PC2') == {'FINISHED'}
        caches.append(cache_of(bpy.data.objects["Head"], "hello_world"))
    assert caches[0] != caches[1] and all(path.is_file() for path in caches)
    caches[0].unlink()

    unrelated = tmp_path / "Head_hello_world.pc2"  # e.g. the cache of another .blend in this folder
    unrelated.write_bytes(b"another file's cache")
    copy = duplicate(bpy.data.objects["Head"])  # reads the same cache
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    head = bpy.data.objects["Head"]
    modifier = head.modifiers[takes_of(head)["hello_world"]["modifier"]]
    assert modifier.filepath.startswith("//")
    saved = cache_of(head, "hello_world")
    assert saved.parent == tmp_path and saved.is_file() and not caches[1].exists()
    assert cache_of(copy, "hello_world") == saved
    assert Path(takes_of(head)["hello_world"]["pc2"]) == saved == Path(takes_of(copy)["hello_world"]["pc2"])
    assert unrelated.read_bytes() == b"another file's cache"
    motion = model_motion(model_dir, speech)
    assert np.allclose(read_pc2(saved)[0], head_vertices() + motion, atol=1e-6)
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot.blend"))
    assert max_vertex_error(bpy.data.objects["Head"], motion, 1) < 1e-5
