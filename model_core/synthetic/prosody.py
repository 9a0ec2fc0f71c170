"""What can be heard of a speaker's manner, and the part of the speaking style that follows it.

MemoryTalker's stage 2 reads style from the log-mel spectrogram of per-utterance normalised audio,
so loudness itself is gone; what remains audible is the pitch (level and range), the speaking rate
and the loudness *dynamics* (how much the level moves within the utterance). Both corpus builders
measure these on every clip of a speaker, take the median over the speaker's clips, and scale the
speaker's jaw amplitude by `audible_jaw_gain`; the rest of the style stays a seeded draw.
docs/synthetic.md gives the mapping and the figures it was calibrated on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import MemoryTalkerError

FRAME_SECONDS = 0.01
# Reference (mean, spread) of each measure: about the mean and standard deviation over the speakers
# of the demo corpora, recorded and synthetic pooled (docs/synthetic.md); a feature at mean + spread
# has a z-score of 1.
REFERENCE = {"pitch_level": (7.0, 7.0), "pitch_range": (5.5, 4.0), "speaking_rate": (10.0, 2.5),
             "loudness_dynamics": (11.0, 2.5)}
# Jaw amplitude gain per z-score: deeper voices, livelier pitch and livelier loudness open wider;
# fast speech undershoots its targets and opens less.
JAW_WEIGHTS = {"pitch_level": -0.10, "pitch_range": 0.10, "speaking_rate": -0.08, "loudness_dynamics": 0.10}
JAW_GAIN_LIMITS = (0.6, 1.6)


@dataclass(frozen=True)
class Prosody:
    pitch_level: float  # median F0 of voiced frames, semitones above 100 Hz
    pitch_range: float  # 10th to 90th percentile of F0, semitones
    speaking_rate: float  # phonemes per second of speech (pauses left out)
    loudness_dynamics: float  # standard deviation of the 10 ms frame level over speech, dB

    def describe(self) -> dict:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def measure(samples: np.ndarray, sample_rate: int, segments: list[tuple[str, float, float]]) -> Prosody | None:
    """One clip's prosody from its audio and timed phonemes ("_" = silence); None when the clip
    has too little voiced speech to tell (under 0.1 s of pitch)."""
    try:
        import parselmouth
    except ImportError:
        raise MemoryTalkerError("the corpus writers measure pitch with Praat: pip install praat-parselmouth "
                                "(or `pip install -e .[corpus]`)") from None
    speech = [(start, end) for name, start, end in segments if name != "_"]
    speech_seconds = sum(end - start for start, end in speech)
    if speech_seconds <= 0:
        return None
    pitch = parselmouth.Sound(np.asarray(samples, np.float64), sample_rate).to_pitch(time_step=FRAME_SECONDS)
    f0 = pitch.selected_array["frequency"]
    voiced = f0[f0 > 0]
    if len(voiced) * FRAME_SECONDS < 0.1:
        return None
    semitones = 12 * np.log2(voiced / 100.0)
    hop = int(sample_rate * FRAME_SECONDS)
    frames = len(samples) // hop
    level = 10 * np.log10(np.mean(np.asarray(samples[:frames * hop], np.float64).reshape(frames, hop) ** 2, axis=1) + 1e-12)
    times = (np.arange(frames) + 0.5) * FRAME_SECONDS
    in_speech = np.zeros(frames, bool)
    for start, end in speech:
        in_speech |= (times >= start) & (times < end)
    spoken = level[in_speech]
    return Prosody(float(np.median(semitones)), float(np.percentile(semitones, 90) - np.percentile(semitones, 10)),
                   len(speech) / speech_seconds, float(np.std(spoken)) if len(spoken) > 1 else 0.0)


def combine(clips: list[Prosody | None]) -> Prosody | None:
    """A speaker's prosody: the median of each measure over the clips that could be measured."""
    known = [p for p in clips if p is not None]
    if not known:
        return None
    return Prosody(*(float(np.median([getattr(p, name) for p in known])) for name in REFERENCE))


def z_scores(measures: dict[str, float]) -> dict[str, float]:
    """Each measure (Prosody's fields by name, as speakers.json stores them) against its REFERENCE."""
    return {name: (measures[name] - mean) / spread for name, (mean, spread) in REFERENCE.items()}


def audible_jaw_gain(prosody: Prosody | None) -> float:
    """The jaw amplitude factor that follows the speaker's prosody (1 when it cannot be measured)."""
    if prosody is None:
        return 1.0
    z = z_scores(asdict(prosody))
    gain = float(np.exp(sum(JAW_WEIGHTS[name] * float(np.clip(z[name], -3, 3)) for name in JAW_WEIGHTS)))
    return float(np.clip(gain, *JAW_GAIN_LIMITS))
