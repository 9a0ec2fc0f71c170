"""The picture of the retargeting workflow in docs/blender.md (Workbench, headless): the bundled demo
model's motion on a head of another topology, carried over by the extension itself.

A demo head of another identity (wider skull, longer jaw, bigger nose) on another grid, with FLAME's
vertex count (5023, not the model's 4844), gets its landmarks from Detect automatically (mediapipe), then
Generate lip-sync speaks a generated sentence onto it; the strip shows the frame with the lips most closed,
one with them half open and the one with them most open.

    .venv/bin/python scripts/render_retarget_demo.py --out docs/images/retarget_frames.png
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import bpy
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_render import aim, head_scene, render_still, save_sheet  # noqa: E402
from demo import speech_sample  # noqa: E402
from model_core.synthetic.head import HeadShape, demo_head  # noqa: E402

TILE = 200  # pixels per frame
MOUTH = (0.0, 0.0, -0.045)  # the camera's target in Blender's z-up world: the mouth and chin


def evaluated_vertices(obj) -> np.ndarray:
    mesh = obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    return co.reshape(-1, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import memorytalker_addon
    from memorytalker_addon import landmarks, takes

    head = demo_head(111, 46, HeadShape(head_width=1.1, jaw_drop=0.006, nose_size=1.2))
    obj = head_scene(head, size=TILE, name="OtherHead")
    memorytalker_addon.register()
    try:
        with tempfile.TemporaryDirectory() as folder:
            assert bpy.ops.memorytalker.detect_landmarks(facing='NEG_Y') == {'FINISHED'}
            audio = speech_sample(Path(folder))
            assert bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(audio), mode='EXACT',
                                                 add_sound_strip=False) == {'FINISHED'}
            placed = landmarks.stored(obj)
            take = takes.records(obj)["demo_speech"]
            scene = bpy.context.scene
            opening = {}
            for frame in range(take["start"], take["start"] + take["frames"]):
                scene.frame_set(frame)
                co = evaluated_vertices(obj)
                opening[frame] = float(np.linalg.norm(co[placed["upper_lip_center"]] - co[placed["lower_lip_center"]]))
            by_opening = sorted(opening, key=opening.get)
            frames = [by_opening[0], by_opening[len(by_opening) * 3 // 4], by_opening[-1]]
            print(f"{len(obj.data.vertices)} vertices; lips apart by "
                  + ", ".join(f"{1000 * opening[frame]:.1f} mm at frame {frame}" for frame in frames))
            aim(scene.camera, MOUTH, math.radians(25), distance=0.5)
            tiles = []
            for index, frame in enumerate(frames):
                scene.frame_set(frame)
                tiles.append(render_still(Path(folder) / f"{index}.png"))
            save_sheet(tiles, args.out, columns=len(tiles))
    finally:
        memorytalker_addon.unregister()


if __name__ == "__main__":
    main()
