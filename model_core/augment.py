"""On-the-fly audio augmentation for training: each training clip sounds a little different every
epoch (speed, room, background noise, recording level, telephone line, lossy codec), so the
recogniser and the style encoder learn from what a voice says and how it moves the face, not from
how the corpus happened to be recorded.

Everything is drawn from (seed, epoch, clip index), so an epoch sounds the same on every run and a
resumed run equals an uninterrupted one. Only the speed change moves anything in time; it stretches
the clip's phoneme times and its motion by the same factor, so sound and motion stay in sync.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from .audio import normalize
from .data import resample_motion
from .errors import MemoryTalkerError

# In the order they are applied: the talker (speed), the room (reverberation, background noise),
# the recorder (level), the line (telephone band) and the file (codec).
EFFECTS = ("speed", "reverb", "noise", "gain", "telephone", "codec")
DEFAULT_PROBABILITY = 0.25  # each effect's own chance; about one in six clips stays clean

SPEED_FACTORS = (0.9, 1.1)  # playback speed; pitch moves with it (Kaldi-style speed perturbation)
RT60_SECONDS = (0.1, 0.8)  # time for the room's reverberation to decay by 60 dB
DIRECT_TO_REVERBERANT_DB = (0.0, 12.0)
# Babble is other speech: louder, it would be heard as the words the labels and motion belong to.
SNR_DB = {"white": (5.0, 30.0), "pink": (5.0, 30.0), "babble": (12.0, 30.0)}
BABBLE_VOICES = (3, 6)  # other training clips summed into one babble track
# The loaded waveforms are normalised to unit variance; the chain works on them as if recorded at
# -20 dBFS RMS, so that the gain draw means a recording level: quiet ones get coarser codec
# quantisation, hot ones clip at full scale.
NOMINAL_RMS = 0.1
GAIN_DB = (-20.0, 12.0)
TELEPHONE_RATE = 8000
TELEPHONE_HIGH_PASS_HZ = 300.0  # the lower edge of the telephone band; applied to half the calls
HIGH_PASS_ORDER = 4
# libsndfile's compression level (0-1) for each codec, in ranges measured at 16 kHz on speech:
# MP3 about 35 to 18 kbit/s, Opus about 45 to 8 kbit/s. MP3 level 1.0 is refused by libsndfile.
CODECS = {"mp3": ({"format": "MP3"}, (0.5, 0.99)), "opus": ({"format": "OGG", "subtype": "OPUS"}, (0.85, 0.99))}
OPUS_RATES = (12000, 16000, 24000, 48000)  # Opus's rates above the telephone rate
# Draws for a training item are keyed by (seed, epoch, index, AUGMENTATION_STREAM, role): apart
# from the triplet draws keyed (seed, epoch, index). Nonzero, since numpy's SeedSequence pads short
# keys with zeros and [s, e, i, 0] would repeat the stream of [s, e, i].
AUGMENTATION_STREAM = 0x617567  # "aug"
ROLES = {"clip": 1, "positive": 2, "negative": 3}


@dataclass
class AugmentedClip:
    waveform: np.ndarray  # float32, zero mean and unit variance like load_audio's
    phoneme_segments: list[tuple[str, float, float]] | None
    vertices: np.ndarray | None  # (T, 3V) at the dataset's frame rate
    effects: list[str]  # the effects applied, in order


def change_speed(waveform: np.ndarray, phoneme_segments: list[tuple[str, float, float]] | None,
                 vertices: np.ndarray | None, factor: float, sample_rate: int):
    """The clip played `factor` times as fast: the audio resampled so it lasts 1/factor as long,
    the phoneme times and the motion stretched by the same ratio. The ratio used is the audio's
    actual length ratio, so that a whole number of samples never drifts from the motion."""
    faster = soxr.resample(waveform, sample_rate, sample_rate / factor, quality="HQ")
    stretch = len(faster) / len(waveform)
    if phoneme_segments is not None:
        phoneme_segments = [(p, start * stretch, end * stretch) for p, start, end in phoneme_segments]
    if vertices is not None:
        # round(T x stretch) frames, i.e. round(new seconds x fps) for motion that spans the audio
        # (how the dataset derives frames); frame j lies at original frame j / stretch, interpolated linearly.
        vertices = resample_motion(vertices, 1.0, stretch)
    return faster, phoneme_segments, vertices


def fft_convolve(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    """The full linear convolution, through numpy's real FFT (scipy is not a dependency)."""
    length = len(signal) + len(response) - 1
    size = 1 << (length - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(response, size), size)[:length]


def room_response(rt60: float, direct_to_reverberant_db: float, sample_rate: int,
                  rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: the direct path (1 at sample 0, so the sound is not
    delayed against the motion) and an exponentially decaying noise tail that is 60 dB down after
    `rt60` seconds, with its energy set by the direct-to-reverberant ratio."""
    t = np.arange(int(rt60 * sample_rate)) / sample_rate
    tail = rng.standard_normal(len(t)) * np.exp(-3 * np.log(10) * t / rt60)
    tail[0] = 0.0
    tail *= np.sqrt(10 ** (-direct_to_reverberant_db / 10) / np.sum(tail ** 2))
    tail[0] = 1.0
    return tail


def reverberate(waveform: np.ndarray, response: np.ndarray) -> np.ndarray:
    return fft_convolve(waveform, response)[: len(waveform)]


def white_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(length)


def pink_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise (equal power per octave): white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    frequencies = np.fft.rfftfreq(length)
    spectrum[0] = 0.0
    spectrum[1:] /= np.sqrt(frequencies[1:])
    return np.fft.irfft(spectrum, length)


def babble(length: int, voices: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Several voices talking at once: each clip looped to `length` from a random start, at equal
    loudness, summed."""
    track = np.zeros(length)
    for voice in voices:
        power = np.mean(np.square(voice, dtype=np.float64))
        if power > 0:
            looped = np.resize(np.roll(voice, -int(rng.integers(len(voice)))), length)
            track += looped / np.sqrt(power)
    return track


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """signal + noise scaled so that the clip's signal-to-noise power ratio is `snr_db`."""
    signal_power = np.mean(np.square(signal, dtype=np.float64))
    noise_power = np.mean(np.square(noise, dtype=np.float64))
    if signal_power == 0 or noise_power == 0:
        return signal
    return signal + noise * np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))


def record_at_level(waveform: np.ndarray, gain_db: float) -> np.ndarray:
    """The signal `gain_db` louder, clipped at full scale (+-1) as a recorder's converter would."""
    return np.clip(waveform * 10 ** (gain_db / 20), -1.0, 1.0)


def high_pass(waveform: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    """A zero-phase high-pass with a Butterworth magnitude response of order HIGH_PASS_ORDER, applied
    in the frequency domain (zero phase: nothing moves in time)."""
    spectrum = np.fft.rfft(waveform)
    frequencies = np.fft.rfftfreq(len(waveform), 1 / sample_rate)
    with np.errstate(divide="ignore"):
        gain = 1 / np.sqrt(1 + (cutoff_hz / frequencies) ** (2 * HIGH_PASS_ORDER))
    return np.fft.irfft(spectrum * gain, len(waveform))


def telephone_band(waveform: np.ndarray, sample_rate: int, with_high_pass: bool) -> np.ndarray:
    """Down to 8 kHz and back with soxr (nothing above 4 kHz survives), optionally with the
    telephone band's 300 Hz lower edge; the length is kept."""
    narrow = soxr.resample(waveform, sample_rate, TELEPHONE_RATE, quality="HQ")
    wide = fit_length(soxr.resample(narrow, TELEPHONE_RATE, sample_rate, quality="HQ"), len(waveform))
    return high_pass(wide, TELEPHONE_HIGH_PASS_HZ, sample_rate) if with_high_pass else wide


def codec_round_trip(waveform: np.ndarray, codec: str, compression_level: float, sample_rate: int) -> np.ndarray:
    """Encoded to MP3 or Ogg/Opus in memory and decoded again, trimmed or padded to the input's length.

    Alignment is a measured constant offset, and it is 0: libsndfile writes the encoders' delay
    into the file (the LAME header's gapless info for MP3, the pre-skip for Opus; variable bitrate,
    libsndfile's default) and its decoders remove it. Measured by cross-correlation at 16 kHz on
    speech-like clips of 0.06 to 10 s over the compression levels used here: 0 samples, except
    Opus at its lowest rates (level 0.99), whose peak is 1 sample early (0.06 ms; a motion frame is
    33 ms). Constant-bitrate MP3 has no such header and comes back 1105 samples late, so it is not
    used. tests/test_augment.py checks the alignment.
    """
    options, _ = CODECS[codec]
    buffer = io.BytesIO()
    sf.write(buffer, waveform.astype(np.float32), sample_rate, compression_level=compression_level, **options)
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    return fit_length(decoded, len(waveform))


def fit_length(waveform: np.ndarray, length: int) -> np.ndarray:
    return np.pad(waveform[:length], (0, max(0, length - len(waveform))))


def _check_probabilities(probabilities: Mapping[str, float]) -> dict[str, float]:
    unknown = set(probabilities) - set(EFFECTS)
    if unknown:
        raise MemoryTalkerError(f"unknown augmentation effect(s) {', '.join(sorted(unknown))}; "
                                f"the effects are {', '.join(EFFECTS)}")
    for effect, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise MemoryTalkerError(f"the probability of the '{effect}' augmentation is {p}: give a value from 0 to 1")
    return {effect: float(probabilities.get(effect, 0.0)) for effect in EFFECTS}


class Augmentation:
    """Turns a training clip (waveform, phoneme segments, vertices) into a randomly degraded one;
    each effect of EFFECTS is applied with its own probability, independently of the others."""

    def __init__(self, probability: float | Mapping[str, float] = DEFAULT_PROBABILITY, sample_rate: int = 16000):
        if sample_rate not in OPUS_RATES:
            raise MemoryTalkerError(f"augmentation needs a sample rate Opus supports above 8 kHz "
                                    f"({', '.join(map(str, OPUS_RATES))} Hz); the model's is {sample_rate} Hz")
        if not isinstance(probability, Mapping):
            probability = dict.fromkeys(EFFECTS, probability)
        self.probabilities = _check_probabilities(probability)
        self.sample_rate = sample_rate

    def describe(self) -> dict[str, float]:
        """What a run records in its metadata: each effect's probability."""
        return dict(self.probabilities)

    @staticmethod
    def generator(seed: int, epoch: int, index: int, role: str = "clip") -> np.random.Generator:
        """The draws for clip `index` of an epoch; `role` separates the triplet's extra clips."""
        return np.random.default_rng([seed, epoch, index, AUGMENTATION_STREAM, ROLES[role]])

    def __call__(self, waveform: np.ndarray, phoneme_segments: list[tuple[str, float, float]] | None = None,
                 vertices: np.ndarray | None = None, *, rng: np.random.Generator,
                 other_clip: Callable[[np.random.Generator], np.ndarray] | None = None,
                 change_speed_allowed: bool = True) -> AugmentedClip:
        """`other_clip(rng)` returns another training clip's waveform, for babble (without it there
        is no babble); `change_speed_allowed=False` keeps the clip's timing."""
        # One draw per effect whether it is applied or not, so one effect's probability never
        # changes which others are drawn.
        chosen = [e for e in EFFECTS if rng.random() < self.probabilities[e]]
        if not change_speed_allowed and "speed" in chosen:
            chosen.remove("speed")
        if not chosen:
            return AugmentedClip(waveform, phoneme_segments, vertices, [])
        rms = np.sqrt(np.mean(np.square(waveform, dtype=np.float64)))
        signal = waveform.astype(np.float64) * (NOMINAL_RMS / rms if rms > 0 else 1.0)
        if "speed" in chosen:
            signal, phoneme_segments, vertices = change_speed(
                signal, phoneme_segments, vertices, rng.uniform(*SPEED_FACTORS), self.sample_rate)
        if "reverb" in chosen:
            response = room_response(rng.uniform(*RT60_SECONDS), rng.uniform(*DIRECT_TO_REVERBERANT_DB),
                                     self.sample_rate, rng)
            signal = reverberate(signal, response)
        if "noise" in chosen:
            kinds = ["white", "pink"] + (["babble"] if other_clip is not None else [])
            kind = kinds[rng.integers(len(kinds))]
            if kind == "white":
                noise = white_noise(len(signal), rng)
            elif kind == "pink":
                noise = pink_noise(len(signal), rng)
            else:
                voices = [other_clip(rng) for _ in range(rng.integers(BABBLE_VOICES[0], BABBLE_VOICES[1] + 1))]
                noise = babble(len(signal), voices, rng)
            signal = mix_at_snr(signal, noise, rng.uniform(*SNR_DB[kind]))
        # Every chain goes through the recorder: it clips at full scale even at the nominal level.
        signal = record_at_level(signal, rng.uniform(*GAIN_DB) if "gain" in chosen else 0.0)
        if "telephone" in chosen:
            signal = telephone_band(signal, self.sample_rate, with_high_pass=bool(rng.random() < 0.5))
        if "codec" in chosen:
            codec = list(CODECS)[rng.integers(len(CODECS))]
            signal = codec_round_trip(signal, codec, rng.uniform(*CODECS[codec][1]), self.sample_rate)
        # Back to what load_audio gives (zero mean, unit variance), as the model sees at inference.
        out = normalize(signal)
        if vertices is not None:
            vertices = np.ascontiguousarray(vertices, dtype=np.float32)
        return AugmentedClip(out, phoneme_segments, vertices, chosen)
