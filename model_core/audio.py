"""Audio file -> decoded, mono, resampled, normalised waveform (one job: nothing model-specific)."""
from __future__ import annotations

import logging
import math
import struct
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
# Lines longer than this keep their samples in float16 (about 66 dB signal to rounding noise, below a
# recording's own noise floor): two hours at 16 kHz take 230 MB instead of 460, so that `animate`
# stays under 1 GB on them. Shorter lines stay float32, bit for bit what they always were.
HALF_PRECISION_SECONDS = 30 * 60
# A truncated file holding less than this is refused rather than animated: it is a failed export or
# copy with nothing left to speak (a syllable lasts about 0.2 s).
TRUNCATED_MIN_SECONDS = 0.1


@dataclass
class Waveform:
    """Mono samples at `sample_rate`, zero mean and unit variance unless silent: float32, or float16
    for lines longer than HALF_PRECISION_SECONDS (consumers convert a window at a time)."""

    samples: np.ndarray
    sample_rate: int
    source: str
    silent: bool

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def normalize(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance (what Wav2Vec2FeatureExtractor(do_normalize=True) does)."""
    return _normalize_in_place(np.array(samples, dtype=np.float32))


def _normalize_in_place(samples: np.ndarray) -> np.ndarray:
    """`normalize` over float32 or float16 `samples` themselves, in float64 block by block: a two-hour
    line never has a float64 copy of itself beside it."""
    blocks = [slice(start, start + _READ_BLOCK_FRAMES) for start in range(0, len(samples), _READ_BLOCK_FRAMES)]
    mean = sum(float(samples[b].sum(dtype=np.float64)) for b in blocks) / len(samples)
    variance = sum(float(np.square(samples[b].astype(np.float64) - mean).sum()) for b in blocks) / len(samples)
    scale = np.sqrt(variance + 1e-7)
    for b in blocks:
        samples[b] = (samples[b].astype(np.float64) - mean) / scale
    return samples


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
    # Normalised in place: the caller's array is never changed.
    return _finish(mono.copy() if mono is samples else mono, target_rate, source)


def _finish(mono: np.ndarray, rate: int, source: str) -> Waveform:
    if len(mono) == 0:
        raise AudioError(f"{source}: the audio is too short to resample (under one output sample)")
    if max(float(mono.max()), -float(mono.min())) < SILENCE_PEAK:
        log.warning("%s: the audio is silent (peak below -80 dBFS); the motion will be neutral", source)
        mono[:] = 0
        return Waveform(mono, rate, source, True)
    return Waveform(_normalize_in_place(mono), rate, source, False)


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
            f"{source}: cannot read this audio file ({_libsndfile_reason(exc)}); "
            "supported formats are WAV, FLAC, OGG and MP3"
        ) from None
    if info.format == "WAV":
        _check_wav_length(path, info.samplerate)
    if info.frames == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    rate = info.samplerate
    resampler = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ") if rate != target_rate else None
    # The output goes straight into one array sized from the header (grown if a compressed file's
    # header undercounts), so the line is held once: no list of pieces beside their concatenation.
    expected = math.ceil(info.frames * target_rate / rate) + 64
    out = np.empty(expected, np.float16 if expected > HALF_PRECISION_SECONDS * target_rate else np.float32)
    filled = read = 0

    def append(piece: np.ndarray) -> None:
        nonlocal out, filled
        if filled + len(piece) > len(out):
            out = np.resize(out, 2 * (filled + len(piece)))
        out[filled:filled + len(piece)] = piece
        filled += len(piece)

    try:
        with sf.SoundFile(source) as f:
            for block in f.blocks(blocksize=_READ_BLOCK_FRAMES, dtype="float32", always_2d=True):
                _check_finite(block, rate, source, offset=read)
                read += len(block)
                mono = block.mean(axis=1)
                append(resampler.resample_chunk(mono) if resampler else mono)
            if resampler:
                append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    except sf.LibsndfileError as exc:
        raise AudioError(f"{source}: the file is damaged or truncated ({_libsndfile_reason(exc)})") from None
    if read == 0:
        raise AudioError(f"{source}: the audio is empty (0 samples)")
    return _finish(out[:filled], target_rate, source)


def _libsndfile_reason(error: Exception) -> str:
    """libsndfile's reason alone: its full message repeats the path ("Error opening 'x.wav': ...")."""
    return (getattr(error, "error_string", None) or str(error)).rstrip(".")


def _wav_data_sizes(path: Path) -> tuple[int, int, int] | None:
    """(bytes the data chunk declares, bytes present after its header, bytes per frame) of a RIFF
    WAVE file; None where the header leaves the length open (0 or 0xFFFFFFFF, as streaming writers
    do) or is not plain RIFF. libsndfile clamps its frame count to what the file holds, so only the
    header tells how much is missing."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
            return None
        frame_bytes = None
        while len(chunk := f.read(8)) == 8:
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            body = f.tell()
            if chunk_id == b"data":
                if frame_bytes is None or chunk_size in (0, 0xFFFFFFFF):
                    return None
                return chunk_size, file_size - body, frame_bytes
            if chunk_id == b"fmt ":
                fmt = f.read(14)
                frame_bytes = struct.unpack("<H", fmt[12:14])[0] if len(fmt) == 14 else None
            f.seek(body + chunk_size + chunk_size % 2)  # chunks are padded to an even length
    return None


def _check_wav_length(path: Path, sample_rate: int) -> None:
    """Warns about a WAV whose data chunk is shorter than its header declares; refuses one that holds
    almost nothing of it."""
    sizes = _wav_data_sizes(path)
    if sizes is None:
        return
    declared, present, frame_bytes = sizes
    if present >= declared or not frame_bytes:
        return
    declared_seconds = declared // frame_bytes / sample_rate
    present_seconds = present // frame_bytes / sample_rate
    if present_seconds < TRUNCATED_MIN_SECONDS:
        raise AudioError(f"{path}: the header declares {declared_seconds:.2f} s but the file holds {present} bytes of "
                         f"audio ({present_seconds:.3f} s): the file is truncated; re-export it or copy it again")
    log.warning("%s: the file is truncated: its header declares %.2f s of audio but only %.2f s is present; "
                "animating the %.2f s present (re-export the file to get all of it)",
                path, declared_seconds, present_seconds, present_seconds)
