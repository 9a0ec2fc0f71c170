"""Batch animation on a Ray cluster: `python -m model_core animate --ray [ADDRESS] INPUTS...`.

Each worker is a Ray actor that loads the model once and animates one line at a time. The driver
(the machine running the command) gives the next line to whichever worker finishes first, so a
faster node takes more lines. It sends each line's audio bytes and gets the finished motion file's
bytes back, which it writes into the output folder beside the final name and renames, as a
single-machine run does: the nodes need neither the inputs nor the output folder, only this
package and its dependencies (the same Python and Ray versions as the driver). A line whose worker
or node died goes to another worker, at most MAX_ATTEMPTS times in all; a line that fails by itself
(unreadable audio) is reported once, as in a single-machine run.

CPU workers compute with as many threads as the CPUs they reserve (--ray-cpus, default 1): more
threads than that would fight the other workers on the node for its cores. PyTorch's results
depend in their last bits on the thread count, so the files equal, bit for bit, those of a
single-machine run with the same number of threads (OMP_NUM_THREADS) on the same kind of CPU.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .audio import Waveform, load_audio
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_model_document
from .batches import animated_message, append_report, default_model, report_failures, write_line_motion
from .errors import AudioError, MemoryTalkerError
from .motion_io import _partial_path

# Tries of a line whose worker died under it (its node lost, the process killed) before it is
# reported as failed: a line that itself kills its worker (too big for the node's memory) must not
# take down worker after worker.
MAX_ATTEMPTS = 3
# How long the driver waits for a worker to start when no line is being animated: a worker that can
# never start (a GPU asked of a cluster without one) would otherwise keep the run waiting for ever.
WORKER_START_LIMIT_S = 600.0
# Lines each worker holds at once: the next is already there when one is done, so that the worker
# does not sit idle while its result travels back and the driver writes it.
LINES_PER_WORKER = 2
INSTALL_HINT = "pip install 'memorytalker[ray]' (or pip install ray)"


def import_ray():
    try:
        import ray
    except ImportError:
        raise MemoryTalkerError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}; every node "
                                "of the cluster needs it too") from None
    return ray


def _worker_lost_errors(ray) -> tuple[type[Exception], ...]:
    """Errors that say a line's worker, its node or the result it left there is gone: not the line's fault."""
    ex = ray.exceptions
    return (ex.RayActorError, ex.WorkerCrashedError, ex.NodeDiedError, ex.ObjectLostError, ex.OutOfMemoryError)


def _check_reachable(address: str) -> None:
    """Ray retries an address where nothing listens without end; one quick connection first turns a
    wrong address into an error."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        return  # "auto": Ray looks for a cluster on this machine itself, and says when there is none
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise MemoryTalkerError(f"cannot reach the Ray cluster at {address} ({error.strerror or error}); check the "
                                "address (`ray start --head` prints it) and that the head node is running") from None


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)


class LineAnimator:
    """A Ray actor: one model, loaded once, that animates lines sent as audio bytes into motion-file bytes.

    Files live only in a scratch folder of the worker's own for the time it takes to decode or write
    them, under the line's file name so that warnings are recognisable; messages and metadata name
    the driver's paths, as a single-machine run's do.
    """

    def __init__(self, model_files: dict[str, bytes], device: str, threads: int,
                 style_audio: tuple[str, bytes] | None, fps: float | None, style_strength: float):
        import torch

        from .inference import Animator

        torch.set_num_threads(threads)
        self.fps, self.style_strength = fps, style_strength
        self.load_error: str | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="memorytalker-model-") as scratch:
                for name, data in model_files.items():
                    (Path(scratch) / name).write_bytes(data)
                self.animator = Animator.from_folder(scratch, device)
            self.reference = self._decode(*style_audio) if style_audio else None
        except MemoryTalkerError as error:
            self.load_error = str(error)

    def ready(self) -> str | None:
        """None once the model is loaded, or why it could not be."""
        return self.load_error

    def _decode(self, source: str, data: bytes) -> Waveform:
        with tempfile.TemporaryDirectory(prefix="memorytalker-line-") as scratch:
            local = Path(scratch) / Path(source).name
            local.write_bytes(data)
            try:
                waveform = self.animator.load(local)
            except MemoryTalkerError as error:
                raise type(error)(str(error).replace(str(local), source)) from None
        return dataclasses.replace(waveform, source=source)

    def animate(self, source: str, audio: bytes, output_name: str) -> dict:
        """{"motion": the output file's bytes, "frames", "fps", "seconds"}, or {"error": why, "seconds"}
        for a bad line."""
        started = time.perf_counter()
        try:
            waveform = self._decode(source, audio)
            with tempfile.TemporaryDirectory(prefix="memorytalker-motion-") as scratch:
                out = Path(scratch) / output_name
                frames = write_line_motion(self.animator, waveform, out, self.fps, self.style_strength,
                                           self.reference, show_progress=False)
                motion = out.read_bytes()
        except MemoryTalkerError as error:
            return {"error": str(error), "seconds": time.perf_counter() - started}
        return {"motion": motion, "frames": frames, "fps": self.fps or self.animator.fps,
                "seconds": time.perf_counter() - started}


def _read_input(audio: Path) -> bytes:
    """An input's bytes, for a worker that may not see the driver's files. One that cannot be read
    gets the message a single-machine run gives (no such file, a folder)."""
    try:
        return audio.read_bytes()
    except OSError as error:
        load_audio(audio)  # raises the decoder's own message for a path it cannot open
        raise AudioError(f"{audio}: cannot read the file ({error.strerror or error}); check its permissions") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Writes beside `path` and renames, as MotionWriter does: a killed driver never leaves a half file."""
    partial = _partial_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "xb") as file:
            file.write(data)
        os.replace(partial, path)
    except OSError as error:
        raise MemoryTalkerError(f"{path}: cannot write the motion file ({error.strerror or error}); "
                                "check that the folder can be written to and the disk has room") from None
    finally:
        partial.unlink(missing_ok=True)


def _read_model(folder: Path) -> dict[str, bytes]:
    read_model_document(folder)  # a missing or malformed model is refused here, before any worker starts
    return {name: (folder / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


def _worker_resources(ray, device: str) -> tuple[str, int]:
    """(the device a worker computes on, the GPUs it reserves): with --device auto, a GPU each where
    the cluster has GPUs. Ray shows a worker only its own GPU, so it is always plain "cuda"."""
    if device == "cpu":
        return "cpu", 0
    if device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1):
        return "cuda", 1
    if device != "auto":
        raise MemoryTalkerError(f"unknown device {device!r}; use auto, cpu or cuda")
    return "cpu", 0


class _Run:
    """The driver's side: starts the workers, hands out lines, retries lost ones, writes the files."""

    def __init__(self, ray, args, outputs: list[Path], todo: list[int]):
        self.ray, self.args, self.outputs = ray, args, outputs
        self.lost_errors = _worker_lost_errors(ray)
        self.queue: collections.deque[int] = collections.deque()
        self.attempts: collections.Counter[int] = collections.Counter()
        self.finished: set[int] = set()
        self.starting: dict = {}  # ready() result -> actor
        self.running: dict = {}  # animate() result -> (actor, input position)
        self.lines_given: collections.Counter = collections.Counter()  # actor -> lines it has in hand
        self.lost_workers: set = set()
        self.failed: list[Path] = []
        self.animated = self.skipped = self.retried = 0
        self.first_ready: float | None = None
        self.last_animated = 0.0
        self.last_loss = ""
        for k in todo:
            if args.resume and outputs[k].exists():
                tqdm.write(f"{args.audio[k]}: {outputs[k]} exists, skipped (--resume)")
                append_report(args.report, {"input": str(args.audio[k]), "output": str(outputs[k]),
                                            "skipped": "output exists", "seconds": 0.0})
                self.skipped += 1
            else:
                self.queue.append(k)
        self.progress = tqdm(total=len(todo), initial=self.skipped, unit="line", desc="ray", file=sys.stderr)

    def start(self, workers: int, device: str, cpus: int, gpus: int) -> None:
        style = None
        if self.args.style_audio:
            style = (str(self.args.style_audio), _read_input(self.args.style_audio))
        # One copy of the model in the cluster's object store, fetched by each node that runs a worker.
        model = self.ray.put(_read_model(default_model(self.args.model)))
        self.actor_class = self.ray.remote(LineAnimator).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0)
        self.worker_arguments = (model, device, cpus, style, self.args.fps, self.args.style_strength)
        self.replacements_left = workers * MAX_ATTEMPTS
        for _ in range(workers):
            self._start_worker()

    def _start_worker(self) -> None:
        actor = self.actor_class.remote(*self.worker_arguments)
        self.starting[actor.ready.remote()] = actor

    def run(self) -> None:
        while self.queue or self.running:
            pending = [*self.running, *self.starting]
            if not pending:
                self._give_up(f"every Ray worker was lost (last: {self.last_loss})")
                return
            # While lines run, their results come in due time; with none running, only starting
            # workers can move the run on, and they may never find room.
            done, _ = self.ray.wait(pending, num_returns=1,
                                    timeout=None if self.running else WORKER_START_LIMIT_S)
            if not done:
                self._give_up(f"no Ray worker started in {WORKER_START_LIMIT_S:g} s; check that the cluster has "
                              "room for one (`ray status`: CPUs, and a GPU each for --device cuda)")
                return
            if done[0] in self.starting:
                self._worker_started(done[0])
            else:
                self._line_finished(done[0])

    def _worker_started(self, ready) -> None:
        actor = self.starting.pop(ready)
        try:
            load_error = self.ray.get(ready)
        except self.lost_errors as error:
            self._worker_lost(actor, error)
            return
        if load_error:
            raise MemoryTalkerError(load_error)
        if self.first_ready is None:
            self.first_ready = time.perf_counter()
        self._give_lines(actor)

    def _give_lines(self, actor) -> None:
        """Keeps LINES_PER_WORKER lines in the worker's hands; lets it go, freeing its CPUs or GPU,
        once it has none and none are left."""
        while self.lines_given[actor] < LINES_PER_WORKER and self.queue:
            k = self.queue.popleft()
            if k in self.finished:  # its first try came back after all
                continue
            audio = self.args.audio[k]
            try:
                data = _read_input(audio)
            except MemoryTalkerError as error:
                self._line_failed(k, str(error), 0.0)
                continue
            self.running[actor.animate.remote(str(audio), data, self.outputs[k].name)] = (actor, k)
            self.lines_given[actor] += 1
        if not self.lines_given[actor]:
            del self.lines_given[actor]
            self.ray.kill(actor)

    def _line_finished(self, result) -> None:
        actor, k = self.running.pop(result)
        self.lines_given[actor] -= 1
        try:
            line = self.ray.get(result)
        except self.lost_errors as error:
            self._worker_lost(actor, error, k)
            return
        if actor not in self.lost_workers:
            self._give_lines(actor)  # first, so that the worker computes while the file is written
        if k in self.finished:
            return
        audio, out = self.args.audio[k], self.outputs[k]
        if "error" in line:
            self._line_failed(k, line["error"], line["seconds"])
            return
        started = time.perf_counter()
        try:
            _write_atomically(out, line["motion"])
        except MemoryTalkerError as error:
            self._line_failed(k, str(error), line["seconds"])
            return
        seconds = line["seconds"] + time.perf_counter() - started
        tqdm.write(animated_message(audio, out, line["frames"], line["fps"]))
        self._record(k, {"frames": line["frames"], "seconds": round(seconds, 3)})
        self.animated += 1
        self.last_animated = time.perf_counter()

    def _worker_lost(self, actor, error: BaseException, k: int | None = None) -> None:
        """A worker died or became unreachable: its lines go back in the queue, and a new worker
        takes its place (starting wherever the cluster has room)."""
        if actor not in self.lost_workers:
            self.lost_workers.add(actor)
            self.last_loss = _first_line(error)
            self.ray.kill(actor)
            if self.replacements_left:
                self.replacements_left -= 1
                self._start_worker()
        if k is None or k in self.finished:
            return
        self.attempts[k] += 1
        if self.attempts[k] < MAX_ATTEMPTS:
            tqdm.write(f"{self.args.audio[k]}: its Ray worker was lost ({self.last_loss}); trying it again")
            self.queue.appendleft(k)
            self.retried += 1
        else:
            self._line_failed(k, f"{self.args.audio[k]}: its Ray worker died {MAX_ATTEMPTS} times while animating "
                                 f"it (last: {self.last_loss}); check the line's length and the nodes' memory", 0.0)

    def _line_failed(self, k: int, message: str, seconds: float) -> None:
        tqdm.write(f"error: {message}", file=sys.stderr)
        self.failed.append(self.args.audio[k])
        self._record(k, {"error": message, "seconds": round(seconds, 3)})

    def _give_up(self, why: str) -> None:
        while self.queue:
            k = self.queue.popleft()
            if k not in self.finished:
                self._line_failed(k, f"{self.args.audio[k]}: not animated: {why}; rerun with --resume to animate "
                                     "the lines not yet done", 0.0)

    def _record(self, k: int, fields: dict) -> None:
        self.finished.add(k)
        append_report(self.args.report, {"input": str(self.args.audio[k]), "output": str(self.outputs[k]), **fields})
        self.progress.update()


def animate_on_ray(args, outputs: list[Path], todo: list[int]) -> int:
    """Animates args.audio[k] into outputs[k] for each k in `todo` on the Ray cluster args.ray names;
    the exit status of `animate`."""
    ray = import_ray()
    started = time.perf_counter()
    address = args.ray or os.environ.get("RAY_ADDRESS", "")
    _check_reachable(address)
    try:
        ray.init(address=address or None, logging_level=logging.WARNING)
    except ConnectionError as error:
        raise MemoryTalkerError(f"cannot reach the Ray cluster at {address} ({_first_line(error)}); start one with "
                                "`ray start --head` or check the address") from None
    cpus = args.ray_cpus or 1
    try:
        device, gpus = _worker_resources(ray, args.device)
        resources = ray.cluster_resources()
        room = int(resources.get("GPU", 0) if gpus else resources.get("CPU", 0) // cpus)
        run = _Run(ray, args, outputs, todo)
        workers = min(args.ray_workers or max(1, room), max(1, len(run.queue)))
        if gpus and not room:
            tqdm.write(f"warning: the Ray cluster has no GPU now; the workers wait for one, for up to "
                       f"{WORKER_START_LIMIT_S:g} s (--device cpu: CPU workers)", file=sys.stderr)
        try:
            if run.queue:
                run.start(workers, device, cpus, gpus)
                run.run()
        finally:
            run.progress.close()
    finally:
        ray.shutdown()
    ended = time.perf_counter()
    animating = run.last_animated - (run.first_ready or run.last_animated)
    rate = run.animated / animating if animating > 0 else 0.0
    print(f"ray: {len(todo)} lines in {ended - started:.1f} s, {workers} {device} worker{'s' * (workers != 1)}: "
          f"{run.animated} animated, {run.skipped} skipped, {len(run.failed)} failed, {run.retried} retried, "
          f"{len(run.lost_workers)} workers lost; {rate:.2f} lines/s once a worker was ready")
    report_failures(run.failed, len(todo))
    return 1 if run.failed else 0
