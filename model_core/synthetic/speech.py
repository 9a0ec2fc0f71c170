"""Speech with phoneme timings.

- espeak-ng (the `espeakng-loader` wheel bundles the library and its data, so no system package is
  needed), driven through ctypes in synchronous mode: a callback receives the samples (22.05 kHz,
  int16) and an event list; phoneme events (type 7) carry the IPA name and the sample position.
- flite, when it is installed (Debian `flite`): voices named `flite:slt`, `flite:rms`, ...; it
  prints `phone:end_time` pairs in its US phone set, mapped here to IPA.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MemoryTalkerError

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_PHONEME_IPA = 0x0002
EVENT_LIST_TERMINATED, EVENT_WORD, EVENT_END, EVENT_PHONEME = 0, 1, 5, 7
POS_CHARACTER, CHARS_UTF8 = 1, 1
PHONEMES_IPA = 0x02  # espeak_TextToPhonemes: IPA rather than espeak's ASCII names
PARAM_RATE, PARAM_VOLUME, PARAM_PITCH, PARAM_RANGE = 1, 2, 3, 4
# espeak-ng draws the breath noise of variants with `breath` (f2, f3, f5, whisper, ...) from its own
# generator, which it seeds from the clock's second when it loads; reseeded with this before every
# utterance, that noise depends on nothing but the utterance.
NOISE_SEED = 0


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass
class Utterance:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    phonemes: list[tuple[str, float, float]]  # (IPA phoneme, start s, end s), silence as "_"


class ESpeak:
    """An espeak-ng instance. Its output depends on everything the library synthesised before in
    the same process (the waveform generator's phase and filter state, which `espeak_Terminate`
    does not reset), so `fresh=True` loads a private copy of the library with pristine state: the
    corpus writer uses one per speaker so that its files do not depend on the order of work. Its
    noise generator is reseeded before every utterance (NOISE_SEED), so the files do not depend on
    when the copy was loaded either."""

    _shared = None
    _lock = threading.Lock()

    def __init__(self, fresh: bool = False) -> None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise MemoryTalkerError("speech synthesis needs the espeakng-loader package: "
                                    "pip install espeakng-loader") from error
        with ESpeak._lock:
            if not fresh and ESpeak._shared is not None:
                self.library, self._rate = ESpeak._shared
                return
            path = espeakng_loader.get_library_path()
            if fresh:
                self._copy = tempfile.NamedTemporaryFile(suffix=".so", prefix="espeak-ng-")
                self._copy.write(Path(path).read_bytes())
                self._copy.flush()
                path = self._copy.name
            library = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
            rate = library.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                             INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA)
            if rate <= 0:
                raise MemoryTalkerError("espeak-ng failed to initialise")
            library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            library.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            library.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
            library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            library.espeak_TextToPhonemes.restype = ctypes.c_char_p
            library.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
            self.library, self._rate = library, rate
            if not fresh:
                ESpeak._shared = (library, rate)

    @property
    def sample_rate(self) -> int:
        return self._rate

    def voices(self) -> list[str]:
        with ESpeak._lock:
            listing = self.library.espeak_ListVoices(None)
            names, index = [], 0
            while listing[index]:
                names.append(listing[index].contents.identifier.decode())
                index += 1
        return names

    def check_voice(self, voice: str) -> None:
        """Raises a clear error unless `voice` ("name" or "name+variant") exists in espeak-ng."""
        import espeakng_loader

        base, _, variant = voice.partition("+")
        names = {v.split("/")[-1].lower() for v in self.voices()}
        if base.lower() not in names:
            english = sorted(n for n in names if n.startswith("en"))
            raise MemoryTalkerError(f"unknown voice {base!r}; espeak-ng's English voices are {', '.join(english)} "
                                    "(`python -m model_core synth --list-voices` lists all)")
        variants = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
        if variant and not (variants / variant).is_file():
            raise MemoryTalkerError(f"unknown voice variant {variant!r} in {voice!r}; "
                                    f"espeak-ng has {', '.join(sorted(p.name for p in variants.iterdir())[:12])}, ...")

    def synthesize(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
                   pitch_range: int = 50, volume: int = 100) -> Utterance:
        """`rate` in words per minute (80-450), `pitch` and `pitch_range` 0-100, `volume` 0-200."""
        chunks: list[np.ndarray] = []
        events: list[tuple[int, int, str]] = []

        def collect(wav, count, event_pointer) -> int:
            if count > 0:
                chunks.append(np.ctypeslib.as_array(wav, (count,)).copy())
            index = 0
            while event_pointer[index].type != EVENT_LIST_TERMINATED:
                event = event_pointer[index]
                if event.type == EVENT_PHONEME:
                    events.append((event.type, event.sample, event.id.string.decode("utf-8", "replace")))
                elif event.type == EVENT_END:
                    events.append((event.type, event.sample, ""))
                index += 1
            return 0

        callback = _CALLBACK(collect)
        with ESpeak._lock:
            library = self.library
            if library.espeak_SetVoiceByName(voice.encode()) != 0:
                raise MemoryTalkerError(f"espeak-ng has no voice {voice!r}; see `python -m model_core synth --list-voices`")
            for parameter, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range),
                                     (PARAM_VOLUME, volume)):
                library.espeak_SetParameter(parameter, int(value), 0)
            library.espeak_SetSynthCallback(callback)
            library.espeak_ng_SetRandSeed(NOISE_SEED)
            data = text.encode() + b"\0"
            status = library.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            library.espeak_Synchronize()
        if status != 0:
            raise MemoryTalkerError(f"espeak-ng could not synthesise {text!r} (status {status})")
        samples = (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768.0
        return Utterance(samples, self.sample_rate, _phoneme_intervals(events, len(samples), self.sample_rate))

    def pronounce(self, word: str, voice: str = "en-us") -> str:
        """espeak-ng's IPA for `word` (its letter-to-sound rules reach words no dictionary has)."""
        with ESpeak._lock:
            library = self.library
            if library.espeak_SetVoiceByName(voice.encode()) != 0:
                raise MemoryTalkerError(f"espeak-ng has no voice {voice!r}")
            text = ctypes.c_char_p(word.encode() + b"\0")
            parts = []
            while text.value:  # one clause per call; the pointer advances past it
                parts.append((library.espeak_TextToPhonemes(ctypes.byref(text), CHARS_UTF8, PHONEMES_IPA) or b"").decode())
        return " ".join(parts)


def _phoneme_intervals(events, total: int, rate: int) -> list[tuple[str, float, float]]:
    """Phoneme events mark starts; each phoneme lasts until the next one (or the end of audio)."""
    starts = [(sample, name) for kind, sample, name in events if kind == EVENT_PHONEME and name]
    intervals = []
    if starts and starts[0][0] > 0:
        intervals.append(("_", 0.0, starts[0][0] / rate))
    for (sample, name), following in zip(starts, starts[1:] + [(total, None)]):
        end = max(sample, min(following[0], total))
        intervals.append((name.strip() or "_", sample / rate, end / rate))
    return intervals


# flite's US phone set -> the IPA of the viseme table (diphthongs as two symbols).
FLITE_TO_IPA = {
    "aa": "ɑ", "ae": "æ", "ah": "ʌ", "ao": "ɔ", "aw": "aʊ", "ax": "ə", "axr": "ɚ", "ay": "aɪ", "eh": "ɛ",
    "er": "ɜ", "ey": "eɪ", "ih": "ɪ", "iy": "i", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "u",
    "b": "b", "p": "p", "m": "m", "f": "f", "v": "v", "t": "t", "d": "d", "n": "n", "l": "l", "s": "s", "z": "z",
    "k": "k", "g": "ɡ", "ng": "ŋ", "hh": "h", "th": "θ", "dh": "ð", "sh": "ʃ", "zh": "ʒ", "ch": "tʃ",
    "jh": "dʒ", "r": "ɹ", "w": "w", "y": "j", "dx": "ɾ", "pau": "_",
}
FLITE_PREFIX = "flite:"


class Flite:
    """The flite command-line synthesiser (one process per sentence, so always deterministic)."""

    def __init__(self) -> None:
        self.program = shutil.which("flite")
        if self.program is None:
            raise MemoryTalkerError("flite voices need the flite program (Debian/Ubuntu: apt install flite)")

    def voices(self) -> list[str]:
        listing = subprocess.run([self.program, "-lv"], capture_output=True, text=True).stdout
        return [FLITE_PREFIX + v for v in listing.split(":", 1)[-1].split()]

    def synthesize(self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
                   volume: int = 100) -> Utterance:
        import soundfile as sf

        name = voice.removeprefix(FLITE_PREFIX)
        with tempfile.TemporaryDirectory() as folder:
            wav = Path(folder) / "speech.wav"
            command = [self.program, "-voice", name, "-psdur", "-t", text, "-o", str(wav),
                       "--setf", f"duration_stretch={175 / rate:.4f}",
                       "--setf", f"int_f0_target_mean={70 + 2.2 * pitch:.1f}",
                       "--setf", f"int_f0_target_stddev={5 + 0.4 * pitch_range:.1f}"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0 or not wav.exists():
                raise MemoryTalkerError(f"flite failed for voice {name!r}: {result.stderr.strip() or result.stdout.strip()}")
            samples, sample_rate = sf.read(wav, dtype="float32")
        samples = np.clip(samples * volume / 100.0, -1.0, 1.0).astype(np.float32)
        duration = len(samples) / sample_rate
        phonemes, start = [], 0.0
        for pair in result.stdout.split():
            phone, _, end = pair.rpartition(":")
            end = min(float(end), duration)  # flite's last pause can run past the audio
            if phone in FLITE_TO_IPA and end > start:
                phonemes.append((FLITE_TO_IPA[phone], start, end))
                start = end
        return Utterance(samples, sample_rate, phonemes)


def synthesizer_for(voice: str, espeak: ESpeak | None = None):
    """The synthesiser that speaks `voice` ("flite:NAME" or an espeak-ng voice)."""
    return Flite() if voice.startswith(FLITE_PREFIX) else (espeak or ESpeak())
