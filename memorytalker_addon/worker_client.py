"""Blender's side of the inference worker: starts it, sends requests, collects events.

The worker is a subprocess, so a cancel can stop it at once (a torch call in a thread cannot be
interrupted), a crash in it becomes an error report instead of a crash of Blender, and GPU memory
is released when it ends. It stays alive between generations with the model loaded. A reader
thread turns its stdout into a queue that the modal operator drains on timer events; background
mode simply waits on the same queue. Nothing here touches Blender data.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

WORKER_SCRIPT = Path(__file__).with_name("worker_main.py")
INTERPRETER_HINT = ("check 'Python interpreter' in the MemoryTalker preferences (empty: Blender's own Python; "
                    "another one needs torch, transformers, safetensors, soundfile, soxr and numpy)")


class WorkerError(Exception):
    """The worker could not start, or died while working."""


def model_core_root() -> Path:
    """The folder that holds `model_core`: inside the built extension, or the source checkout."""
    here = Path(__file__).resolve().parent
    return here if (here / "model_core").is_dir() else here.parent


def worker_environment(python: str) -> dict[str, str]:
    paths = [str(model_core_root())]
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        # Blender's own Python: let the worker see the same site-packages (the bundled wheels).
        paths += [p for p in sys.path if p and os.path.isdir(p)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    def __init__(self, python: str | None = None):
        self.python = python or sys.executable
        # A new log per start, so a crash report holds only what the failed process wrote.
        self.log_path: Path | None = None
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.process: subprocess.Popen | None = None
        self.warmed: tuple[str, str] | None = None  # (model, device) the running worker was asked to load

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if Path(self.python).is_dir():
            raise WorkerError(f"the Python interpreter {self.python} is a folder; name the Python executable in it "
                              "(bin/python, or Scripts\\python.exe on Windows) in the MemoryTalker preferences, "
                              "or leave it empty to use Blender's")
        if not Path(self.python).is_file():
            raise WorkerError(f"the Python interpreter {self.python} does not exist; "
                              "fix it in the MemoryTalker preferences or leave it empty to use Blender's")
        self.events = queue.Queue()
        self._remove_log()
        descriptor, log_path = tempfile.mkstemp(prefix=f"memorytalker-worker-{os.getpid()}-", suffix=".log")
        self.log_path = Path(log_path)
        with os.fdopen(descriptor, "wb") as log:
            try:
                self.process = subprocess.Popen([self.python, "-u", str(WORKER_SCRIPT)], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, stderr=log, env=worker_environment(self.python))
            except OSError as error:
                self._remove_log()
                raise WorkerError(f"could not run the Python interpreter {self.python} ({error.strerror}); "
                                  f"{INTERPRETER_HINT}") from error
        threading.Thread(target=self._read, args=(self.process, self.events), daemon=True).start()

    @staticmethod
    def _read(process: subprocess.Popen, events: queue.Queue) -> None:
        # Each process gets its own queue, so a killed worker's last words never reach its successor.
        started = False  # the worker said "ready": its interpreter runs it
        for raw in process.stdout:
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            started = started or event.get("event") == "ready"
            events.put(event)
        events.put({"event": "exit", "returncode": process.wait(), "started": started})

    def submit(self, request: dict[str, Any]) -> None:
        if not self.alive:
            self.start()
        if "model" in request:  # the worker keeps the last model it loaded
            self.warmed = (request["model"], request.get("device", "auto"))
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            # The worker has already ended (an interpreter that exits at once): its reader reports the
            # exit, with the log, as the answer to this request.
            pass

    def warm(self, model: str, device: str) -> None:
        """Starts the worker if needed and has it load `model` now, so that the first job finds it
        ready. Nothing comes back; a job sent meanwhile is answered once the loading is done."""
        self.submit({"op": "warm", "model": model, "device": device})

    def poll(self) -> list[dict[str, Any]]:
        """Events that arrived since the last call (never blocks). A worker that died mid-job shows up
        as an `error` event carrying the end of its log."""
        events = []
        while True:
            try:
                events.append(self._translate(self.events.get_nowait()))
            except queue.Empty:
                return events

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event, blocking (background mode)."""
        try:
            return self._translate(self.events.get(timeout=timeout))
        except queue.Empty:
            raise WorkerError("the worker did not answer in time") from None

    def _translate(self, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("event") == "exit":
            self.process = None
            code = event["returncode"]
            if event["started"]:
                message = f"the inference worker stopped (exit code {code})"
            else:
                message = (f"the Python interpreter {self.python} stopped (exit code {code}) before the worker "
                           f"started; {INTERPRETER_HINT}")
            return {"event": "error", "message": f"{message}. {self.log_tail()}".strip()}
        return event

    def log_tail(self, lines: int = 6) -> str:
        if self.log_path is None:  # never started, or stopped and its log removed
            return ""
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return "Worker log: " + " | ".join(tail) if tail else ""

    def _remove_log(self) -> None:
        if self.log_path is not None:
            with contextlib.suppress(OSError):  # a log that cannot be removed must not stop a generation
                self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def stop(self) -> None:
        """Ends the worker at once (cancel, unregister, a different interpreter, Blender quitting) and
        removes its log."""
        process, self.process, self.warmed = self.process, None, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._remove_log()

    def run(self, request: dict[str, Any], on_progress=None) -> dict[str, Any]:
        """Sends `request` and blocks until its result; raises WorkerError with the worker's message."""
        self.submit(request)
        while True:
            event = self.wait()
            kind = event.get("event")
            if kind == "progress" and on_progress is not None:
                on_progress(event)
            elif kind == "done":
                return event
            elif kind == "error":
                raise WorkerError(event["message"])


_shared: Worker | None = None


def shared_worker(python: str | None) -> Worker:
    """The one worker of this Blender session, restarted if the interpreter setting changed."""
    global _shared
    wanted = python or sys.executable
    if _shared is not None and _shared.python != wanted:
        _shared.stop()
        _shared = None
    if _shared is None:
        _shared = Worker(wanted)
    return _shared


def stop_shared_worker() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


# Blender does not unregister add-ons when it quits: end the worker and remove its log then too.
atexit.register(stop_shared_worker)
