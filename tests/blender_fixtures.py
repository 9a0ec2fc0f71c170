"""Fixtures shared by the extension's tests in real Blender (the bpy module); a test file imports
them after `pytest.importorskip("bpy")`."""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest
import soundfile as sf

from model_core import save_model
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
