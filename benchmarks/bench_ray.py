"""Ray batch benchmark (not a test): lines per second of `python -m model_core animate --ray` with 1
and 2 CPU workers (and one GPU worker with --gpu), beside a single-machine run with one thread.

It starts a Ray head on loopback with a port and temp folder of its own (CPUs for the largest
worker count, and the GPUs Ray finds), or uses the cluster at --address; generates --lines lines
of --seconds of speech-like audio; runs each configuration as its own `animate` process and checks
that every run wrote the same bytes as the single-machine run (CPU runs only: a GPU computes other
last bits). "once ready" counts from the first worker with its model loaded; "end to end" is the
whole command (start-up, connecting, loading the model).

    python benchmarks/bench_ray.py [--workers 1 2] [--gpu] [--lines 60] [--seconds 4] [--model DIR]
                                   [--address HOST:PORT] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def speech_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(h * phase) / h for h in range(1, 8)) + 0.1 * rng.normal(size=t.size)
    return (0.2 * envelope * voice).astype(np.float32)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


@contextlib.contextmanager
def local_head(cpus: int, temp: Path):
    """`ray start --head --block` on loopback in a session of its own; every process under it is
    killed on the way out (Ray gives its workers process groups of their own)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # loopback only
    log = open(temp / "head.log", "w")
    head = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             f"--num-cpus={cpus}", f"--temp-dir={temp / 'ray'}", "--include-dashboard=false",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Ray head did not start:\n{(temp / 'head.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        for pid in [*descendants(head.pid), head.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait()
        log.close()


def timed_animate(lines: list[Path], out: Path, options: list[str], env: dict[str, str]) -> dict:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "model_core", "animate", *map(str, lines), "--out", str(out), *options],
                         cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if run.returncode:
        raise RuntimeError(f"animate {' '.join(options)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    result = {"end_to_end_s": round(wall, 2), "end_to_end_lines_per_s": round(len(lines) / wall, 3)}
    once_ready = re.search(r"([\d.]+) lines/s once a worker was ready", run.stdout)
    if once_ready:
        result["lines_per_s_once_ready"] = float(once_ready.group(1))
    return result


def same_bytes(out: Path, reference: Path) -> bool:
    names = sorted(p.name for p in reference.iterdir())
    return sorted(p.name for p in out.iterdir()) == names and all(
        (out / name).read_bytes() == (reference / name).read_bytes() for name in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="CPU worker counts to time")
    parser.add_argument("--gpu", action="store_true", help="also one GPU worker (--device cuda --ray-workers 1)")
    parser.add_argument("--lines", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each line")
    parser.add_argument("--model", type=Path, help="model folder (default: the bundled demo model)")
    parser.add_argument("--address", help="an existing cluster instead of a local head")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mtbench-") as scratch:
        temp = Path(scratch)
        lines = []
        for k in range(args.lines):
            lines.append(temp / "lines" / f"line{k:03d}.wav")
            lines[-1].parent.mkdir(exist_ok=True)
            sf.write(lines[-1], speech_like(args.seconds, 16000, seed=k), 16000)
        model = ["--model", str(args.model)] if args.model else []
        # One thread, as each one-CPU Ray worker computes: the same bytes are expected.
        single_env = {**os.environ, "OMP_NUM_THREADS": "1"}
        load_before = os.getloadavg()
        results: dict = {"single_machine_1_thread": timed_animate(lines, temp / "single", model, single_env)}
        with contextlib.ExitStack() as stack:
            address = args.address or stack.enter_context(local_head(max(args.workers), temp))
            for workers in args.workers:
                out = temp / f"ray{workers}"
                result = timed_animate(lines, out, [*model, "--ray", address, "--ray-workers", str(workers),
                                                    "--device", "cpu"], dict(os.environ))
                result["same_bytes_as_single_machine"] = same_bytes(out, temp / "single")
                results[f"ray_{workers}_cpu_workers"] = result
                print(f"{workers} CPU workers: {result}", flush=True)
            if args.gpu:
                results["ray_1_gpu_worker"] = timed_animate(lines, temp / "gpu", [*model, "--ray", address,
                                                            "--ray-workers", "1", "--device", "cuda"], dict(os.environ))
                print(f"1 GPU worker: {results['ray_1_gpu_worker']}", flush=True)

    report = {"lines": args.lines, "seconds_per_line": args.seconds, "model": str(args.model or "bundled demo"),
              "threads_per_worker": 1, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "results": results}
    print(json.dumps(report, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
