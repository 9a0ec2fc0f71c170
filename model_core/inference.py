"""Inference: normalised waveform -> displacements (frames x vertices x 3) at any frame rate.

Long audio runs in overlapping windows that start on frame boundaries shared by the audio
features and the motion, joined by a linear cross-fade, so memory stays bounded by the window
length while the output streams out block by block. The speaking style is estimated once per
clip, pooled over the whole clip.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import Waveform, load_audio, prepare
from .checkpoint import load_model
from .errors import MemoryTalkerError
from .model import MemoryTalker

MIN_FPS, MAX_FPS = 23.976, 120.0
# 0: the generic motion of the stage-1 memory; 1: the speaker's own style. Beyond 1 the style weights
# would be extrapolated, below 0 inverted: neither was trained.
MIN_STYLE_STRENGTH, MAX_STYLE_STRENGTH = 0.0, 1.0


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MemoryTalkerError("--device cuda was asked for, but this PyTorch has no usable CUDA device; "
                                "use --device cpu or install a CUDA build of PyTorch")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise MemoryTalkerError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def frame_count(duration: float, fps: float) -> int:
    return max(1, int(round(duration * fps)))


@dataclass
class Motion:
    displacements: np.ndarray  # (frames, vertices, 3) float32, relative to the neutral mesh
    fps: float
    template: np.ndarray  # (vertices, 3): the model's neutral mesh
    metadata: dict[str, Any] = field(default_factory=dict)


class TimeResampler:
    """Streams frames (arrays of any shape after the frame axis) at src_fps into `total` frames at
    dst_fps (linear in time, end held)."""

    def __init__(self, src_fps: float, dst_fps: float, total: int):
        self.ratio = src_fps / dst_fps
        self.total = total
        self.next_out = 0
        self.buffer: np.ndarray | None = None
        self.buffer_start = 0

    def push(self, block: np.ndarray, final: bool = False) -> np.ndarray:
        if self.ratio == 1.0:  # same rate: frames pass through untouched
            out = block[: self.total - self.next_out]
            self.next_out += len(out)
            return out
        self.buffer = block if self.buffer is None else np.concatenate([self.buffer, block])
        end = self.buffer_start + len(self.buffer)
        k = np.arange(self.next_out, self.total)
        pos = k * self.ratio
        left = np.floor(pos + 1e-9).astype(np.int64)
        ready = (left + 1 < end) | final
        k, pos, left = k[ready], pos[ready], left[ready]
        left = np.minimum(left, end - 1)
        right = np.minimum(left + 1, end - 1)
        weight = np.clip(pos - left, 0.0, 1.0).astype(np.float32).reshape(-1, *[1] * (self.buffer.ndim - 1))
        # A gather per side and one interpolation in place, in torch: numpy's a * (1 - w) + b * w
        # makes five arrays of the block's size.
        buffer = torch.from_numpy(self.buffer)
        out = buffer.index_select(0, torch.from_numpy(left - self.buffer_start))
        out = out.lerp_(buffer.index_select(0, torch.from_numpy(right - self.buffer_start)), torch.from_numpy(weight)).numpy()
        if len(k):
            self.next_out = int(k[-1]) + 1
        keep_from = min(int(math.floor(self.next_out * self.ratio + 1e-9)), end - 1)
        self.buffer = self.buffer[keep_from - self.buffer_start:]
        self.buffer_start = keep_from
        return out.astype(np.float32, copy=False)


class Animator:
    """A loaded model plus the windowing and style logic of inference."""

    def __init__(self, model: MemoryTalker, device: str | torch.device = "auto", half: bool | None = None,
                 window_seconds: float = 30.0, overlap_seconds: float = 1.0):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        # fp16 only where it is safe: the backbone transformer on CUDA; addressing, decoder and output stay fp32.
        self.autocast_dtype = torch.float16 if (half if half is not None else self.device.type == "cuda") else None
        if self.autocast_dtype is not None and self.device.type != "cuda":
            raise MemoryTalkerError("half precision is only used on CUDA")
        config = model.config
        self.fps = config.fps
        self.sample_rate = config.sample_rate
        # Windows start on frames that are also audio-feature boundaries (30 fps, 50 Hz: every 3rd frame).
        feature_per_frame = Fraction(model.audio_encoder.feature_rate).limit_denominator(10000) / Fraction(self.fps).limit_denominator(10000)
        self.align = feature_per_frame.denominator
        self.window_frames = self._aligned(window_seconds * self.fps)
        self.overlap_frames = self._aligned(overlap_seconds * self.fps)
        if self.overlap_frames >= self.window_frames:
            raise ValueError("the overlap must be shorter than the window")

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | torch.device = "auto", **kwargs: Any) -> "Animator":
        return cls(load_model(folder, "cpu"), device, **kwargs)

    def _aligned(self, frames: float) -> int:
        return max(self.align, int(round(frames / self.align)) * self.align)

    def _samples(self, frame: int) -> int:
        return int(round(frame * self.sample_rate / self.fps))

    # -- style ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def style_weights(self, waveform: Waveform, strength: float, style_reference: Waveform | None) -> torch.Tensor | None:
        if not MIN_STYLE_STRENGTH <= strength <= MAX_STYLE_STRENGTH:
            raise MemoryTalkerError(f"style strength must be between {MIN_STYLE_STRENGTH:g} and "
                                    f"{MAX_STYLE_STRENGTH:g}, got {strength}")
        source = style_reference if style_reference is not None else waveform
        if source.silent:
            return None
        return self.model.style_weights([torch.from_numpy(source.samples).to(self.device)], strength)

    # -- motion ---------------------------------------------------------------------------------
    def windows(self, frames: int) -> list[tuple[int, int]]:
        hop = self.window_frames - self.overlap_frames
        starts = [0]
        while starts[-1] + self.window_frames < frames:
            starts.append(starts[-1] + hop)
        return [(s, min(s + self.window_frames, frames)) for s in starts]

    @torch.inference_mode()
    def _window_features(self, samples: np.ndarray, start: int, end: int, style: torch.Tensor | None,
                         statistics: tuple[torch.Tensor, torch.Tensor] | None) -> np.ndarray:
        """The decoder features (end - start, feature_dim) of frames start..end."""
        # Two feature hops of audio past the window end give its last frames their true features.
        a = self._samples(start)
        b = min(len(samples), self._samples(end) + 2 * self.model.audio_encoder.samples_per_feature)
        audio = torch.from_numpy(samples[a:b]).to(self.device, torch.float32)
        logits, mask = self.model.audio_encoder([audio], [end - start], self.autocast_dtype, [statistics])
        return self.model.predict_features(logits, mask, style, offset=start)[0].float().cpu().numpy()

    def native_feature_blocks(self, waveform: Waveform, frames: int, style: torch.Tensor | None) -> Iterator[np.ndarray]:
        """Decoder-feature blocks (frames, feature_dim) at the model's frame rate, in order,
        cross-faded across windows. Blending and resampling happen here, before the output
        projection, on 96 values a frame instead of 3 per vertex: the same motion (the projection
        is affine and the blends convex), at a fraction of the cost."""
        overlap = self.overlap_frames
        ramp = ((np.arange(overlap) + 0.5) / overlap).astype(np.float32)[:, None]
        carry: np.ndarray | None = None
        plan = self.windows(frames)
        statistics = None
        if len(plan) > 1:
            with torch.inference_mode():
                statistics = self.model.audio_encoder.clip_statistics(torch.from_numpy(waveform.samples).to(self.device))
        for i, (start, end) in enumerate(plan):
            features = self._window_features(waveform.samples, start, end, style, statistics)
            if carry is not None:
                features[:overlap] = carry * (1 - ramp) + features[:overlap] * ramp
            last = i == len(plan) - 1
            yield features if last else features[:-overlap]
            carry = None if last else features[-overlap:]

    @torch.inference_mode()
    def _displacements(self, features: np.ndarray) -> np.ndarray:
        """Motion (frames, vertices, 3) from decoder features (frames, feature_dim)."""
        motion = self.model.output_proj(torch.from_numpy(features).to(self.device))
        return motion.view(len(features), -1, 3).float().cpu().numpy()

    def stream(self, waveform: Waveform, fps: float | None = None, style_strength: float = 1.0,
               style_reference: Waveform | None = None) -> tuple[int, Iterator[np.ndarray]]:
        """(total output frames, iterator over displacement blocks at `fps`)."""
        fps = float(fps or self.fps)
        if not MIN_FPS - 1e-3 <= fps <= MAX_FPS:
            raise MemoryTalkerError(f"output frame rate {fps} is outside the supported {MIN_FPS}-{MAX_FPS:g} fps")
        total = frame_count(waveform.duration, fps)
        style = self.style_weights(waveform, style_strength, style_reference)
        native = frame_count(waveform.duration, self.fps)
        vertices = self.model.config.num_vertices

        def silent_blocks() -> Iterator[np.ndarray]:
            for s in range(0, total, self.window_frames):
                yield np.zeros((min(self.window_frames, total - s), vertices, 3), np.float32)

        def blocks() -> Iterator[np.ndarray]:
            resampler = TimeResampler(self.fps, fps, total)
            for block in self.native_feature_blocks(waveform, native, style):
                out = resampler.push(block)
                if len(out):
                    yield self._displacements(out)
            tail = resampler.push(np.zeros((0, self.model.config.feature_dim), np.float32), final=True)
            if len(tail):
                yield self._displacements(tail)

        return total, silent_blocks() if waveform.silent else blocks()

    def animate(self, audio: str | Path | Waveform | np.ndarray, fps: float | None = None, style_strength: float = 1.0,
                style_audio: str | Path | Waveform | None = None, sample_rate: int | None = None) -> Motion:
        waveform = self.load(audio, sample_rate)
        reference = self.load(style_audio) if style_audio is not None else None
        _, blocks = self.stream(waveform, fps, style_strength, reference)
        displacements = np.concatenate(list(blocks))
        return Motion(displacements, float(fps or self.fps), self.model.template.cpu().numpy().copy(),
                      self.describe(waveform, style_strength, reference))

    def load(self, audio: str | Path | Waveform | np.ndarray, sample_rate: int | None = None) -> Waveform:
        if isinstance(audio, Waveform):
            return audio
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise MemoryTalkerError("pass sample_rate= with an audio array")
            return prepare(audio, sample_rate, self.sample_rate)
        return load_audio(audio, self.sample_rate)

    def describe(self, waveform: Waveform, style_strength: float, reference: Waveform | None) -> dict[str, Any]:
        return {"audio": waveform.source, "duration_s": waveform.duration, "silent": waveform.silent,
                "style_strength": style_strength, "style_audio": reference.source if reference else None,
                "model_fps": self.fps, "stylized_model": self.model.config.stylized}


def animate(audio: str | Path | np.ndarray, model: str | Path | MemoryTalker, fps: float | None = None,
            device: str = "auto", style_strength: float = 1.0, style_audio: str | Path | None = None,
            sample_rate: int | None = None) -> Motion:
    """One call from Python: audio file (or array + sample_rate) and a model folder -> Motion."""
    animator = Animator(model if isinstance(model, MemoryTalker) else load_model(model), device)
    return animator.animate(audio, fps, style_strength, style_audio, sample_rate)
