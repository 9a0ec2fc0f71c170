"""Training objectives of the two stages (published weights), with padding masks for batches."""
from __future__ import annotations

import torch

from .data import Batch
from .model import MemoryTalker
from .synthetic.visemes import BILABIAL

AUX_WEIGHT = 0.01  # weight of (L_mem + L_align) in stage 1 and of (L_lip + L_style) in stage 2


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               frame_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the valid frames of (B, T, D) tensors; with (B, T) frame_weights,
    the weighted mean over those frames."""
    weights = mask.to(pred.dtype) if frame_weights is None else mask * frame_weights
    per_frame = (pred - target).square().mean(-1)
    return (per_frame * weights).sum() / weights.sum().clamp(min=1)


def bilabial_frame_weights(batch: Batch, frames: int, fps: float, weight: float) -> torch.Tensor:
    """(B, frames): `weight` at the frames whose centre lies inside a p, b or m of the clip's phoneme
    timings, 1 elsewhere. The closed lips of a bilabial last a few frames and a hedging model
    leaves them half open; counting those frames more makes a missed closure cost what it costs
    the viewer."""
    if any(segments is None for segments in batch.phoneme_segments):
        raise ValueError("weighting bilabial frames needs phoneme timings (phonemes/NAME.json) for every clip")
    weights = torch.ones(len(batch.phoneme_segments), frames)
    centres = (torch.arange(frames, dtype=torch.float64) + 0.5) / fps
    for row, segments in zip(weights, batch.phoneme_segments):
        for phoneme, start, end in segments:
            if phoneme in BILABIAL:
                row[(centres >= start) & (centres < end)] = weight
    return weights


def velocity_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between frame-to-frame differences; a difference counts when both its frames are valid."""
    pair_mask = mask[:, 1:] & mask[:, :-1]
    return masked_mse(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1], pair_mask)


def stage1_losses(model: MemoryTalker, batch: Batch,
                  encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
                  bilabial_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """L_mse + L_vel over the retrieval pass and the teacher-forced pass, + 0.01 (L_mem + L_align).

    `encoded`: the batch's (logits, mask) when a fixed backbone's output is already known.
    `bilabial_weight`: how many times a frame inside a p, b or m counts in L_mse (1: the paper's loss).
    """
    logits, mask = encoded if encoded is not None else model.audio_encoder(batch.waveforms, batch.frame_counts)
    target = batch.vertices - batch.templates[:, None]
    weights = None if bilabial_weight == 1.0 else \
        bilabial_frame_weights(batch, mask.shape[1], model.config.fps, bilabial_weight).to(target.device)
    pred = model.predict(logits, mask)
    losses = {"mse": masked_mse(pred, target, mask, weights), "vel": velocity_loss(pred, target, mask)}
    if model.config.use_memory:
        motion_features = model.motion_encoder(target)
        losses["mem"], losses["align"] = model.memory.losses(logits, motion_features, mask)
        teacher = model.decode(logits, motion_features, mask)
        losses["mse"] = losses["mse"] + masked_mse(teacher, target, mask, weights)
        losses["vel"] = losses["vel"] + velocity_loss(teacher, target, mask)
        losses["total"] = losses["mse"] + losses["vel"] + AUX_WEIGHT * (losses["mem"] + losses["align"])
    else:
        losses["total"] = losses["mse"] + losses["vel"]
    return losses


def frame_labels(segments: list[tuple[str, float, float]], frames: int, fps: float, vocabulary: list[str]) -> torch.Tensor:
    """The vocabulary index of the phoneme sounding at each frame's centre; silence, gaps and
    phonemes outside the vocabulary are the blank (0)."""
    index = {token: i for i, token in enumerate(vocabulary)}
    labels = torch.zeros(frames, dtype=torch.long)
    centres = (torch.arange(frames, dtype=torch.float64) + 0.5) / fps
    for phoneme, start, end in segments:
        if phoneme in index:
            labels[(centres >= start) & (centres < end)] = index[phoneme]
    return labels


def asr_losses(model: MemoryTalker, batch: Batch, frame_weight: float = 0.0,
               bilabial_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """CTC between the backbone's logits (at the motion frame rate) and the clips' phoneme labels;
    token 0 of the model's vocabulary is the blank. With frame_weight > 0, plus that weight times a
    frame-wise cross-entropy on the phoneme sounding at each frame (the blank in silence): CTC
    alone may place its spikes anywhere in time (on the demo corpus about 150 ms ahead of the
    sound), while the memory is addressed frame by frame. `bilabial_weight`: how many times a frame
    inside a p, b or m counts in that frame term (the memory closes the lips only where the
    recogniser is sure of them)."""
    vocabulary = model.config.vocabulary
    index = {token: i for i, token in enumerate(vocabulary)}
    if any(segments is None for segments in batch.phoneme_segments):
        raise ValueError("the asr stage needs phoneme labels (phonemes/NAME.json) for every clip")
    logits, mask = model.audio_encoder(batch.waveforms, batch.frame_counts)
    log_probs = torch.log_softmax(logits.float(), -1)  # (B, T, V)
    targets = [torch.tensor([index[p] for p in labels if p in index], dtype=torch.long) for labels in batch.phonemes]
    ctc = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), torch.cat(targets).to(logits.device), torch.tensor(batch.frame_counts),
        torch.tensor([len(t) for t in targets]), blank=0, reduction="mean", zero_infinity=True)
    if frame_weight == 0.0:
        return {"ctc": ctc, "total": ctc}
    per_frame = torch.nn.utils.rnn.pad_sequence(
        [frame_labels(s, n, model.config.fps, vocabulary) for s, n in zip(batch.phoneme_segments, batch.frame_counts)],
        batch_first=True).to(logits.device)
    weights = bilabial_frame_weights(batch, mask.shape[1], model.config.fps, bilabial_weight).to(logits.device)[mask]
    frame_errors = torch.nn.functional.nll_loss(log_probs[mask], per_frame[mask], reduction="none")
    frame = (frame_errors * weights).sum() / weights.sum()
    return {"ctc": ctc, "frame": frame, "total": ctc + frame_weight * frame}


def stage2_losses(model: MemoryTalker, batch: Batch, lip_indices: torch.Tensor,
                  encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
                  prosody: torch.Tensor | None = None, prosody_weight: float = 0.0,
                  fitted_style: torch.Tensor | None = None, fitted_style_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """L_mse + L_vel + 0.01 (L_lip + L_style); only the style encoder receives gradients.

    `encoded`: the batch's (logits, mask) when the (fixed) backbone's output is already known.
    `prosody`: (B, len(config.prosody_targets)) the clips' speakers' prosody z-scores; adds
    prosody_weight * L_prosody, the mean squared error of the style encoder's prosody head.
    `fitted_style`: (B, slots) the clips' speakers' fitted slot weights (train.fit_speaker_style_weights);
    adds fitted_style_weight * the mean squared distance of the style weights to them.
    """
    if encoded is None:
        with torch.no_grad():
            encoded = model.audio_encoder(batch.waveforms, batch.frame_counts)
    logits, mask = encoded
    encoder = model.style_encoder
    f_s = encoder.embed(batch.waveforms)
    style_weights = encoder.weights(f_s)
    pred = model.predict(logits, mask, style_weights)
    target = batch.vertices - batch.templates[:, None]
    b, t, _ = pred.shape
    lips = lambda x: x.view(b, t, -1, 3)[:, :, lip_indices].reshape(b, t, -1)  # noqa: E731
    losses = {
        "mse": masked_mse(pred, target, mask),
        "vel": velocity_loss(pred, target, mask),
        "lip": masked_mse(lips(pred), lips(target), mask),
        "style": encoder.triplet_loss(f_s, encoder.embed(batch.positive_waveforms),
                                      encoder.embed(batch.negative_waveforms), model.config.triplet_margin),
    }
    losses["total"] = losses["mse"] + losses["vel"] + AUX_WEIGHT * (losses["lip"] + losses["style"])
    if prosody is not None:
        losses["prosody"] = torch.nn.functional.mse_loss(encoder.prosody_head(f_s), prosody)
        losses["total"] = losses["total"] + prosody_weight * losses["prosody"]
    if fitted_style is not None:
        losses["fitted"] = torch.nn.functional.mse_loss(style_weights, fitted_style)
        losses["total"] = losses["total"] + fitted_style_weight * losses["fitted"]
    return losses
