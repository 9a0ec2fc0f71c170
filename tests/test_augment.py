import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import speech_like, tiny_config, tiny_model, write_dataset
from safetensors.torch import load_file

from model_core.augment import (CODECS, EFFECTS, Augmentation, babble, change_speed, codec_round_trip, mix_at_snr,
                                pink_noise, record_at_level, reverberate, room_response, telephone_band, white_noise)
from model_core.checkpoint import load_model, save_model
from model_core.cli import main
from model_core.data import DatasetInfo, TalkingFaceDataset
from model_core.errors import MemoryTalkerError
from model_core.evaluate import evaluate_model
from model_core.train import FixedBackboneLogits

SR = 16000
FPS = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny corpus of conftest, with phoneme labels."""
    root = write_dataset(tmp_path_factory.mktemp("augment"), ["SpkA", "SpkB", "SpkC"], range(1, 5))
    (root / "phonemes").mkdir()
    for wav in (root / "wav").glob("*.wav"):
        seconds = sf.info(wav).duration
        segments = [["_", 0.0, 0.2], ["p", 0.2, 0.4], ["a", 0.4, seconds - 0.1], ["_", seconds - 0.1, seconds]]
        (root / "phonemes" / f"{wav.stem}.json").write_text(json.dumps(segments))
    return root


def at_level(samples: np.ndarray, rms: float = 0.1) -> np.ndarray:
    return samples / np.sqrt(np.mean(np.square(samples, dtype=np.float64))) * rms


def band_power(samples: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    frequencies = np.fft.rfftfreq(len(samples), 1 / SR)
    return float(spectrum[(frequencies >= low_hz) & (frequencies < high_hz)].sum())


def lag_of(reference: np.ndarray, delayed: np.ndarray) -> int:
    """The shift (in samples) that best aligns `delayed` with `reference`, by cross-correlation."""
    size = 1 << (len(reference) + len(delayed)).bit_length()
    correlation = np.fft.irfft(np.fft.rfft(delayed, size) * np.conj(np.fft.rfft(reference, size)), size)
    peak = int(np.argmax(correlation))
    return peak if peak < size // 2 else peak - size


def test_an_epoch_sounds_the_same_on_every_run_and_the_next_epoch_differs(corpus):
    info = DatasetInfo.open(corpus)
    augmented = TalkingFaceDataset(info, "train", seed=3, augmentation=Augmentation(1.0))
    first = augmented[2]
    again = TalkingFaceDataset(info, "train", seed=3, augmentation=Augmentation(1.0))[2]
    for key in ("audio", "vertices"):
        assert torch.equal(first[key], again[key])
    assert first["phoneme_segments"] == again["phoneme_segments"]

    clean = TalkingFaceDataset(info, "train", seed=3)[2]
    assert first["audio"].shape != clean["audio"].shape or not torch.equal(first["audio"], clean["audio"])
    augmented.set_epoch(1)
    next_epoch = augmented[2]
    assert next_epoch["audio"].shape != first["audio"].shape or not torch.allclose(next_epoch["audio"], first["audio"])
    assert next_epoch["phoneme_segments"] != first["phoneme_segments"]  # another speed


def test_speed_perturbation_moves_a_click_its_phonemes_and_its_motion_together():
    seconds, click_s = 1.5, 0.6
    waveform = np.zeros(int(seconds * SR))
    waveform[int(click_s * SR)] = 1.0
    vertices = np.zeros((round(seconds * FPS), 6), np.float32)
    vertices[round(click_s * FPS)] = 1.0  # the mouth opens on the click
    segments = [("_", 0.0, click_s), ("p", click_s, 0.7), ("a", 0.7, seconds)]
    for factor in (0.9, 1.1):
        audio, moved_segments, moved_vertices = change_speed(waveform, segments, vertices, factor, SR)
        new_seconds = len(audio) / SR
        assert new_seconds == pytest.approx(seconds / factor, abs=1 / SR)
        assert np.argmax(np.abs(audio)) / SR == pytest.approx(click_s / factor, abs=1e-3)
        assert moved_segments[1][1] == pytest.approx(click_s / factor, abs=1e-3)
        assert moved_segments[-1][2] == pytest.approx(new_seconds, abs=1e-9)
        assert len(moved_vertices) == round(new_seconds * FPS)
        assert abs(np.argmax(moved_vertices[:, 0]) / FPS - click_s / factor) < 1 / FPS

    # Through the augmentation, at a random factor: sound, labels and motion agree on the new time.
    clip = Augmentation({"speed": 1.0})(waveform.astype(np.float32), segments, vertices,
                                        rng=Augmentation.generator(0, 0, 0))
    click_now = np.argmax(np.abs(clip.waveform)) / SR
    assert clip.effects == ["speed"] and clip.waveform.dtype == np.float32
    assert clip.phoneme_segments[1][1] == pytest.approx(click_now, abs=1e-3)
    assert len(clip.vertices) == round(len(clip.waveform) / SR * FPS)
    assert abs(np.argmax(clip.vertices[:, 0]) / FPS - click_now) < 1 / FPS


def test_telephone_band_removes_everything_above_4_khz():
    noise = at_level(white_noise(SR, np.random.default_rng(0)))
    phone = telephone_band(noise, SR, with_high_pass=False)
    assert len(phone) == len(noise)
    assert band_power(phone, 4000, 8001) < 1e-4 * band_power(noise, 4000, 8001)  # 40 dB down
    assert band_power(phone, 300, 3000) == pytest.approx(band_power(noise, 300, 3000), rel=0.05)
    with_edge = telephone_band(noise, SR, with_high_pass=True)
    assert band_power(with_edge, 20, 150) < 0.03 * band_power(noise, 20, 150)  # the 300 Hz lower edge
    assert band_power(with_edge, 1000, 3000) == pytest.approx(band_power(noise, 1000, 3000), rel=0.05)


def test_noise_is_mixed_at_the_requested_snr():
    rng = np.random.default_rng(1)
    speech = at_level(speech_like(2.0, SR, seed=1)[0].astype(np.float64))
    voices = [speech_like(s, SR, seed=10 + i)[0] for i, s in enumerate((0.7, 1.3, 2.5))]
    noises = {"white": white_noise(len(speech), rng), "pink": pink_noise(len(speech), rng),
              "babble": babble(len(speech), voices, rng)}
    for kind, noise in noises.items():
        for snr_db in (5.0, 20.0):
            mixed = mix_at_snr(speech, noise, snr_db)
            measured = 10 * np.log10(np.mean(speech ** 2) / np.mean((mixed - speech) ** 2))
            assert measured == pytest.approx(snr_db, abs=1.0), kind
    # pink: the same power in every octave; white: twice as much in each octave up
    pink, white = noises["pink"], noises["white"]
    assert 10 * np.log10(band_power(pink, 2000, 4000) / band_power(pink, 250, 500)) == pytest.approx(0, abs=1.5)
    assert 10 * np.log10(band_power(white, 2000, 4000) / band_power(white, 250, 500)) == pytest.approx(9, abs=1.5)


def test_babble_is_made_of_other_clips():
    drawn = []

    def other_clip(rng):
        drawn.append(1)
        return speech_like(1.0, SR, seed=len(drawn))[0]

    speech = speech_like(1.0, SR, seed=0)[0]
    kinds = Augmentation({"noise": 1.0})
    for index in range(12):
        before = len(drawn)
        clip = kinds(speech, rng=Augmentation.generator(0, 0, index), other_clip=other_clip)
        assert clip.effects == ["noise"] and (len(drawn) - before) in (0, 3, 4, 5, 6)
    assert drawn  # some of the twelve clips got babble


def test_codec_round_trips_keep_length_and_timing():
    speech = at_level(speech_like(2.0, SR, seed=2)[0][:31999].astype(np.float64))
    for codec, (_, levels) in CODECS.items():
        for level in levels:
            decoded = codec_round_trip(speech, codec, level, SR)
            assert len(decoded) == len(speech)
            assert abs(lag_of(speech, decoded)) <= 1, (codec, level)
            assert np.corrcoef(speech, decoded)[0, 1] > 0.8, (codec, level)


def test_reverberation_decays_60_db_in_rt60_behind_an_undelayed_direct_path():
    response = room_response(0.4, 6.0, SR, np.random.default_rng(0))
    impulse = np.zeros(SR)
    impulse[100] = 1.0
    heard = reverberate(impulse, response)
    assert np.argmax(np.abs(heard)) == 100 and len(heard) == len(impulse)
    tail = response[1:]
    assert 10 * np.log10(1 / np.sum(tail ** 2)) == pytest.approx(6.0, abs=1e-6)
    # Schroeder's backward integral, fitted from -5 to -25 dB (T20) and extrapolated to 60 dB
    decay_db = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] / np.sum(tail ** 2))
    t20 = (np.argmax(decay_db < -25) - np.argmax(decay_db < -5)) / SR
    assert 3 * t20 == pytest.approx(0.4, rel=0.15)


def test_every_effect_at_once_keeps_the_waveform_finite_float32_and_normalised():
    loud = speech_like(1.2, SR, seed=4, loudness=30.0)[0]  # far beyond full scale
    assert np.abs(record_at_level(loud, 12.0)).max() == 1.0
    augmentation = Augmentation(1.0)
    for index in range(3):
        clip = augmentation(loud, rng=augmentation.generator(5, 0, index),
                            other_clip=lambda rng: speech_like(0.8, SR, seed=int(rng.integers(100)))[0])
        assert clip.effects == list(EFFECTS)
        assert clip.waveform.dtype == np.float32 and np.isfinite(clip.waveform).all()
        assert abs(clip.waveform.mean()) < 1e-3 and clip.waveform.std() == pytest.approx(1.0, abs=1e-3)


def test_bad_augmentation_options_are_clear_errors(dataset_dir, tmp_path, capsys):
    with pytest.raises(MemoryTalkerError, match="from 0 to 1"):
        Augmentation(1.5)
    with pytest.raises(MemoryTalkerError, match="unknown augmentation effect"):
        Augmentation({"echo": 0.5})
    with pytest.raises(MemoryTalkerError, match="sample rate"):
        Augmentation(0.5, sample_rate=22050)
    assert main(["train", "--stage", "1", "--data", str(dataset_dir), "--out", str(tmp_path / "x"),
                 "--augment-prob", "0.5"]) == 2
    assert "give --augment too" in capsys.readouterr().err


def test_triplet_clips_are_augmented_without_a_speed_change(corpus):
    info = DatasetInfo.open(corpus)
    clean = TalkingFaceDataset(info, "train", triplets=True)[0]
    augmented = TalkingFaceDataset(info, "train", triplets=True, augmentation=Augmentation(1.0))[0]
    assert len(augmented["audio"]) != len(clean["audio"])  # the clip itself: speed changed
    for key in ("positive_audio", "negative_audio"):
        assert augmented[key].shape == clean[key].shape and not torch.allclose(augmented[key], clean[key])


def test_train_cli_augments_records_it_validates_on_clean_audio_and_resumes_exactly(corpus, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    fields = tiny_config().to_dict()
    kept = ("feature_dim", "decoder_ff_dim", "backbone", "backbone_config", "style_channels", "style_embedding_dim",
            "style_dense_blocks")
    config.write_text(json.dumps({k: fields[k] for k in kept}))
    run = tmp_path / "run"
    plain = ["train", "--stage", "1", "--data", str(corpus), "--config", str(config), "--device", "cpu",
             "--batch-size", "3"]
    common = [*plain, "--augment", "--augment-prob", "1"]
    assert main([*common, "--out", str(run), "--epochs", "1"]) == 0
    metadata = json.loads((run / "last" / "config.json").read_text())["metadata"]
    assert metadata["augmentation"] == dict.fromkeys(EFFECTS, 1.0)
    history = json.loads((run / "history.json").read_text())
    clean_val = evaluate_model(load_model(run / "last"), DatasetInfo.open(corpus), "val", progress=False)
    assert history[0]["val_LVE"] == pytest.approx(clean_val["LVE"], rel=1e-6)

    assert main([*plain, "--out", str(run), "--epochs", "2", "--resume"]) == 2
    assert "was trained with --augment (probabilities {'speed': 1.0" in capsys.readouterr().err
    # every epoch's audio comes from (seed, epoch, clip): a resumed run hears what a straight one does
    assert main([*common, "--out", str(run), "--epochs", "2", "--resume"]) == 0
    assert main([*common, "--out", str(tmp_path / "straight"), "--epochs", "2"]) == 0
    straight = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    resumed = load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_fixed_backbone_hears_each_epochs_augmented_audio(corpus, tmp_path, monkeypatch):
    """Stage 1 with --freeze-backbone keeps each clip's logits; with --augment they must not be kept,
    since every epoch changes the audio (and, through speed, the number of frames)."""
    seen: dict[str, list[torch.Tensor]] = {}

    class Recording(FixedBackboneLogits):
        def __call__(self, batch):
            logits, mask = super().__call__(batch)
            for row, (name, waveform, frames) in enumerate(zip(batch.names, batch.waveforms, batch.frame_counts)):
                assert torch.equal(logits[row, :frames], self.encoder([waveform], [frames])[0][0])
                seen.setdefault(name, []).append(logits[row, :frames].clone())
            return logits, mask

    monkeypatch.setattr("model_core.train.FixedBackboneLogits", Recording)
    init = tmp_path / "init"
    save_model(tiny_model(seed=0, randomize_output=False), init)
    assert main(["train", "--stage", "1", "--data", str(corpus), "--init", str(init), "--device", "cpu",
                 "--batch-size", "3", "--epochs", "2", "--freeze-backbone", "--augment", "--augment-prob", "1",
                 "--out", str(tmp_path / "frozen")]) == 0
    assert len(seen) == 6 and all(len(per_epoch) == 2 for per_epoch in seen.values())
    for first, second in seen.values():
        assert first.shape != second.shape or not torch.allclose(first, second)
    after = load_file(str(tmp_path / "frozen" / "last" / "model.safetensors"))
    before = load_file(str(init / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("audio_encoder."))
