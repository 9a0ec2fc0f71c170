"""The demo (run by ./demo.sh): speech in, the demo head talking in Blender out.

Builds a scene with the demo head, animates it with the extension's own operator and the bundled
model, and writes out/demo.blend, out/demo_preview.png (frames across the utterance) and, when the
Blender build has FFmpeg, out/demo.mp4 with the sound.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from blender_render import head_scene, render_still, save_sheet  # noqa: E402
from model_core.synthetic.head import demo_head  # noqa: E402

DEFAULT_TEXT = "Hello! I am the MemoryTalker demo head. Watch my lips when I speak: map, bubble, wow."


def speech_sample(out: Path) -> Path:
    from model_core.synthetic.speech import ESpeak

    utterance = ESpeak().synthesize(DEFAULT_TEXT, "en-us+m3", rate=160, pitch=40)
    path = out / "demo_speech.wav"
    sf.write(path, utterance.samples, utterance.sample_rate, subtype="PCM_16")
    return path


def encode_video(path: Path) -> bool:
    scene = bpy.context.scene
    if not bpy.app.build_options.codec_ffmpeg:
        return False
    # Video frames need no 8x anti-aliasing: FXAA at 240 px renders several times faster.
    scene.display.render_aa = 'FXAA'
    scene.render.resolution_x = scene.render.resolution_y = 240
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):  # Blender 5.0 separates images from video
        settings.media_type = 'VIDEO'
    settings.file_format = 'FFMPEG'
    scene.render.ffmpeg.format = 'MPEG4'
    scene.render.ffmpeg.codec = 'H264'
    scene.render.ffmpeg.audio_codec = 'AAC'
    scene.render.filepath = str(path)
    bpy.ops.render.render(animation=True)
    return path.exists()


def main() -> int:
    parser = argparse.ArgumentParser(description="MemoryTalker demo")
    parser.add_argument("audio", nargs="?", type=Path, help="a speech recording (default: a generated sentence)")
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled demo model)")
    parser.add_argument("--frames", type=int, default=8, help="frames in the preview sheet")
    parser.add_argument("--no-video", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    audio = args.audio.resolve() if args.audio else speech_sample(args.out)
    if not audio.is_file():
        print(f"error: {audio} does not exist", file=sys.stderr)
        return 2

    import memorytalker_addon

    head_scene(demo_head(), size=360)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.0
    # The operator only ever extends the frame range; starting from one frame makes the range, the
    # preview sheet and the video span exactly the utterance instead of Blender's default 250 frames.
    scene.frame_start = scene.frame_end = 1
    memorytalker_addon.register()
    try:
        options = dict(audio_path=str(audio), object_name="DemoHead", start_frame=1, device='AUTO',
                       model_source='FOLDER' if args.model else 'BUNDLED', model_folder=str(args.model or ""))
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', **options)
        blend = args.out / "demo.blend"
        bpy.ops.wm.save_as_mainfile(filepath=str(blend))
        print(f"wrote {blend}")
        first, last = scene.frame_start, scene.frame_end
        frames = np.linspace(first, last, args.frames).round().astype(int)
        tiles = []
        with tempfile.TemporaryDirectory() as folder:
            for frame in frames:
                scene.frame_set(int(frame))
                tiles.append(render_still(Path(folder) / f"{frame}.png"))
        preview = args.out / "demo_preview.png"
        save_sheet(tiles, preview, columns=4)
        print(f"wrote {preview} (frames {', '.join(map(str, frames))})")
        if not args.no_video:
            video = args.out / "demo.mp4"
            if encode_video(video):
                print(f"wrote {video} ({last - first + 1} frames at 30 fps, with sound)")
            else:
                print("no video: this Blender build has no FFmpeg")
    finally:
        memorytalker_addon.unregister()
    print(f"done in {time.perf_counter() - started:.0f} s; open {args.out / 'demo.blend'} in Blender 4.2+ "
          "and press play (the extension must be installed to regenerate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
