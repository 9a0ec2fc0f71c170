"""Click benchmark (not a test): the time from the *Generate lip-sync* operator call to the finished
take, as an animator sees it, with the bundled model on the demo head (editable shape keys, 24 fps),
and the worker's peak memory.

- first click: a fresh worker (torch import, model load), cold or after the panel's warm-up
  (`operators.warm_up`, then --warm-wait seconds, the time an animator spends choosing a file);
- warm clicks: 10 s and 60 s lines, median of --repeats, on an idle machine and beside a process
  that keeps one core busy (a pure-Python loop);
- the worker's peak resident memory (VmHWM) after a line of each length in --memory-minutes.

Run with the bpy module, nothing else running; MEMORYTALKER_THREADS=2 fixes the worker's threads
(torch's default on two cores) instead of fitting them to the idle CPUs before each job:

    .venv/bin/python benchmarks/bench_clicks.py [--out benchmarks/results]
    .venv/bin/python benchmarks/bench_clicks.py --cold-only --repeats 7   # the cold first click alone
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import memorytalker_addon  # noqa: E402
from conftest import speech_like  # noqa: E402
from memorytalker_addon import operators, worker_client  # noqa: E402
from model_core.cpu_share import THREADS_VARIABLE  # noqa: E402

HOG = "while True: pass"


def new_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.memorytalker.add_demo_head()
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    options = scene.memorytalker
    options.model_source, options.device, options.mode = 'BUNDLED', 'CPU', 'SHAPEKEYS'


def click(audio: Path) -> float:
    """One generation, from the operator call to the written take; the take is removed afterwards."""
    start = time.perf_counter()
    result = bpy.ops.memorytalker.generate('EXEC_DEFAULT', audio_path=str(audio), add_sound_strip=False)
    seconds = time.perf_counter() - start
    assert result == {'FINISHED'}, result
    head = bpy.context.view_layer.objects.active
    for take in list(memorytalker_addon.takes.records(head)):
        bpy.ops.memorytalker.remove_take(object_name=head.name, take=take)
    return seconds


def peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def click_times(results: dict, lines: dict[int, Path], args) -> None:
    worker_client.stop_shared_worker()
    results["first_click_s"]["cold"] = click(lines[10])
    worker_client.stop_shared_worker()
    operators.warm_up(bpy.context)
    time.sleep(args.warm_wait)
    results["first_click_s"]["after_warm_up"] = click(lines[10])
    print(f"first click, 10 s line: cold {results['first_click_s']['cold']:.2f} s, after the warm-up "
          f"{results['first_click_s']['after_warm_up']:.2f} s", flush=True)

    for label, hog in (("idle", None), ("one_core_busy", HOG)):
        hogging = subprocess.Popen([sys.executable, "-c", hog]) if hog else None
        try:
            time.sleep(1.0 if hog else 0.0)
            for seconds, audio in lines.items():
                times = [click(audio) for _ in range(args.repeats)]
                results[f"warm_click_{seconds}s_{label}_s"] = float(np.median(times))
                print(f"warm click, {seconds} s line, {label.replace('_', ' ')}: median {np.median(times):.2f} s "
                      f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
        finally:
            if hogging is not None:
                hogging.kill()
                hogging.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warm-wait", type=float, default=15.0)
    parser.add_argument("--memory-minutes", default="1,5,20", help="line lengths for the memory figures")
    parser.add_argument("--memory-modes", default="SHAPEKEYS,PC2", help="output modes for the memory figures")
    parser.add_argument("--no-clicks", action="store_true", help="only the memory figures")
    parser.add_argument("--cold-only", action="store_true",
                        help="only the cold first click, --repeats times (printed, not saved)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    memorytalker_addon.register()
    with tempfile.TemporaryDirectory(prefix="bench-clicks-") as temporary:
        measure(args, Path(temporary))
    memorytalker_addon.unregister()


def measure(args, folder: Path) -> None:
    lines = {}
    for seconds in (10, 60):
        lines[seconds] = folder / f"line_{seconds}s.wav"
        sf.write(lines[seconds], speech_like(seconds, 44100, seed=seconds)[0], 44100)
    new_scene()
    if args.cold_only:
        times = []
        for _ in range(args.repeats):
            worker_client.stop_shared_worker()
            times.append(click(lines[10]))
        worker_client.stop_shared_worker()
        print(f"first click, 10 s line, cold worker: median {np.median(times):.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
        return
    threads = os.environ.get(THREADS_VARIABLE) or "fitted to the idle CPUs before each job"
    results: dict = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                     "blender": bpy.app.version_string, "worker_threads": threads, "first_click_s": {}}

    if not args.no_clicks:
        click_times(results, lines, args)

    results["worker_peak_mb"] = {}
    for mode in args.memory_modes.split(","):
        bpy.context.scene.memorytalker.mode = mode
        for minutes in (float(m) for m in args.memory_minutes.split(",")):
            worker_client.stop_shared_worker()
            audio = folder / f"line_{minutes:g}min.wav"
            if not audio.exists():
                sf.write(audio, speech_like(60 * minutes, 16000, seed=7)[0], 16000)
            seconds = click(audio)
            peak = peak_memory_mb(worker_client.shared_worker(None).process.pid)
            results["worker_peak_mb"][f"{mode.lower()}, {minutes:g} min"] = peak
            print(f"{mode.lower()}, {minutes:g} min line: {seconds:.1f} s, worker peak {peak:.0f} MB", flush=True)
    worker_client.stop_shared_worker()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / f"clicks_threads_{os.environ.get(THREADS_VARIABLE, 'fitted')}.json"
    saved.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {saved}")


if __name__ == "__main__":
    main()
