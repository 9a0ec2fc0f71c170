import re

import numpy as np
import pytest
import soundfile as sf
from conftest import speech_like

from model_core import AudioError, load_audio
from model_core.audio import prepare


@pytest.mark.parametrize("ext,subtype,rate,channels", [
    ("wav", "PCM_16", 48000, 2), ("flac", "PCM_24", 44100, 1), ("ogg", "VORBIS", 22050, 2),
    ("mp3", "MPEG_LAYER_III", 44100, 1), ("wav", "FLOAT", 8000, 6),
])
def test_reads_common_formats_rates_and_channel_counts(tmp_path, ext, subtype, rate, channels):
    audio, _ = speech_like(1.5, rate, seed=1)
    path = tmp_path / f"x.{ext}"
    sf.write(path, np.repeat(audio[:, None], channels, axis=1), rate, subtype=subtype)
    wave = load_audio(path)
    assert wave.sample_rate == 16000
    assert abs(wave.duration - 1.5) < 0.06  # MP3 adds encoder padding
    assert abs(float(wave.samples.mean())) < 1e-4 and abs(float(wave.samples.std()) - 1) < 1e-3
    assert not wave.silent


def test_stereo_is_mixed_to_mono(tmp_path):
    left, _ = speech_like(1.0, 16000, seed=2)
    path = tmp_path / "s.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path).samples, prepare(left, 16000).samples, rtol=1e-4, atol=1e-4)


def test_missing_file_folder_and_garbage_give_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="is a folder"):
        load_audio(tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="cannot read this audio file.*WAV, FLAC, OGG and MP3") as raised:
        load_audio(tmp_path / "bad.wav")
    assert str(raised.value).count(str(tmp_path / "bad.wav")) == 1  # libsndfile's own message names it too


def test_empty_audio_is_rejected(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "e.wav")
    with pytest.raises(AudioError, match="empty"):
        prepare(np.zeros(0), 16000)


def test_nan_samples_are_rejected_with_their_time(tmp_path):
    audio, _ = speech_like(1.0, 16000, seed=0)
    audio[8000] = np.nan
    sf.write(tmp_path / "n.wav", audio, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"NaN or infinite samples \(first at 0\.500 s\)"):
        load_audio(tmp_path / "n.wav")
    with pytest.raises(AudioError, match="NaN"):
        prepare(audio, 16000)


def test_silent_audio_is_accepted_and_flagged(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(16000, np.float32), 16000)
    wave = load_audio(tmp_path / "z.wav")
    assert wave.silent and wave.duration == 1.0 and not wave.samples.any()


def cut_wav(path, seconds, keep_seconds=None, keep_bytes=None, subtype="PCM_16"):
    """A proper WAV of `seconds` whose audio bytes are cut after `keep_seconds` (or `keep_bytes`)."""
    audio, _ = speech_like(seconds, 16000, seed=4)
    sf.write(path, audio, 16000, subtype=subtype)
    data = path.read_bytes()
    width = 2 if subtype == "PCM_16" else 4  # bytes per sample
    header = len(data) - width * len(audio)
    path.write_bytes(data[:header + (keep_bytes if keep_bytes is not None else int(keep_seconds * 16000) * width)])
    return path


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_a_truncated_wav_is_read_with_a_warning_that_says_how_much_is_missing(tmp_path, caplog, subtype):
    path = cut_wav(tmp_path / "cut.wav", 2.0, keep_seconds=1.0, subtype=subtype)
    wave = load_audio(path)
    assert wave.duration == 1.0
    assert f"{path}: the file is truncated: its header declares 2.00 s of audio but only 1.00 s is present" in caplog.text


def test_a_wav_that_holds_nearly_nothing_of_what_its_header_declares_is_refused(tmp_path):
    path = cut_wav(tmp_path / "cut.wav", 2.0, keep_bytes=6)
    with pytest.raises(AudioError, match=re.escape(f"{path}: the header declares 2.00 s but the file holds 6 bytes of "
                                                   "audio") + ".*truncated; re-export"):
        load_audio(path)


def test_complete_wavs_raise_no_truncation_warning(tmp_path, caplog):
    audio, _ = speech_like(1.0, 16000, seed=4)
    sf.write(tmp_path / "whole.wav", audio, 16000)
    load_audio(tmp_path / "whole.wav")
    assert "truncated" not in caplog.text
