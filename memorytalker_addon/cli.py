"""`blender -c memorytalker ...`: generation for pipelines (background mode).

    blender -c memorytalker generate --audio A.wav --blend IN.blend --object NAME --out OUT.blend
                                     [--model DIR] [--mode shapekeys|exact|pc2] [--fps F] ...
    blender -c memorytalker batch --blend IN.blend --out OUT.blend --strips [--object NAME]
    blender -c memorytalker batch --blend IN.blend --out OUT.blend --folder DIR --object NAME [--gap N]

Exit codes: 0 everything was written; 1 at least one generation failed (each failure is printed
as "error: ..." naming its audio, and the other takes are still written); 2 the command line, the
.blend or the target object is wrong (nothing is written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bpy

from . import compat, takes

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
STRIP_TARGET_PROPERTY = "memorytalker_object"
MODES = {"shapekeys": 'SHAPEKEYS', "exact": 'EXACT', "pc2": 'PC2'}


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender -c memorytalker", description="MemoryTalker lip-sync for pipelines")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--blend", required=True, help="the .blend to read")
        sub.add_argument("--out", required=True, help="the .blend to write (may equal --blend)")
        sub.add_argument("--model", help="model folder (default: the bundled demo model)")
        sub.add_argument("--mode", choices=sorted(MODES), default="shapekeys")
        sub.add_argument("--fps", type=float, help="scene frame rate to set before generating (default: keep)")
        sub.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        sub.add_argument("--style-strength", type=float, default=1.0)
        sub.add_argument("--style-audio", help="take the speaking style from this recording")
        sub.add_argument("--tolerance-mm", type=float, default=0.1)
        sub.add_argument("--start-frame", type=int, default=1)
        sub.add_argument("--no-sound", action="store_true", help="do not add sound strips")

    generate = commands.add_parser("generate", help="one audio file onto one object")
    generate.add_argument("--audio", required=True)
    generate.add_argument("--object", required=True)
    generate.add_argument("--take", help="take name (default: the audio file's name)")
    common(generate)
    batch = commands.add_parser("batch", help="every sound strip, or every audio file of a folder")
    source = batch.add_mutually_exclusive_group(required=True)
    source.add_argument("--strips", action="store_true",
                        help=f"every sound strip, onto the object named by its '{STRIP_TARGET_PROPERTY}' "
                             "custom property, or --object")
    source.add_argument("--folder", help="every audio file of this folder, one take each, one after another")
    batch.add_argument("--object", help="target object (required with --folder; the default with --strips)")
    batch.add_argument("--gap", type=int, default=12, help="frames between takes with --folder")
    common(batch)
    return parser


def _generate(args, obj_name: str, **overrides) -> tuple[bool, int]:
    """Runs the operator; returns (success, frames written)."""
    options = dict(object_name=obj_name, mode=MODES[args.mode], device=args.device.upper(),
                   style_strength=args.style_strength, style_audio=args.style_audio or "",
                   tolerance_mm=args.tolerance_mm, add_sound_strip=not args.no_sound,
                   model_source='FOLDER' if args.model else 'BUNDLED', model_folder=args.model or "",
                   start_frame=args.start_frame)
    options.update(overrides)
    label = overrides.get("audio_path") or overrides.get("sound_strip")
    try:
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', **options)
    except RuntimeError as error:
        print(f"error: {label}: {str(error).removeprefix('Error: ').strip()}", file=sys.stderr, flush=True)
        return False, 0
    record = takes.records(bpy.data.objects[obj_name])[overrides["take"]]
    return True, int(record["frames"])


def _target(name: str | None) -> str:
    if not name:
        raise UsageError("name the target object with --object")
    obj = bpy.data.objects.get(name)
    if obj is None:
        meshes = ", ".join(o.name for o in bpy.data.objects if o.type == 'MESH') or "none"
        raise UsageError(f"the .blend has no object named {name!r} (meshes: {meshes})")
    return name


def run(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    try:
        blend = Path(args.blend)
        if not blend.is_file():
            raise UsageError(f"{blend} does not exist")
        bpy.ops.wm.open_mainfile(filepath=str(blend.resolve()), load_ui=False)
        scene = bpy.context.scene
        if args.fps:
            scene.render.fps, scene.render.fps_base = round(args.fps), round(args.fps) / args.fps
        results = []
        if args.command == "generate":
            if not Path(args.audio).is_file():
                raise UsageError(f"the audio file {args.audio} does not exist")
            results.append(_generate(args, _target(args.object), audio_source='FILE',
                                     audio_path=str(Path(args.audio).resolve()),
                                     take=args.take or takes.take_name_for(args.audio)))
        elif args.strips:
            strips = [s for s in compat.all_strips(scene) if s.type == 'SOUND']
            if not strips:
                raise UsageError("the sequencer has no sound strips")
            jobs = [(s.name, _target(s.get(STRIP_TARGET_PROPERTY) or args.object)) for s in strips]
            for strip_name, obj_name in jobs:
                results.append(_generate(args, obj_name, audio_source='STRIP', sound_strip=strip_name,
                                         take=strip_name, mute_other_takes=False))
        else:
            folder = Path(args.folder)
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES) if folder.is_dir() else []
            if not files:
                raise UsageError(f"{folder} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
            obj_name, start = _target(args.object), args.start_frame
            for path in files:
                ok, frames = _generate(args, obj_name, audio_source='FILE', audio_path=str(path.resolve()),
                                       start_frame=start, take=takes.take_name_for(str(path)), mute_other_takes=False)
                results.append((ok, frames))
                start += frames + args.gap if ok else 0
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    bpy.ops.wm.save_as_mainfile(filepath=str(Path(args.out).resolve()))
    failed = sum(not ok for ok, _ in results)
    print(f"MemoryTalker: {len(results) - failed} of {len(results)} takes written to {args.out}", flush=True)
    return 1 if failed else 0
