"""Fixtures shared by the extension's tests in real Blender (the bpy module); a test file imports
them after `pytest.importorskip("bpy")`."""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest
import soundfile as sf

from model_core import Animator, load_model, save_model
from tests.conftest import speech_like, tiny_model

FLAME_VERTICES = 5023
HAS_AUDIO = bpy.app.build_options.audaspace  # the 4.2 bpy wheel has no audio: no sound strips there


@pytest.fixture(scope="module")
def addon():
    import memorytalker_addon

    memorytalker_addon.register()
    yield memorytalker_addon
    memorytalker_addon.unregister()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model on FLAME's vertex count."""
    folder = tmp_path_factory.mktemp("model")
    save_model(tiny_model(seed=3, num_vertices=FLAME_VERTICES), folder)
    return folder


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "hello_world.wav"
    sf.write(path, speech_like(1.5, 44100, seed=5)[0], 44100)
    return path


def head_vertices(count: int = FLAME_VERTICES) -> np.ndarray:
    """A point cloud of `count` vertices on a 0.1 m sphere: a stand-in head of the model's size."""
    rng = np.random.default_rng(0)
    points = rng.normal(size=(count, 3))
    return (0.1 * points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def new_file() -> bpy.types.Scene:
    """An empty file at 24 fps, frames 1-10."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.frame_start, scene.frame_end = 1, 10
    return scene


def add_head(collection) -> bpy.types.Object:
    """The stand-in head ("Head", head_vertices()) in `collection`, active."""
    mesh = bpy.data.meshes.new("Head")
    mesh.from_pydata(head_vertices().tolist(), [], [])
    obj = bpy.data.objects.new("Head", mesh)
    collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    return obj


def generate(model_dir, audio, **options):
    """The generate operator, synchronously, with the tiny model on the CPU."""
    options.setdefault("model_source", 'FOLDER')
    options.setdefault("model_folder", str(model_dir))
    options.setdefault("audio_path", str(audio))
    options.setdefault("device", 'CPU')
    return bpy.ops.memorytalker.generate('EXEC_DEFAULT', **options)


def evaluated_positions(obj, frame: int) -> np.ndarray:
    bpy.context.scene.frame_set(frame)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    co = np.empty(len(evaluated.data.vertices) * 3, np.float32)
    evaluated.data.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def model_motion(model_dir, audio, fps: float = 24) -> np.ndarray:
    """What the model itself gives for `audio`: the reference a take must reproduce."""
    return Animator(load_model(model_dir), "cpu").animate(audio, fps=fps).displacements


def max_vertex_error(obj, motion: np.ndarray, start: int, scale: float = 1.0) -> float:
    """The largest distance over frames and vertices between the head as evaluated from `start` on
    and its rest positions plus `scale` x `motion`."""
    rest = head_vertices()
    return max(float(np.linalg.norm(evaluated_positions(obj, start + f) - rest - scale * motion[f], axis=1).max())
               for f in range(len(motion)))
