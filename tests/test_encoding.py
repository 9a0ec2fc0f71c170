"""model_core.encoding: the editable shape-key basis, in memory and read window by window."""
from __future__ import annotations

import numpy as np
import pytest

from model_core import encoding


def face_like_motion(frames: int = 600, vertices: int = 500, seed: int = 0) -> np.ndarray:
    """Smooth components with falling amplitudes plus per-vertex noise, like a model's output."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 20, frames)
    shapes = rng.normal(size=(30, vertices, 3)) * (4e-3 * 0.8 ** np.arange(30))[:, None, None]
    weights = np.stack([np.sin(2 * np.pi * rng.uniform(0.2, 3) * t + rng.uniform(0, 6)) for _ in range(30)], 1)
    return (np.einsum("fk,kvc->fvc", weights, shapes) + rng.normal(0, 3e-6, (frames, vertices, 3))).astype(np.float32)


def test_the_basis_keeps_the_tolerance_with_few_keys():
    motion = face_like_motion()
    basis = encoding.shape_basis(motion, 1e-4)
    error = np.linalg.norm(basis.reconstruct() - motion, axis=2).max()
    assert error <= 1e-4 * 1.0001 and basis.max_error == pytest.approx(error, rel=1e-3)
    assert 3 <= len(basis.shapes) <= 30 and np.abs(basis.weights).max() == pytest.approx(1.0)
    silent = encoding.shape_basis(np.zeros((50, 20, 3), np.float32), 1e-4)
    assert silent.shapes.shape == (0, 20, 3) and silent.weights.shape == (50, 0)


def test_read_window_by_window_the_fit_never_holds_the_whole_motion(monkeypatch):
    motion = face_like_motion()
    window_frames = 64
    monkeypatch.setattr(encoding, "WINDOW_BYTES", window_frames * 4 * 3 * motion.shape[1])
    largest = []

    def read(start: int, stop: int) -> np.ndarray:
        largest.append(stop - start)
        return motion[start:stop].copy()

    streamed = encoding.streamed_shape_basis(read, len(motion), motion.shape[1], 1e-4)
    assert max(largest) == window_frames < len(motion)
    in_memory = encoding.shape_basis(motion, 1e-4)
    assert len(streamed.shapes) == len(in_memory.shapes)
    assert np.linalg.norm(streamed.reconstruct() - motion, axis=2).max() <= 1e-4 * 1.0001


def test_motion_turned_into_the_mesh_frame_can_be_written_in_place():
    motion = face_like_motion(frames=6, vertices=40)
    z_up_in_cm = 100 * np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)
    for alignment in (np.eye(3, dtype=np.float32), z_up_in_cm):
        expected = encoding.to_mesh_frame(motion, alignment)
        out = np.empty_like(motion)
        assert encoding.to_mesh_frame(motion, alignment, out) is out
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(expected[2, 5], 100 * motion[2, 5][[0, 2, 1]] * [1, -1, 1], rtol=1e-6)
