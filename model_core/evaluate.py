"""Evaluate a model on a split: LVE, FVE, LDTW, Lip-max, FDD (definitions in metrics.py / docs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .data import DatasetInfo, TalkingFaceDataset, spoken_phonemes
from .losses import frame_labels
from .metrics import MetricAccumulator
from .model import MemoryTalker

# Columns as printed, with the scale this line of work prints them at (FaceFormer/CodeTalker tables).
DISPLAY = [("LVE", 1e-5), ("FVE", 1e-5), ("LDTW", 1.0), ("Lip-max", 1.0), ("FDD", 1e-7)]


@torch.inference_mode()
def evaluate_model(model: MemoryTalker, info: DatasetInfo, split: str = "test", style_strength: float = 1.0,
                   progress: bool = True) -> dict[str, float]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dataset = TalkingFaceDataset(info, split, model.config.sample_rate)
    accumulator = MetricAccumulator(info.lip_indices, info.upper_face_indices)
    for i in tqdm(range(len(dataset)), desc=f"evaluate {split}", disable=not progress, leave=False):
        sample = dataset[i]
        gt = sample["vertices"].numpy().reshape(len(sample["vertices"]), -1, 3)
        template = sample["template"].numpy().reshape(-1, 3)
        motion = model([sample["audio"].to(device)], [len(gt)], style_strength)[0].cpu().numpy()
        accumulator.add(template + motion, gt, template)
    model.train(was_training)
    return accumulator.result()


def edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def greedy_ctc(logits: torch.Tensor, vocabulary: list[str]) -> list[str]:
    """Best path: the most likely token per frame, repeats merged, blanks (token 0) dropped."""
    best = logits.argmax(-1).tolist()
    return [vocabulary[t] for i, t in enumerate(best) if t != 0 and (i == 0 or t != best[i - 1])]


@torch.inference_mode()
def phoneme_recognition(model: MemoryTalker, info: DatasetInfo, split: str = "val", progress: bool = False) -> dict[str, float]:
    """The backbone as a phoneme recogniser: PER, the edit distance between its greedy CTC
    transcription and the labels per label phoneme; frame_accuracy, the share of frames whose most
    likely token is the phoneme sounding there (the blank in silence), i.e. whether the memory is
    addressed at the right time."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dataset = TalkingFaceDataset(info, split, model.config.sample_rate)
    errors = total = frames_right = frames = 0
    for i in tqdm(range(len(dataset)), desc=f"PER {split}", disable=not progress, leave=False):
        segments = dataset.phoneme_segments(i)
        labels = spoken_phonemes(segments)
        audio = dataset.audio(i)
        count = max(1, int(round(len(audio) / model.config.sample_rate * model.config.fps)))
        logits, _ = model.audio_encoder([torch.from_numpy(audio).to(device)], [count])
        errors += edit_distance(greedy_ctc(logits[0], model.config.vocabulary), labels)
        total += len(labels)
        truth = frame_labels(segments, count, model.config.fps, model.config.vocabulary)
        frames_right += int((logits[0].argmax(-1).cpu() == truth).sum())
        frames += count
    model.train(was_training)
    return {"PER": errors / max(total, 1), "frame_accuracy": frames_right / max(frames, 1)}


def format_table(results: dict[str, float]) -> str:
    names = [(n, s) for n, s in DISPLAY if n in results]
    header = " | ".join(f"{n} (x{s:.0e})" if s != 1.0 else n for n, s in names)
    row = " | ".join(f"{results[n] / s:.4f}" for n, s in names)
    return f"{header}\n{row}\n({results['sequences']} sequences, {results['frames']} frames)"


def write_results(results: dict[str, float], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in results.items()}, indent=2) + "\n")
