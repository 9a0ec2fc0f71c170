"""The inference worker: a separate Python process that keeps a model loaded between generations.

Blender starts it with `python worker_main.py` (its own Python, or the interpreter named in the
preferences) and talks to it in JSON lines: one request per line on stdin; progress events and one
final `done` or `error` event per request on stdout. Bulk data goes through files in the job's
folder. Libraries that print are sent to stderr, so stdout carries the protocol only. This file
must not import bpy or the add-on package: it runs outside Blender.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

Emit = Callable[[dict[str, Any]], None]
# Motion up to this size stays in memory for the key fit; longer lines go to a file (about 3.5
# minutes of the demo model at 24 fps).
MOTION_IN_MEMORY_BYTES = 2 ** 28


class Session:
    """The worker's state: the model last used, kept loaded for the next request.

    start_up_gc_paused: the cyclic garbage collector is paused while the worker starts (see `main`)
    and is resumed once the first model is loaded, or has failed to load."""

    def __init__(self, start_up_gc_paused: bool = False) -> None:
        from model_core.cpu_share import CpuShare

        self.start_up_gc_paused = start_up_gc_paused
        self.start_up_frozen = False  # what the start-up created is frozen: the collector never scans it
        self.model_key: tuple[str, str] | None = None
        self.animator = None
        self.cpu_share = CpuShare()  # Blender and whatever else runs beside it share the CPUs

    def animator_for(self, folder: str, device: str, emit: Emit):
        from model_core import Animator

        key = (str(Path(folder).resolve()), device)
        if key != self.model_key:
            emit({"event": "progress", "fraction": 0.0, "status": "Loading the model"})
            self.animator, self.model_key = None, None  # free the old model before loading the next
            if self.start_up_frozen:
                # The old model holds reference cycles, and the start-up froze it: the collector must
                # see it again to free it (one full collection, fractions of a second, as a model loads).
                self.start_up_frozen = False
                gc.unfreeze()
                gc.collect()
            try:
                self.animator = Animator.from_folder(folder, device)
            finally:
                if self.start_up_gc_paused:
                    self.start_up_gc_paused, self.start_up_frozen = False, True
                    # What the start-up created (imported modules, the model: some 600 000 objects that
                    # stay) is frozen, so later collections never scan it. The little garbage the
                    # imports left goes with it: collecting it would scan it all (0.3 s on 2 cores).
                    gc.freeze()
                    gc.enable()
            self.model_key = key
        return self.animator

    def warm(self, request: dict[str, Any]) -> None:
        """Imports torch and loads the model ahead of the first request, answering nothing: a job sent
        meanwhile waits its turn and finds the model ready. A model that cannot be loaded now is
        reported by the job that asks for it."""
        try:
            self.animator_for(request["model"], request.get("device", "auto"), lambda event: None)
        except Exception:  # noqa: BLE001 (any failure: the job will meet it again and report it)
            traceback.print_exc()

    def frame_counts(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        """How many frames the take of each of request["audio"] will have at request["fps"], read the
        way `generate` reads the audio, so that a batch can place takes before making them. None for
        a file that cannot be read: its own generation reports why."""
        from model_core.errors import MemoryTalkerError
        from model_core.inference import frame_count

        animator = self.animator_for(request["model"], request.get("device", "auto"), emit)
        counts: list[int | None] = []
        for path in request["audio"]:
            try:
                counts.append(frame_count(animator.load(path).duration, request["fps"]))
            except MemoryTalkerError:
                counts.append(None)
        return {"frames": counts}

    @staticmethod
    def binding_for(template, mesh, faces, retarget: dict[str, Any], emit: Emit):
        """The binding that carries the model's motion (on its template) onto `mesh`, fitted from the
        landmarks of both heads, or read from the cache where the same two heads were fitted before."""
        from model_core.retarget import Binding, RetargetError, fit_binding, mesh_signature, read_landmarks, read_obj

        source_vertices, source_faces = read_obj(retarget["source_mesh"])
        if len(source_vertices) != len(template):
            raise RetargetError(f"{retarget['source_mesh']} has {len(source_vertices)} vertices but the model animates "
                                f"{len(template)}: it is not the model's head; put the model's own head there")
        source_landmarks = read_landmarks(retarget["source_landmarks"])
        key = (mesh_signature(mesh, faces, retarget["landmarks"])[:32] + "-"
               + mesh_signature(template, source_faces, source_landmarks)[:32])
        cached = Path(retarget["binding_cache"]) / f"{key}.npz"
        if cached.is_file():
            try:
                return Binding.load(cached)
            except RetargetError:  # a damaged cache file is fitted again
                pass

        def progress(fraction: float, stage: str) -> None:
            emit({"event": "progress", "fraction": 0.02 * fraction, "status": f"Fitting the head: {stage}"})

        binding = fit_binding(template, source_faces, source_landmarks, mesh, faces, retarget["landmarks"],
                              progress=progress)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f"{key}.{os.getpid()}.partial.npz")  # renamed when complete
        binding.save(partial)
        os.replace(partial, cached)
        return binding

    def generate(self, request: dict[str, Any], emit: Emit) -> dict[str, Any]:
        import numpy as np

        from model_core.encoding import mesh_alignment, streamed_shape_basis, to_mesh_frame
        from model_core.errors import MemoryTalkerError
        from model_core.motion_io import MotionWriter

        import torch

        job = Path(request["job_dir"])
        animator = self.animator_for(request["model"], request.get("device", "auto"), emit)
        torch.set_num_threads(self.cpu_share.threads())
        mesh = np.load(job / "mesh.npy")
        expected = animator.model.config.num_vertices
        template = animator.model.template.cpu().numpy()
        binding = None
        if request.get("retarget"):
            binding = self.binding_for(template, mesh, np.load(job / "faces.npy"), request["retarget"], emit)
        elif len(mesh) != expected:
            raise MemoryTalkerError(f"the mesh has {len(mesh)} {'vertex' if len(mesh) == 1 else 'vertices'} but "
                                    f"the model animates {expected}; pick a mesh with the model's topology")
        emit({"event": "progress", "fraction": 0.02, "status": "Reading the audio"})
        waveform = animator.load(request["audio"])
        reference = animator.load(request["style_audio"]) if request.get("style_audio") else None
        emit({"event": "progress", "fraction": 0.05, "status": "Estimating the speaking style"})
        total, blocks = animator.stream(waveform, request["fps"], request.get("style_strength", 1.0), reference)
        mode = request["mode"]
        if mode not in ("shapekeys", "exact", "pc2"):
            raise MemoryTalkerError(f"unknown output mode {mode!r}")
        if binding is not None:
            carry, gain = binding.transfer, binding.error_gain()
        else:
            alignment = mesh_alignment(template, mesh)
            carry, gain = (lambda d, out=None: to_mesh_frame(d, alignment, out)), float(np.linalg.norm(alignment, 2))
        result: dict[str, Any] = {"frames": int(total), "duration_s": waveform.duration, "silent": waveform.silent}
        if mode == "shapekeys":
            read = self._kept_motion(self._animated(blocks, total, emit), total, expected, job)
            emit({"event": "progress", "fraction": 0.87, "status": "Fitting editable shape keys"})
            # Carrying is linear, so keys fitted on the model's own head and then carried give the
            # carried motion, within the gain: the fit sees the model's few vertices instead of a
            # dense target's, and only the keys are carried, not every frame.
            tolerance = request.get("tolerance", 1e-4)
            basis = streamed_shape_basis(read, total, expected, tolerance / gain if gain > 0 else tolerance)
            np.save(job / "shapes.npy", carry(basis.shapes))
            np.save(job / "weights.npy", basis.weights)
            result.update(keys=int(len(basis.shapes)), max_error=gain * basis.max_error)
        elif mode == "exact":
            # Each block carried straight into the file as it comes: memory holds the model's block, not
            # the line, nor a carried copy of the block.
            frames = np.lib.format.open_memmap(job / "displacements.npy", mode="w+", dtype=np.float32,
                                               shape=(total, len(mesh), 3))
            for start, block in self._animated(blocks, total, emit):
                carry(block, out=frames[start:start + len(block)])
            frames.flush()
            del frames
            result.update(keys=int(total), max_error=0.0)
        else:
            with MotionWriter(request["pc2_path"], total, len(mesh), request["fps"], mesh) as writer:
                for _, block in self._animated(blocks, total, emit):
                    writer.write(carry(block))
            result.update(keys=0, max_error=0.0)
        return result

    @staticmethod
    def _kept_motion(animated, total: int, vertices: int, job: Path):
        """Keeps the model's motion for the key fit, which reads it a window at a time: in memory up to
        MOTION_IN_MEMORY_BYTES (a few minutes: the fit's passes are fastest there), beyond that in a
        file in the job folder, so a line of any length needs the memory of a window. Returns
        read(start, stop) -> (stop - start, vertices, 3)."""
        import numpy as np

        values = 3 * vertices
        if 4 * total * values <= MOTION_IN_MEMORY_BYTES:
            motion = np.empty((total, vertices, 3), np.float32)
            for start, block in animated:
                motion[start:start + len(block)] = block
            return lambda start, stop: motion[start:stop]
        path = job / "motion.f32"
        with open(path, "wb") as out:
            for _, block in animated:
                out.write(np.ascontiguousarray(block, np.float32).tobytes())
        return lambda start, stop: np.fromfile(path, np.float32, count=(stop - start) * values,
                                               offset=4 * start * values).reshape(-1, vertices, 3)

    @staticmethod
    def _animated(blocks, total: int, emit: Emit):
        """(first frame, block) for each block of motion as the model gives it, with progress."""
        done = 0
        for block in blocks:
            yield done, block
            done += len(block)
            emit({"event": "progress", "fraction": 0.05 + 0.8 * done / total,
                  "status": f"Animating: {done} of {total} frames"})


def serve(requests, protocol, start_up_gc_paused: bool = False) -> None:
    def emit(event: dict[str, Any]) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    session = Session(start_up_gc_paused)
    emit({"event": "ready", "pid": os.getpid()})
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        if request.get("op") == "warm":
            session.warm(request)
            continue
        try:
            from model_core.errors import MemoryTalkerError

            handler = session.frame_counts if request.get("op") == "frame_counts" else session.generate
            try:
                emit({"event": "done", **handler(request, emit)})
            except MemoryTalkerError as error:
                emit({"event": "error", "message": str(error)})
            finally:
                session.cpu_share.job_done()
        except Exception as error:  # an unexpected failure is reported, the worker stays usable
            traceback.print_exc()
            emit({"event": "error", "message": f"{type(error).__name__}: {error}"})


def main() -> None:
    # Importing torch and transformers and loading the model create some 600 000 objects that live as
    # long as the worker. Left on, the cyclic garbage collector, triggered by those allocations, scans
    # the growing heap again and again meanwhile: six full collections, 0.5-0.6 s of a cold worker's
    # 3.5 s on the 2-core machine (docs/benchmarks.md). So it is paused until the first model is
    # loaded (Session.animator_for).
    gc.disable()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from libraries go to the log
    sys.stdout = sys.stderr
    serve(sys.stdin, protocol, start_up_gc_paused=True)


if __name__ == "__main__":
    main()
