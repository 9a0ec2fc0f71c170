"""The synthetic corpus and the demo head: determinism, layout, articulation, styles, errors."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from itertools import cycle
from pathlib import Path

import numpy as np
import pytest

from model_core.cli import main
from model_core.data import DatasetInfo, TalkingFaceDataset
from model_core.errors import MemoryTalkerError
from model_core.synthetic.corpus import Pauses, speak, synthesize_corpus
from model_core.synthetic.head import demo_head
from model_core.synthetic.prosody import Prosody, audible_jaw_gain, measure
from model_core.synthetic.rig import Rig
from model_core.synthetic.speakers import (SEEN_VARIANTS, SEEN_VOICES, UNSEEN_VARIANTS, UNSEEN_VOICES, make_speakers,
                                           speaker_template)
from model_core.synthetic.speech import ESpeak, synthesizer_for
from model_core.synthetic.visemes import BILABIAL, expand


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The small corpus of the acceptance list: 8 speakers x 20 sentences."""
    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, speakers=8, sentences=20, seed=0, progress=False)
    return out


def test_same_seed_same_bytes(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synthesize_corpus(first, speakers=2, sentences=2, seed=7, progress=False, workers=2)
    synthesize_corpus(second, speakers=2, sentences=2, seed=7, progress=False, workers=1)
    synthesize_corpus(other, speakers=2, sentences=2, seed=8, progress=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.name != "summary.json")
    assert len(files) > 10
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert (first / "wav" / "Speaker00_sentence01.wav").read_bytes() != (other / "wav" / "Speaker00_sentence01.wav").read_bytes()


# Every base voice and every variant the corpus draws (each at least once), and the other kinds of
# espeak-ng variant a corpus can be asked for: Klatt synthesis, its speechPlayer form, whisper, croak.
VOICE_KINDS = [f"{base}+{variant}" for base, variant in zip(
    cycle(SEEN_VOICES + UNSEEN_VOICES), SEEN_VARIANTS + UNSEEN_VARIANTS)] \
    + ["en-us+klatt", "en-us+klatt6", "en-us+whisper", "en-us+croak"]


def voice_digests(voices: list[str]) -> dict[str, list[str]]:
    """Each voice speaks two sentences through its own copy of espeak-ng, as a corpus speaker does."""
    digests = {}
    for voice in voices:
        espeak = ESpeak(fresh=True)
        digests[voice] = [hashlib.sha1(espeak.synthesize(text, voice).samples.tobytes()).hexdigest()
                          for text in ("Sue sells sea shells.", "Bob saw a cat.")]
    return digests


def test_every_voice_kind_speaks_the_same_bytes_in_any_process_and_order():
    """Voices with breath (f2, f3, f5, whisper) add noise from espeak-ng's random numbers, which
    the library seeds from the clock's second when it loads: a corpus written twice differed."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from test_synthetic import voice_digests; "
            "print(json.dumps(voice_digests(sys.argv[2:])))")
    run = lambda: json.loads(subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), *VOICE_KINDS],  # noqa: E731
                                            capture_output=True, text=True, check=True).stdout)
    first = run()
    time.sleep(1 - time.time() % 1)  # into the next second, so the next process starts on another clock seed
    second = run()
    reversed_in_this_process = voice_digests(VOICE_KINDS[::-1])
    differing = sorted(v for v in VOICE_KINDS if not first[v] == second[v] == reversed_in_this_process[v])
    assert not differing, f"these voices spoke different bytes in different processes or orders: {differing}"


def test_the_training_loader_reads_the_corpus(corpus):
    info = DatasetInfo.open(corpus)
    head = demo_head()
    assert info.fps == 30 and info.num_vertices == len(head.vertices)
    sizes = {split: len(TalkingFaceDataset(info, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 120, "val": 20, "test": 20}
    item = TalkingFaceDataset(info, "train", triplets=True)[0]
    frames = item["vertices"].shape[0]
    assert item["vertices"].shape[1] == 3 * len(head.vertices)
    assert abs(frames / 30 - len(item["audio"]) / 16000) < 1 / 30  # motion and audio are aligned to the frame


def test_unseen_voices_form_the_test_split():
    speakers = make_speakers(16, seed=0)
    voices = lambda split: {s.voice.name for s in speakers if s.split == split}  # noqa: E731
    assert voices("test") and not voices("test") & (voices("train") | voices("val"))
    bases = lambda split: {s.voice.name.split("+")[0] for s in speakers if s.split == split}  # noqa: E731
    assert not bases("test") & bases("train")


@pytest.fixture(scope="module")
def articulation():
    head = demo_head()
    return head, Rig(head), ESpeak()


def aperture(head, vertices) -> np.ndarray:
    return np.linalg.norm(vertices[:, head.landmarks["upper_lip_center"]] - vertices[:, head.landmarks["lower_lip_center"]], axis=1)


@pytest.mark.parametrize("voice", [None, pytest.param("flite:kal16", marks=pytest.mark.skipif(
    shutil.which("flite") is None, reason="flite is not installed"))])
def test_lips_close_on_bilabials_and_open_on_open_vowels(articulation, voice):
    head, rig, espeak = articulation
    speaker = make_speakers(4, seed=3)[0]
    if voice:
        speaker = replace(speaker, voice=replace(speaker.voice, name=voice))
    utterance, _, vertices = speak(speaker, "Bob bought a pumpkin and a big map at the market.",
                                   synthesizer_for(speaker.voice.name, espeak), rig, head,
                                   speaker_template(head, speaker.identity))
    gap = aperture(head, vertices)
    segments = expand(utterance.phonemes)
    centre = lambda s, e: min(int((s + e) / 2 * 30), len(gap) - 1)  # noqa: E731
    closed = [gap[centre(s, e)] for name, s, e in segments if name in BILABIAL]
    opened = [gap[centre(s, e)] for name, s, e in segments if name in {"a", "ɑ", "æ"} and e - s > 0.06]
    assert len(closed) >= 5 and len(opened) >= 3
    assert max(closed) < 0.0015  # p, b, m: lips together (under 1.5 mm)
    assert min(opened) > 0.006  # open vowels: over 6 mm


def test_a_wider_jaw_style_opens_proportionally_wider(articulation):
    head, rig, espeak = articulation
    speaker = make_speakers(4, seed=3)[0]
    template = speaker_template(head, speaker.identity)
    text = "Father saw a large cat in the garden."
    results = {}
    for gain in (1.0, 1.5):
        styled = replace(speaker, style=replace(speaker.style, jaw_amplitude=gain, asymmetry=0.0))
        utterance, _, vertices = speak(styled, text, espeak, rig, head, template)
        results[gain] = aperture(head, vertices)
    open_frames = results[1.0] > 0.008
    ratio = results[1.5][open_frames] / results[1.0][open_frames]
    assert open_frames.sum() > 5 and np.median(ratio) == pytest.approx(1.5, rel=0.12)


def test_the_head_is_one_manifold_surface_with_landmarks_in_place():
    head = demo_head()
    v, faces = head.vertices, head.faces
    assert 2000 < len(v) < 8000
    edges = Counter(tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])))
    assert max(edges.values()) == 2  # manifold: no edge in more than two faces
    assert all(len(set(f)) == 3 for f in faces)
    boundary = [e for e, n in edges.items() if n == 1]
    # Connected components of the surface and of its boundary (the neck opening and the lips).
    parent = list(range(len(v)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        parent[find(a)] = find(b)
    assert len({find(i) for i in range(len(v))}) == 1
    parent = list(range(len(v)))
    for a, b in boundary:
        parent[find(a)] = find(b)
    assert len({find(i) for e in boundary for i in e}) == 2
    marks = {name: v[i] for name, i in head.landmarks.items()}
    assert marks["nose_tip"][2] == pytest.approx(v[:, 2].max(), abs=0.01)  # the most forward point
    assert marks["mouth_corner_left"][0] > 0.015 > -0.015 > marks["mouth_corner_right"][0]  # +x is the subject's left
    assert marks["chin"][1] < marks["lower_lip_center"][1] < marks["nose_tip"][1]
    np.testing.assert_allclose(marks["upper_lip_center"], marks["lower_lip_center"])  # a closed mouth at rest
    assert head.landmarks["upper_lip_center"] != head.landmarks["lower_lip_center"]  # yet two vertices
    assert set(head.lip_indices) >= {head.landmarks["upper_lip_center"], head.landmarks["lower_lip_center"]}
    assert v[head.upper_face_indices, 1].min() > marks["nose_tip"][1]


def test_bad_arguments_get_clear_errors(tmp_path, capsys):
    with pytest.raises(MemoryTalkerError, match="--speakers must be at least 1"):
        synthesize_corpus(tmp_path / "x", speakers=0)
    with pytest.raises(MemoryTalkerError, match="unknown voice 'klingon'"):
        synthesize_corpus(tmp_path / "x", speakers=1, sentences=1, voices=["klingon"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MemoryTalkerError, match="cannot write the corpus to"):
        synthesize_corpus(blocker / "corpus", speakers=1, sentences=1)
    assert main(["synth", "--out", str(tmp_path / "y"), "--speakers", "0"]) == 2
    assert "error: --speakers must be at least 1" in capsys.readouterr().err


def test_clips_start_and_end_with_quiet_pauses_and_a_closed_mouth(articulation):
    head, rig, espeak = articulation
    speaker = make_speakers(4, seed=3)[0]
    pauses = Pauses(lead=0.4, trail=0.3, noise_db=-60.0, seed=1)
    text = "Father saw a large cat."
    utterance, _, vertices = speak(speaker, text, espeak, rig, head, speaker_template(head, speaker.identity), pauses)
    rate = utterance.sample_rate
    last = utterance.phonemes[-1]
    # the trailing pause is at least the 0.3 s asked for (rounded: its end minus its start can fall a
    # few 1e-16 s short of 0.3 in floating point)
    assert last[0] == "_" and last[2] == len(utterance.samples) / rate and round(last[2] - last[1], 9) >= 0.3
    lead = utterance.samples[:int(0.35 * rate)]
    assert 20 * np.log10(np.sqrt(np.mean(lead ** 2))) == pytest.approx(-60.0, abs=1.0)  # room tone, not digital zero
    assert utterance.phonemes[0] == ("_", 0.0, pytest.approx(0.4, abs=1e-3))
    gap = aperture(head, vertices)
    assert gap[:6].max() < 0.001 and gap[-2:].max() < 0.001  # mouth at rest in the pauses (after a release ramp)
    assert gap.max() > 0.006


def test_the_lip_closure_measure_reads_the_ground_truth_as_closed(corpus, capsys, monkeypatch):
    """scripts/lip_closure.py (the model card's p/b/m figures) finds the test speaker's bilabials,
    counts the ground truth closed at them, and prints per speaker and over the split."""
    import importlib.util
    import sys

    from model_core.checkpoint import BUNDLED_MODEL, load_model

    script = Path(__file__).resolve().parents[1] / "scripts" / "lip_closure.py"
    spec = importlib.util.spec_from_file_location("lip_closure", script)
    lip_closure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lip_closure)
    found = lip_closure.measure(load_model(BUNDLED_MODEL), corpus, "test")
    test_speakers = {s.name for s in make_speakers(8, seed=0) if s.split == "test"}
    assert set(found) == test_speakers
    for values in found.values():
        assert len(values["model"]) == len(values["truth"]) >= 20  # 20 sentences hold many p, b, m
        assert np.mean(np.array(values["truth"]) < lip_closure.CLOSED) > 0.95
        assert np.isfinite(values["model"]).all()
    monkeypatch.setattr(sys, "argv", ["lip_closure.py", "--data", str(corpus)])
    lip_closure.main()
    assert "all:" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["lip_closure.py", "--data", str(corpus / "phonemes")])
    with pytest.raises(SystemExit, match="synthetic corpus"):
        lip_closure.main()


def test_free_text_breaks_the_grammar_and_leaves_other_corpora_unchanged(tmp_path):
    """--free-text: a share of sentences in random word order, so a recogniser trained on the corpus
    cannot predict the next word (trained on the grammar alone it heard "Bob" as "the"); without it
    the sentences are exactly those of before."""
    from model_core.synthetic.sentences import sentences

    grammar, mixed, free = sentences(200, 4), sentences(200, 4, 0.5), sentences(200, 4, 1.0)
    assert sentences(200, 4, 0.0) == grammar
    kept = sum(a == b for a, b in zip(grammar, mixed))
    assert 70 < kept < 130  # about half replaced, the rest at their places
    assert all(b == a or b not in grammar for a, b in zip(grammar, mixed))
    first_words = lambda texts: Counter(t.split()[0].strip(",").lower() for t in texts)  # noqa: E731
    assert len(first_words(grammar)) < 15 and first_words(grammar).most_common(1)[0][1] > 50  # "The ..."
    assert len(first_words(free)) > 100 and first_words(free).most_common(1)[0][1] < 10
    with pytest.raises(MemoryTalkerError, match="--free-text"):
        synthesize_corpus(tmp_path / "x", speakers=1, sentences=1, free_text=1.5)
    summary = synthesize_corpus(tmp_path / "free", speakers=1, sentences=2, seed=0, progress=False, free_text=1.0)
    assert summary["clips"] == 2 and summary["free_text"] == 1.0
    assert len(list((tmp_path / "free" / "phonemes").glob("*.json"))) == 2


# Lines a model trained on a synthetic corpus is judged on, never spoken in one: the sentence of
# tests/test_demo_model.py and the model card's held-out lines.
HELD_OUT_LINES = ["Bob and Pam bought a map, but the cat sat far away.", "Please bring me a bowl of plum pie.",
                  "Maybe Paul put the bottle back.", "I told you not to open that door.",
                  "We need more time before the big show.", "Where did you put my blue jacket?"]


def test_free_text_never_teaches_the_words_of_the_held_out_lines():
    """The free-order vocabulary adds no word of the lines models are judged on: only words the
    grammar always had may appear in both (otherwise a model would be tested on trained words)."""
    import re

    from model_core.synthetic import sentences as generator
    from test_demo_model import SENTENCE

    words = lambda texts: {w.lower() for t in texts for w in re.findall(r"[A-Za-z']+", t)}  # noqa: E731
    grammar = words(generator.SUBJECTS + generator.VERBS + generator.OBJECTS + generator.PLACES + generator.CLAUSES)
    assert SENTENCE in HELD_OUT_LINES
    assert not (words(HELD_OUT_LINES) - grammar) & {w.lower() for w in generator.VOCABULARY}


def test_the_jaw_style_follows_what_can_be_heard_of_the_voice(corpus):
    """Each speaker's jaw amplitude is the drawn one times the gain of the prosody measured on the
    speaker's clips, and that prosody moves with the voice settings a listener hears."""
    drawn = {s.name: s.style.jaw_amplitude for s in make_speakers(8, seed=0)}
    written = json.loads((corpus / "speakers.json").read_text())
    gains = []
    for speaker in written:
        gain = audible_jaw_gain(Prosody(**speaker["prosody"]))
        assert speaker["style"]["jaw_amplitude"] == pytest.approx(drawn[speaker["name"]] * gain, rel=1e-2)
        gains.append(gain)
    assert max(gains) / min(gains) > 1.2, "the voices differ audibly, and so do their jaws"

    espeak, text = ESpeak(), "Maybe the bottle of milk was put back on the top shelf by Paul."

    def heard(**voice):
        utterance = espeak.synthesize(text, "en-us+m3", **voice)
        return measure(utterance.samples, utterance.sample_rate, expand(utterance.phonemes))

    flat, lively = heard(pitch_range=10), heard(pitch_range=95)
    slow, fast = heard(rate=120), heard(rate=260)
    assert lively.pitch_range > flat.pitch_range + 2 and audible_jaw_gain(lively) > audible_jaw_gain(flat)
    assert fast.speaking_rate > slow.speaking_rate * 1.5 and audible_jaw_gain(fast) < audible_jaw_gain(slow)
    assert audible_jaw_gain(None) == 1.0
