import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import NUM_VERTICES, speech_like, tiny_model

from model_core import Animator, MemoryTalkerError, save_model
from model_core.audio import prepare
from model_core.cli import main
from model_core.motion_io import read_pc2


@pytest.fixture(scope="module")
def stylized_model():
    return tiny_model(seed=1, stylized=True)


def waveform(seconds, seed=0, sr=16000):
    return prepare(speech_like(seconds, sr, seed)[0], sr)


@pytest.mark.parametrize("fps", [23.976, 24, 25, 29.97, 30, 50, 60, 120])
def test_frame_count_follows_duration_and_fps(stylized_model, fps):
    motion = Animator(stylized_model, "cpu").animate(waveform(2.0), fps=fps)
    assert motion.displacements.shape == (round(2.0 * fps), NUM_VERTICES, 3)
    assert motion.displacements.dtype == np.float32 and motion.fps == fps


def test_native_rate_output_is_the_model_output(stylized_model):
    wave = waveform(1.7)
    motion = Animator(stylized_model, "cpu").animate(wave)
    with torch.inference_mode():
        direct = stylized_model([torch.from_numpy(wave.samples)], [51])[0].numpy()
    np.testing.assert_allclose(motion.displacements, direct, atol=1e-5)


def test_higher_fps_interpolates_between_model_frames(stylized_model):
    animator = Animator(stylized_model, "cpu")
    wave = waveform(1.0)
    native = animator.animate(wave).displacements
    double = animator.animate(wave, fps=60).displacements
    np.testing.assert_allclose(double[0:-2:2], native[:-1], atol=1e-6)
    np.testing.assert_allclose(double[1:-2:2], (native[:-1] + native[1:]) / 2, atol=1e-6)


def test_a_lower_fps_is_the_model_motion_interpolated_in_time(stylized_model):
    animator = Animator(stylized_model, "cpu")
    wave = waveform(3.0)
    native = animator.animate(wave).displacements
    film = animator.animate(wave, fps=24).displacements
    position = np.arange(len(film)) * 30 / 24
    left = np.minimum(np.floor(position).astype(int), len(native) - 1)
    right = np.minimum(left + 1, len(native) - 1)
    share = (position - left)[:, None, None]
    expected = native[left] * (1 - share) + native[right] * share
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(film, expected, atol=1e-6)


def test_chunked_output_equals_single_pass_when_the_clip_fits_one_window(stylized_model):
    wave = waveform(4.0)
    single = Animator(stylized_model, "cpu", window_seconds=30).animate(wave).displacements
    fitted = Animator(stylized_model, "cpu", window_seconds=4.2, overlap_seconds=1).animate(wave).displacements
    np.testing.assert_array_equal(single, fitted)


class _NoPositionalConv(torch.nn.Module):
    def forward(self, hidden):
        return torch.zeros_like(hidden)


def frame_local(model):
    """The same model with every attention and the positional convolution silenced: each output
    frame then depends only on its own stretch of audio, so windowed and whole-clip inference
    must agree exactly; any error in window alignment, cross-fade or resampling would show."""
    with torch.no_grad():
        for layer in model.audio_encoder.base.encoder.layers:
            layer.attention.out_proj.weight.zero_()
            layer.attention.out_proj.bias.zero_()
        for layer in model.decoder:
            layer.self_attn.out_proj.weight.zero_()
            layer.self_attn.out_proj.bias.zero_()
    model.audio_encoder.base.encoder.pos_conv_embed = _NoPositionalConv()
    return model


@pytest.mark.parametrize("fps", [30, 24, 60])
def test_chunked_long_audio_matches_single_pass(fps):
    model = frame_local(tiny_model(seed=2, stylized=True))  # group-norm CNN: needs whole-clip statistics
    wave = waveform(12.0, seed=5)
    single = Animator(model, "cpu", window_seconds=60).animate(wave, fps=fps).displacements
    chunked_animator = Animator(model, "cpu", window_seconds=3, overlap_seconds=0.6)
    assert len(chunked_animator.windows(360)) > 4
    chunked = chunked_animator.animate(wave, fps=fps).displacements
    assert chunked.shape == single.shape == (12 * fps, NUM_VERTICES, 3)
    np.testing.assert_allclose(chunked, single, atol=2e-5 * np.abs(single).max())


def test_chunked_output_of_a_full_attention_model_has_no_seams(stylized_model):
    wave = waveform(12.0, seed=5)
    single = Animator(stylized_model, "cpu", window_seconds=60).animate(wave).displacements
    chunked = Animator(stylized_model, "cpu", window_seconds=3, overlap_seconds=0.6).animate(wave).displacements
    # Frame-to-frame jumps stay within what the single pass itself does (the cross-fade hides joins).
    jump = lambda m: np.abs(np.diff(m, axis=0)).max(axis=(1, 2))  # noqa: E731
    assert jump(chunked).max() <= 1.2 * jump(single).max()


def test_silent_audio_gives_neutral_motion(stylized_model):
    silent = prepare(np.zeros(24000, np.float32), 16000)
    motion = Animator(stylized_model, "cpu").animate(silent, fps=24)
    assert motion.displacements.shape == (36, NUM_VERTICES, 3) and not motion.displacements.any()


def test_style_strength_and_style_reference(stylized_model):
    animator = Animator(stylized_model, "cpu")
    content, other = waveform(2.0, seed=1), prepare(speech_like(2.0, 16000, seed=9, pitch=260, loudness=0.9)[0], 16000)
    generic = animator.animate(content, style_strength=0.0).displacements
    own = animator.animate(content, style_strength=1.0).displacements
    half = animator.animate(content, style_strength=0.5).displacements
    borrowed = animator.animate(content, style_audio=other).displacements
    assert not np.allclose(generic, own) and not np.allclose(own, borrowed)
    assert np.abs(half - generic).mean() < np.abs(own - generic).mean()
    np.testing.assert_array_equal(animator.animate(content, style_audio=content).displacements, own)
    with pytest.raises(MemoryTalkerError, match="between 0 and 1"):
        animator.animate(content, style_strength=1.5)


def test_style_of_a_stage1_model_is_ignored():
    model = tiny_model(seed=1, stylized=False)
    animator = Animator(model, "cpu")
    wave = waveform(1.0)
    np.testing.assert_array_equal(animator.animate(wave, style_strength=0.0).displacements,
                                  animator.animate(wave, style_strength=1.0).displacements)


def test_unsupported_fps_and_missing_cuda_are_reported(stylized_model):
    with pytest.raises(MemoryTalkerError, match="outside the supported"):
        Animator(stylized_model, "cpu").animate(waveform(1.0), fps=10)
    if not torch.cuda.is_available():
        with pytest.raises(MemoryTalkerError, match="no usable CUDA"):
            Animator(stylized_model, "cuda")


def test_cli_animate_writes_npy_npz_and_pc2(tmp_path, stylized_model, capsys):
    with torch.no_grad():
        stylized_model.template.normal_()
    save_model(stylized_model, tmp_path / "model")
    audio, _ = speech_like(1.5, 44100, seed=4)
    sf.write(tmp_path / "line.wav", np.stack([audio, audio], 1), 44100)
    sf.write(tmp_path / "other.flac", audio, 44100)
    base = ["animate", "--model", str(tmp_path / "model"), "--device", "cpu"]

    assert main([*base, str(tmp_path / "line.wav"), "--out", str(tmp_path / "a.npy")]) == 0
    npy = np.load(tmp_path / "a.npy")
    assert npy.shape == (45, NUM_VERTICES, 3)

    assert main([*base, str(tmp_path / "line.wav"), "--fps", "24", "--out", str(tmp_path / "a.npz")]) == 0
    with np.load(tmp_path / "a.npz") as z:
        assert z["displacements"].shape == (36, NUM_VERTICES, 3) and float(z["fps"]) == 24.0
        np.testing.assert_array_equal(z["template"], stylized_model.template.numpy())
        assert json.loads(str(z["metadata"]))["audio"].endswith("line.wav")

    assert main([*base, str(tmp_path / "line.wav"), "--out", str(tmp_path / "a.pc2")]) == 0
    positions, start, rate = read_pc2(tmp_path / "a.pc2")
    np.testing.assert_allclose(positions, npy + stylized_model.template.numpy(), atol=1e-6)
    assert (start, rate) == (0.0, 1.0)

    assert main([*base, str(tmp_path / "line.wav"), str(tmp_path / "other.flac"), "--format", "pc2",
                 "--style-strength", "0.5", "--style-audio", str(tmp_path / "other.flac"), "--out", str(tmp_path / "batch")]) == 0
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["line.pc2", "other.pc2"]
    assert not list(tmp_path.glob("*.npy.tmp*")) and not any(p.suffix == ".npy" for p in (tmp_path / "batch").iterdir())


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["animate", str(tmp_path / "missing.wav"), "--model", str(tmp_path), "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a MemoryTalker model folder" in err
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("seconds", [0.005, 0.03, 0.1])
def test_very_short_audio_still_animates(stylized_model, seconds):
    motion = Animator(stylized_model, "cpu").animate(waveform(seconds), fps=30)
    assert motion.displacements.shape == (max(1, round(seconds * 30)), NUM_VERTICES, 3)
    assert np.isfinite(motion.displacements).all()


def test_animate_without_model_uses_the_bundled_one(tmp_path, wav_file, monkeypatch, capsys):
    from model_core import checkpoint, save_model
    from model_core.cli import main
    from tests.conftest import tiny_model

    monkeypatch.setattr(checkpoint, "BUNDLED_MODEL", tmp_path / "missing")
    assert main(["animate", str(wav_file), "--out", str(tmp_path / "a.npy")]) == 2
    assert "no bundled demo model; pass --model" in capsys.readouterr().err
    save_model(tiny_model(), tmp_path / "bundled")
    monkeypatch.setattr(checkpoint, "BUNDLED_MODEL", tmp_path / "bundled")
    assert main(["animate", str(wav_file), "--out", str(tmp_path / "a.npy")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (60, 40, 3)  # 2 s at the model's 30 fps, 40 vertices


def test_a_line_past_the_half_precision_length_animates_as_in_full_precision(tmp_path, monkeypatch):
    from model_core import audio
    from model_core.checkpoint import BUNDLED_MODEL

    path = tmp_path / "long.wav"
    sf.write(path, speech_like(3.0, 44100, seed=4)[0], 44100)
    # The bundled model (a random tiny one amplifies any change); short windows, so that the clip
    # statistics, the style chunks and the window cross-fades all see the samples.
    animator = Animator.from_folder(BUNDLED_MODEL, "cpu", window_seconds=1.0, overlap_seconds=0.2)
    full = animator.animate(path).displacements
    monkeypatch.setattr(audio, "HALF_PRECISION_SECONDS", 2.0)
    long_line = animator.load(path)
    assert long_line.samples.dtype == np.float16
    assert abs(float(long_line.samples.astype(np.float64).mean())) < 1e-3
    assert abs(float(long_line.samples.astype(np.float64).std()) - 1) < 1e-3
    half = animator.animate(long_line).displacements
    assert half.dtype == np.float32 and half.shape == full.shape
    assert np.abs(half - full).max() < 0.05e-3  # metres: half the finest default shape-key tolerance
