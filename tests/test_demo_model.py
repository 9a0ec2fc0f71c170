"""The bundled demo model (model_core/models/demo): loads offline and talks plausibly."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model_core import Animator, load_model
from model_core.checkpoint import BUNDLED_MODEL
from model_core.synthetic.head import demo_head
from model_core.synthetic.speech import ESpeak
from model_core.synthetic.visemes import BILABIAL, expand

SENTENCE = "Bob and Pam bought a map, but the cat sat far away."
STRENGTHS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def spoken():
    # A private espeak-ng with pristine state: its output depends on what the process synthesised before.
    utterance = ESpeak(fresh=True).synthesize(SENTENCE, "en-us-nyc+m7", rate=165, pitch=35)  # a voice unseen in training
    model = load_model(BUNDLED_MODEL)
    animator = Animator(model, "cpu")
    motions = {s: animator.animate(utterance.samples, fps=30, style_strength=s, sample_rate=utterance.sample_rate)
               for s in STRENGTHS}
    return model, utterance, motions


def lip_aperture(displacements: np.ndarray) -> np.ndarray:
    """Distance between the upper and lower lip centres of the demo head, per frame (metres)."""
    head = demo_head()
    lips = head.vertices[None] + displacements
    return np.linalg.norm(lips[:, head.landmarks["upper_lip_center"]] - lips[:, head.landmarks["lower_lip_center"]], axis=1)


def test_the_bundled_model_loads_and_gives_motion_of_the_right_length(spoken):
    model, utterance, motions = spoken
    assert model.config.num_vertices == len(demo_head().vertices) and model.config.stylized
    assert model.config.vocabulary is not None and len(model.config.vocabulary) == model.config.mem_slots
    frames = round(len(utterance.samples) / utterance.sample_rate * 30)
    assert motions[1.0].displacements.shape == (frames, len(demo_head().vertices), 3)
    assert np.isfinite(motions[1.0].displacements).all()


def apertures_at(utterance, aperture: np.ndarray, names: set[str], margin: int = 0) -> list[float]:
    """The smallest aperture within `margin` frames of each segment of the given phonemes."""
    out = []
    for name, start, end in expand(utterance.phonemes):
        if name in names:
            first = max(int(start * 30) - margin, 0)
            last = min(int(np.ceil(end * 30)) + margin, len(aperture) - 1)
            out.append(float(aperture[first:last + 1].min() if margin else aperture[min(int((start + end) / 2 * 30), len(aperture) - 1)]))
    return out


def test_it_opens_the_mouth_on_vowels_more_than_on_bilabials(spoken):
    _, utterance, motions = spoken
    aperture = lip_aperture(motions[1.0].displacements)
    closed = apertures_at(utterance, aperture, BILABIAL)
    opened = apertures_at(utterance, aperture, {"a", "ɑ", "æ", "ɔ"})
    assert len(closed) >= 4 and len(opened) >= 4
    assert np.median(opened) > 0.008  # open vowels: the mouth opens by more than 8 mm
    assert np.median(closed) < 0.8 * np.median(opened)


def test_it_closes_the_lips_on_bilabials(spoken):
    _, utterance, motions = spoken
    aperture = lip_aperture(motions[1.0].displacements)
    closest = apertures_at(utterance, aperture, BILABIAL, margin=1)
    assert np.median(closest) < 0.002  # lips within 2 mm around most p, b, m


def test_style_strength_changes_the_motion_monotonically(spoken):
    _, _, motions = spoken
    base = motions[0.0].displacements
    change = [float(np.abs(motions[s].displacements - base).mean()) for s in STRENGTHS[1:]]
    assert 0.0 < change[0] < change[1]
    # and the change is a steady one: halfway in strength is roughly halfway in motion
    assert 0.3 < change[0] / change[1] < 0.7


def test_the_model_card_shows_the_table_its_command_wrote():
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("model_card_table", root / "scripts" / "model_card_table.py")
    table_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_script)
    document = json.loads((root / "docs" / "model_card_results.json").read_text())
    assert [label for label, _, _ in table_script.ROWS] == list(document["results"])
    assert table_script.render(document) in (root / "docs" / "model_card.md").read_text()


def test_the_model_card_table_keeps_the_saved_rows_of_steps_not_trained_again(tmp_path, monkeypatch, capsys):
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("model_card_table", root / "scripts" / "model_card_table.py")
    table_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table_script)
    saved, card = tmp_path / "results.json", tmp_path / "card.md"
    saved.write_text((root / "docs" / "model_card_results.json").read_text())
    card.write_text("before\n" + "\n".join(table_script.MARKERS) + "\nafter\n")
    command = ["model_card_table.py", "--data", str(tmp_path / "no-corpus"), "--runs", str(tmp_path / "runs"),
               "--out", str(saved), "--card", str(card)]
    monkeypatch.setattr(sys, "argv", command)
    table_script.main()  # no run folder at all: every row comes from the saved figures, no corpus is read
    assert table_script.render(json.loads(saved.read_text())) in card.read_text()
    assert "(a) no memory: no " in capsys.readouterr().out
    saved.unlink()
    with pytest.raises(SystemExit, match="train that step first"):
        table_script.main()


def test_the_demo_shows_the_whole_utterance_and_nothing_after_it(tmp_path):
    """./demo.sh's scene, preview sheet and video span exactly the speech, not Blender's default 250 frames."""
    utterance = ESpeak().synthesize("Map.", "en-us+m3", rate=160, pitch=40)
    audio = tmp_path / "line.wav"
    sf.write(audio, utterance.samples, utterance.sample_rate)
    frames = round(len(utterance.samples) / utterance.sample_rate * 30)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "demo.py"), str(audio), "--out", str(tmp_path / "out"),
                           "--frames", "2", "--no-video"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"(frames 1, {frames})" in done.stdout
    assert (tmp_path / "out" / "demo.blend").is_file() and (tmp_path / "out" / "demo_preview.png").is_file()
