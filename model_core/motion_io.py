"""Writers for motion files. Each streams blocks of frames to disk, so a long clip never has to sit
in memory whole: .npy (frames x vertices x 3 displacements), .npz (displacements + template + fps +
metadata) and .pc2 (absolute positions = template + displacements, Blender's Mesh Cache format).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
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


class MotionWriter:
    """Context manager: `write(block)` appends (n, V, 3) float32 frames; closes into the final file."""

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == ".npz":
            handle, tmp = tempfile.mkstemp(suffix=".npy", dir=self.path.parent)
            os.close(handle)
            self._data_path = Path(tmp)
        else:
            self._data_path = self.path
        self._file = open(self._data_path, "wb")
        if self.format == ".pc2":
            self._file.write(PC2_MAGIC + struct.pack("<iiffi", 1, vertices, start_frame, 1.0, frames))
        else:
            self._file.write(_npy_header((frames, vertices, 3)))

    def write(self, block: np.ndarray) -> None:
        block = np.asarray(block, np.float32)
        if self.format == ".pc2":
            block = block + self.template
        self._file.write(np.ascontiguousarray(block, "<f4").data)
        self.written += len(block)

    def __enter__(self) -> "MotionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is not None or self.written != self.frames:
            self._data_path.unlink(missing_ok=True)
            if exc_type is None:
                raise RuntimeError(f"{self.path}: wrote {self.written} frames, expected {self.frames}")
            return
        if self.format == ".npz":
            try:
                with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                    archive.write(self._data_path, "displacements.npy")
                    for name, value in (("template", self.template), ("fps", np.float64(self.fps)),
                                        ("metadata", np.array(json.dumps(self.metadata)))):
                        with archive.open(f"{name}.npy", "w") as member:
                            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
            finally:
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
