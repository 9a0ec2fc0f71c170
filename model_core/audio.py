"""Audio file -> decoded, mono, resampled, normalised waveform (one job: nothing model-specific)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .errors import AudioError

log = logging.getLogger(__name__)

# Peak below -80 dBFS: digital silence or dither only. Such audio yields neutral motion.
SILENCE_PEAK = 1e-4
_READ_BLOCK_FRAMES = 1 << 18


@dataclass
class Waveform:
    """Mono float32 samples at `sample_rate`, zero mean and unit variance unless silent."""

    samples: np.ndarray
    sample_rate: int
    source: str
    silent: bool

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def normalize(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance (what Wav2Vec2FeatureExtractor(do_normalize=True) does)."""
    samples = np.asarray(samples, dtype=np.float64)
    normalized = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    return normalized.astype(np.float32)


def _check_finite(samples: np.ndarray, sample_rate: int, source: str, offset: int = 0) -> None:
    bad = ~np.isfinite(samples)
    if bad.any():
        first = offset + int(np.argmax(bad.reshape(len(samples), -1).any(axis=1)))
        raise AudioError(
            f"{source}: the audio contains NaN or infinite samples (first at {first / sample_rate:.3f} s); "
            "re-export the file from your audio editor"
        )


def prepare(samples: np.ndarray, sample_rate: int, target_rate: int = 16000, source: str = "<array>") -> Waveform:
    """Mix an in-memory signal (frames[, channels]) to mono, resample and normalise it."""
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2):
        raise AudioError(f"{source}: expected samples shaped (frames,) or (frames, channels), got {samples.shape}")
    if samples.shape[0] == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    if sample_rate <= 0:
        raise AudioError(f"{source}: invalid sample rate {sample_rate}")
    samples = samples.astype(np.float32, copy=False)
    _check_finite(samples, sample_rate, source)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if sample_rate != target_rate:
        mono = soxr.resample(mono, sample_rate, target_rate, quality="HQ").astype(np.float32)
    return _finish(mono, target_rate, source)


def _finish(mono: np.ndarray, rate: int, source: str) -> Waveform:
    if len(mono) == 0:
        raise AudioError(f"{source}: the audio is too short to resample (under one output sample)")
    silent = float(np.abs(mono).max()) < SILENCE_PEAK
    if silent:
        log.warning("%s: the audio is silent (peak below -80 dBFS); the motion will be neutral", source)
        return Waveform(np.zeros(len(mono), np.float32), rate, source, True)
    return Waveform(normalize(mono), rate, source, False)


def load_audio(path: str | Path, target_rate: int = 16000) -> Waveform:
    """Read WAV/FLAC/OGG/MP3 (anything libsndfile reads) at any rate and channel count.

    The file is decoded in blocks and resampled as a stream, so a long multi-channel file never sits
    in memory at its original rate.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise AudioError(f"{source}: no such file; check the path")
    if path.is_dir():
        raise AudioError(f"{source}: is a folder, expected an audio file (WAV, FLAC, OGG or MP3)")
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(
            f"{source}: cannot read this audio file ({exc}); supported formats are WAV, FLAC, OGG and MP3"
        ) from None
    if info.frames == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    rate = info.samplerate
    resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ") if rate != target_rate else None
    pieces: list[np.ndarray] = []
    read = 0
    try:
        with sf.SoundFile(source) as f:
            for block in f.blocks(blocksize=_READ_BLOCK_FRAMES, dtype="float32", always_2d=True):
                _check_finite(block, rate, source, offset=read)
                read += len(block)
                mono = block.mean(axis=1)
                pieces.append(resampler.resample_chunk(mono) if resampler else mono.copy())
            if resampler:
                pieces.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    except sf.LibsndfileError as exc:
        raise AudioError(f"{source}: the file is damaged or truncated ({exc})") from None
    if read == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    return _finish(np.concatenate(pieces).astype(np.float32, copy=False), target_rate, source)
