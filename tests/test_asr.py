"""`train --stage asr`: a backbone trained from scratch as a phoneme recogniser, then stage 1 on it."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from model_core.checkpoint import load_model
from model_core.cli import main
from model_core.data import DatasetInfo, TalkingFaceDataset, collate
from model_core.evaluate import edit_distance, greedy_ctc
from model_core.losses import asr_losses, bilabial_frame_weights, frame_labels, stage1_losses
from model_core.train import TrainOptions, _new_stage1_model, phoneme_vocabulary, train
from tests.conftest import tiny_backbone_config, write_phoneme_labels



@pytest.fixture
def labelled(dataset_dir, tmp_path):
    """The tiny dataset plus phoneme labels: a fixed sequence per clip, derived from its name."""
    root = tmp_path / "labelled"
    shutil.copytree(dataset_dir, root)
    write_phoneme_labels(root)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"feature_dim": 16, "decoder_ff_dim": 32, "style_channels": 16,
                                  "style_embedding_dim": 24, "style_dense_blocks": 2,
                                  "backbone_config": tiny_backbone_config()}))
    return root, config


def test_vocabulary_edit_distance_and_greedy_decoding(labelled):
    root, _ = labelled
    assert phoneme_vocabulary(DatasetInfo.open(root)) == ["<blank>", "a", "b", "i", "m", "s", "u"]
    assert edit_distance(list("kitten"), list("sitting")) == 3
    vocabulary = ["<blank>", "a", "b"]
    logits = torch.eye(3)[[1, 1, 0, 1, 2, 2, 0]]  # a a _ a b b _  ->  a a b
    assert greedy_ctc(logits, vocabulary) == ["a", "a", "b"]


def test_frame_labels_put_each_phoneme_on_the_frames_where_it_sounds():
    vocabulary = ["<blank>", "a", "b", "m"]
    segments = [("_", 0.0, 0.1), ("b", 0.1, 0.2), ("a", 0.2, 0.34), ("x", 0.34, 0.4), ("m", 0.4, 0.5)]
    # frame centres at 30 fps: 0.017 0.05 0.083 | 0.117 0.15 0.183 | 0.217 ... 0.317 | 0.35 0.383 | 0.417 0.45 0.483 | ...
    expected = [0, 0, 0, 2, 2, 2, 1, 1, 1, 1, 0, 0, 3, 3, 3, 0, 0]  # "x" is not in the vocabulary: blank
    assert frame_labels(segments, 17, 30.0, vocabulary).tolist() == expected


def test_asr_stage_trains_the_whole_backbone_and_stage1_starts_from_it(labelled, tmp_path):
    root, config = labelled
    best = train(TrainOptions(stage="asr", data=root, out=tmp_path / "asr", epochs=3, lr=3e-3, batch_size=4,
                              config=config, device="cpu", progress=False, asr_frame_weight=1.0))
    history = json.loads((tmp_path / "asr" / "history.json").read_text())
    assert history[-1]["train_ctc"] < history[0]["train_ctc"]
    assert history[-1]["train_frame"] < history[0]["train_frame"]
    assert all(0.0 <= h["val_PER"] <= 2.0 and 0.0 <= h["val_frame_accuracy"] <= 1.0 for h in history)
    model = load_model(best)
    assert model.config.vocabulary == ["<blank>", "a", "b", "i", "m", "s", "u"] and model.config.mem_slots == 7
    first = load_model(tmp_path / "asr" / "last")
    fresh = _new_stage1_model(TrainOptions(stage="asr", data=root, out=tmp_path / "x",
                                                                config=config), DatasetInfo.open(root))
    cnn = "audio_encoder.ctc.hubert.feature_extractor.conv_layers.1.conv.weight"
    assert not torch.equal(first.state_dict()[cnn], fresh.state_dict()[cnn])  # the CNN was trained too

    stage1 = train(TrainOptions(stage="1", data=root, out=tmp_path / "s1", epochs=1, init=best, device="cpu",
                                progress=False))
    trained = load_model(stage1)
    assert torch.equal(trained.state_dict()[cnn], load_model(best).state_dict()[cnn])  # stage 1 keeps the CNN
    assert trained.config.vocabulary == model.config.vocabulary

    baseline = load_model(train(TrainOptions(stage="1", data=root, out=tmp_path / "nomem", epochs=1, init=best,
                                             no_memory=True, device="cpu", progress=False)))
    assert not baseline.config.use_memory  # the ablation: same backbone start, no memory
    assert torch.equal(baseline.state_dict()[cnn], load_model(best).state_dict()[cnn])


def test_asr_loss_needs_labels_and_the_cli_says_what_is_missing(labelled, dataset_dir, tmp_path, capsys):
    root, config = labelled
    info = DatasetInfo.open(root)
    model = _new_stage1_model(TrainOptions(stage="asr", data=root, out=tmp_path / "x",
                                                                config=config), info)
    batch = collate([TalkingFaceDataset(info, "train")[i] for i in range(2)])
    ctc_only, with_frames = asr_losses(model, batch), asr_losses(model, batch, frame_weight=0.5)
    assert set(ctc_only) == {"ctc", "total"} and torch.isfinite(ctc_only["total"])
    assert torch.allclose(with_frames["total"], with_frames["ctc"] + 0.5 * with_frames["frame"])
    code = main(["train", "--stage", "asr", "--data", str(dataset_dir), "--out", str(tmp_path / "y"),
                 "--config", str(config), "--epochs", "1"])
    assert code == 2 and "has no phoneme labels" in capsys.readouterr().err


def test_bilabial_weight_counts_the_frames_of_p_b_m_more_in_the_frame_term_and_stage1(labelled, tmp_path, capsys):
    root, config = labelled
    info = DatasetInfo.open(root)
    model = _new_stage1_model(TrainOptions(stage="asr", data=root, out=tmp_path / "x", config=config), info)
    batch = collate([TalkingFaceDataset(info, "train")[i] for i in range(2)])
    frames = max(batch.frame_counts)
    weights = bilabial_frame_weights(batch, frames, model.config.fps, 4.0)
    for row, labels in zip(weights, batch.phoneme_segments):
        expected = frame_labels(labels, frames, model.config.fps, ["<blank>", "b", "m"]) > 0
        assert row.tolist() == [4.0 if bilabial else 1.0 for bilabial in expected.tolist()]
    assert (weights == 4.0).any() and (weights == 1.0).any()

    torch.manual_seed(0)
    plain = asr_losses(model.eval(), batch, frame_weight=1.0)
    weighted = asr_losses(model, batch, frame_weight=1.0, bilabial_weight=4.0)
    assert torch.equal(plain["ctc"], weighted["ctc"]) and not torch.isclose(plain["frame"], weighted["frame"])
    logits, mask = model.audio_encoder(batch.waveforms, batch.frame_counts)
    targets = torch.nn.utils.rnn.pad_sequence(
        [frame_labels(s, n, model.config.fps, model.config.vocabulary)
         for s, n in zip(batch.phoneme_segments, batch.frame_counts)], batch_first=True)
    errors = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
    assert torch.isclose(weighted["frame"], (errors * weights[mask]).sum() / weights[mask].sum(), rtol=1e-4)

    encoded = model.audio_encoder(batch.waveforms, batch.frame_counts)
    plain_mse = stage1_losses(model, batch, encoded)["mse"]
    assert abs(stage1_losses(model, batch, encoded, bilabial_weight=4.0)["mse"] - plain_mse) > 1e-3 * plain_mse

    for stage, extra in (("asr", []), ("2", ["--init", str(tmp_path)])):
        code = main(["train", "--stage", stage, "--data", str(root), "--out", str(tmp_path / "z"),
                     "--config", str(config), "--epochs", "1", "--bilabial-weight", "4", *extra])
        assert code == 2 and "--bilabial-weight" in capsys.readouterr().err
