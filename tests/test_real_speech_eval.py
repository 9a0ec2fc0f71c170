"""scripts/real_speech_eval.py: the lip-sync acceptance figures (PER, bilabial closure, bilabial/open
ratio, pause aperture) on a tiny synthetic corpus."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_core.checkpoint import BUNDLED_MODEL, load_model
from model_core.data import DatasetInfo, TalkingFaceDataset
from model_core.errors import DataError
from model_core.evaluate import phoneme_recognition
from model_core.synthetic.corpus import synthesize_corpus

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "real_speech_eval.py"
spec = importlib.util.spec_from_file_location("real_speech_eval", SCRIPT)
real_speech_eval = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = real_speech_eval  # its dataclass looks its module up there
spec.loader.exec_module(real_speech_eval)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real_speech_eval") / "corpus"
    synthesize_corpus(out, speakers=3, sentences=2, seed=0, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def model():
    return load_model(BUNDLED_MODEL)


def corpus_figures(corpus: Path, motion) -> dict:
    """The figures over every clip of the corpus, for meshes made by motion(ground truth, template)."""
    info = DatasetInfo.open(corpus)
    upper, lower = real_speech_eval.lip_landmarks(corpus)
    clips = []
    for split in info.splits:
        dataset = TalkingFaceDataset(info, split)
        for i in range(len(dataset)):
            truth = dataset.vertices(i).reshape(-1, info.num_vertices, 3)
            mesh = motion(truth, info.templates[dataset.items[i].subject])
            aperture = real_speech_eval.lip_aperture(mesh, upper, lower)
            clips.append(real_speech_eval.clip_apertures(aperture, dataset.phoneme_segments(i), info.fps))
    return real_speech_eval.figures(clips)


def test_the_ground_truth_closes_and_a_mouth_held_open_or_still_does_not(corpus):
    truth = corpus_figures(corpus, lambda truth, template: truth)
    assert truth["bilabials"] >= 20
    assert truth["closure_rate"] >= 0.9 and truth["ratio"] < 0.3
    assert truth["pause_frames"] > 0 and truth["pause_aperture_mm"] < 1.5

    upper, lower = real_speech_eval.lip_landmarks(corpus)
    template = next(iter(DatasetInfo.open(corpus).templates.values()))
    # The neutral head's lips touch, so a mesh that never moves has a zero aperture throughout: with
    # no open vowel to close from, none of its bilabials counts as a closure.
    assert np.linalg.norm(template[upper] - template[lower]) < 1e-6
    still = corpus_figures(corpus, lambda truth, template: np.repeat(template[None], len(truth), axis=0))
    assert still["closure_rate"] == 0.0 and still["ratio"] is None

    def held_open(truth, template):
        mesh = np.repeat(template[None], len(truth), axis=0)
        mesh[:, lower, 1] -= 0.008  # the lower lip 8 mm down in every frame
        return mesh

    held = corpus_figures(corpus, held_open)
    assert held["closure_rate"] == 0.0
    assert held["ratio"] == pytest.approx(1.0) and held["pause_aperture_mm"] == pytest.approx(8.0)


def test_pauses_skip_short_silences_and_the_edges_next_to_speech():
    fps = 10.0
    aperture = np.arange(30, dtype=float)  # frame k has aperture k; its centre time is (k + 0.5) / 10
    segments = [("_", 0.0, 1.0), ("a", 1.0, 1.5), ("_", 1.5, 1.65), ("p", 1.65, 2.0), ("_", 2.0, 2.5), ("_", 2.5, 3.0)]
    # leading: 0 to 1.0 s less 0.1 s before speech; the 0.15 s pause is skipped; trailing: 2.1 s to the end
    assert real_speech_eval.pause_apertures(aperture, segments, fps) == list(range(0, 9)) + list(range(21, 30))


def test_the_report_and_the_cli_on_a_tiny_corpus(corpus, model, tmp_path, capsys, monkeypatch):
    report = real_speech_eval.evaluate(model, corpus, "test")
    assert report["clips"] == 2 and report["speakers"] == 1 and report["minutes"] > 0
    every = report["model"]["all"]
    # The recogniser's figure is model_core's own PER over the split.
    assert every["PER"] == pytest.approx(phoneme_recognition(model, DatasetInfo.open(corpus), "test")["PER"])
    assert 0 <= every["closure_rate"] <= 1 and every["ratio"] > 0 and every["pause_aperture_mm"] >= 0
    assert report["ground_truth"]["all"]["closure_rate"] >= 0.9 and report["ground_truth"]["all"]["PER"] is None

    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["real_speech_eval.py", "--data", str(corpus), "--json", str(out)])
    real_speech_eval.main()
    printed = capsys.readouterr().out
    assert real_speech_eval.GOALS_LINE in printed and "ground truth" in printed
    written = json.loads(out.read_text())
    assert written["model"]["all"] == pytest.approx(every) and written["bilabials"] == every["bilabials"]


def test_clear_errors(corpus, model, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(corpus / "wav")], capture_output=True, text=True)
    assert done.returncode != 0 and done.stderr.startswith("error: ") and "'wav/' folder" in done.stderr
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "shutting at most 5 % of open vowels" in " ".join(done.stdout.split())

    # A corpus without one clip's phoneme timings, and with an empty split.
    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken, ignore=shutil.ignore_patterns("params"))
    test_clip = TalkingFaceDataset(DatasetInfo.open(broken), "test").items[0].name
    (broken / "phonemes" / f"{test_clip}.json").unlink()
    with pytest.raises(DataError, match="no phoneme timings"):
        real_speech_eval.evaluate(model, broken, "test")
    meta = json.loads((broken / "dataset.json").read_text())
    meta["splits"]["test"]["subjects"] = []
    (broken / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="'test' split is empty"):
        real_speech_eval.evaluate(model, broken, "test")


def test_the_style_figure_correlates_drawn_jaw_amplitude_with_the_mean_chin_drop(tmp_path):
    amplitudes = {"a": 0.8, "b": 1.0, "c": 1.2, "d": 1.4}
    (tmp_path / "speakers.json").write_text(json.dumps([{"name": n, "style": {"jaw_amplitude": v}}
                                                        for n, v in amplitudes.items()]))
    follows = {n: {"model": [2e-3 * v, 2e-3 * v], "ground_truth": [3e-3 * v]} for n, v in amplitudes.items()}
    ignores = {n: {"model": [2e-3 * (2.2 - v)], "ground_truth": [3e-3 * v]} for n, v in amplitudes.items()}
    assert real_speech_eval.style_correlation(tmp_path, follows)["model"] == pytest.approx(1.0)
    figures = real_speech_eval.style_correlation(tmp_path, ignores)
    assert figures["model"] == pytest.approx(-1.0) and figures["ground_truth"] == pytest.approx(1.0)
    assert real_speech_eval.style_correlation(tmp_path, {"a": follows["a"], "b": follows["b"]}) is None


def test_a_bilabial_bias_closes_the_lips_more_and_is_chosen_and_stored(corpus, tmp_path, capsys, monkeypatch):
    model = load_model(BUNDLED_MODEL)
    shipped = dict(model.config.phoneme_logit_bias)
    away, none, extreme = real_speech_eval.bias_sweep(model, corpus, "test", [-3.0, 0.0, 6.0])
    # The bias decides how readily the lips close: pulled away from p, b and m they stay open there;
    # pushed too far towards them the mouth shuts on open vowels too.
    assert away["closure_rate"] < none["closure_rate"] - 0.3
    assert away["bilabial_centre_mm"] > 2 * none["bilabial_centre_mm"]
    assert extreme["open_vowels_shut"] > 0.3 and extreme["ratio"] > 2 * none["ratio"]
    assert none["aperture_error_mm"] > 0 and model.config.phoneme_logit_bias == shipped  # the sweep leaves the model as it was

    allowed = dict(none, bilabial_bias=1.0, closure_rate=0.85, open_vowels_shut=0.02)
    too_eager = dict(none, bilabial_bias=2.0, closure_rate=0.95, open_vowels_shut=0.2)
    assert real_speech_eval.choose_bias([none | {"closure_rate": 0.3}, allowed, too_eager]) is allowed
    short = dict(allowed, closure_rate=0.6)
    assert real_speech_eval.choose_bias([none | {"closure_rate": 0.3}, short, too_eager]) is short

    folder = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, folder)
    weights = (folder / "model.safetensors").read_bytes()
    monkeypatch.setattr(sys, "argv", ["real_speech_eval.py", "--data", str(corpus), "--model", str(folder), "--split", "test",
                                      "--bilabial-bias", "6,1.5", "--write"])
    real_speech_eval.main()
    assert "<- chosen" in capsys.readouterr().out
    stored = load_model(folder)
    assert stored.config.phoneme_logit_bias == {"p": 1.5, "b": 1.5, "m": 1.5}
    assert (folder / "model.safetensors").read_bytes() == weights
