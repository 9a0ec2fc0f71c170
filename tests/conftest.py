"""Tiny configs and generated data: every test runs offline in seconds."""
from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model_core import MemoryTalker, MemoryTalkerConfig, tiny_backbone_config

NUM_VERTICES = 40
LIPS = list(range(0, 10))
UPPER = list(range(20, 30))


def tiny_config(**overrides) -> MemoryTalkerConfig:
    fields = dict(num_vertices=NUM_VERTICES, feature_dim=16, decoder_heads=4, decoder_ff_dim=32,
                  backbone=None, backbone_config=tiny_backbone_config(),
                  style_channels=16, style_embedding_dim=24, style_dense_blocks=2)
    fields.update(overrides)
    return MemoryTalkerConfig(**fields)


def tiny_model(seed: int = 0, randomize_output: bool = True, **overrides) -> MemoryTalker:
    """A tiny model; the zero-initialised output projection (and, for a stylized model, the
    zero-initialised style scale) is randomised so motion and style are not trivial."""
    torch.manual_seed(seed)
    model = MemoryTalker(tiny_config(**overrides))
    if randomize_output:
        with torch.no_grad():
            model.output_proj.weight.normal_(0, 0.05)
            if model.config.stylized:
                model.style_encoder.to_scale.weight.normal_(0, 0.5)
    return model.eval()


def speech_like(seconds: float, sr: int, seed: int, pitch: float = 140.0, loudness: float = 0.3) -> np.ndarray:
    """Voiced syllables: a harmonic tone with a syllable-rate envelope and formant-ish noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    tone = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in range(1, 6))
    noise = rng.normal(0, 0.1, len(t))
    return (loudness * envelope * (tone + noise)).astype(np.float32), envelope


LABEL_PHONEMES = ["b", "a", "m", "i", "s", "u"]


def write_phoneme_labels(root: Path) -> None:
    """phonemes/NAME.json for every clip of a dataset folder: a fixed sequence derived from its name."""
    (root / "phonemes").mkdir()
    for wav in (root / "wav").glob("*.wav"):
        seed = sum(map(ord, wav.stem))
        labels = [LABEL_PHONEMES[(seed + 3 * k) % len(LABEL_PHONEMES)] for k in range(5)]
        segments = [["_", 0.0, 0.1]] + [[p, 0.1 + 0.15 * k, 0.25 + 0.15 * k] for k, p in enumerate(labels)]
        (root / "phonemes" / f"{wav.stem}.json").write_text(json.dumps(segments))


def write_dataset(root: Path, subjects: list[str], sentences: range, seconds=(1.0, 1.6), source_fps=60,
                  sr=16000, seed=0) -> Path:
    """A VOCASET-layout folder whose motion follows the audio envelope (a learnable mapping),
    with a per-speaker amplitude (a style) tied to the speaker's pitch and loudness."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    (root / "vertices_npy").mkdir()
    basis = rng.normal(0, 1e-3, (NUM_VERTICES, 3)).astype(np.float32)
    templates = {}
    for s_index, subject in enumerate(subjects):
        templates[subject] = rng.normal(0, 0.05, (NUM_VERTICES, 3)).astype(np.float32)
        amplitude = 1.0 + 0.8 * s_index
        for sentence in sentences:
            duration = rng.uniform(*seconds)
            name = f"{subject}_sentence{sentence:02d}"
            audio, envelope = speech_like(duration, sr, seed=zlib.crc32(f"{seed}/{name}".encode()),
                                          pitch=110 + 40 * s_index, loudness=0.15 + 0.1 * s_index)
            sf.write(root / "wav" / f"{name}.wav", audio, sr)
            frames = int(round(duration * source_fps))
            env = np.interp(np.arange(frames) / source_fps, np.arange(len(envelope)) / sr, envelope)
            motion = templates[subject][None] + amplitude * env[:, None, None] * basis[None]
            np.save(root / "vertices_npy" / f"{name}.npy", motion.reshape(frames, -1).astype(np.float32))
    with open(root / "templates.pkl", "wb") as f:
        pickle.dump(templates, f)
    (root / "lip_indices.txt").write_text(" ".join(map(str, LIPS)))
    (root / "upper_face_indices.txt").write_text(" ".join(map(str, UPPER)))
    (root / "dataset.json").write_text(json.dumps({
        "fps": 30, "source_fps": source_fps,
        "splits": {"train": {"subjects": subjects[:-1], "sentences": list(sentences)[:-1]},
                   "val": {"subjects": subjects[:-1], "sentences": list(sentences)[-1:]},
                   "test": {"subjects": subjects[-1:], "sentences": list(sentences)}},
    }))
    return root


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"), ["SpkA", "SpkB", "SpkC"], range(1, 5))


@pytest.fixture
def wav_file(tmp_path) -> Path:
    audio, _ = speech_like(2.0, 22050, seed=3)
    path = tmp_path / "speech.wav"
    sf.write(path, audio, 22050)
    return path
