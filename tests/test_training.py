import json
import shutil

import numpy as np
import pytest
import torch
from conftest import LIPS, UPPER, tiny_config, tiny_model
from safetensors.torch import load_file

from model_core.checkpoint import load_model, save_model
from model_core.cli import main
from model_core.data import DatasetInfo, TalkingFaceDataset, collate
from model_core.losses import masked_mse, stage1_losses, stage2_losses
from model_core.train import FixedBackboneLogits, ProjectedVertexError, make_optimizer


def losses_over_steps(model, batch, step_fn, steps=25, lr=2e-3):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        losses = step_fn(model, batch)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append(float(losses["total"].detach()))
    return history


def test_dataset_layout_splits_and_triplets(dataset_dir):
    info = DatasetInfo.open(dataset_dir)
    train = TalkingFaceDataset(info, "train", triplets=True, seed=1)
    assert len(train) == 6 and {i.subject for i in train.items} == {"SpkA", "SpkB"}
    assert {i.name for i in TalkingFaceDataset(info, "test").items} == {f"SpkC_sentence0{k}" for k in range(1, 5)}
    sample = train[0]
    raw = np.load(dataset_dir / "vertices_npy" / f"{sample['name']}.npy")
    np.testing.assert_array_equal(sample["vertices"].numpy(), raw[::2])  # 60 -> 30 fps
    assert list(info.lip_indices) == LIPS and list(info.upper_face_indices) == UPPER
    again = train[0]
    assert torch.equal(sample["negative_audio"], again["negative_audio"])  # reproducible per (seed, epoch, index)
    batch = collate([train[0], train[3]])
    assert batch.vertices.shape[0] == 2 and batch.mask.sum().item() == sum(batch.frame_counts)


def test_stage1_steps_reduce_the_loss_with_padded_batches(dataset_dir):
    info = DatasetInfo.open(dataset_dir)
    batch = collate([TalkingFaceDataset(info, "train")[i] for i in (0, 3, 5)])
    model = tiny_model(seed=0, randomize_output=False)
    model.set_stage("1")
    model.train()
    history = losses_over_steps(model, batch, stage1_losses)
    assert history[-1] < 0.75 * history[0]


def test_adam_eps_sets_how_far_steps_on_metre_scale_gradients_go():
    """Stage 1 of the demo model had gradient RMS of 1e-9 to 1e-8 on most weights (motion in metres):
    the default epsilon (PyTorch's) damps those steps, --adam-eps 1e-12 gives full ones."""
    def first_step(gradient_size, **optimizer_options):
        weight = torch.nn.Parameter(torch.zeros(1000))
        weight.grad = gradient_size * torch.randn(1000, generator=torch.Generator().manual_seed(0))
        make_optimizer([("weight", weight)], 1e-4, **optimizer_options).step()
        return float((weight.detach().abs() / 1e-4).median())

    assert first_step(1e-3) > 0.99
    assert first_step(1e-9) < 0.1
    assert first_step(1e-9, eps=1e-12) > 0.99


def test_stage2_reduces_the_loss_and_changes_only_the_style_encoder(dataset_dir):
    info = DatasetInfo.open(dataset_dir)
    data = TalkingFaceDataset(info, "train", triplets=True)
    batch = collate([data[i] for i in (0, 4)])
    model = tiny_model(seed=0, randomize_output=False, stylized=True, triplet_margin=10.0)
    model.set_stage("1")
    model.train()
    losses_over_steps(model, batch, stage1_losses, steps=20)  # stage 2 starts from a stage-1 model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.set_stage("2")
    model.train()
    lips = torch.tensor(LIPS)
    history = losses_over_steps(model, batch, lambda m, b: stage2_losses(m, b, lips), steps=15, lr=1e-3)
    assert np.mean(history[-5:]) < 0.5 * history[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("style_encoder.") for k in changed)


def write_speaker_prosody(data, pitch_levels):
    """speakers.json as the corpus builders write it: each speaker's measured prosody."""
    (data / "speakers.json").write_text(json.dumps([
        {"name": name, "prosody": {"pitch_level": level, "pitch_range": 5.5, "speaking_rate": 10.0,
                                   "loudness_dynamics": 11.0}} for name, level in pitch_levels.items()]))


def test_stage2_prosody_term_teaches_the_style_encoder_each_speakers_prosody(dataset_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(dataset_dir, data)
    stage1 = save_model(tiny_model(seed=0, randomize_output=False), tmp_path / "stage1")
    run = ["train", "--stage", "2", "--data", str(data), "--init", str(stage1), "--device", "cpu", "--lr", "3e-4",
           "--batch-size", "2", "--prosody-weight", "1"]
    assert main([*run, "--out", str(tmp_path / "no-speakers"), "--epochs", "1"]) == 2
    assert "speakers.json" in capsys.readouterr().err and not (tmp_path / "no-speakers" / "last").exists()
    write_speaker_prosody(data, {"SpkA": 4.0})
    assert main([*run, "--out", str(tmp_path / "no-speakers"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "no prosody" in err and "SpkB" in err

    # The speakers' voices differ in pitch (110 and 150 Hz): pitch levels 1.65 and 7.02 semitones.
    write_speaker_prosody(data, {"SpkA": 1.65, "SpkB": 7.02, "SpkC": 11.6})
    assert main([*run, "--out", str(tmp_path / "s2"), "--epochs", "30"]) == 0
    history = json.loads((tmp_path / "s2" / "history.json").read_text())
    assert history[-1]["train_prosody"] < 0.1 * history[0]["train_prosody"]
    model = load_model(tmp_path / "s2" / "last")
    assert model.config.prosody_targets == ["pitch_level", "pitch_range", "speaking_rate", "loudness_dynamics"]
    info = DatasetInfo.open(data)
    clips = TalkingFaceDataset(info, "train")
    with torch.no_grad():
        predicted = {clips.items[i].subject: float(model.style_encoder.prosody_head(
            model.style_encoder.embed([clips[i]["audio"]]))[0, 0]) for i in range(len(clips))}
    # z-scores against the reference pitch level 7 +- 7 semitones: -0.76 and 0.0
    assert predicted["SpkA"] == pytest.approx(-0.76, abs=0.3) and predicted["SpkB"] == pytest.approx(0.0, abs=0.3)
    weights = load_file(str(tmp_path / "s2" / "last" / "model.safetensors"))
    start = load_file(str(stage1 / "model.safetensors"))
    assert all(torch.equal(start[k], weights[k]) for k in start if not k.startswith("style_encoder."))

    assert main(["train", "--stage", "1", "--data", str(data), "--init", str(stage1), "--device", "cpu",
                 "--prosody-weight", "1", "--out", str(tmp_path / "s1")]) == 2
    assert "--stage 2" in capsys.readouterr().err


def test_stage2_fits_each_speakers_style_weights_first_and_learns_towards_them(dataset_dir, tmp_path, capsys):
    stage1 = save_model(tiny_model(seed=0), tmp_path / "stage1")
    run = ["train", "--stage", "2", "--data", str(dataset_dir), "--init", str(stage1), "--device", "cpu",
           "--lr", "3e-3", "--batch-size", "2", "--fitted-style-weight", "1", "--out", str(tmp_path / "s2")]
    assert main([*run, "--epochs", "1"]) == 0
    assert "fitting each speaker's style weights" in capsys.readouterr().err
    fitted = json.loads((tmp_path / "s2" / "fitted_style_weights.json").read_text())
    assert set(fitted) == {"SpkA", "SpkB"}  # the training speakers

    # Each speaker's fitted weights animate that speaker's clips closer to the truth than the plain memory.
    model = load_model(stage1)
    clips = TalkingFaceDataset(DatasetInfo.open(dataset_dir), "train")
    for speaker, indices in clips.by_subject.items():
        batch = collate([clips[i] for i in indices])
        logits, mask = model.audio_encoder(batch.waveforms, batch.frame_counts)
        target = batch.vertices - batch.templates[:, None]
        with torch.no_grad():
            error = {name: float(masked_mse(model.predict(logits, mask, weights), target, mask))
                     for name, weights in (("plain", None), ("fitted", torch.tensor([fitted[speaker]] * len(indices))))}
        assert error["fitted"] < 0.97 * error["plain"]

    assert main([*run, "--epochs", "4", "--resume"]) == 0
    assert "fitting each speaker's style weights" not in capsys.readouterr().err  # kept in the run folder
    history = json.loads((tmp_path / "s2" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[-1]["train_fitted"] < history[0]["train_fitted"]


def test_the_vertex_error_from_features_is_the_vertex_error_of_the_projected_motion():
    torch.manual_seed(0)
    projection = torch.nn.Linear(8, 30)
    features = torch.randn(2, 5, 8, requires_grad=True)
    target = torch.randn(2, 5, 30) * 0.5
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    direct = masked_mse(projection(features), target, mask)
    (direct_gradient,) = torch.autograd.grad(direct, features)
    projected = ProjectedVertexError(projection, target, mask)(features)
    (projected_gradient,) = torch.autograd.grad(projected, features)
    assert projected.item() == pytest.approx(direct.item(), rel=1e-5)
    assert torch.allclose(projected_gradient, direct_gradient, rtol=1e-4, atol=1e-7)
    assert not projected_gradient[1, 3:].any()  # padded frames count for nothing


def test_a_stopped_style_weight_fit_goes_on_from_the_last_speaker_done(dataset_dir, tmp_path, capsys):
    stage1 = save_model(tiny_model(seed=0), tmp_path / "stage1")
    run = ["train", "--stage", "2", "--data", str(dataset_dir), "--init", str(stage1), "--device", "cpu",
           "--batch-size", "2", "--fitted-style-weight", "1", "--epochs", "1"]
    assert main([*run, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "fitted_style_weights.json").read_text())

    # A run stopped during the fit, after its first speaker: only that speaker's weights are on disk
    # (here marked, to tell them from a refit).
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    marked = [0.5] * len(whole["SpkA"])
    (stopped / "fitted_style_weights.json").write_text(json.dumps({"SpkA": marked}))
    capsys.readouterr()
    assert main([*run, "--out", str(stopped), "--resume"]) == 0
    assert "0/2" not in capsys.readouterr().err  # the progress bar starts after the speaker done
    resumed = json.loads((stopped / "fitted_style_weights.json").read_text())
    assert resumed["SpkA"] == marked
    assert resumed["SpkB"] == pytest.approx(whole["SpkB"], abs=1e-6)


def test_train_cli_checkpoints_every_epoch_selects_on_val_and_resumes_reproducibly(dataset_dir, tmp_path):
    config = tmp_path / "tiny.json"
    fields = tiny_config().to_dict()
    config.write_text(json.dumps({k: fields[k] for k in ("feature_dim", "decoder_ff_dim", "backbone", "backbone_config",
                                                         "style_channels", "style_embedding_dim", "style_dense_blocks")}))
    common = ["train", "--stage", "1", "--data", str(dataset_dir), "--config", str(config), "--device", "cpu",
              "--lr", "1e-3", "--batch-size", "2", "--seed", "7"]
    assert main([*common, "--out", str(tmp_path / "straight"), "--epochs", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "resumed"), "--epochs", "1"]) == 0
    assert main([*common, "--out", str(tmp_path / "resumed"), "--epochs", "2", "--resume"]) == 0
    straight = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    decayed = [a if a != "1e-3" else "5e-4" for a in common]
    assert main([*decayed, "--out", str(tmp_path / "resumed"), "--epochs", "3", "--resume"]) == 0
    state = torch.load(tmp_path / "resumed" / "training_state.pt", weights_only=True)
    assert state["epoch"] == 2 and {g["lr"] for g in state["optimizer"]["param_groups"]} == {5e-4}
    assert {g["eps"] for g in state["optimizer"]["param_groups"]} == {1e-8}
    assert main([*decayed, "--out", str(tmp_path / "resumed"), "--epochs", "4", "--resume", "--adam-eps", "1e-12"]) == 0
    state = torch.load(tmp_path / "resumed" / "training_state.pt", weights_only=True)
    assert {g["eps"] for g in state["optimizer"]["param_groups"]} == {1e-12}
    history = json.loads((tmp_path / "straight" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all("val_LVE" in h for h in history)
    best_epoch = min(history, key=lambda h: h["val_LVE"])["epoch"]
    assert json.loads((tmp_path / "straight" / "best" / "config.json").read_text())["metadata"]["epoch"] == best_epoch

    stage2 = ["train", "--stage", "2", "--data", str(dataset_dir), "--init", str(tmp_path / "straight" / "best"),
              "--out", str(tmp_path / "s2"), "--epochs", "1", "--device", "cpu"]
    assert main(stage2) == 0
    s2 = load_file(str(tmp_path / "s2" / "last" / "model.safetensors"))
    assert all(torch.equal(straight[k], s2[k]) for k in straight if not k.startswith("style_encoder."))
    assert json.loads((tmp_path / "s2" / "best" / "config.json").read_text())["config"]["stylized"] is True

    assert main(["evaluate", "--model", str(tmp_path / "s2" / "best"), "--data", str(dataset_dir), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "s2" / "best" / "eval_test.json").read_text())
    assert {"LVE", "FVE", "LDTW", "Lip-max", "FDD"} <= set(results) and results["sequences"] == 4


def test_stage1_with_a_frozen_backbone_trains_only_memory_and_decoder(dataset_dir, tmp_path, capsys):
    init = tmp_path / "init"
    save_model(tiny_model(seed=0, randomize_output=False), init)
    common = ["train", "--data", str(dataset_dir), "--init", str(init), "--device", "cpu", "--lr", "3e-4",
              "--batch-size", "2", "--epochs", "1"]
    assert main([*common, "--stage", "1", "--out", str(tmp_path / "frozen"), "--freeze-backbone"]) == 0
    before = load_file(str(init / "model.safetensors"))
    after = load_file(str(tmp_path / "frozen" / "last" / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith("audio_encoder.") for k in changed)
    assert any(k.startswith("decoder") or k.startswith("memory") for k in changed)

    assert main([*common, "--stage", "2", "--out", str(tmp_path / "s2"), "--freeze-backbone"]) == 2
    assert "--freeze-backbone is for stage 1" in capsys.readouterr().err


def test_output_lr_moves_the_output_projection_at_its_own_rate_and_keeps_it_on_resume(dataset_dir, tmp_path, capsys):
    init = tmp_path / "init"
    save_model(tiny_model(seed=0, randomize_output=False), init)
    common = ["train", "--stage", "1", "--data", str(dataset_dir), "--init", str(init), "--device", "cpu",
              "--batch-size", "2", "--adam-eps", "1e-12", "--out", str(tmp_path / "run")]
    assert main([*common, "--epochs", "1", "--lr", "1e-3", "--output-lr", "1e-7"]) == 0
    before = load_file(str(init / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    steps = -(-len(TalkingFaceDataset(DatasetInfo.open(dataset_dir), "train")) // 2)  # Adam moves each weight <= lr a step
    moved = {k: float((after[k] - before[k]).abs().max()) for k in before}
    assert 0 < moved["output_proj.weight"] <= steps * 1.01e-7 and 0 < moved["output_proj.bias"] <= steps * 1.01e-7
    assert max(v for k, v in moved.items() if k.startswith("decoder")) > 10 * steps * 1e-7

    assert main([*common, "--epochs", "2", "--resume", "--output-lr", "1e-8"]) == 0
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=True)
    assert {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]} == {"body": 1e-3, "output": 1e-8}
    assert main([*common, "--epochs", "3", "--resume"]) == 2
    assert "trained with --output-lr: resume it the same way" in capsys.readouterr().err
    assert main(["train", "--stage", "2", "--data", str(dataset_dir), "--init", str(tmp_path / "run" / "last"),
                 "--out", str(tmp_path / "s2"), "--output-lr", "1e-7"]) == 2
    assert "--output-lr is for stage 1" in capsys.readouterr().err


def test_a_fixed_backbone_runs_once_per_clip_and_gives_each_clip_its_own_logits(dataset_dir):
    model = tiny_model(seed=0)
    model.set_stage("1", freeze_backbone=True)
    model.train()
    dataset = TalkingFaceDataset(DatasetInfo.open(dataset_dir), "train")
    batches = [collate([dataset[0], dataset[3]]), collate([dataset[3], dataset[1]])]
    fixed = FixedBackboneLogits(model)
    encoded_clips = []
    hook = model.audio_encoder.register_forward_hook(lambda module, args, out: encoded_clips.append(len(args[0])))
    per_epoch = [[fixed(batch) for batch in batches] for _ in range(2)]
    hook.remove()
    assert sum(encoded_clips) == 3  # three distinct clips over two epochs of two batches

    for (logits, mask), again, batch in zip(per_epoch[0], per_epoch[1], batches):
        assert torch.equal(logits, again[0]) and torch.equal(mask, batch.mask)
        for row, (waveform, frames) in enumerate(zip(batch.waveforms, batch.frame_counts)):
            alone = model.audio_encoder([waveform], [frames])[0][0]
            assert torch.equal(logits[row, :frames], alone)


def test_stage2_needs_a_stage1_model(dataset_dir, tmp_path, capsys):
    assert main(["train", "--stage", "2", "--data", str(dataset_dir), "--out", str(tmp_path / "x")]) == 2
    assert "--init" in capsys.readouterr().err


def test_metrics_equal_hand_computation():
    from model_core.metrics import MetricAccumulator, dtw_distance

    gt = np.zeros((2, 3, 3))
    pred = gt.copy()
    pred[0, 0] = [0.3, 0.4, 0.0]  # lip vertex 0, frame 0: distance 0.5
    pred[1, 1] = [0.0, 0.0, 0.2]  # lip vertex 1, frame 1: distance 0.2
    pred[1, 2] = [1.0, 0.0, 0.0]  # upper-face vertex 2
    acc = MetricAccumulator(np.array([0, 1]), np.array([2]))
    acc.add(pred, gt, np.zeros((3, 3)))
    result = acc.result()
    assert result["LVE"] == pytest.approx((0.25 + 0.04) / 2)
    assert result["Lip-max"] == pytest.approx((0.5 + 0.2) / 2)
    assert result["FVE"] == pytest.approx((0.25 / 3 + (0.04 + 1.0) / 3) / 2)
    assert result["FDD"] == pytest.approx(0.0 - np.std([0.0, 1.0]))
    assert dtw_distance(np.array([[0.0], [1.0], [2.0]]), np.array([[0.0], [0.0], [1.0], [2.0]])) == 0.0
    assert dtw_distance(np.array([[0.0], [1.0]]), np.array([[1.0], [1.0]])) == 1.0


def test_vocaset_defaults_and_split_overrides(tmp_path):
    from conftest import write_dataset

    root = write_dataset(tmp_path / "voca", ["FaceTalk_170728_03272_TA", "FaceTalk_170809_00138_TA"], range(20, 23))
    (root / "dataset.json").unlink()  # a plain VOCASET folder: the published splits
    info = DatasetInfo.open(root)
    assert (info.fps, info.source_fps) == (30.0, 60.0)
    assert [i.name for i in info.items("train")] == [f"FaceTalk_170728_03272_TA_sentence{k}" for k in (20, 21, 22)]
    assert [i.sentence for i in info.items("test")] == [21, 22]  # test sentences are 21-40
    (root / "dataset.json").write_text(json.dumps(
        {"preset": "vocaset", "splits": {"test": {"subjects": ["FaceTalk_170809_00138_TA"], "sentences": [20]}}}))
    info = DatasetInfo.open(root)
    assert [i.sentence for i in info.items("test")] == [20] and len(info.items("train")) == 3
