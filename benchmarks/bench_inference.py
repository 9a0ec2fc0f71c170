"""Inference benchmark (not a test): a HuBERT-base-size MemoryTalker with random weights on FLAME
topology (5023 vertices), or the model folder given with --model (for example the bundled demo
model), end to end from an audio file to a written .npy.

Reports seconds per 10 s and per 60 s of audio, the share of that time spent in the bare backbone
forward (the HuBERT CNN + transformer + CTC head, timed inside the same run by hooks), and the
peak RSS and time of `python -m model_core animate` on a 1-minute and a 10-minute file (separate
processes; the difference gives the marginal cost per minute, i.e. whether time is linear).

    python benchmarks/bench_inference.py [--device cpu|cuda] [--model DIR] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from model_core import Animator, MemoryTalker, MemoryTalkerConfig, load_audio, load_model, save_model
from model_core.config import hubert_base_config
from model_core.motion_io import MotionWriter


def speech_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voice = sum(np.sin(h * phase) / h for h in range(1, 8)) + 0.1 * rng.normal(size=t.size)
    return (0.2 * envelope * voice).astype(np.float32)


class BackboneClock:
    """Accumulates the time spent inside the audio encoder's forward calls (hooks on the module)."""

    def __init__(self, module: torch.nn.Module):
        self.total = 0.0
        self._start = 0.0
        module.register_forward_pre_hook(lambda *_: self._begin())
        module.register_forward_hook(lambda *_: self._end())

    def _begin(self) -> None:
        self._start = time.perf_counter()

    def _end(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.total += time.perf_counter() - self._start


def best_run(fn, clock: BackboneClock, repeats: int) -> tuple[float, float]:
    """(wall, backbone share of it) of the fastest of `repeats` runs after a warm-up."""
    fn()
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        clock.total = 0.0
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        if wall < best[0]:
            best = (wall, clock.total)
    return best


def end_to_end(animator: Animator, path: Path, out: Path) -> None:
    waveform = load_audio(path)
    total, blocks = animator.stream(waveform)
    template = animator.model.template.cpu().numpy()
    with MotionWriter(out, total, template.shape[0], animator.fps, template) as writer:
        for block in blocks:
            writer.write(block)


# Runs the CLI in a fresh interpreter and reads that process's own peak RSS (VmHWM) at exit:
# RUSAGE_CHILDREN could report the benchmark's own size, inherited at fork.
_PEAK_WRAPPER = """
import runpy, sys
sys.argv = ["model_core"] + sys.argv[1:]
try:
    runpy.run_module("model_core", run_name="__main__")
finally:
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    print("PEAK_RSS_KB", status["VmHWM"].split()[0], file=sys.stderr)
"""


def run_cli(arguments: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *arguments], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    peak_kb = next(int(line.split()[1]) for line in done.stderr.splitlines() if line.startswith("PEAK_RSS_KB"))
    return wall, peak_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long-minutes", type=float, default=10.0)
    parser.add_argument("--model", type=Path, help="a model folder (default: HuBERT-base size, random weights)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.model:
        model = load_model(args.model).eval()
        config = model.config
    else:
        config = MemoryTalkerConfig(backbone=None, backbone_config=hubert_base_config(), stylized=True)
        model = MemoryTalker(config).eval()
        with torch.no_grad():
            model.output_proj.weight.normal_(0, 1e-3)
    animator = Animator(model, args.device)
    clock = BackboneClock(model.audio_encoder)
    params = sum(p.numel() for p in model.parameters())
    results: dict = {"model": str(args.model or "hubert-base size, random weights"),
                     "device": args.device, "torch_threads": torch.get_num_threads(), "parameters_millions": params / 1e6,
                     "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "clips": {}}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seconds in (10, 60):
            path = tmp / f"speech_{seconds}s.wav"
            sf.write(path, speech_like(seconds, 44100), 44100)  # a typical export: decode + resample included
            e2e, bare = best_run(lambda: end_to_end(animator, path, tmp / "out.npy"), clock, args.repeats)
            samples = torch.from_numpy(load_audio(path).samples).to(animator.device)
            frames = int(round(seconds * config.fps))

            def whole_clip_backbone() -> None:
                with torch.inference_mode():
                    model.audio_encoder([samples], [frames], animator.autocast_dtype)

            single, _ = best_run(whole_clip_backbone, clock, args.repeats)
            results["clips"][f"{seconds}s"] = {
                "windows": len(animator.windows(frames)),
                "end_to_end_s": e2e, "backbone_s": bare, "backbone_share": bare / e2e,
                "overhead_over_backbone": e2e / bare - 1, "seconds_per_10s_audio": e2e * 10 / seconds,
                "single_pass_backbone_s": single, "overhead_over_single_pass_backbone": e2e / single - 1}
            print(f"{seconds:>4} s audio: end to end {e2e:.3f} s, of which backbone forward {bare:.3f} s "
                  f"({100 * bare / e2e:.1f} %); overhead {100 * (e2e / bare - 1):.1f} %; one backbone pass over "
                  f"the whole clip alone {single:.3f} s", flush=True)

        folder = save_model(model, tmp / "model")
        results["cli"] = {}
        for minutes in (1.0, args.long_minutes):
            path = tmp / f"long_{minutes:g}min.wav"
            sf.write(path, speech_like(minutes * 60, 16000, seed=1), 16000)
            wall, peak_mb = run_cli(["animate", str(path), "--model", str(folder), "--device", args.device,
                                     "--out", str(tmp / "long.npy")])
            output_mb = (tmp / "long.npy").stat().st_size / 2**20
            results["cli"][f"{minutes:g}min"] = {"wall_s": wall, "peak_rss_mb": peak_mb, "output_mb": output_mb}
            print(f"{minutes:g} min file via the CLI: {wall:.1f} s wall (start-up and model load included), "
                  f"peak RSS {peak_mb:.0f} MB, output {output_mb:.0f} MB", flush=True)
        short, long = results["cli"]["1min"], results["cli"][f"{args.long_minutes:g}min"]
        results["marginal_seconds_per_minute"] = (long["wall_s"] - short["wall_s"]) / (args.long_minutes - 1.0)
        print(f"marginal cost: {results['marginal_seconds_per_minute']:.2f} s per minute of audio", flush=True)

    saved = args.out / f"inference_{args.device}{'_' + args.model.name if args.model else ''}.json"
    saved.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
