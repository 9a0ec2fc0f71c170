"""`blender -c memorytalker ...`: generation for pipelines (background mode).

    blender -c memorytalker generate --audio A.wav --blend IN.blend --object NAME --out OUT.blend
                                     [--model DIR] [--mode shapekeys|exact|pc2] [--fps F] ...
    blender -c memorytalker batch --blend IN.blend --out OUT.blend --strips [--object NAME]
    blender -c memorytalker batch --blend IN.blend --out OUT.blend --folder DIR --object NAME [--gap N]
    ... batch ... [--shard I/N] [--resume] [--report LINES.jsonl]   (render farms: one task per shard)

Exit codes: 0 everything was written; 1 at least one generation failed (each failure is printed
as "error: ..." naming its audio, and the other takes are still written), or the .blend could not
be saved; 2 an argument is wrong (an option out of range, a missing or unreadable file, an --out
that cannot be written, a target that is not a mesh the model animates: of the model's vertex count, or of
another with its landmarks placed): nothing is written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import bpy

from . import compat, models, operators, settings, takes
from .worker_client import WorkerError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
STRIP_TARGET_PROPERTY = "memorytalker_object"
MODES = {"shapekeys": 'SHAPEKEYS', "exact": 'EXACT', "pc2": 'PC2'}


class UsageError(Exception):
    pass


def _shard(text: str) -> tuple[int, int]:
    """An argparse type: I/N with 1 <= I <= N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N, e.g. 2/8; got {text}")
    return int(index), int(count)


def shard_positions(keys: list[str], shard: tuple[int, int] | None) -> list[int]:
    """The positions of the lines in share I of N: every N-th line, from the I-th, in the order of their
    keys (audio paths, strip names). The same split as `python -m model_core animate --shard`, so the N
    shares cover each line exactly once whatever order the lines come in."""
    if shard is None:
        return list(range(len(keys)))
    index, count = shard
    chosen = set(sorted(range(len(keys)), key=lambda k: keys[k])[index - 1::count])
    return [k for k in range(len(keys)) if k in chosen]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender -c memorytalker", description="MemoryTalker lip-sync for pipelines")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--blend", required=True, help="the .blend to read")
        sub.add_argument("--out", required=True, help="the .blend to write (may equal --blend)")
        sub.add_argument("--model", help="model folder (default: the bundled demo model)")
        sub.add_argument("--mode", choices=sorted(MODES), default="shapekeys")
        sub.add_argument("--fps", type=float, help=f"scene frame rate to set before generating, "
                                                  f"{operators.MIN_FPS}-{operators.MAX_FPS:g} (default: keep)")
        sub.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
        sub.add_argument("--style-strength", type=float, default=1.0, help="{:g} (generic motion) to {:g} "
                         "(the speaker's style)".format(*settings.STYLE_STRENGTH_RANGE))
        sub.add_argument("--style-audio", help="take the speaking style from this recording")
        sub.add_argument("--tolerance-mm", type=float, default=0.1,
                         help="largest shape-key error, {:g} to {:g} mm".format(*settings.TOLERANCE_MM_RANGE))
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
    batch.add_argument("--gap", type=int, default=12, help="frames between takes with --folder (0 or more)")
    batch.add_argument("--shard", type=_shard, metavar="I/N",
                       help="only share I of N of the lines (every N-th, in name order): N farm tasks, one per "
                            "share, write the takes of one run, each take at the frame one run gives it")
    batch.add_argument("--resume", action="store_true",
                       help="continue an --out written before: keep its takes, make the missing ones, and save "
                            "after every take so that a killed run loses at most the take it was making")
    batch.add_argument("--report", help="append one JSON line per line of the batch to this file (input, object, "
                                        "take, output, start, frames, seconds, and error or skipped)")
    common(batch)
    return parser


def _label(options: dict) -> str:
    return options.get("audio_path") or options["sound_strip"]


def _generate(options: dict) -> tuple[int, str]:
    """Runs the operator; returns (frames written, "") or (0, the error it printed)."""
    label = _label(options)
    try:
        bpy.ops.memorytalker.generate('EXEC_DEFAULT', **options)
    except RuntimeError as error:
        message = str(error).removeprefix('Error: ').strip()
        # Errors in reading the audio already start with its path ("PATH: ...").
        message = message if message.startswith(f"{label}: ") else f"{label}: {message}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        return 0, message
    record = takes.records(bpy.data.objects[options["object_name"]])[options["take"]]
    return int(record["frames"]), ""


def _in_range(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # also refuses nan
        raise UsageError(f"{option} {value:g} is out of range; give a value from {low:g} to {high:g}")


def _input_file(option: str, path: str) -> str:
    """The absolute path of an audio file given on the command line."""
    if Path(path).is_dir():
        raise UsageError(f"{option} {path} is a folder; give an audio file ({', '.join(sorted(AUDIO_SUFFIXES))})")
    if not Path(path).is_file():
        raise UsageError(f"{option} {path} does not exist")
    return str(Path(path).resolve())


def _check_output(path: str) -> None:
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name the .blend file to write, e.g. {out / 'shot.blend'}")
    if out.suffix.lower() != ".blend":
        raise UsageError(f"--out {out} does not end in .blend; name the .blend file to write")
    if not out.parent.is_dir():
        raise UsageError(f"the folder {out.parent} of --out does not exist; create it first")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"--out {out} cannot be written (no permission)")


def _audio_folder(path: str) -> list[Path]:
    folder = Path(path)
    if not folder.exists():
        raise UsageError(f"--folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"--folder {folder} is not a folder; give the folder that holds the audio files")
    files = sorted(p.resolve() for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UsageError(f"{folder} holds no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return files


def _model(model: str | None) -> tuple[Path, int]:
    """The model folder and the vertex count of the head it animates."""
    if model and not Path(model).exists():
        raise UsageError(f"--model {model} does not exist")
    try:
        folder = models.resolve_model_folder('FOLDER' if model else 'BUNDLED', model or "")
        return folder, models.model_vertex_count(folder)
    except models.ModelFolderError as error:
        raise UsageError(str(error)) from None


def _open_blend(path: str) -> None:
    blend = Path(path)
    if blend.is_dir():
        raise UsageError(f"--blend {blend} is a folder; give the .blend file to read")
    if not blend.is_file():
        raise UsageError(f"--blend {blend} does not exist")
    try:
        bpy.ops.wm.open_mainfile(filepath=str(blend.resolve()), load_ui=False)
    except RuntimeError:
        raise UsageError(f"Blender cannot read --blend {blend}; give a .blend file saved by Blender") from None


def _target(name: str | None, model: tuple[Path, int], bundled: bool) -> str:
    """The name of a mesh the model can animate: of its vertex count, or of another with the landmarks that
    carry the motion onto it."""
    if not name:
        raise UsageError("name the target object with --object")
    obj = bpy.data.objects.get(name)
    meshes = ", ".join(o.name for o in bpy.data.objects if o.type == 'MESH') or "none"
    if obj is None:
        raise UsageError(f"the .blend has no object named {name!r} (meshes: {meshes})")
    if obj.type != 'MESH':
        raise UsageError(f"the object {name!r} is not a mesh (its type is {obj.type.lower()}); "
                         f"give --object the head mesh (meshes: {meshes})")
    folder, vertex_count = model
    if len(obj.data.vertices) != vertex_count:
        try:
            operators.retargeting(obj, folder, vertex_count, bundled)
        except operators.GenerationError as error:
            raise UsageError(str(error)) from None
    return name


def _take_for(obj: bpy.types.Object, audio: str, explicit: str | None) -> str:
    """--take, or the take that this audio file wrote before on the object (replaced), or for a file
    that shares its name with another file's take a name of its own, which is printed."""
    if explicit:
        return explicit
    take = takes.take_for_audio(obj, audio)
    if take != takes.take_name_for(audio):
        print(f"note: '{takes.take_name_for(audio)}' is already the take of another file with that name, "
              f"so the take of {audio} is named '{take}'", flush=True)
    return take


def _jobs(args, model: tuple[Path, int], blend: str) -> list[dict]:
    """The operator options of each take, with every input and target checked; opens `blend`."""
    common = dict(mode=MODES[args.mode], device=args.device.upper(), style_strength=args.style_strength,
                  style_audio=_input_file("--style-audio", args.style_audio) if args.style_audio else "",
                  tolerance_mm=args.tolerance_mm, add_sound_strip=not args.no_sound,
                  model_source='FOLDER' if args.model else 'BUNDLED',
                  model_folder=str(Path(args.model).resolve()) if args.model else "", start_frame=args.start_frame)
    if args.command == "batch" and args.strips:
        _open_blend(blend)
        strips = [s for s in compat.all_strips(bpy.context.scene) if s.type == 'SOUND']
        if not strips:
            raise UsageError("the sequencer has no sound strips")
        return [dict(common, object_name=_target(s.get(STRIP_TARGET_PROPERTY) or args.object, model, not args.model),
                     audio_source='STRIP', sound_strip=s.name, take=s.name, mute_other_takes=False) for s in strips]
    paths = [_input_file("--audio", args.audio)] if args.command == "generate" else \
        [str(path) for path in _audio_folder(args.folder)]
    _open_blend(blend)
    obj_name = _target(args.object, model, not args.model)
    explicit_take = args.take if args.command == "generate" else None
    sources = [(path, _take_for(bpy.data.objects[obj_name], path, explicit_take)) for path in paths]
    # A folder's takes follow one another, so none of them mutes the others.
    return [dict(common, object_name=obj_name, audio_source='FILE', audio_path=path, take=take,
                 mute_other_takes=args.command == "generate") for path, take in sources]


def _folder_starts(jobs: list[dict], args, model_folder: Path) -> list[int]:
    """The first frame of each take of a folder: one after another with --gap between, each as long as
    its audio at the scene's frame rate. Computed before any take is made, so that a shard, or a resumed
    run, puts each take where one whole run puts it; a file that cannot be read takes no room."""
    scene = bpy.context.scene
    counts = operators.worker_for(bpy.context).run({
        "op": "frame_counts", "model": str(model_folder), "device": args.device,
        "audio": [options["audio_path"] for options in jobs], "fps": scene.render.fps / scene.render.fps_base})
    starts, start = [], args.start_frame
    for frames in counts["frames"]:
        starts.append(start)
        if frames is not None:
            start += frames + args.gap
    return starts


def _made_before(options: dict) -> bool:
    """Whether the take is already in the file (a take is recorded only once it is whole)."""
    return options["take"] in takes.records(bpy.data.objects[options["object_name"]])


def _save(out: str) -> bool:
    try:
        bpy.ops.wm.save_as_mainfile(filepath=out)
    except RuntimeError as error:
        print(f"error: {str(error).removeprefix('Error: ').strip()}; nothing was saved", file=sys.stderr, flush=True)
        return False
    return True


def run(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    batch = args.command == "batch"
    out = str(Path(args.out).resolve())
    # --resume goes on from the takes already saved in --out.
    blend = out if batch and args.resume and Path(out).is_file() else args.blend
    # Everything is checked before the scene is changed, the model runs or anything is saved.
    try:
        if args.fps is not None:
            _in_range("--fps", args.fps, operators.MIN_FPS, operators.MAX_FPS)
        _in_range("--style-strength", args.style_strength, *settings.STYLE_STRENGTH_RANGE)
        _in_range("--tolerance-mm", args.tolerance_mm, *settings.TOLERANCE_MM_RANGE)
        if batch and args.gap < 0:
            raise UsageError(f"--gap {args.gap} is negative; give 0 or more frames between takes")
        _check_output(args.out)
        model = _model(args.model)
        jobs = _jobs(args, model, blend)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    scene = bpy.context.scene
    if args.fps is not None:
        scene.render.fps, scene.render.fps_base = round(args.fps), round(args.fps) / args.fps
    if batch and args.folder:
        try:
            starts = _folder_starts(jobs, args, model[0])
        except WorkerError as error:
            print(f"error: {error}; nothing was saved", file=sys.stderr, flush=True)
            return 1
        for options, start in zip(jobs, starts):
            options["start_frame"] = start
    chosen = shard_positions([_label(options) for options in jobs], args.shard) if batch else [0]
    failed = 0
    for k in chosen:
        options, started = jobs[k], time.perf_counter()
        line = {"input": _label(options), "object": options["object_name"], "take": options["take"], "output": out}
        if batch and args.resume and _made_before(options):
            print(f"{line['input']}: take '{options['take']}' is in {out}, skipped (--resume)", flush=True)
            line["skipped"] = "take exists"
        else:
            line["frames"], error = _generate(options)
            if error:
                failed += 1
                line["error"] = error
            elif batch and args.resume and not _save(out):
                return 1
        if batch and args.report:
            record = takes.records(bpy.data.objects[options["object_name"]]).get(options["take"])
            if record is not None:
                line.update(start=record["start"], frames=record["frames"])
            line["seconds"] = round(time.perf_counter() - started, 3)
            with open(args.report, "a") as report:
                report.write(json.dumps(line) + "\n")
    if not _save(out):
        return 1
    print(f"MemoryTalker: {len(chosen) - failed} of {len(chosen)} takes written to {out}", flush=True)
    return 1 if failed else 0
