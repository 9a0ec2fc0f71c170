"""python -m model_core {train,evaluate,animate,retarget,import-official,synth,corpus}"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from .audio import Waveform
from .errors import MemoryTalkerError
from .inference import MAX_FPS, MAX_STYLE_STRENGTH, MIN_FPS, MIN_STYLE_STRENGTH, Animator
from .batches import (animate_outputs, animated_message, append_report, counted, default_model, report_failures,
                      shard_of, write_line_motion)
from .motion_io import FORMATS, MotionWriter


def _shard(text: str) -> tuple[int, int]:
    """An argparse type: I/N with 1 <= I <= N."""
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise argparse.ArgumentTypeError(f"must be I/N with 1 <= I <= N, e.g. 2/8; got {text}")
    return int(index), int(count)


def _number_from(low: float, high: float):
    """An argparse type: a number from `low` to `high`. Out-of-range values are refused with the
    range, before any work, rather than clamped or left to fail after the model has loaded."""
    def number(text: str) -> float:
        value = float(text)
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be from {low:g} to {high:g}, got {text}")
        return value

    number.__name__ = "float"  # argparse names the type in "invalid float value: 'x'"
    return number


def _integer_from(low: int):
    """An argparse type: an integer of at least `low`, refused otherwise."""
    def integer(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    integer.__name__ = "int"
    return integer


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the backbone as a phoneme recogniser (asr), stage 1 (memory + "
                                     "decoder) or stage 2 (speaking-style encoder)")
    p.add_argument("--stage", required=True, choices=["asr", "1", "2"],
                   help="asr: a backbone from scratch with CTC on phoneme labels (needs phonemes/*.json and "
                        "--config with backbone_config); 1 and 2: the published stages")
    p.add_argument("--data", required=True, type=Path, help="dataset folder in the VOCASET layout")
    p.add_argument("--out", required=True, type=Path, help="run folder: last/, best/, history.json")
    p.add_argument("--epochs", type=_integer_from(1), default=100)
    p.add_argument("--lr", type=float, help="learning rate (default: 1e-4 stage 1, 5e-5 stage 2)")
    p.add_argument("--adam-eps", type=float,
                   help="Adam's epsilon (default PyTorch's 1e-8, about the size of the gradients of motion in metres)")
    p.add_argument("--asr-frame-weight", type=float, default=0.0,
                   help="asr stage: weight of a frame-wise phoneme cross-entropy beside CTC, from the labels' "
                        "times (default 0: CTC only); it keeps each phoneme on its own frames")
    p.add_argument("--bilabial-weight", type=float, default=1.0,
                   help="how many times a frame inside a p, b or m counts in the asr stage's frame term and "
                        "in stage 1's vertex error (default 1); above 1 the model closes the lips where it "
                        "is unsure instead of leaving them half open. Needs phoneme timings")
    p.add_argument("--prosody-weight", type=_number_from(0, float("inf")), default=0.0, metavar="W",
                   help="stage 2: weight of a term that has the style encoder predict each speaker's audible "
                        "prosody (pitch level and range, speaking rate, loudness dynamics; speakers.json of the "
                        "corpora that synth and corpus write) beside the published loss (default 0: off)")
    p.add_argument("--fitted-style-weight", type=_number_from(0, float("inf")), default=0.0, metavar="W",
                   help="stage 2: first fit each training speaker's best memory slot weights on the stage-1 model, "
                        "then add W x the distance of the style encoder's weights to its speaker's (default 0: off)")
    p.add_argument("--batch-size", type=_integer_from(1), default=1,
                   help="clips per optimiser step; under torchrun the global batch, split evenly over the "
                        "processes (a multiple of --nproc-per-node)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument("--init", type=Path, help="start from this model folder (required for stage 2)")
    p.add_argument("--backbone", help="audio backbone for a new model: hub id or local folder "
                                      "(default facebook/hubert-base-ls960, a download)")
    p.add_argument("--config", type=Path, help="JSON file of model config fields for a new model")
    p.add_argument("--dataset", choices=["vocaset", "biwi"], help="dataset preset (default: dataset.json, else vocaset)")
    p.add_argument("--num-workers", type=_integer_from(0), default=0)
    p.add_argument("--no-memory", action="store_true",
                   help="stage 1 without the motion memory (the ablation baseline), e.g. from the same --init")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="stage 1: keep the audio backbone of --init fixed and train only the memory and decoder "
                        "(the published recipe fine-tunes it); give it again with --resume")
    p.add_argument("--output-lr", type=float,
                   help="stage 1: the output projection's own learning rate (default: --lr). Its weights map to "
                        "metres and are about 1e-4 in size, so at the body's rate every step rewrites them; "
                        "the demo recipe uses 1e-6. Give it again with --resume")
    p.add_argument("--augment", action="store_true",
                   help="degrade the training audio afresh every epoch, each effect with its own chance: speed "
                        "+-10%% (phoneme times and motion follow), room reverberation, white/pink/babble noise, "
                        "recording level, telephone band, MP3/Opus; validation and test audio stay clean. "
                        "Give it again with --resume")
    p.add_argument("--augment-prob", type=_number_from(0, 1), metavar="P",
                   help="with --augment: the probability of each effect, 0-1 (default 0.25)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="LVE, FVE, LDTW, Lip-max and FDD on a split")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--dataset", choices=["vocaset", "biwi"])
    p.add_argument("--style-strength", type=_number_from(MIN_STYLE_STRENGTH, MAX_STYLE_STRENGTH), default=1.0,
                   help="0 = generic motion, 1 = each speaker's style")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="JSON file for the results (default: MODEL/eval_SPLIT.json)")


def _add_animate(sub) -> None:
    p = sub.add_parser("animate", help="audio -> facial motion (.npy, .npz or .pc2)",
                       epilog="Each file is written beside its final name and renamed when complete, so an "
                              "interrupted run leaves any earlier file in place. Exit status: 0 when every input "
                              "was animated; 1 when some failed (each is reported, the others are still written); "
                              "2 when nothing could start (bad options, clashing names, an unusable model or style "
                              "audio).")
    p.add_argument("audio", nargs="+", type=Path, help="WAV, FLAC, OGG or MP3 files")
    p.add_argument("--model", type=Path, help="model folder (config.json + model.safetensors); "
                                              "default: the bundled demo model (demo head topology)")
    p.add_argument("--out", required=True, type=Path,
                   help=f"output file ({', '.join(FORMATS)}); with several inputs, a folder that gets NAME.FORMAT "
                        "for each input NAME.wav. Inputs with the same file name are refused before any work, "
                        "as their outputs would overwrite each other: animate them in separate runs")
    p.add_argument("--format", choices=[f[1:] for f in FORMATS], default="npy", help="format when --out is a folder")
    p.add_argument("--fps", type=_number_from(MIN_FPS, MAX_FPS),
                   help=f"output frame rate, {MIN_FPS:g}-{MAX_FPS:g} (default: the model's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--style-strength", type=_number_from(MIN_STYLE_STRENGTH, MAX_STYLE_STRENGTH), default=1.0,
                   help="0 = generic motion, 1 = the speaker's style")
    p.add_argument("--style-audio", type=Path, help="take the speaking style from this recording instead")
    p.add_argument("--shard", type=_shard, metavar="I/N",
                   help="animate only share I of N of the inputs (sorted by path, every N-th from the I-th): N farm "
                        "tasks given 1/N ... N/N and the same inputs write exactly what one run writes")
    p.add_argument("--resume", action="store_true",
                   help="skip inputs whose output exists (outputs appear only once complete), e.g. after a killed run")
    p.add_argument("--report", type=Path,
                   help="append one JSON line per input to this file: input, output, frames, seconds, and "
                        "error or skipped")
    cluster = p.add_argument_group("on a Ray cluster", "needs Ray: pip install 'memorytalker[ray]'; each node "
                                   "needs this package with the same Python and Ray versions as this machine")
    cluster.add_argument("--ray", nargs="?", const="", type=_ray_address, metavar="ADDRESS",
                         help="spread the inputs over Ray workers that each keep one model loaded (one GPU each "
                              "where the cluster has GPUs, unless --device cpu), writing the same files as a "
                              "single-machine run. The audio goes to the workers and each motion file comes back "
                              "to be written here: the nodes need no shared folder. A line whose worker or node "
                              "dies is given to another. ADDRESS: HOST:PORT, ray://HOST:PORT or auto; without it the "
                              "cluster in RAY_ADDRESS, else one started on this machine by `ray start`, else a new "
                              "one on this machine. Put a bare --ray after the inputs or before another option")
    cluster.add_argument("--ray-workers", type=_integer_from(1), metavar="N",
                         help="how many workers (default: as many as the cluster has room for now)")
    cluster.add_argument("--ray-cpus", type=_integer_from(1), metavar="N",
                         help="CPUs each worker reserves and computes with (default 1). Outputs are bit for bit "
                              "those of a single-machine run with as many threads (OMP_NUM_THREADS=N) on the same "
                              "kind of CPU: the thread count changes the last bits")


def _ray_address(text: str) -> str:
    """An argparse type: a Ray cluster address, so that a bare --ray before the inputs is refused
    rather than taking the first input for an address."""
    if text in ("", "auto") or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a Ray cluster address (HOST:PORT, ray://HOST:PORT or "
                                     "auto); for the default cluster put --ray after the inputs")


def _add_import(sub) -> None:
    p = sub.add_parser("import-official", help="convert a research-code state dict (.pth) into a model folder")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--backbone", help="architecture of the audio backbone, when it is not HuBERT-base (the research "
                                      "code's): a transformers config.json, a local folder or a hub id")
    p.add_argument("--dataset", choices=["vocaset", "biwi"], default="vocaset", help="sets fps and PPE period")


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic talking-head corpus (VOCASET layout) on the demo head")
    p.add_argument("--out", type=Path, help="corpus folder")
    p.add_argument("--speakers", type=int, default=8)
    p.add_argument("--sentences", type=int, default=20, help="sentences per speaker (at most 99)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="vertex storage; float16 halves the disk use (about 0.03 mm rounding)")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--voices", help="comma-separated voices to use instead of the built-in sets: espeak-ng names (en-us, "
                        "en-us+f3) or, with flite installed, flite:slt, flite:rms ...")
    p.add_argument("--list-voices", action="store_true", help="print the espeak-ng voices and exit")
    p.add_argument("--free-text", type=float, default=0.0, metavar="SHARE",
                   help="share of the sentences (0-1) made of words in random order instead of the built-in "
                        "grammar, so a phoneme recogniser trained on the corpus cannot lean on word order")


def run_synth(args) -> int:
    from .synthetic.corpus import synthesize_corpus
    from .synthetic.speech import ESpeak

    if args.list_voices:
        print("\n".join(sorted(ESpeak().voices())))
        if shutil.which("flite"):
            from .synthetic.speech import Flite

            print("\n".join(Flite().voices()))
        return 0
    if args.out is None:
        raise MemoryTalkerError("--out is required: the folder to write the corpus to")
    voices = [v.strip() for v in args.voices.split(",") if v.strip()] if args.voices else None
    summary = synthesize_corpus(args.out, args.speakers, args.sentences, args.seed, args.dtype, args.workers, voices,
                                free_text=args.free_text)
    split_text = ", ".join(f"{n} {k}" for k, n in summary["speakers"].items())
    print(f"{summary['clips']} clips, {summary['hours'] * 60:.1f} min of audio, speakers: {split_text}; "
          f"phoneme coverage {summary['phoneme_coverage']}; {summary['seconds']} s "
          f"({summary['realtime_factor']}x real time) -> {args.out}")
    return 0


def _add_corpus(sub) -> None:
    p = sub.add_parser("corpus", help="a talking-head corpus from recorded speech with transcripts (the `synth` "
                                      "layout; pocketsphinx forced alignment drives the demo head's rig)")
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                   help="CSV manifests (audio,text,speaker[,split]) or folders of NAME.wav + NAME.txt per speaker folder")
    p.add_argument("--out", required=True, type=Path, help="corpus folder (written as OUT.partial, then renamed)")
    p.add_argument("--seed", type=int, default=0, help="draws each speaker's style, face and split")
    p.add_argument("--held-out", type=float, default=0.125, metavar="SHARE",
                   help="share of the speakers (not pinned by a split column) for each of val and test (default 0.125)")
    p.add_argument("--lexicon", type=Path, action="append", default=[],
                   help="extra pronunciations (WORD PHONE ... in ARPAbet), before espeak-ng's guesses; repeatable")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--include", type=Path, action="append", default=[], metavar="CORPUS",
                   help="a finished corpus of the demo head (synth or corpus) to fold in, its splits kept; repeatable")


def run_corpus(args) -> int:
    from .synthetic.recorded import build_corpus

    if not args.inputs and not args.include:
        raise MemoryTalkerError("give recordings (manifests or folders) and/or --include CORPUS")
    summary = build_corpus(args.inputs, args.out, args.seed, args.held_out, args.lexicon, args.dtype, args.workers,
                           overwrite=args.overwrite, include=args.include)
    split_text = ", ".join(f"{n} {k}" for k, n in summary["speakers"].items())
    reasons = ", ".join(f"{n} {reason}" for reason, n in summary["skipped_by_reason"].items()) or "none"
    print(f"{summary['clips']} clips, {summary['hours'] * 60:.1f} min of audio, speakers: {split_text}; "
          f"skipped {summary['clips_skipped']} ({reasons}; see skipped.csv); {summary['clips_aligned_on_retry']} aligned "
          f"on a wider beam; {len(summary['words_guessed'])} words pronounced by espeak-ng's rules; phoneme coverage "
          f"{summary['phoneme_coverage']}; {summary['seconds']} s ({summary['realtime_factor']}x real time) -> {args.out}")
    for folder, included in summary.get("included", {}).items():
        print(f"  + {folder}: {included['clips']} clips, {included['hours'] * 60:.1f} min")
    if "hours_total" in summary:
        print(f"  {summary['hours_total']:.2f} h in all")
    return 0


def run_train(args) -> int:
    from .train import ADAM_EPS, TrainOptions, train, writes_outputs

    best = train(TrainOptions(stage=args.stage, data=args.data, out=args.out, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, seed=args.seed, device=args.device, resume=args.resume,
                              init=args.init, backbone=args.backbone, config=args.config, dataset=args.dataset,
                              num_workers=args.num_workers, no_memory=args.no_memory,
                              asr_frame_weight=args.asr_frame_weight,
                              bilabial_weight=args.bilabial_weight, freeze_backbone=args.freeze_backbone,
                              output_lr=args.output_lr, augment=args.augment, augment_prob=args.augment_prob,
                              prosody_weight=args.prosody_weight, fitted_style_weight=args.fitted_style_weight,
                              adam_eps=ADAM_EPS if args.adam_eps is None else args.adam_eps))
    if writes_outputs():
        print(f"best model: {best}")
    return 0


def run_evaluate(args) -> int:
    from .checkpoint import load_model
    from .data import DatasetInfo
    from .evaluate import evaluate_model, format_table, write_results
    from .inference import resolve_device

    model = load_model(args.model, resolve_device(args.device))
    results = evaluate_model(model, DatasetInfo.open(args.data, args.dataset), args.split, args.style_strength)
    out = args.out or args.model / f"eval_{args.split}.json"
    write_results(results, out)
    print(format_table(results))
    print(f"saved {out}")
    return 0


def _animate_one(animator: Animator, audio: Path, out: Path, args, reference: Waveform | None) -> int:
    total = write_line_motion(animator, animator.load(audio), out, args.fps, args.style_strength, reference)
    print(animated_message(audio, out, total, args.fps or animator.fps))
    return total


def run_animate(args) -> int:
    if args.ray is None and (args.ray_workers or args.ray_cpus):
        raise MemoryTalkerError("--ray-workers and --ray-cpus size a Ray run; add --ray [ADDRESS]")
    # Clashing names are refused over all the inputs, so every shard refuses the same runs.
    outputs = animate_outputs(args.audio, args.out, args.format)
    todo = shard_of(args.audio, args.shard)
    if args.ray is not None:
        from .ray_batch import animate_on_ray

        return animate_on_ray(args, outputs, todo)
    animator = Animator.from_folder(default_model(args.model), args.device)
    reference = animator.load(args.style_audio) if args.style_audio else None
    # A bad input is reported and the others still animated: a batch is not lost to one file.
    failed = []
    for k in todo:
        audio, out = args.audio[k], outputs[k]
        line: dict = {"input": str(audio), "output": str(out)}
        started = time.perf_counter()
        if args.resume and out.exists():
            print(f"{audio}: {out} exists, skipped (--resume)")
            line["skipped"] = "output exists"
        else:
            try:
                line["frames"] = _animate_one(animator, audio, out, args, reference)
            except MemoryTalkerError as exc:
                print(f"error: {exc}", file=sys.stderr)
                failed.append(audio)
                line["error"] = str(exc)
        line["seconds"] = round(time.perf_counter() - started, 3)
        append_report(args.report, line)
    report_failures(failed, len(todo))
    return 1 if failed else 0


def _add_retarget(sub) -> None:
    p = sub.add_parser("retarget", help="carry motion from the model's head onto another head mesh (any topology)",
                       epilog="The target is aligned to the model's head by its landmarks (any units and orientation, "
                              "e.g. Z-up in centimetres), fitted to it and bound vertex by vertex; separate parts "
                              "that are not skin (eyeballs, teeth) stay still. Exit status 2 on bad input.")
    p.add_argument("motion", type=Path, help="motion of the model's head: a .npz written by animate")
    p.add_argument("--target", required=True, type=Path, help="the head to animate: a Wavefront .obj with faces")
    p.add_argument("--landmarks", required=True, type=Path,
                   help="JSON {name: vertex index (from 0) or [x, y, z]} on the target; names: mouth_corner_left, "
                        "mouth_corner_right, upper_lip_center, lower_lip_center, chin, nose_tip (required), "
                        "eye_outer_left, eye_inner_left, eye_inner_right, eye_outer_right, jaw_left, jaw_right "
                        "(optional); left and right are the subject's")
    p.add_argument("--out", required=True, type=Path,
                   help=f"output file ({', '.join(FORMATS)}); .npz has animate's layout with the target as template")
    p.add_argument("--model", type=Path, help="model folder whose demo_head.obj and demo_head.json are the motion's "
                                              "head; default: the bundled demo model")


def run_retarget(args) -> int:
    from .retarget import fit_binding, mesh_signature, read_landmarks, read_model_head, read_motion, read_obj

    if args.out.suffix.lower() not in FORMATS:
        raise MemoryTalkerError(f"--out {args.out}: give a file ending in {', '.join(FORMATS)}")
    model = default_model(args.model)
    source_vertices, source_faces, source_landmarks = read_model_head(model)
    displacements, fps, metadata = read_motion(args.motion)
    if displacements.shape[1] != len(source_vertices):
        raise MemoryTalkerError(f"{args.motion} moves {displacements.shape[1]} vertices, but the head of {model} has "
                                f"{len(source_vertices)}; give --model the model that made the motion")
    target_vertices, target_faces = read_obj(args.target)
    target_landmarks = read_landmarks(args.landmarks)
    binding = fit_binding(source_vertices, source_faces, source_landmarks, target_vertices, target_faces,
                          target_landmarks)
    metadata["retarget"] = {"target": str(args.target), "target_vertices": len(target_vertices),
                            "still_vertices": int(binding.still.sum()), "scale": binding.scale,
                            "signature": mesh_signature(target_vertices, target_faces, target_landmarks)}
    frames = len(displacements)
    with MotionWriter(args.out, frames, len(target_vertices), fps, target_vertices, metadata) as writer:
        for start in range(0, frames, 256):
            writer.write(binding.transfer(displacements[start:start + 256]))
    print(f"{args.motion} -> {args.out} ({counted(frames, 'frame')} on {len(target_vertices)} vertices, "
          f"{int(binding.still.sum())} of them still)")
    return 0


def _read_backbone_json(path: Path) -> dict:
    try:
        hf_config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MemoryTalkerError(f"--backbone {path}: not a JSON file ({exc}); pass the backbone's config.json") from None
    if not isinstance(hf_config, dict):
        raise MemoryTalkerError(f"--backbone {path}: expected a transformers config (a JSON object), got a "
                                f"{type(hf_config).__name__}; pass the backbone's config.json")
    return hf_config


def run_import(args) -> int:
    from transformers import AutoConfig

    from .checkpoint import import_official
    from .config import DEFAULT_BACKBONE, MemoryTalkerConfig, hubert_base_config

    backbone = args.backbone
    if backbone is None:
        hf_config, backbone = hubert_base_config(), DEFAULT_BACKBONE  # built in: no download
    elif backbone.endswith(".json") and Path(backbone).is_file():
        hf_config = _read_backbone_json(Path(backbone))
    else:
        try:
            hf_config = AutoConfig.from_pretrained(backbone).to_dict()
        except OSError as exc:
            raise MemoryTalkerError(f"--backbone {backbone}: cannot read its config ({str(exc).splitlines()[0]}); "
                                    "pass the backbone's config.json instead") from None
    hf_config["vocab_size"] = hf_config.get("vocab_size") or 32
    fps, period = (25.0, 25) if args.dataset == "biwi" else (30.0, 30)
    config = MemoryTalkerConfig(fps=fps, period=period, backbone=backbone, backbone_config=hf_config)
    report = import_official(args.checkpoint, args.out, config)
    print(f"imported stage-{report['stage']} checkpoint into {args.out}")
    for name, reason in report["ignored"].items():
        print(f"  ignored {name}: {reason}")
    for name in report["missing"]:
        print(f"  missing (left at initial values): {name}")
    for name in report["unexpected"]:
        print(f"  unexpected (not imported): {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_core", description="MemoryTalker: speech-driven 3D facial animation")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_animate, _add_retarget, _add_import, _add_synth, _add_corpus):
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    handlers = {"train": run_train, "evaluate": run_evaluate, "animate": run_animate, "retarget": run_retarget,
                "import-official": run_import, "synth": run_synth, "corpus": run_corpus}
    try:
        return handlers[args.command](args)
    except MemoryTalkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
