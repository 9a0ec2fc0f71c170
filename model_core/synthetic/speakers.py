"""Synthetic speakers: a voice, an identity (a reshaped neutral head) and a speaking style.

The style is drawn per speaker; the corpus writers then scale its jaw amplitude by what can be
heard of the voice (prosody.py), as MemoryTalker assumes style can be read from the audio. Test
speakers use voices that no training or validation speaker uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .head import DemoHead
from .rig import PARAMETERS

SEEN_VOICES = ["en-us", "en", "en-gb-x-rp", "en-029"]
UNSEEN_VOICES = ["en-us-nyc", "en-gb-scotland"]
SEEN_VARIANTS = ["m1", "m2", "m3", "m4", "m6", "f1", "f2", "f3", "f4"]
UNSEEN_VARIANTS = ["m7", "f5"]


@dataclass
class Voice:
    name: str  # espeak-ng voice with variant, e.g. "en-us+f3"
    pitch: int  # 0-100
    pitch_range: int  # 0-100
    rate: int  # words per minute
    volume: int  # 0-200


@dataclass
class Style:
    jaw_amplitude: float
    protrusion: float
    spread: float
    closure_tightness: float
    asymmetry: float  # -1..1 (positive: the subject's left side moves more)
    smoothness: float  # coarticulation time, seconds

    def scale(self, params: np.ndarray) -> np.ndarray:
        gains = np.ones(len(PARAMETERS), np.float32)
        gains[PARAMETERS.index("jaw_open")] = self.jaw_amplitude
        gains[PARAMETERS.index("lip_round")] = gains[PARAMETERS.index("lip_protrude")] = self.protrusion
        gains[PARAMETERS.index("lip_spread")] = self.spread
        gains[PARAMETERS.index("lip_press")] = self.closure_tightness
        return params * gains


@dataclass
class Speaker:
    name: str
    split: str
    voice: Voice
    style: Style
    identity: dict

    def describe(self) -> dict:
        return {"name": self.name, "split": self.split, "voice": asdict(self.voice), "style": asdict(self.style),
                "identity": self.identity}


def make_speakers(count: int, seed: int, voices: list[str] | None = None) -> list[Speaker]:
    """`count` speakers: about 1/8 (at least one) for validation and 1/8 with unseen voices for test."""
    rng = np.random.default_rng([seed, 1])
    n_test = max(1, count // 8) if count >= 3 else 0
    n_val = max(1, count // 8) if count >= 3 else 0
    speakers = []
    for index in range(count):
        split = "test" if index >= count - n_test else "val" if index >= count - n_test - n_val else "train"
        pool, variants = (UNSEEN_VOICES, UNSEEN_VARIANTS) if split == "test" else (SEEN_VOICES, SEEN_VARIANTS)
        if voices:
            pool = voices
        base, variant = pool[index % len(pool)], variants[(index // len(pool)) % len(variants)]
        female = variant.startswith("f")
        name = base if base.startswith("flite:") else f"{base}+{variant}"  # flite voices have no variants
        voice = Voice(name, int(rng.integers(55, 85) if female else rng.integers(15, 50)),
                      int(rng.integers(30, 80)), int(rng.integers(140, 200)), int(rng.integers(70, 160)))
        style = draw_style(rng)
        speakers.append(Speaker(f"Speaker{index:02d}", split, voice, style, draw_identity(rng)))
    return speakers


def draw_style(rng: np.random.Generator, jaw_gain: float = 1.0) -> Style:
    """A speaking style drawn at random; `jaw_gain` scales its jaw amplitude."""
    return Style(jaw_amplitude=float(rng.uniform(0.75, 1.15) * jaw_gain),
                 protrusion=float(rng.uniform(0.6, 1.4)), spread=float(rng.uniform(0.6, 1.4)),
                 closure_tightness=float(rng.uniform(0.6, 1.4)), asymmetry=float(rng.uniform(-0.25, 0.25)),
                 smoothness=float(rng.uniform(0.045, 0.085)))


def draw_identity(rng: np.random.Generator) -> dict:
    """A face's proportions, for `speaker_template`."""
    return {"width": float(rng.uniform(0.93, 1.07)), "height": float(rng.uniform(0.95, 1.05)),
            "depth": float(rng.uniform(0.95, 1.05)), "jaw_width": float(rng.uniform(0.92, 1.08)),
            "nose": float(rng.uniform(-0.004, 0.004))}


def speaker_template(head: DemoHead, identity: dict) -> np.ndarray:
    """The speaker's neutral head: overall proportions, jaw width and nose length reshaped smoothly."""
    p = head.vertices.astype(np.float64).copy()
    p *= np.array([identity["width"], identity["height"], identity["depth"]])
    lower = np.clip((-0.02 - p[:, 1]) / 0.06, 0.0, 1.0)
    p[:, 0] *= 1.0 + (identity["jaw_width"] - 1.0) * lower
    nose = head.vertices[head.landmarks["nose_tip"]]
    p[:, 2] += identity["nose"] * np.exp(-np.sum(((head.vertices - nose) / [0.015, 0.025, 0.02]) ** 2, axis=1))
    return p.astype(np.float32)


def asymmetric(displacements: np.ndarray, head: DemoHead, asymmetry: float) -> np.ndarray:
    gain = 1.0 + asymmetry * np.clip(head.vertices[:, 0] / 0.03, -1.0, 1.0)
    return displacements * gain[None, :, None].astype(np.float32)
