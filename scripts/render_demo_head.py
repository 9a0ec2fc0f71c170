"""Renders pictures of the demo head with Blender's Workbench engine (the `bpy` module, no window).

    .venv/bin/python scripts/render_demo_head.py --out docs/images/demo_head.png
    .venv/bin/python scripts/render_demo_head.py --out docs/images/demo_head_speaking.png \
        --say "Bob saw two cheap maps." --phonemes b,ɔ,u,i,m
    .venv/bin/python scripts/render_demo_head.py --out frames.png --motion motion.npy --frames 0,10,20
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import bpy
import numpy as np

from model_core.synthetic.head import demo_head


def build_scene(vertices: np.ndarray, faces: np.ndarray, size: int) -> bpy.types.Object:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    mesh = bpy.data.meshes.new("DemoHead")
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    mesh.shade_smooth() if hasattr(mesh, "shade_smooth") else None
    obj = bpy.data.objects.new("DemoHead", mesh)
    obj.rotation_euler = (math.pi / 2, 0, 0)  # FLAME's y-up to Blender's z-up
    scene.collection.objects.link(obj)
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    camera.data.lens = 85
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.render.engine = 'BLENDER_WORKBENCH'
    scene.display.shading.light = 'STUDIO'
    scene.display.shading.color_type = 'SINGLE'
    scene.display.shading.single_color = (0.8, 0.62, 0.52)
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.film_transparent = False
    return obj


def aim(camera, target, azimuth: float, distance: float = 0.75, height: float = 0.0) -> None:
    x = distance * math.sin(azimuth)
    y = -distance * math.cos(azimuth)
    camera.location = (target[0] + x, target[1] + y, target[2] + height)
    direction = np.array(target) - np.array(camera.location)
    camera.rotation_euler = (math.atan2(math.hypot(direction[0], direction[1]), -direction[2]), 0,
                             math.atan2(direction[1], direction[0]) - math.pi / 2)


def render(path: Path, vertices_per_view: list[np.ndarray], faces, azimuths, size: int = 360) -> None:
    """One row of pictures (vertex set i seen from azimuth i), joined side by side into `path`."""
    tiles = []
    obj = build_scene(vertices_per_view[0], faces, size)
    scene = bpy.context.scene
    for index, (vertices, azimuth) in enumerate(zip(vertices_per_view, azimuths)):
        obj.data.vertices.foreach_set("co", vertices.astype(np.float32).ravel())
        obj.data.update()
        aim(scene.camera, (0, 0, -0.01), azimuth)
        tile = path.with_name(f"{path.stem}_{index}.png")
        scene.render.filepath = str(tile)
        bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(str(tile))
        tiles.append(np.array(image.pixels[:], np.float32).reshape(size, size, 4))
        bpy.data.images.remove(image)
        tile.unlink()
    joined = np.concatenate(tiles, axis=1)
    out = bpy.data.images.new("joined", joined.shape[1], joined.shape[0], alpha=True)
    out.pixels.foreach_set(joined.ravel())
    out.filepath_raw = str(path)
    out.file_format = 'PNG'
    out.save()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--motion", type=Path, help=".npy displacements (frames, V, 3) to show frames of")
    parser.add_argument("--frames", default="0", help="comma-separated frame numbers of --motion")
    parser.add_argument("--say", help="a sentence for the first synthetic speaker (rendered with its rig motion)")
    parser.add_argument("--phonemes", default="b,a,u,i", help="with --say: show the middle frame of the first "
                                                              "occurrence of each of these phonemes")
    args = parser.parse_args()
    head = demo_head()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.say:
        from model_core.synthetic.corpus import speak
        from model_core.synthetic.rig import Rig
        from model_core.synthetic.speakers import make_speakers
        from model_core.synthetic.speech import ESpeak
        from model_core.synthetic.visemes import expand

        speaker = make_speakers(1, seed=0)[0]
        utterance, _, vertices = speak(speaker, args.say, ESpeak(), Rig(head), head, head.vertices)
        segments = expand(utterance.phonemes)
        frames = [next(int((s + e) / 2 * 30) for name, s, e in segments if name == wanted)
                  for wanted in args.phonemes.split(",")]
        render(args.out, [vertices[f] for f in frames], head.faces, [math.radians(25)] * len(frames))
    elif args.motion is None:
        render(args.out, [head.vertices] * 3, head.faces, [0.0, math.radians(35), math.radians(90)])
    else:
        motion = np.load(args.motion)
        frames = [int(f) for f in args.frames.split(",")]
        render(args.out, [head.vertices + motion[f] for f in frames], head.faces, [math.radians(20)] * len(frames))


if __name__ == "__main__":
    main()
