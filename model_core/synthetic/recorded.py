"""`python -m model_core corpus`: a talking-head corpus from recorded speech, in the layout `synth` writes.

Inputs are recordings with their transcripts and speakers: CSV manifests (columns `audio`, `text`,
`speaker`, optionally `split`; audio paths relative to the manifest) or folders of `NAME.wav` +
`NAME.txt` (the speaker is the folder holding the pair). Phone times come from pocketsphinx
forced alignment (its US-English model and CMU dictionary ship in its wheel); the phones, mapped
from ARPAbet onto the viseme table's IPA, drive the demo head's rig in a style drawn per speaker,
exactly as `synth` drives it from espeak-ng's timings.

    OUT/wav/SPEAKER_clipNNNN.wav   the recording: mono, 16 kHz, 16-bit, peak at -6 dBFS
    OUT/vertices_npy/, params/, phonemes/, templates.pkl, lip and upper-face indices, demo head: as `synth`
    OUT/dataset.json               fps and splits by speaker (val and test speakers are never trained on)
    OUT/speakers.json              each speaker's source, split, style and identity
    OUT/clips.csv                  each clip's source file, transcript, speaker, split and length
    OUT/skipped.csv                every input that did not become a clip, and why
    OUT/summary.json               hours, speakers, clips aligned and skipped (by reason), coverage, speed

`include` folds finished corpora of the same head (a `synth` corpus, an earlier build) into the
new one, their splits kept, so one folder trains on recorded and synthetic speech together.

The corpus is written to OUT.partial and renamed to OUT when complete, so an interrupted build
never leaves a half-written corpus. Every file depends only on the inputs and the seed.
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import pickle
import re
import shutil
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..audio import load_audio
from ..errors import AudioError, MemoryTalkerError
from .arpabet import SILENT, from_ipa, to_ipa
from .corpus import FPS, animate_phonemes, write_head
from .head import demo_head
from .rig import Rig
from .prosody import Prosody, audible_jaw_gain, combine, measure
from .speakers import Style, draw_identity, draw_style, speaker_template
from .visemes import ENGLISH_PHONEMES

SAMPLE_RATE = 16000
# Digital silence around a clip while aligning: without it the aligner loses clips that start at
# once, and with low noise instead of zeros it loses more (measured: 76 % against 91 % aligned).
ALIGN_PAD_SECONDS = 0.3
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SCHWA_SECONDS = 0.06  # pocketsphinx's AH carries no stress: shorter than this it is the schwa of "about"
PEAK = 0.5
# Beams (pocketsphinx's defaults, then wider) tried in turn before a clip counts as unalignable.
BEAMS = ({}, {"beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80})


@dataclass(frozen=True)
class Clip:
    audio: Path
    text: str
    speaker: str
    split: str | None  # pinned by the manifest, or None: drawn by speaker
    origin: str  # "manifest.csv:12" or the folder pair, for messages


def _speaker_name(raw: str) -> str:
    """A speaker id that file names and the corpus loader's NAME pattern can carry."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", raw.strip()).strip("-")


def read_inputs(inputs: list[Path]) -> tuple[list[Clip], list[tuple[str, str]]]:
    """Clips from manifests and folders, and (where, why) for every line or file that is unusable."""
    clips, problems = [], []
    for source in inputs:
        source = Path(source)
        if source.is_dir():
            for audio in sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS):
                transcript = audio.with_suffix(".txt")
                if not transcript.exists():
                    problems.append((str(audio), f"no transcript: add {transcript.name} beside it"))
                    continue
                clips.append(Clip(audio, transcript.read_text(encoding="utf-8", errors="replace").strip(),
                                  _speaker_name(audio.parent.name), None, str(audio)))
        elif source.is_file():
            clips += _read_manifest(source, problems)
        else:
            raise MemoryTalkerError(f"{source}: no such manifest or folder")
    return clips, problems


def _read_manifest(path: Path, problems: list[tuple[str, str]]) -> list[Clip]:
    clips = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = {"audio", "text", "speaker"} - set(reader.fieldnames or [])
        if missing:
            raise MemoryTalkerError(f"{path}: a manifest is a CSV file with the header audio,text,speaker[,split]; "
                                    f"this one lacks {', '.join(sorted(missing))}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            audio, text, speaker = (row.get(k) or "" for k in ("audio", "text", "speaker"))
            split = (row.get("split") or "").strip() or None
            if not audio.strip() or not text.strip() or not _speaker_name(speaker):
                problems.append((where, "bad manifest line: audio, text and speaker must all be given"))
            elif split not in (None, "train", "val", "test"):
                problems.append((where, f"bad manifest line: split {split!r} is not train, val or test"))
            else:
                clips.append(Clip(path.parent / audio.strip(), " ".join(text.split()), _speaker_name(speaker), split, where))
    return clips


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
        "seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell_number(n: int) -> list[str]:
    """0-9999 as English words ("214" -> two hundred fourteen), as a prompt reader says them."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + (spell_number(n % 10) if n % 10 else [])
    if n < 1000:
        return spell_number(n // 100) + ["hundred"] + (spell_number(n % 100) if n % 100 else [])
    return spell_number(n // 1000) + ["thousand"] + (spell_number(n % 1000) if n % 1000 else [])


def words_of(text: str) -> list[str]:
    """Transcript -> the dictionary's word forms: lower case, punctuation dropped, numbers spelt out."""
    words = []
    for token in re.findall(r"[A-Za-z0-9']+", text.replace("-", " ")):
        token = token.lower().strip("'")
        if token.isdigit() and len(token) <= 4:
            words += spell_number(int(token))
        elif token:
            words.append(token)
    return words


def read_lexicon(path: Path) -> dict[str, list[str]]:
    """A pronunciation file (CMU/Kaldi style: WORD PHONE PHONE ...; stress digits allowed); the
    first pronunciation of each word."""
    lexicon: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(";;;"):
            word = re.sub(r"\(\d+\)$", "", parts[0].lower())
            lexicon.setdefault(word, [p.rstrip("012") for p in parts[1:]])
    return lexicon


class Aligner:
    """pocketsphinx forced alignment of a transcript to 16 kHz audio -> timed ARPAbet phones.

    Words the CMU dictionary lacks come from the extra lexicons, else from espeak-ng's
    letter-to-sound rules (mapped to ARPAbet); `guessed` counts the latter."""

    def __init__(self, lexicons: list[Path] = ()):
        try:
            import pocketsphinx  # noqa: F401
        except ImportError:
            raise MemoryTalkerError("the corpus builder aligns with pocketsphinx: pip install pocketsphinx "
                                    "(or `pip install -e .[corpus]`)") from None
        self.extra: dict[str, list[str]] = {}
        for path in lexicons:
            for word, phones in read_lexicon(Path(path)).items():
                self.extra.setdefault(word, phones)
        self._decoders: dict[int, object] = {}
        self._espeak = None
        self.guessed: set[str] = set()

    def _decoder(self, attempt: int):
        if attempt not in self._decoders:
            from pocketsphinx import Decoder

            self._decoders[attempt] = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **BEAMS[attempt])
        return self._decoders[attempt]

    def _pronunciation(self, decoder, word: str) -> None:
        if decoder.lookup_word(word) is not None:
            return
        phones = self.extra.get(word)
        if phones is None:
            from .speech import ESpeak

            self._espeak = self._espeak or ESpeak()
            phones = from_ipa(self._espeak.pronounce(word))
            self.guessed.add(word)
        if not phones:
            raise ValueError(f"no pronunciation for {word!r}")
        decoder.add_word(word, " ".join(phones), True)

    def align(self, samples: np.ndarray, words: list[str]) -> tuple[list[tuple[str, float, float]], int]:
        """[(ARPAbet phone, start s, end s)] of the speech (silence left out), and the attempt that
        worked (0: default beams). Raises ValueError when no attempt aligns every word."""
        pad = np.zeros(int(ALIGN_PAD_SECONDS * SAMPLE_RATE), np.float32)
        padded = np.concatenate([pad, samples / max(float(np.abs(samples).max()), 1e-9) * PEAK, pad])
        pcm = (np.clip(padded, -1, 1) * 32767).astype(np.int16).tobytes()
        for attempt in range(len(BEAMS)):
            decoder = self._decoder(attempt)
            for word in words:
                self._pronunciation(decoder, word)
            try:
                decoder.set_align_text(" ".join(words))
                for finding_words in (True, False):  # the first pass finds the words, the second their phones
                    decoder.start_utt()
                    decoder.process_raw(pcm, full_utt=True)
                    decoder.end_utt()
                    if finding_words:
                        decoder.set_alignment()
                alignment = decoder.get_alignment()
            except (RuntimeError, ValueError):
                del self._decoders[attempt]  # a failed pass can leave it mid-utterance
                continue
            if alignment is None:
                continue
            aligned = [w.name for w in alignment if w.name not in ("<sil>", "<s>", "</s>") and not w.name.startswith("+")]
            if [re.sub(r"\(\d+\)$", "", w) for w in aligned] != words:
                continue
            phones = [(phone.name, phone.start * 0.01 - ALIGN_PAD_SECONDS, (phone.start + phone.duration) * 0.01 - ALIGN_PAD_SECONDS)
                      for word in alignment for phone in word if phone.name not in SILENT]
            return phones, attempt
        raise ValueError("pocketsphinx could not align the transcript to the audio (check that the text is what is said)")


def viseme_segments(phones: list[tuple[str, float, float]], duration: float) -> list[tuple[str, float, float]]:
    """Timed ARPAbet phones -> IPA segments covering 0..duration, "_" for silence; diphthongs split
    into two halves, as `visemes.expand` splits espeak-ng's."""
    segments, now = [], 0.0
    for phone, start, end in phones:
        start, end = max(start, 0.0), min(end, duration)
        if end <= start:
            continue
        if start > now + 1e-6:
            segments.append(("_", now, start))
        symbols = to_ipa("AH0" if phone == "AH" and end - start < SCHWA_SECONDS else phone)
        step = (end - start) / len(symbols)
        segments += [(symbol, start + k * step, start + (k + 1) * step) for k, symbol in enumerate(symbols)]
        now = end
    if duration > now + 1e-6:
        segments.append(("_", now, duration))
    return [(name, round(start, 5), round(end, 5)) for name, start, end in segments]


@dataclass
class SpeakerStyle:
    name: str
    split: str
    style: Style
    identity: dict
    template: np.ndarray
    prosody: Prosody | None = None


def assign_splits(speakers: list[str], pinned: dict[str, str], seed: int, held_out: float) -> dict[str, str]:
    """Speaker -> split. Speakers not pinned by a manifest go to val and test by a seeded draw of
    `held_out` of them each (at least one each once there are three or more), the rest to train.
    The draw orders speakers by a hash of (seed, name), so adding a source keeps most assignments."""
    free = sorted((s for s in speakers if s not in pinned), key=lambda s: zlib.crc32(f"{seed}:{s}".encode()))
    count = max(1, round(held_out * len(free))) if len(free) >= 3 and held_out > 0 else 0
    splits = dict(pinned)
    for index, speaker in enumerate(free):
        splits[speaker] = "test" if index < count else "val" if index < 2 * count else "train"
    return splits


_state: dict = {}


def _align_job(job: tuple[Clip, str]) -> dict:
    """First pass over one clip in a worker: read, align, write its audio and phoneme times, and
    measure its prosody. Returns what the summary needs, or why the clip was skipped."""
    clip, name = job
    out: Path = _state["out"]
    try:
        waveform = load_audio(clip.audio, SAMPLE_RATE)
    except AudioError as error:
        return {"skipped": clip.origin, "reason": "unreadable audio", "detail": str(error)}
    if waveform.silent:
        return {"skipped": clip.origin, "reason": "silent audio", "detail": f"{clip.audio}: peak below -80 dBFS"}
    words = words_of(clip.text)
    if not words:
        return {"skipped": clip.origin, "reason": "empty transcript", "detail": repr(clip.text)}
    aligner: Aligner = _state["aligner"]
    guessed_before = set(aligner.guessed)
    try:
        phones, attempt = aligner.align(waveform.samples, words)
    except ValueError as error:
        return {"skipped": clip.origin, "reason": "not aligned", "detail": str(error)}
    segments = viseme_segments(phones, waveform.duration)
    samples = waveform.samples / max(float(np.abs(waveform.samples).max()), 1e-9) * PEAK
    sf.write(out / "wav" / f"{name}.wav", samples, SAMPLE_RATE, subtype="PCM_16")
    (out / "phonemes" / f"{name}.json").write_text(json.dumps([list(s) for s in segments], ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
    return {"name": name, "seconds": waveform.duration, "phonemes": sorted({s[0] for s in segments}),
            "retried": attempt > 0, "guessed": sorted(aligner.guessed - guessed_before),
            "prosody": measure(waveform.samples, SAMPLE_RATE, segments)}


def _animate_job(job: tuple[str, str, float]) -> None:
    """Second pass over one clip: its motion, in its speaker's style, from its phoneme times."""
    name, speaker_name, seconds = job
    out: Path = _state["out"]
    segments = [tuple(s) for s in json.loads((out / "phonemes" / f"{name}.json").read_text(encoding="utf-8"))]
    speaker: SpeakerStyle = _state["speakers"][speaker_name]
    params, vertices = animate_phonemes(segments, seconds, speaker.style, _state["rig"], _state["head"], speaker.template)
    np.save(out / "vertices_npy" / f"{name}.npy", vertices.reshape(len(vertices), -1).astype(_state["dtype"]))
    np.save(out / "params" / f"{name}.npy", params.astype(np.float32))


def build_corpus(inputs: list[Path], out: str | Path, seed: int = 0, held_out: float = 0.125,
                 lexicons: list[Path] = (), dtype: str = "float32", workers: int | None = None,
                 progress: bool = True, overwrite: bool = False, include: list[Path] = ()) -> dict:
    if dtype not in ("float32", "float16"):
        raise MemoryTalkerError(f"--dtype must be float32 or float16, got {dtype}")
    if not 0.0 <= held_out < 0.5:
        raise MemoryTalkerError(f"--held-out is the share of speakers for each of val and test, from 0 to 0.5, got {held_out}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise MemoryTalkerError(f"{out} exists; choose a new folder or pass --overwrite to replace it")
    for lexicon in lexicons:
        if not Path(lexicon).is_file():
            raise MemoryTalkerError(f"--lexicon {lexicon}: no such file")
    included = [_open_included(Path(folder)) for folder in include]
    started = time.perf_counter()
    clips, problems = read_inputs(inputs)
    skipped = [{"input": where, "reason": why.split(":")[0], "detail": why} for where, why in problems]
    pinned: dict[str, str] = {}
    for clip in clips:
        if clip.split and pinned.setdefault(clip.speaker, clip.split) != clip.split:
            raise MemoryTalkerError(f"{clip.origin}: speaker {clip.speaker} is pinned to both {pinned[clip.speaker]} and "
                                    f"{clip.split}; a speaker belongs to one split")
    if not clips and not included:
        raise MemoryTalkerError("no usable recordings in the inputs" + (f" ({len(problems)} skipped: {problems[0][1]})" if problems else ""))
    splits = assign_splits(sorted({c.speaker for c in clips}), pinned, seed, held_out)
    head = demo_head()
    speakers = {}
    for name in sorted(splits):
        rng = np.random.default_rng([seed, 3, zlib.crc32(name.encode())])
        identity = draw_identity(rng)
        speakers[name] = SpeakerStyle(name, splits[name], draw_style(rng), identity, speaker_template(head, identity))
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for sub in ("wav", "vertices_npy", "params", "phonemes"):
            (partial / sub).mkdir(parents=True)
    except OSError as error:
        raise MemoryTalkerError(f"cannot write the corpus beside {out}: {error.strerror or error}") from None
    jobs, per_speaker = [], Counter()
    for clip in sorted(clips, key=lambda c: (c.speaker, str(c.audio))):
        per_speaker[clip.speaker] += 1
        jobs.append((clip, f"{clip.speaker}_clip{per_speaker[clip.speaker]:04d}"))
    _state.update(out=partial, dtype=np.dtype(dtype), head=head, rig=Rig(head), speakers=speakers,
                  aligner=Aligner(lexicons))
    try:
        context = multiprocessing.get_context("fork")
        with context.Pool(workers or os.cpu_count() or 1) as pool:
            with tqdm(total=len(jobs), desc="align", unit="clip", disable=not progress) as bar:
                results = []
                for result in pool.imap(_align_job, jobs, chunksize=8):
                    results.append(result)
                    bar.update()
            # The speakers' styles follow the prosody of all their clips; the workers fork afresh to see them.
            for speaker in speakers.values():
                speaker.prosody = combine([r.get("prosody") for (clip, _), r in zip(jobs, results)
                                           if clip.speaker == speaker.name and "skipped" not in r])
                speaker.style = replace(speaker.style, jaw_amplitude=speaker.style.jaw_amplitude
                                        * audible_jaw_gain(speaker.prosody))
        animate = [(r["name"], clip.speaker, r["seconds"]) for (clip, _), r in zip(jobs, results) if "skipped" not in r]
        with context.Pool(workers or os.cpu_count() or 1) as pool, \
                tqdm(total=len(animate), desc="animate", unit="clip", disable=not progress) as bar:
            for _ in pool.imap(_animate_job, animate, chunksize=8):
                bar.update()
        summary = _finish(partial, jobs, results, skipped, speakers, head, dtype, inputs, only_included=not clips)
        for corpus in included:
            _fold_in(corpus, partial, summary)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    elapsed = time.perf_counter() - started
    summary.update(seconds=round(elapsed, 1), realtime_factor=round(summary["hours"] * 3600 / max(elapsed, 1e-9), 1))
    return summary


def _open_included(folder: Path) -> dict:
    for name in ("summary.json", "dataset.json", "templates.pkl"):
        if not (folder / name).is_file():
            raise MemoryTalkerError(f"--include {folder}: not a finished corpus (no {name}); give a folder that "
                                    "`python -m model_core synth` or `corpus` wrote")
    summary = json.loads((folder / "summary.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    head = demo_head()
    if summary.get("vertex_count") != len(head.vertices) or dataset.get("fps") != FPS:
        raise MemoryTalkerError(f"--include {folder}: its head has {summary.get('vertex_count')} vertices at "
                                f"{dataset.get('fps')} fps; this corpus is on the demo head ({len(head.vertices)} at {FPS})")
    return {"folder": folder, "summary": summary, "dataset": dataset}


def _fold_in(corpus: dict, out: Path, summary: dict) -> None:
    """Links (or copies, across file systems) a finished corpus's clips into `out` and merges its
    templates, splits (by speaker: `synth` and `corpus` put every clip of a speaker in one split)
    and speakers."""
    folder: Path = corpus["folder"]
    templates = pickle.loads((out / "templates.pkl").read_bytes())
    theirs = pickle.loads((folder / "templates.pkl").read_bytes())
    clash = sorted(set(templates) & set(theirs))
    if clash:
        raise MemoryTalkerError(f"--include {folder}: speaker {clash[0]} is in both corpora; speakers must be distinct")
    for sub in ("wav", "vertices_npy", "params", "phonemes"):
        for path in sorted((folder / sub).glob("*")):
            try:
                os.link(path, out / sub / path.name)
            except OSError:
                shutil.copy2(path, out / sub / path.name)
    templates.update(theirs)
    (out / "templates.pkl").write_bytes(pickle.dumps(templates, protocol=4))
    dataset = json.loads((out / "dataset.json").read_text())
    for split, spec in corpus["dataset"]["splits"].items():
        mine = dataset["splits"].setdefault(split, {"subjects": []})
        mine["subjects"] = sorted(set(mine["subjects"]) | set(spec["subjects"]))
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
    if (folder / "speakers.json").exists():
        speakers = json.loads((out / "speakers.json").read_text()) + json.loads((folder / "speakers.json").read_text())
        (out / "speakers.json").write_text(json.dumps(speakers, indent=1) + "\n")
    theirs_summary = corpus["summary"]
    summary.setdefault("included", {})[str(folder)] = {k: theirs_summary.get(k) for k in ("hours", "clips", "speakers")}
    summary["hours_total"] = round(summary.get("hours_total", summary["hours"]) + theirs_summary["hours"], 4)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")


def _finish(out: Path, jobs, results, skipped, speakers, head, dtype, inputs, only_included: bool = False) -> dict:
    made = []
    for (clip, _), result in zip(jobs, results):
        if "skipped" in result:
            skipped.append({"input": result["skipped"], "reason": result["reason"], "detail": result["detail"]})
        else:
            made.append((clip, result))
    if not made and not only_included:
        reasons = Counter(s["reason"] for s in skipped)
        raise MemoryTalkerError(f"no clip could be aligned ({', '.join(f'{n} {r}' for r, n in reasons.items())}); "
                                f"first: {skipped[0]['input']}: {skipped[0]['detail']}")
    used = {clip.speaker for clip, _ in made}
    with open(out / "templates.pkl", "wb") as f:
        pickle.dump({name: s.template for name, s in speakers.items() if name in used}, f, protocol=4)
    (out / "lip_indices.txt").write_text(" ".join(map(str, head.lip_indices)) + "\n")
    (out / "upper_face_indices.txt").write_text(" ".join(map(str, head.upper_face_indices)) + "\n")
    write_head(head, out)
    splits = {split: {"subjects": sorted(s for s in used if speakers[s].split == split)} for split in ("train", "val", "test")}
    (out / "dataset.json").write_text(json.dumps({"fps": FPS, "source_fps": FPS, "splits": splits}, indent=1) + "\n")
    (out / "speakers.json").write_text(json.dumps(
        [{"name": s.name, "split": s.split, "style": asdict(s.style), "identity": s.identity,
          "prosody": s.prosody.describe() if s.prosody else None}
         for s in speakers.values() if s.name in used], indent=1) + "\n")
    with open(out / "clips.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "speaker", "split", "audio", "text", "seconds"])
        for clip, result in made:
            writer.writerow([result["name"], clip.speaker, speakers[clip.speaker].split, str(clip.audio), clip.text,
                             round(result["seconds"], 3)])
    with open(out / "skipped.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "reason", "detail"])
        writer.writerows([s["input"], s["reason"], s["detail"]] for s in skipped)
    seen = set().union(set(), *(set(r["phonemes"]) for _, r in made))
    hours = sum(r["seconds"] for _, r in made) / 3600
    summary = {
        "hours": round(hours, 4), "clips": len(made),
        "speakers": {split: len(v["subjects"]) for split, v in splits.items()},
        "hours_by_split": {split: round(sum(r["seconds"] for c, r in made if speakers[c.speaker].split == split) / 3600, 4)
                           for split in splits},
        "clips_skipped": len(skipped), "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
        "clips_aligned_on_retry": sum(r["retried"] for _, r in made),
        "words_guessed": sorted({w for _, r in made for w in r["guessed"]}),
        "vertex_count": int(len(head.vertices)), "dtype": dtype,
        "phoneme_coverage": f"{len(seen & ENGLISH_PHONEMES)}/{len(ENGLISH_PHONEMES)}",
        "phonemes_missing": sorted(ENGLISH_PHONEMES - seen), "inputs": [str(i) for i in inputs],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary
