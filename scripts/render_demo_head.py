"""Pictures of the demo head for the docs (Workbench, headless):

    .venv/bin/python scripts/render_demo_head.py --out docs/images/demo_head.png
    .venv/bin/python scripts/render_demo_head.py --out docs/images/demo_head_speaking.png \\
        --say "Bob saw two cheap maps, he said." --phonemes b,ɔ,u,i,m
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import bpy
import numpy as np

from blender_render import aim, head_scene, render_still, save_sheet
from model_core.synthetic.head import demo_head


def render_views(out: Path, shapes: list[np.ndarray], azimuths: list[float]) -> None:
    head = demo_head()
    obj = head_scene(head)
    tiles = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (vertices, azimuth) in enumerate(zip(shapes, azimuths)):
            obj.data.vertices.foreach_set("co", vertices.astype(np.float32).ravel())
            obj.data.update()
            aim(bpy.context.scene.camera, (0, 0, -0.01), azimuth)
            tiles.append(render_still(Path(folder) / f"{index}.png"))
    save_sheet(tiles, out, columns=len(tiles))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--say", help="a sentence for the first synthetic speaker (rendered with its rig motion)")
    parser.add_argument("--phonemes", default="b,a,u,i", help="with --say: the middle frame of the first "
                                                              "occurrence of each of these phonemes")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    head = demo_head()
    if not args.say:
        render_views(args.out, [head.vertices] * 3, [0.0, math.radians(35), math.radians(90)])
        return
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
    render_views(args.out, [vertices[f] for f in frames], [math.radians(25)] * len(frames))


if __name__ == "__main__":
    main()
