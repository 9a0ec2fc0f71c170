"""`torchrun --nproc-per-node N -m model_core train ...`: N processes train as one process would on
the same global batch (gloo on CPU here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_model, write_dataset, write_phoneme_labels
from safetensors.torch import load_file

from model_core import tiny_backbone_config
from model_core.cli import main
from model_core.data import DatasetInfo, TalkingFaceDataset, collate
from model_core.errors import MemoryTalkerError
from model_core.train import (EpochBatches, Processes, StageLoss, TrainOptions, loss_denominators,
                              phoneme_vocabulary, shard_objective, total_coefficients, train)

REPO = Path(__file__).resolve().parents[1]
# Dropout (and the backbone's) draws its masks over the whole batch tensor, which no split of the
# batch over processes draws alike: the comparisons train without it.
NO_DROPOUT = dict(dropout=0.0, backbone_config=tiny_backbone_config(
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, final_dropout=0.0, feat_proj_dropout=0.0))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Five training clips of different lengths, with phoneme labels, and a tiny model config
    without dropout. Five clips in batches of four: the second batch has one clip, so the second
    of two processes stands in."""
    root = write_dataset(tmp_path_factory.mktemp("distributed") / "data", ["SpkA", "SpkB", "SpkC"], range(1, 5))
    meta = json.loads((root / "dataset.json").read_text())
    meta["splits"]["train"] = {"files": ["SpkA_sentence01", "SpkA_sentence02", "SpkA_sentence03",
                                         "SpkB_sentence01", "SpkB_sentence02"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    write_phoneme_labels(root)
    fields = tiny_config(**NO_DROPOUT).to_dict()
    config = root.parent / "config.json"
    config.write_text(json.dumps({k: fields[k] for k in ("feature_dim", "decoder_ff_dim", "backbone", "backbone_config",
                                                         "style_channels", "style_embedding_dim",
                                                         "style_dense_blocks", "dropout")}))
    return root, config


def torchrun(args: list[str], processes: int = 2) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
         "-m", "model_core", *args],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def largest_difference(run: Path, other: Path) -> float:
    a = load_file(str(run / "last" / "model.safetensors"))
    b = load_file(str(other / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_train_as_one_on_the_same_global_batch_and_resume(corpus, tmp_path):
    data, config = corpus
    common = ["train", "--stage", "1", "--data", str(data), "--config", str(config), "--device", "cpu",
              "--lr", "1e-3", "--batch-size", "4", "--seed", "7"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--out", str(one), "--epochs", "1"]) == 0
    output = torchrun([*common, "--out", str(two), "--epochs", "1"])
    assert output.count("best model:") == 1  # process 0 alone reports
    assert largest_difference(one, two) < 1e-5
    first_epoch = load_file(str(two / "last" / "model.safetensors"))

    assert main([*common, "--out", str(one), "--epochs", "2", "--resume"]) == 0
    torchrun([*common, "--out", str(two), "--epochs", "2", "--resume"])
    assert largest_difference(one, two) < 1e-5
    resumed = load_file(str(two / "last" / "model.safetensors"))
    assert max(float((resumed[k] - first_epoch[k]).abs().max()) for k in resumed) > 1e-4
    assert torch.load(two / "training_state.pt", weights_only=True)["epoch"] == 1
    history, reference = (json.loads((run / "history.json").read_text()) for run in (two, one))
    assert [h["epoch"] for h in history] == [1, 2]
    for logged, expected in zip(history, reference):  # the whole batch's losses, not process 0's share
        assert logged.keys() == expected.keys()
        assert all(logged[k] == pytest.approx(expected[k], rel=1e-5) for k in expected)


@pytest.mark.parametrize("stage", ["asr", "1", "2"])
def test_the_shards_objectives_average_to_the_gradient_of_the_whole_batch(corpus, tmp_path, stage):
    data, _ = corpus
    info = DatasetInfo.open(data)
    overrides = dict(NO_DROPOUT, stylized=stage == "2")
    if stage == "asr":
        vocabulary = phoneme_vocabulary(info)
        overrides.update(vocabulary=vocabulary, mem_slots=len(vocabulary), backbone_config={
            **NO_DROPOUT["backbone_config"], "vocab_size": len(vocabulary)})
    model = tiny_model(seed=1, **overrides)
    trainable = model.set_stage(stage)
    model.train()
    # Bilabial frames weigh three times in the frame terms of the asr stage and in stage 1's L_mse.
    opts = TrainOptions(stage=stage, data=data, out=tmp_path, asr_frame_weight=1.0 if stage == "asr" else 0.0,
                        bilabial_weight=1.0 if stage == "2" else 3.0)
    stage_loss = StageLoss(model, opts, torch.from_numpy(info.lip_indices), None)
    dataset = TalkingFaceDataset(info, "train", triplets=stage == "2")
    samples = [dataset[i] for i in range(3)]
    assert len({len(s["vertices"]) for s in samples}) == 3

    def gradient(objectives) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        for objective in objectives:
            objective.backward()
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in trainable])

    whole = gradient([stage_loss(collate(samples))["total"]])
    # Three processes: one clip, two clips, and a stand-in for the short last batch of an epoch.
    shards = [collate(samples[:1]), collate(samples[1:]), collate(samples[:1])]
    shard_losses = [stage_loss(shard) for shard in shards]
    counts = [loss_denominators(stage, shard, model.config.fps, opts.bilabial_weight) for shard in shards[:2]]
    counts.append(dict.fromkeys(counts[0], 0.0))
    batch_counts = {k: sum(c[k] for c in counts) for k in counts[0]}
    # DistributedDataParallel's average over the processes' gradients
    averaged = gradient([shard_objective(losses, total_coefficients(losses), count, batch_counts, 3) / 3
                         for losses, count in zip(shard_losses, counts)])
    assert float((averaged - whole).norm() / whole.norm()) < 1e-5
    naive = gradient([stage_loss(shard)["total"] / 2 for shard in shards[:2]])  # each process's own mean
    assert float((naive - whole).norm() / whole.norm()) > 1e-3


def test_each_step_the_processes_share_out_the_batch_a_single_process_draws():
    seed = 11

    def drawn(processes: Processes | None) -> tuple[list[list[int]], list[bool]]:
        generator = torch.Generator().manual_seed(seed)
        batches = EpochBatches(range(5), 4, generator, processes)
        loader = torch.utils.data.DataLoader(range(5), batch_sampler=batches, generator=generator)
        return [batch.tolist() for batch in loader], batches.stand_ins

    single = torch.utils.data.DataLoader(range(5), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    expected = [batch.tolist() for batch in single]
    assert drawn(None) == (expected, [False, False])
    (first, first_stands_in), (second, second_stands_in) = (drawn(Processes(r, r, 2)) for r in range(2))
    assert first_stands_in == [False, False] and second_stands_in == [False, True]
    assert len(first[0]) == len(second[0]) == 2 and sorted(first[0] + second[0]) == sorted(expected[0])
    assert first[1] == second[1] == expected[1]  # the stand-in computes the batch's one clip (weighted zero)


def test_torchrun_options_that_cannot_work_are_refused_with_what_to_do(corpus, tmp_path, monkeypatch):
    data, config = corpus
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    options = dict(stage="1", data=data, out=tmp_path / "run", config=config, progress=False)
    with pytest.raises(MemoryTalkerError, match="global batch.*give a multiple of 2"):
        train(TrainOptions(batch_size=3, device="cpu", **options))
    with pytest.raises(MemoryTalkerError, match="give --device cuda"):
        train(TrainOptions(batch_size=2, device="cuda:1", **options))
    assert not (tmp_path / "run").exists()
