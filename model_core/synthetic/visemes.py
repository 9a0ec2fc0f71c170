"""Phonemes -> articulation trajectories.

Each phoneme (espeak-ng's IPA, stress and length marks removed) has an articulatory target (the
rig's parameters) and a dominance per parameter. Trajectories blend the targets of neighbouring
phonemes with dominance functions that decay with the distance in time from each phoneme's centre
(Cohen and Massaro's coarticulation model), so targets anticipate and carry over. Two hard
constraints follow real articulation: bilabials (p, b, m) close the lips over the middle of their
interval whatever their neighbours, and labiodentals (f, v) tuck the lower lip; these two are
gestures with their own ramps rather than blended targets. Silence is rest.
"""
from __future__ import annotations

import numpy as np

from .rig import PARAMETERS

P = {name: i for i, name in enumerate(PARAMETERS)}


def _target(jaw=0.0, round_=0.0, protrude=0.0, spread=0.0, close=0.0, press=0.0, raise_=0.0, tuck=0.0):
    return np.array([jaw, round_, protrude, spread, close, press, raise_, tuck], np.float32)


# (target, dominance of the jaw, dominance of the lips)
VISEMES: dict[str, tuple[np.ndarray, float, float]] = {}


def _define(phonemes: str, target: np.ndarray, jaw_dominance: float, lip_dominance: float) -> None:
    for phoneme in phonemes.split():
        VISEMES[phoneme] = (target, jaw_dominance, lip_dominance)


_define("p b", _target(jaw=0.05, close=1.0, press=0.6), 1.5, 3.0)
_define("m", _target(jaw=0.05, close=1.0, press=0.3), 1.5, 3.0)
_define("f v", _target(jaw=0.12, tuck=1.0, raise_=0.3), 1.2, 3.0)
_define("θ ð", _target(jaw=0.18, spread=0.2), 0.8, 1.0)
_define("t d n l ɾ s z ɫ n̩ l̩", _target(jaw=0.15, spread=0.2), 0.7, 0.5)
_define("ʃ ʒ tʃ dʒ", _target(jaw=0.15, round_=0.4, protrude=0.8), 0.8, 3.0)
_define("ɹ r ɻ", _target(jaw=0.15, round_=0.5, protrude=0.4), 0.7, 2.0)
_define("w ʍ", _target(jaw=0.10, round_=1.0, protrude=0.6), 0.8, 4.0)
_define("j", _target(jaw=0.10, spread=0.4), 0.8, 1.0)
_define("k ɡ g ŋ x", _target(jaw=0.25), 0.6, 0.3)
_define("h ʔ", _target(jaw=0.2), 0.2, 0.1)
_define("i", _target(jaw=0.20, spread=0.8), 2.0, 2.0)
_define("ɪ ᵻ", _target(jaw=0.28, spread=0.5), 2.0, 1.5)
_define("e ɛ", _target(jaw=0.45, spread=0.5), 2.0, 1.5)
_define("æ", _target(jaw=0.75, spread=0.35), 2.0, 1.5)
_define("a ɑ ɒ ɐ", _target(jaw=0.85), 2.0, 1.0)
_define("ʌ", _target(jaw=0.50), 2.0, 1.0)
_define("ə ɚ", _target(jaw=0.35), 1.2, 0.6)
_define("ɜ", _target(jaw=0.40, round_=0.3, protrude=0.3), 2.0, 1.2)
_define("ɔ", _target(jaw=0.60, round_=0.6, protrude=0.3), 2.0, 2.0)
_define("o", _target(jaw=0.45, round_=0.7, protrude=0.3), 2.0, 2.0)
_define("ʊ", _target(jaw=0.30, round_=0.6, protrude=0.3), 2.0, 2.0)
_define("u", _target(jaw=0.25, round_=1.0, protrude=0.7), 2.0, 3.0)
_define("_", _target(), 1.0, 1.0)

# The phonemes of English (General American and British) that a corpus should cover; the table
# above also maps allophones and symbols that some espeak-ng voices use.
ENGLISH_PHONEMES = set("p b m f v θ ð t d n l s z ʃ ʒ tʃ dʒ ɹ w j k ɡ ŋ h i ɪ e ɛ æ a ɑ ɒ ʌ ə ɚ ɜ ɔ o ʊ u".split())

STRIP = str.maketrans("", "", "ˈˌː'̃ʲ")
BILABIAL, LABIODENTAL = {"p", "b", "m"}, {"f", "v"}


def segments_of(phoneme: str) -> list[str]:
    """espeak-ng IPA (stress marks, diphthongs, affricates, syllabic consonants) -> known phonemes."""
    core = phoneme.translate(STRIP)
    if not core:
        return ["_"]
    if core in VISEMES:
        return [core]
    parts, i = [], 0
    while i < len(core):  # greedy longest match, e.g. "aɪ" -> a ɪ, "əl" -> ə l, "tʃ" stays whole
        for length in (2, 1):
            if core[i:i + length] in VISEMES:
                parts.append(core[i:i + length])
                i += length
                break
        else:
            i += 1  # a mark we do not model (e.g. a tie bar)
    return parts or ["_"]


def expand(phonemes: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Splits diphthongs and clusters into consecutive sub-intervals."""
    out = []
    for name, start, end in phonemes:
        parts = segments_of(name)
        step = (end - start) / len(parts)
        out += [(part, start + k * step, start + (k + 1) * step) for k, part in enumerate(parts)]
    return out


def trajectory(phonemes: list[tuple[str, float, float]], frames: int, fps: float = 30.0,
               smoothness: float = 0.06) -> np.ndarray:
    """(frames, len(PARAMETERS)) articulation parameters; `smoothness` is the dominance decay time
    in seconds (longer: more coarticulation)."""
    segments = expand(phonemes)
    times = (np.arange(frames) + 0.5) / fps
    if not segments:
        return np.zeros((frames, len(PARAMETERS)), np.float32)
    centres = np.array([(s + e) / 2 for _, s, e in segments])
    halves = np.array([max((e - s) / 2, 1e-3) for _, s, e in segments])
    targets = np.stack([VISEMES[name][0] for name, _, _ in segments])
    strength = np.array([[VISEMES[name][1]] + [VISEMES[name][2]] * (len(PARAMETERS) - 1) for name, _, _ in segments])
    # Dominance: full inside the segment, decaying outside it.
    outside = np.maximum(np.abs(times[:, None] - centres[None, :]) - halves[None, :], 0.0)
    dominance = strength[None, :, :] * np.exp(-outside / smoothness)[:, :, None]  # (T, S, P)
    params = (dominance * targets[None]).sum(1) / np.maximum(dominance.sum(1), 1e-9)
    # Closure and tuck are gestures, not blended targets: full over the middle of their segment,
    # with anticipation and release ramps as long as the speaker's coarticulation time.
    for channel, group in ((P["lip_close"], BILABIAL), (P["lower_lip_tuck"], LABIODENTAL)):
        gesture = np.zeros(frames)
        for name, start, end in segments:
            if name in group:
                margin = 0.2 * (end - start)
                distance = np.maximum(np.maximum(start + margin - times, times - (end - margin)), 0.0)
                gesture = np.maximum(gesture, np.exp(-(distance / (0.6 * smoothness)) ** 2))
        params[:, channel] = gesture
    return params.astype(np.float32)
