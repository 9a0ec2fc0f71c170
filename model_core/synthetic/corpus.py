"""`python -m model_core synth`: a talking-head corpus in the VOCASET layout, with ground truth.

    OUT/wav/SpeakerNN_sentenceMM.wav          espeak-ng speech between 0.1-0.6 s pauses of room tone, 22.05 kHz, 16-bit
    OUT/vertices_npy/SpeakerNN_sentenceMM.npy  (frames x 3V) at 30 fps, float32 (or float16)
    OUT/params/SpeakerNN_sentenceMM.npy        (frames x 8) articulation parameters (ground truth)
    OUT/phonemes/SpeakerNN_sentenceMM.json     [[IPA phoneme, start s, end s], ...] ("_" = silence)
    OUT/templates.pkl                          speaker -> neutral head (V x 3)
    OUT/lip_indices.txt, upper_face_indices.txt
    OUT/dataset.json                           fps and splits (train / val / test = unseen voices)
    OUT/speakers.json                          each speaker's voice, style and identity
    OUT/demo_head.obj, demo_head.json          the neutral demo head and its landmarks
    OUT/summary.json                           hours, speakers, phoneme coverage, speed

Every file depends only on the seed and the arguments: the same command writes the same bytes.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..errors import MemoryTalkerError
from .head import DemoHead, demo_head
from .rig import PARAMETERS, Rig
from .sentences import sentences as make_sentences
from .prosody import audible_jaw_gain, combine, measure
from .speakers import Speaker, Style, asymmetric, make_speakers, speaker_template
from .speech import FLITE_PREFIX, ESpeak, Flite, Utterance, synthesizer_for
from .visemes import ENGLISH_PHONEMES, expand, trajectory

FPS = 30
PAUSE_SECONDS = (0.1, 0.6)  # leading and trailing silence of each clip, drawn uniformly
ROOM_TONE_DB = (-70.0, -45.0)
MAX_SENTENCES = 99  # the loader reads two-digit sentence numbers


def write_head(head: DemoHead, folder: Path) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in head.vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in head.faces]
    (folder / "demo_head.obj").write_text("# MemoryTalker demo head (metres, y up, face towards +z)\n"
                                          + "\n".join(lines) + "\n")
    (folder / "demo_head.json").write_text(json.dumps({
        "vertex_count": int(len(head.vertices)), "landmarks": head.landmarks,
        "lip_indices": head.lip_indices.tolist(), "upper_face_indices": head.upper_face_indices.tolist(),
        "upper_lip_slit": head.upper_lip_slit.tolist(), "lower_lip_slit": head.lower_lip_slit.tolist(),
        "rig_parameters": list(PARAMETERS)}, indent=1) + "\n")


_state: dict = {}


def _prepare_state(out: Path, dtype: str, speakers: list[Speaker]) -> None:
    head = demo_head()
    _state.update(out=out, dtype=np.dtype(dtype), head=head, rig=Rig(head),
                  speakers={s.name: s for s in speakers},
                  templates={s.name: speaker_template(head, s.identity) for s in speakers})


@dataclass(frozen=True)
class Pauses:
    """Silence around a sentence: recorded dialogue lines start and end with room tone, and a model
    that never heard a pause opens the mouth in one (measured: 13-14 mm on a model trained without)."""
    lead: float  # seconds
    trail: float
    noise_db: float  # the room tone's level, dB relative to full scale
    seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Pauses":
        return cls(float(rng.uniform(*PAUSE_SECONDS)), float(rng.uniform(*PAUSE_SECONDS)),
                   float(rng.uniform(*ROOM_TONE_DB)), int(rng.integers(2**31)))

    def apply(self, utterance: Utterance) -> Utterance:
        rate = utterance.sample_rate
        lead, trail = int(round(self.lead * rate)), int(round(self.trail * rate))
        tone = np.random.default_rng(self.seed).standard_normal(lead + len(utterance.samples) + trail)
        samples = (tone * 10 ** (self.noise_db / 20)).astype(np.float32)
        samples[lead:lead + len(utterance.samples)] += utterance.samples
        shift = lead / rate
        phonemes = [(name, start + shift, end + shift) for name, start, end in utterance.phonemes]
        end = len(samples) / rate
        return Utterance(samples, rate, [("_", 0.0, shift), *phonemes, ("_", phonemes[-1][2] if phonemes else shift, end)])


def say(speaker: Speaker, text: str, synthesizer, pauses: Pauses | None = None) -> Utterance:
    """One sentence in the speaker's voice, with phoneme timings (and the pauses around it)."""
    voice = speaker.voice
    utterance = synthesizer.synthesize(text, voice.name, voice.rate, voice.pitch, voice.pitch_range, voice.volume)
    return pauses.apply(utterance) if pauses is not None else utterance


def animate_phonemes(phonemes: list[tuple[str, float, float]], seconds: float, style: Style, rig: Rig,
                     head: DemoHead, template: np.ndarray):
    """(parameters (T, 8), vertices (T, V, 3)) at FPS for `seconds` of timed phonemes in a style;
    both corpus writers (synthetic and recorded speech) animate through this."""
    frames = max(1, int(round(seconds * FPS)))
    params = style.scale(trajectory(phonemes, frames, FPS, style.smoothness))
    motion = asymmetric(rig.displacements(params), head, style.asymmetry)
    return params, template[None] + motion


def speak(speaker: Speaker, text: str, synthesizer, rig: Rig, head: DemoHead, template: np.ndarray,
          pauses: Pauses | None = None):
    """One sentence by one speaker in the speaker's drawn style: (utterance with phoneme timings,
    parameters (T, 8), vertices (T, V, 3))."""
    utterance = say(speaker, text, synthesizer, pauses)
    seconds = len(utterance.samples) / utterance.sample_rate
    return (utterance, *animate_phonemes(utterance.phonemes, seconds, speaker.style, rig, head, template))


def _speaker_clips(job: tuple[str, list[str], list[Pauses]]) -> tuple[list[tuple[float, list[str]]], dict]:
    """All sentences of one speaker, in order, in a fresh process: espeak-ng's output depends on what
    the process synthesised before, so this makes every file independent of the number of workers.
    The speaker's jaw amplitude follows the prosody measured on all of them (prosody.py)."""
    speaker_name, texts, pauses = job
    speaker = _state["speakers"][speaker_name]
    synthesizer = synthesizer_for(speaker.voice.name, None if speaker.voice.name.startswith(FLITE_PREFIX)
                                  else ESpeak(fresh=True))
    utterances = [say(speaker, text, synthesizer, pause) for text, pause in zip(texts, pauses)]
    heard = combine([measure(u.samples, u.sample_rate, expand(u.phonemes)) for u in utterances])
    style = replace(speaker.style, jaw_amplitude=speaker.style.jaw_amplitude * audible_jaw_gain(heard))
    results = []
    for number, utterance in enumerate(utterances, start=1):
        seconds = len(utterance.samples) / utterance.sample_rate
        params, vertices = animate_phonemes(utterance.phonemes, seconds, style, _state["rig"], _state["head"],
                                            _state["templates"][speaker_name])
        name = f"{speaker_name}_sentence{number:02d}"
        out: Path = _state["out"]
        sf.write(out / "wav" / f"{name}.wav", utterance.samples, utterance.sample_rate, subtype="PCM_16")
        np.save(out / "vertices_npy" / f"{name}.npy", vertices.reshape(len(vertices), -1).astype(_state["dtype"]))
        np.save(out / "params" / f"{name}.npy", params.astype(np.float32))
        expanded = expand(utterance.phonemes)
        segments = [[phoneme, round(start, 5), round(end, 5)] for phoneme, start, end in expanded]
        (out / "phonemes" / f"{name}.json").write_text(json.dumps(segments, ensure_ascii=False) + "\n", encoding="utf-8")
        results.append((seconds, [p for p, _, _ in expanded]))
    return results, {"style": asdict(style), "prosody": heard.describe() if heard else None}


def _check_folder(out: Path) -> None:
    try:
        for sub in ("wav", "vertices_npy", "params", "phonemes"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise MemoryTalkerError(f"cannot write the corpus to {out}: {error.strerror or error}; "
                                "choose a folder you can write to") from None


def synthesize_corpus(out: str | Path, speakers: int = 8, sentences: int = 20, seed: int = 0,
                      dtype: str = "float32", workers: int | None = None, voices: list[str] | None = None,
                      progress: bool = True, free_text: float = 0.0) -> dict:
    if speakers < 1:
        raise MemoryTalkerError(f"--speakers must be at least 1, got {speakers}")
    if not 1 <= sentences <= MAX_SENTENCES:
        raise MemoryTalkerError(f"--sentences must be between 1 and {MAX_SENTENCES}, got {sentences}")
    if not 0.0 <= free_text <= 1.0:
        raise MemoryTalkerError(f"--free-text is a share of the sentences, between 0 and 1, got {free_text}")
    if dtype not in ("float32", "float16"):
        raise MemoryTalkerError(f"--dtype must be float32 or float16, got {dtype}")
    cast = make_speakers(speakers, seed, voices)
    espeak = ESpeak()
    for voice in sorted({s.voice.name for s in cast}):
        if voice.startswith(FLITE_PREFIX):
            flite = Flite()
            if voice.split("+")[0] not in flite.voices():
                raise MemoryTalkerError(f"unknown voice {voice!r}; flite has {', '.join(flite.voices())}")
        else:
            espeak.check_voice(voice)
    out = Path(out)
    _check_folder(out)
    started = time.perf_counter()
    head = demo_head()
    jobs = []
    for i, s in enumerate(cast):
        rng = np.random.default_rng([seed, 2, i])
        jobs.append((s.name, make_sentences(sentences, seed * 1000 + i, free_text), [Pauses.draw(rng) for _ in range(sentences)]))
    _prepare_state(out, dtype, cast)  # built once here; the forked workers inherit it
    durations, seen, heard = [], set(), {}
    context = multiprocessing.get_context("fork")
    with context.Pool(workers or os.cpu_count() or 1, maxtasksperchild=1) as pool, \
            tqdm(total=speakers * sentences, desc="synth", unit="clip", disable=not progress) as bar:
        for (name, _, _), (clips, speaker_style) in zip(jobs, pool.imap(_speaker_clips, jobs)):
            durations += [duration for duration, _ in clips]
            seen.update(p for _, phonemes in clips for p in phonemes)
            heard[name] = speaker_style
            bar.update(len(clips))
    with open(out / "templates.pkl", "wb") as f:
        pickle.dump(_state["templates"], f, protocol=4)
    (out / "lip_indices.txt").write_text(" ".join(map(str, head.lip_indices)) + "\n")
    (out / "upper_face_indices.txt").write_text(" ".join(map(str, head.upper_face_indices)) + "\n")
    write_head(head, out)
    splits = {split: {"subjects": [s.name for s in cast if s.split == split], "sentences": list(range(1, sentences + 1))}
              for split in ("train", "val", "test")}
    (out / "dataset.json").write_text(json.dumps({"fps": FPS, "source_fps": FPS, "splits": splits}, indent=1) + "\n")
    (out / "speakers.json").write_text(json.dumps([{**s.describe(), **heard[s.name]} for s in cast], indent=1) + "\n")
    inventory = ENGLISH_PHONEMES
    elapsed = time.perf_counter() - started
    hours = sum(durations) / 3600
    summary = {"hours": round(hours, 4), "clips": len(durations), "speakers": {k: len(v["subjects"]) for k, v in splits.items()},
               "vertex_count": int(len(head.vertices)), "dtype": dtype, "free_text": free_text,
               "phoneme_coverage": f"{len(seen & inventory)}/{len(inventory)}",
               "phonemes_missing": sorted(inventory - seen)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary.update(seconds=round(elapsed, 1), realtime_factor=round(hours * 3600 / elapsed, 1))
    return summary
