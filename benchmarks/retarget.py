"""Retargeting benchmark (not a test): the time to fit a binding from the bundled demo head (4844
vertices) to heads of about 5,000 and 50,000 vertices (the demo head rebuilt on denser grids), and
to transfer 60 s of motion (1800 frames at 30 fps) onto each. Goals: a fit under 10 s at 50,000
vertices, a transfer under 0.5 s. Also what a take of editable shape keys costs on each head, both
ways: the keys fitted on the model's head and only they carried (what the extension's worker does),
against every frame carried and the keys fitted on the target.

The motion is the demo head's rig driven by visemes, so the transferred frames are real lip
motion; building the target heads (ray marching their signed-distance function) is not timed.
Best of --repeats runs after a warm-up.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/retarget.py [--threads N] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_core.encoding import DEFAULT_TOLERANCE as TOLERANCE  # noqa: E402
from model_core.encoding import shape_basis  # noqa: E402
from model_core.retarget import fit_binding  # noqa: E402
from model_core.synthetic.head import demo_head  # noqa: E402
from model_core.synthetic.rig import Rig  # noqa: E402
from model_core.synthetic.visemes import trajectory  # noqa: E402

FRAMES, FPS = 1800, 30.0
TARGETS = {"about 5,000 vertices": (104, 48), "about 50,000 vertices": (320, 156)}


def speech_motion(head) -> np.ndarray:
    """(FRAMES, V, 3): the rig following a looping run of visemes, closures and open vowels."""
    phonemes = "m a p i b u f æ m ɔ t s a _".split() * 80
    timed = [(p, 0.1 * i, 0.1 * (i + 1)) for i, p in enumerate(phonemes)]
    return Rig(head).displacements(trajectory(timed, FRAMES, FPS))


def best(function, repeats: int) -> tuple[float, object]:
    result, times = function(), []  # the first run warms up
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source = demo_head()
    motion = speech_motion(source)
    results: dict = {"torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "torch": torch.__version__, "source_vertices": len(source.vertices), "frames": FRAMES,
                     "targets": {}}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); source {len(source.vertices)} vertices",
          flush=True)
    for label, (columns, rows) in TARGETS.items():
        target = demo_head(columns, rows)
        fit_seconds, binding = best(lambda: fit_binding(source.vertices, source.faces, source.landmarks,
                                                        target.vertices, target.faces, target.landmarks),
                                    args.repeats)
        transfer_seconds, out = best(lambda: binding.transfer(motion), args.repeats)
        transferred_mb = out.nbytes / 2**20
        del out
        keys_seconds, keys = best(lambda: binding.transfer(shape_basis(motion, TOLERANCE / binding.error_gain()).shapes),
                                  args.repeats)
        frames_seconds, _ = best(lambda: shape_basis(binding.transfer(motion), TOLERANCE), 1)
        results["targets"][label] = {"vertices": len(target.vertices), "fit_s": fit_seconds,
                                     "transfer_60s_s": transfer_seconds, "output_mb": transferred_mb,
                                     "shape_keys_fit_then_carry_s": keys_seconds, "keys": len(keys),
                                     "shape_keys_carry_then_fit_s": frames_seconds}
        print(f"{label} ({len(target.vertices)}): fit {fit_seconds:.2f} s, transfer of {FRAMES} frames "
              f"{transfer_seconds:.3f} s ({transferred_mb:.0f} MB out); editable keys ({len(keys)}): fitted on the "
              f"model's head and carried {keys_seconds:.3f} s, carried and fitted on the target {frames_seconds:.2f} s",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / f"retarget_{torch.get_num_threads()}threads.json"
    saved.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
