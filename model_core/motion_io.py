"""Writers for motion files. Each streams blocks of frames to disk, so a long clip never has to sit
in memory whole: .npy (frames x vertices x 3 displacements), .npz (displacements + template + fps +
metadata) and .pc2 (absolute positions = template + displacements, Blender's Mesh Cache format).
"""
from __future__ import annotations

import json
import os
import secrets
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MemoryTalkerError

FORMATS = (".npy", ".npz", ".pc2")
PC2_MAGIC = b"POINTCACHE2\0"


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _partial_path(path: Path, suffix: str = "") -> Path:
    """A new hidden name beside `path`: in the same folder, so os.replace onto `path` is an atomic rename."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}.partial")


def _cannot_write(path: Path, error: OSError) -> MemoryTalkerError:
    return MemoryTalkerError(f"{path}: cannot write the motion file ({error.strerror or error}); "
                             "check that the folder can be written to and the disk has room")


class MotionWriter:
    """Context manager: `write(block)` appends (n, V, 3) float32 frames; closes into the final file.

    The frames go to a hidden partial file beside `path`, which replaces `path` only once complete:
    a failure or a killed process never leaves a truncated file there, and an earlier file at `path`
    stays as it was until then.
    """

    def __init__(self, path: str | Path, frames: int, vertices: int, fps: float, template: np.ndarray,
                 metadata: dict[str, Any] | None = None, start_frame: float = 0.0):
        self.path = Path(path)
        self.format = self.path.suffix.lower()
        if self.format not in FORMATS:
            raise MemoryTalkerError(f"{self.path}: unsupported output format; use one of {', '.join(FORMATS)}")
        self.frames, self.vertices, self.fps = frames, vertices, fps
        self.template = np.asarray(template, np.float32).reshape(vertices, 3)
        self.metadata = metadata or {}
        self.written = 0
        # A .npz packs its displacements into the archive when closing, from a stream of their own.
        self._data_path = _partial_path(self.path, ".npy" if self.format == ".npz" else "")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # "x": a plain new file, with the permissions of any file the user writes (not a temp file's 0600).
            self._file = open(self._data_path, "xb")
        except OSError as error:
            raise _cannot_write(self.path, error) from None
        try:
            if self.format == ".pc2":
                self._write_bytes(PC2_MAGIC + struct.pack("<iiffi", 1, vertices, start_frame, 1.0, frames))
            else:
                self._write_bytes(_npy_header((frames, vertices, 3)))
        except MemoryTalkerError:
            self._file.close()
            self._discard()
            raise

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float32)
        if self.format == ".pc2":
            block = block + self.template
        self._write_bytes(np.ascontiguousarray(block, "<f4").data)
        self.written += len(block)

    def _write_bytes(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as error:
            raise _cannot_write(self.path, error) from None

    def __enter__(self) -> "MotionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._file.close()
            if exc_type is not None:
                return
            if self.written != self.frames:
                raise RuntimeError(f"{self.path}: wrote {self.written} frames, expected {self.frames}")
            if self.format == ".npz":
                self._pack_npz()
            else:
                os.replace(self._data_path, self.path)
        except OSError as error:
            raise _cannot_write(self.path, error) from None
        finally:
            self._discard()

    def _pack_npz(self) -> None:
        archive_path = _partial_path(self.path)
        try:
            with zipfile.ZipFile(archive_path, "x", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.write(self._data_path, "displacements.npy")
                for name, value in (("template", self.template), ("fps", np.float64(self.fps)),
                                    ("metadata", np.array(json.dumps(self.metadata)))):
                    with archive.open(f"{name}.npy", "w") as member:
                        np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            os.replace(archive_path, self.path)
        finally:
            archive_path.unlink(missing_ok=True)

    def _discard(self) -> None:
        """Removes the partial data file (already renamed away on success)."""
        self._data_path.unlink(missing_ok=True)


def write_motion(path: str | Path, displacements: np.ndarray, fps: float, template: np.ndarray,
                 metadata: dict[str, Any] | None = None) -> None:
    with MotionWriter(path, len(displacements), displacements.shape[1], fps, template, metadata) as writer:
        writer.write(displacements)


def read_pc2(path: str | Path) -> tuple[np.ndarray, float, float]:
    """(positions (frames, V, 3), start frame, sampling rate)."""
    data = Path(path).read_bytes()
    if data[:12] != PC2_MAGIC:
        raise MemoryTalkerError(f"{path}: not a PC2 file")
    _, vertices, start, rate, frames = struct.unpack("<iiffi", data[12:32])
    return np.frombuffer(data, "<f4", offset=32).reshape(frames, vertices, 3), start, rate
