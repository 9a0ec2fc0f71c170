"""The recorded-speech corpus builder (`python -m model_core corpus`) on real human recordings: the
channel announcements of Debian's alsa-utils, unpacked by scripts/get_test_recordings.sh."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_core.data import DatasetInfo, TalkingFaceDataset
from model_core.errors import MemoryTalkerError
from model_core.synthetic import recorded
from model_core.synthetic.arpabet import from_ipa, to_ipa
from model_core.synthetic.corpus import synthesize_corpus
from model_core.synthetic.prosody import Prosody, audible_jaw_gain
from model_core.synthetic.recorded import build_corpus, spell_number, viseme_segments, words_of
from model_core.synthetic.rig import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
RECORDINGS = next((p for p in (ROOT / ".venv/test-recordings/alsa", Path("/usr/share/sounds/alsa"))
                   if (p / "Front_Left.wav").exists()), None)
needs_recordings = pytest.mark.skipif(RECORDINGS is None, reason="no recorded speech: run scripts/get_test_recordings.sh "
                                                                 "(downloads Debian's alsa-utils sounds)")
pytest.importorskip("pocketsphinx", reason="the corpus builder needs pocketsphinx: pip install -e .[corpus]")

# Three "speakers" (folders) reading the channel names: the builder needs three to hold one out for
# each of val and test.
SPEAKERS = {"anna": ["Front_Left", "Front_Center", "Rear_Right"], "ben": ["Front_Right", "Side_Left"],
            "cleo": ["Rear_Left", "Side_Right", "Rear_Center"]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Speaker folders of NAME.wav + NAME.txt, plus one bad case of each kind, and a manifest."""
    root = tmp_path_factory.mktemp("recordings")
    for speaker, names in SPEAKERS.items():
        (root / "folders" / speaker).mkdir(parents=True)
        for name in names:
            shutil.copy(RECORDINGS / f"{name}.wav", root / "folders" / speaker / f"{name}.wav")
            (root / "folders" / speaker / f"{name}.txt").write_text(name.replace("_", " ") + "\n")
    # Noise read as words: no alignment exists.
    shutil.copy(RECORDINGS / "Noise.wav", root / "folders" / "ben" / "Noise.wav")
    (root / "folders" / "ben" / "Noise.txt").write_text("front center rear left")
    (root / "folders" / "cleo" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    (root / "folders" / "cleo" / "broken.txt").write_text("side left")
    shutil.copy(RECORDINGS / "Front_Left.wav", root / "folders" / "cleo" / "untranscribed.wav")
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "text", "speaker"])
        writer.writerow([str(RECORDINGS / "Front_Left.wav"), "Front left!", "dora"])
        writer.writerow([str(RECORDINGS / "Side_Right.wav"), "", "dora"])  # no transcript: a bad line
    return root


@pytest.fixture(scope="module")
def corpus(inputs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpora") / "real"
    return out, build_corpus([inputs / "folders", inputs / "manifest.csv"], out, seed=0, workers=2, progress=False)


@needs_recordings
def test_recordings_become_a_corpus_the_trainer_reads(corpus):
    out, summary = corpus
    assert summary["clips"] == 9 and summary["speakers"] == {"train": 2, "val": 1, "test": 1}
    info = DatasetInfo.open(out)
    items = {split: TalkingFaceDataset(info, split) for split in ("train", "val", "test")}
    assert sum(len(d) for d in items.values()) == 9
    speakers = {split: {i.subject for i in d.items} for split, d in items.items()}
    assert not (speakers["train"] & (speakers["val"] | speakers["test"])), "held-out speakers are never trained on"
    clip = items["train"][0]
    frames = len(clip["vertices"])
    assert frames == round(len(clip["audio"]) / 16000 * 30)
    assert clip["vertices"].shape[1] == 3 * summary["vertex_count"]
    assert json.loads((out / "summary.json").read_text())["clips"] == 9
    assert not Path(f"{out}.partial").exists()


@needs_recordings
def test_the_phone_times_follow_the_speech_and_drive_the_mouth(corpus):
    out, _ = corpus
    rows = {row["audio"]: row for row in csv.DictReader(open(out / "clips.csv"))}
    name = next(row["name"] for audio, row in rows.items() if audio.endswith("anna/Front_Left.wav"))
    segments = json.loads((out / "phonemes" / f"{name}.json").read_text())
    spoken = [p for p, _, _ in segments if p != "_"]
    assert spoken == ["f", "ɹ", "ʌ", "n", "t", "l", "ɛ", "f", "t"]
    assert segments[0][1] == 0.0 and abs(segments[-1][2] - float(rows[next(a for a in rows if a.endswith("anna/Front_Left.wav"))]["seconds"])) < 1e-3
    assert all(a[2] == b[1] for a, b in zip(segments, segments[1:])), "segments tile the clip"
    # The mouth opens on the vowels and rests in the pause after the speech.
    params = np.load(out / "params" / f"{name}.npy")
    jaw = params[:, PARAMETERS.index("jaw_open")]
    vowel = next(s for s in segments if s[0] == "ɛ")
    tail = segments[-1]
    assert tail[0] == "_" and tail[2] - tail[1] > 0.15
    assert jaw[int((vowel[1] + vowel[2]) / 2 * 30)] > 0.2
    assert jaw[int(tail[2] * 30) - 1] < 0.05
    tuck = params[:, PARAMETERS.index("lower_lip_tuck")]
    first_f = segments[[p for p, _, _ in segments].index("f")]
    assert tuck[int((first_f[1] + first_f[2]) / 2 * 30)] > 0.5, "the lower lip tucks on f"


@needs_recordings
def test_every_unusable_input_is_counted_and_named(corpus):
    out, summary = corpus
    assert summary["clips_skipped"] == 4
    assert summary["skipped_by_reason"] == {"bad manifest line": 1, "no transcript": 1, "not aligned": 1,
                                            "unreadable audio": 1}
    skipped = {Path(row["input"].rsplit(":", 1)[0]).name: row for row in csv.DictReader(open(out / "skipped.csv"))}
    assert "Noise.wav" in skipped and "broken.wav" in skipped and "untranscribed.wav" in skipped
    assert "manifest.csv" in skipped and "line" in skipped["manifest.csv"]["detail"] + skipped["manifest.csv"]["reason"]
    assert "untranscribed.txt" in skipped["untranscribed.wav"]["detail"]


@needs_recordings
def test_the_same_inputs_and_seed_give_the_same_files(inputs, corpus, tmp_path):
    out, _ = corpus
    again = tmp_path / "again"
    build_corpus([inputs / "folders", inputs / "manifest.csv"], again, seed=0, workers=1, progress=False)

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "summary.json"}

    assert digest(out) == digest(again)


@needs_recordings
def test_an_interrupted_build_leaves_nothing_and_an_existing_corpus_is_kept(inputs, corpus, tmp_path, monkeypatch):
    out = tmp_path / "corpus"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recorded, "_finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_corpus([inputs / "folders"], out, workers=1, progress=False)
    assert not out.exists() and not Path(f"{out}.partial").exists()
    existing, _ = corpus
    with pytest.raises(MemoryTalkerError, match="--overwrite"):
        build_corpus([inputs / "folders"], existing, workers=1, progress=False)
    assert (existing / "summary.json").exists()


def test_clear_errors_for_unusable_inputs(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,words\na.wav,hello\n")
    with pytest.raises(MemoryTalkerError, match="audio,text,speaker"):
        build_corpus([bad], tmp_path / "out", progress=False)
    with pytest.raises(MemoryTalkerError, match="no such manifest or folder"):
        build_corpus([tmp_path / "missing"], tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MemoryTalkerError, match="no usable recordings"):
        build_corpus([tmp_path / "empty"], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@needs_recordings
def test_the_command_line_reports_what_it_built(inputs, tmp_path):
    done = subprocess.run([sys.executable, "-m", "model_core", "corpus", str(inputs / "folders" / "anna"),
                           "--out", str(tmp_path / "c"), "--workers", "1"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "3 clips" in done.stdout and "skipped 0" in done.stdout
    again = subprocess.run([sys.executable, "-m", "model_core", "corpus", str(inputs / "folders" / "anna"),
                            "--out", str(tmp_path / "c")], capture_output=True, text=True, cwd=ROOT)
    assert again.returncode != 0 and "--overwrite" in again.stderr


def test_transcripts_become_dictionary_words():
    assert words_of("Press 1, or 214 - then the pound key.") == \
        ["press", "one", "or", "two", "hundred", "fourteen", "then", "the", "pound", "key"]
    assert spell_number(3050) == ["three", "thousand", "fifty"]
    assert words_of("It's DON'T") == ["it's", "don't"]


def test_arpabet_phones_map_onto_the_viseme_table():
    assert to_ipa("AY1") == ["a", "ɪ"] and to_ipa("SIL") == [] and to_ipa("M") == ["m"]
    assert from_ipa("həlˈoʊ") == ["HH", "AH", "L", "OW"]
    segments = viseme_segments([("HH", 0.1, 0.15), ("AH", 0.15, 0.19), ("L", 0.19, 0.25), ("OW", 0.25, 0.45)], 0.6)
    assert segments == [("_", 0.0, 0.1), ("h", 0.1, 0.15), ("ə", 0.15, 0.19), ("l", 0.19, 0.25),
                        ("o", 0.25, 0.35), ("ʊ", 0.35, 0.45), ("_", 0.45, 0.6)]
    assert viseme_segments([("AH", 0.0, 0.2)], 0.2) == [("ʌ", 0.0, 0.2)], "a long AH is the vowel of 'but'"


def test_words_missing_from_the_dictionary_get_a_pronunciation():
    aligner = recorded.Aligner()
    decoder = aligner._decoder(0)
    aligner._pronunciation(decoder, "blorptastic")
    assert aligner.guessed == {"blorptastic"}
    assert decoder.lookup_word("blorptastic").split()[:3] == ["B", "L", "AO"]


@needs_recordings
def test_a_synthetic_corpus_folds_in_with_its_splits_and_styles_follow_the_voice(inputs, corpus, tmp_path):
    synth = tmp_path / "synth"
    synthesize_corpus(synth, speakers=3, sentences=2, seed=0, progress=False)
    real, _ = corpus
    merged = tmp_path / "merged"
    summary = build_corpus([], merged, include=[real, synth], progress=False)
    assert summary["hours_total"] == pytest.approx(summary["included"][str(real)]["hours"]
                                                   + summary["included"][str(synth)]["hours"], abs=1e-3)
    info = DatasetInfo.open(merged)
    for split in ("train", "val", "test"):
        subjects = {item.subject for item in info.items(split)}
        mine = json.loads((real / "dataset.json").read_text())["splits"][split]["subjects"]
        theirs = json.loads((synth / "dataset.json").read_text())["splits"][split]["subjects"]
        assert subjects == set(mine) | set(theirs)
    assert len(TalkingFaceDataset(info, "train")) == sum(len(TalkingFaceDataset(DatasetInfo.open(c), "train")) for c in (real, synth))
    with pytest.raises(MemoryTalkerError, match="in both corpora"):
        build_corpus([], tmp_path / "twice", include=[synth, synth], progress=False)
    assert not (tmp_path / "twice").exists()
    # The recorded speakers' jaw follows their measured prosody, as the synthetic speakers' does.
    for speaker in json.loads((real / "speakers.json").read_text()):
        assert speaker["prosody"] is not None
        assert audible_jaw_gain(Prosody(**speaker["prosody"])) != 1.0
