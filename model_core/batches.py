"""Animating a batch of lines: the files each line's motion goes to, the share of a farm task, the
per-line report, and the writing of one line, shared by `python -m model_core animate` and its Ray
engine (ray_batch.py) so that both write the same bytes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from .audio import Waveform
from .errors import MemoryTalkerError
from .inference import Animator
from .motion_io import FORMATS, MotionWriter


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def default_model(model: Path | None) -> Path:
    from .checkpoint import BUNDLED_MODEL, CONFIG_FILE

    if model is not None:
        return model
    if not (BUNDLED_MODEL / CONFIG_FILE).is_file():
        raise MemoryTalkerError("this installation has no bundled demo model; pass --model MODEL_DIR")
    return BUNDLED_MODEL


def animate_outputs(inputs: list[Path], out: Path, output_format: str) -> list[Path]:
    """The output path of each input. Refuses, before any work, inputs whose outputs would land on the
    same path: one would silently overwrite the other."""
    if len(inputs) == 1:
        if out.suffix.lower() not in FORMATS:
            raise MemoryTalkerError(f"--out {out}: give a file ending in {', '.join(FORMATS)}")
        return [out]
    if out.exists() and not out.is_dir():
        raise MemoryTalkerError(f"--out {out}: with several inputs --out is a folder, and this is a file; "
                                "give a folder")
    outputs = [out / f"{audio.stem}.{output_format}" for audio in inputs]
    first_input: dict[Path, Path] = {}
    clashes = []
    for audio, path in zip(inputs, outputs):
        if path in first_input:
            clashes.append(f"{first_input[path]} and {audio} (both -> {path})")
        first_input.setdefault(path, audio)
    if clashes:
        raise MemoryTalkerError(f"inputs with the same file name would overwrite each other's output: "
                                f"{'; '.join(clashes)}; animate them in separate runs with their own --out, "
                                "or rename one")
    return outputs


def shard_of(inputs: list[Path], shard: tuple[int, int] | None) -> list[int]:
    """The positions of the inputs in share I of N: every N-th input, from the I-th, in path order;
    so the N shares of the same inputs cover each exactly once, whatever order they were given in."""
    if shard is None:
        return list(range(len(inputs)))
    index, count = shard
    chosen = set(sorted(range(len(inputs)), key=lambda k: str(inputs[k]))[index - 1::count])
    return [k for k in range(len(inputs)) if k in chosen]


def write_line_motion(animator: Animator, waveform: Waveform, out: Path, fps: float | None, style_strength: float,
                      reference: Waveform | None, show_progress: bool = True) -> int:
    """Animates one decoded line into `out` (complete or not at all) and returns its frame count.
    Ray workers call it too, so that both kinds of run write the same bytes."""
    total, blocks = animator.stream(waveform, fps, style_strength, reference)
    meta = animator.describe(waveform, style_strength, reference)
    template = animator.model.template.cpu().numpy()
    with MotionWriter(out, total, template.shape[0], fps or animator.fps, template, meta) as writer, \
            tqdm(total=total, desc=Path(waveform.source).name, unit="frame",
                 disable=not show_progress or total < 1000) as bar:
        for block in blocks:
            writer.write(block)
            bar.update(len(block))
    return total


def animated_message(audio: Path, out: Path, frames: int, fps: float) -> str:
    return f"{audio} -> {out} ({counted(frames, 'frame')} at {fps:g} fps)"


def append_report(report: Path | None, row: dict) -> None:
    if report:
        with open(report, "a") as file:
            file.write(json.dumps(row) + "\n")


def report_failures(failed: list[Path], count: int) -> None:
    if failed and count > 1:
        print(f"{len(failed)} of {count} inputs failed: {', '.join(map(str, failed))}", file=sys.stderr)
