"""Long-audio benchmark (not a test): the peak memory and the time of `python -m model_core animate`'s
path on one long file (default 2 hours): the streamed decode and resampling, the style, and the model
window by window, with the bundled model on the CPU.

The motion is counted and dropped instead of written: two hours of the demo head are 12.5 GB of
float32 displacements, more than this machine's free disk, and the writer takes them block by
block (`MotionWriter`), so it adds a block, not the line, to the memory. The audio is 44.1 kHz
mono 16-bit WAV (about 635 MB for two hours), speech-like syllables, written block by block.

    .venv/bin/python benchmarks/bench_long_audio.py [--minutes 120] [--threads 2] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import speech_like  # noqa: E402

RATE = 44100
# The child: what `animate` does to one file, less the writer (see above); prints its figures as JSON.
ANIMATE = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
from model_core import Animator
from model_core.batches import default_model
started = time.perf_counter()
animator = Animator.from_folder(default_model(None), "cpu")
loaded = time.perf_counter()
waveform = animator.load(sys.argv[1])
decoded = time.perf_counter()
total, blocks = animator.stream(waveform)
frames = sum(len(block) for block in blocks)
assert frames == total
print(json.dumps({"model_load_s": loaded - started, "decode_s": decoded - loaded,
                  "animate_s": time.perf_counter() - decoded, "frames": frames}))
"""


def write_long_audio(path: Path, minutes: float) -> None:
    chunk = speech_like(30.0, RATE, seed=0)[0].astype(np.float32)
    remaining = int(minutes * 60 * RATE)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16") as out:
        k = 0
        while remaining > 0:
            piece = np.roll(chunk, 997 * k)[:remaining]  # not one block repeated exactly
            out.write(piece)
            remaining -= len(piece)
            k += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="memorytalker-long-") as folder:
        audio = Path(folder) / "long.wav"
        write_long_audio(audio, args.minutes)
        size_mb = audio.stat().st_size / 2**20
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", ANIMATE, str(audio), str(args.threads)], cwd=ROOT,
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    results = {"minutes": args.minutes, "audio_mb": round(size_mb, 1), "threads": args.threads,
               "peak_memory_mb": round(peak_mb, 1), "wall_s": round(wall, 1),
               **{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()},
               "machine": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    print(f"{args.minutes:g} min of audio ({size_mb:.0f} MB WAV): peak memory {peak_mb:.0f} MB; model load "
          f"{figures['model_load_s']:.1f} s, decode {figures['decode_s']:.1f} s, animate {figures['animate_s']:.1f} s "
          f"({figures['frames']} frames), {args.threads} threads")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_audio.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
