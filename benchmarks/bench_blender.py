"""Blender-side benchmark (not a test): registration cost, and for 60 s of motion (1800 frames) on
5023 vertices, the time to write each output mode into the scene, the shape-key basis found (keys
and largest error) and the playback cost per frame.

The motion is synthetic but shaped like facial motion: 60 smooth components over the face with
amplitudes falling off from about 5 mm, plus 0.005 mm of per-vertex noise (a random-weight model's
output has no such structure). Run with the bpy module:

    .venv/bin/python benchmarks/bench_blender.py
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import memorytalker_addon  # noqa: E402
from memorytalker_addon import takes  # noqa: E402
from model_core.encoding import shape_basis  # noqa: E402
from model_core.motion_io import write_motion  # noqa: E402

FRAMES, VERTICES = 1800, 5023


def registration_cost() -> dict:
    code = ("import sys, time, bpy; t = time.perf_counter(); import memorytalker_addon as a; a.register(); "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules); a.unregister()")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
            .stdout.split()[-3:] for _ in range(5)]
    return {"register_ms_best": 1000 * min(float(r[0]) for r in runs),
            "register_ms_median": 1000 * float(np.median([float(r[0]) for r in runs])),
            "imports_torch": runs[0][1] == "True", "imports_transformers": runs[0][2] == "True"}


def facial_motion(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(FRAMES) / 30.0
    directions = rng.normal(size=(60, VERTICES, 3)).astype(np.float32)
    directions /= np.abs(directions).max(axis=(1, 2), keepdims=True)
    weights = np.stack([5e-3 * np.exp(-i / 10) * np.sin(2 * np.pi * (0.5 + 0.13 * i) * t + i) for i in range(60)], 1)
    motion = np.einsum("fk,kvc->fvc", weights.astype(np.float32), directions)
    return motion + rng.normal(0, 5e-6, motion.shape).astype(np.float32)


def fresh_scene() -> bpy.types.Object:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    rng = np.random.default_rng(1)
    mesh = bpy.data.meshes.new("Head")
    mesh.from_pydata((0.1 * rng.normal(size=(VERTICES, 3))).tolist(), [], [])
    obj = bpy.data.objects.new("Head", mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.scene.render.fps = 30
    return obj


def playback_ms(frames=range(1, 121)) -> float:
    scene = bpy.context.scene
    scene.frame_set(0)
    start = time.perf_counter()
    for frame in frames:
        scene.frame_set(frame)
    return 1000 * (time.perf_counter() - start) / len(frames)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    report = {"registration": registration_cost()}
    memorytalker_addon.register()
    motion = facial_motion()
    started = time.perf_counter()
    basis = shape_basis(motion, 1e-4)
    report["basis"] = {"keys": len(basis.shapes), "max_error_mm": 1000 * basis.max_error,
                       "fit_seconds_in_worker": time.perf_counter() - started}
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder)
        np.save(job / "shapes.npy", basis.shapes)
        np.save(job / "weights.npy", basis.weights)
        np.save(job / "displacements.npy", motion)
        result = {"frames": FRAMES}
        for mode in ("shapekeys", "exact", "pc2"):
            obj = fresh_scene()
            if mode == "pc2":
                write_motion(job / "motion.pc2", motion, 30.0, takes.rest_positions(obj))
            started = time.perf_counter()
            takes.TakeWriter(bpy.context.scene, obj, "line").write(mode, 1, job, result, "", False, job / "out.pc2")
            report[mode] = {"write_seconds": time.perf_counter() - started, "playback_ms_per_frame": playback_ms()}
    memorytalker_addon.unregister()
    report["blender"] = bpy.app.version_string
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
