"""The audio encoder: a transformers HuBERT (or wav2vec2) CTC model whose CNN features are
resampled to the motion frame rate before the feature projection and transformer.
"""
from __future__ import annotations

import math

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemoryTalkerConfig
from .errors import CheckpointError

SUPPORTED_BACKBONES = ("hubert", "wav2vec2")
# Chunk length for the whole-clip statistics and the windowed CNN. Short enough that a chunk's
# 512-channel activations stay in cache: at 2.5 s the HuBERT-base CNN runs about 20 % faster on the
# 2-core CPU than at 10 s (docs/benchmarks.md); the output is the same either way.
CNN_CHUNK_SECONDS = 2.5


def _ctc_class(model_type: str):
    # Only the modeling module of the backbone asked for: importing transformers' modeling code is
    # most of a cold worker's start (docs/benchmarks.md), so the other one is not imported too.
    if model_type == "hubert":
        from transformers.models.hubert.modeling_hubert import HubertForCTC

        return HubertForCTC
    if model_type == "wav2vec2":
        from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2ForCTC

        return Wav2Vec2ForCTC
    raise ValueError(f"unsupported audio backbone type {model_type!r}; use one of {', '.join(SUPPORTED_BACKBONES)}")


def backbone_from_config(config_dict: dict[str, Any]) -> nn.Module:
    """A randomly initialised CTC backbone from a transformers config dict (no download)."""
    from transformers import AutoConfig

    params = dict(config_dict)
    model_type = params.pop("model_type", "hubert")
    for key in ("transformers_version", "architectures", "_name_or_path"):
        params.pop(key, None)
    hf_config = AutoConfig.for_model(model_type, **params)
    return _ctc_class(model_type)(hf_config)


def backbone_from_pretrained(name_or_path: str, mem_slots: int) -> nn.Module:
    """Pretrained weights from a hub id or a local folder (a user-side download for hub ids)."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(name_or_path)
        model_cls = _ctc_class(hf_config.model_type)
        # The published backbone is a pretrained (not ASR-fine-tuned) model: its CTC head starts random.
        return model_cls.from_pretrained(name_or_path, vocab_size=mem_slots, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load the audio backbone {name_or_path!r} ({str(exc).splitlines()[0]}); give a local folder "
            "saved with save_pretrained(), or a hub id on a machine with network access"
        ) from None


def resample_features(features: torch.Tensor, num_frames: int, feature_rate: float, fps: float) -> torch.Tensor:
    """(C, T_in) features at `feature_rate` -> (C, num_frames) at `fps`, linear, time-aligned.

    Output frame i samples time i / fps, so a window that starts on a shared frame boundary gives the
    same features as the whole clip (what chunked inference relies on). Past the last input frame the
    value is held.
    """
    positions = torch.arange(num_frames, device=features.device, dtype=torch.float64) * (feature_rate / fps)
    positions = positions.clamp(max=features.shape[-1] - 1)
    left = positions.floor().long()
    right = (left + 1).clamp(max=features.shape[-1] - 1)
    weight = (positions - left).to(features.dtype)
    return features[:, left] * (1 - weight) + features[:, right] * weight


class AudioEncoder(nn.Module):
    def __init__(self, config: MemoryTalkerConfig, ctc_model: nn.Module):
        super().__init__()
        self.fps = config.fps
        self.sample_rate = config.sample_rate
        self.ctc = ctc_model
        self.ctc.freeze_feature_encoder()
        self.train_cnn = False  # True only while `train --stage asr` trains a backbone from scratch
        self.samples_per_feature = math.prod(self.ctc.config.conv_stride)
        self.feature_rate = config.sample_rate / self.samples_per_feature

    @property
    def base(self) -> nn.Module:
        return getattr(self.ctc, self.ctc.base_model_prefix)

    def train(self, mode: bool = True) -> "AudioEncoder":
        super().train(mode)
        if not self.train_cnn:
            self.base.feature_extractor.eval()  # frozen: no stochastic behaviour, no gradients
        return self

    def _pad_short(self, waveform: torch.Tensor) -> torch.Tensor:
        """Clips shorter than one CNN frame's receptive field (25 ms) are padded with silence."""
        field = self.receptive_field
        return F.pad(waveform, (0, field - waveform.shape[-1])) if waveform.shape[-1] < field else waveform

    def _first_norm(self) -> nn.GroupNorm | None:
        norm = getattr(self.base.feature_extractor.conv_layers[0], "layer_norm", None)
        return norm if isinstance(norm, nn.GroupNorm) else None

    @property
    def receptive_field(self) -> int:
        """Input samples behind one CNN frame (400 for HuBERT/wav2vec2: 25 ms)."""
        field = 1
        for kernel, stride in reversed(list(zip(self.ctc.config.conv_kernel, self.ctc.config.conv_stride))):
            field = (field - 1) * stride + kernel
        return field

    @torch.no_grad()
    def clip_statistics(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel mean and variance of the first CNN layer over a whole clip, computed in chunks.

        Backbones with feat_extract_norm="group" (HuBERT-base) normalise that layer over the whole
        input; windows of a long clip use these statistics so their CNN features equal the whole
        clip's. Returns None for backbones whose CNN is local already.
        """
        if self._first_norm() is None:
            return None
        conv = self.base.feature_extractor.conv_layers[0].conv
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        # The first layer maps each window x of `kernel` samples to w_c . x (+ b_c), so its per-channel
        # mean and variance follow from the mean and second moment of the windows alone:
        # mean_c = w_c . E[x] + b_c, var_c = w_c^T E[x x^T] w_c - (w_c . E[x])^2. No activations needed.
        waveform = self._pad_short(waveform)
        step = int(CNN_CHUNK_SECONDS * self.sample_rate) // stride * stride
        count = 0
        total = torch.zeros(kernel, dtype=torch.float64, device=waveform.device)
        outer = torch.zeros(kernel, kernel, dtype=torch.float64, device=waveform.device)
        for start in range(0, waveform.shape[-1] - kernel + 1, step):
            # float64 a chunk at a time: a long line never has a float64 copy of itself beside it
            windows = waveform[start:start + step + kernel - stride].double().unfold(0, kernel, stride)
            count += windows.shape[0]
            total += windows.sum(0)
            outer += windows.T @ windows
        weight = conv.weight[:, 0, :].double()
        projected_mean = weight @ (total / count)
        variance = ((weight @ (outer / count)) * weight).sum(-1) - projected_mean.square()
        mean = projected_mean + (conv.bias.double() if conv.bias is not None else 0.0)
        return mean.float(), variance.clamp(min=0).float()

    def cnn_features(self, waveform: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(samples,) -> (C, T_cnn), the transformers feature encoder's output, computed in chunks.

        A group-normalised first layer uses whole-clip statistics (computed here, or given when the
        waveform is a window of a longer clip) folded into its convolution; the CNN is then local,
        so chunks with receptive-field overlap give the same features in bounded memory.
        """
        waveform = self._pad_short(waveform)
        if self.train_cnn and torch.is_grad_enabled():
            # Training the CNN: transformers' own feature encoder, with gradients through its norms.
            return self.base.feature_extractor(waveform[None])[0]
        if statistics is None and self._first_norm() is not None:
            statistics = self.clip_statistics(waveform)
        stride, field = self.samples_per_feature, self.receptive_field
        frames = (waveform.shape[-1] - field) // stride + 1
        chunk = int(CNN_CHUNK_SECONDS * self.sample_rate) // stride
        with torch.no_grad():
            return torch.cat([
                self._cnn_chunk(waveform[f * stride:(min(f + chunk, frames) - 1) * stride + field], statistics)
                for f in range(0, frames, chunk)
            ], dim=-1)

    def _cnn_chunk(self, waveform: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        layers = self.base.feature_extractor.conv_layers
        if statistics is None:
            hidden = layers[0](waveform[None, None])
        else:
            conv, norm = layers[0].conv, self._first_norm()
            mean, var = statistics
            # Normalisation with fixed statistics is a per-channel affine map: fold it into the convolution.
            scale = norm.weight * torch.rsqrt(var + norm.eps)
            bias = norm.bias - mean * scale + (conv.bias * scale if conv.bias is not None else 0.0)
            hidden = layers[0].activation(F.conv1d(waveform[None, None], conv.weight * scale[:, None, None], bias,
                                                   stride=conv.stride))
        for layer in layers[1:]:
            hidden = layer(hidden)
        return hidden[0]

    def forward(
        self,
        waveforms: list[torch.Tensor],
        frame_counts: list[int],
        autocast_dtype: torch.dtype | None = None,
        statistics: list | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpadded waveforms -> CTC logits (B, T, slots) at the motion frame rate, and a frame mask.

        The frozen CNN runs per clip on its true length, so padding never changes a clip's features.
        `statistics` (from clip_statistics) is given when the waveforms are windows of longer clips.
        """
        statistics = statistics or [None] * len(waveforms)
        features = [
            resample_features(self.cnn_features(w, st), n, self.feature_rate, self.fps).transpose(0, 1)
            for w, n, st in zip(waveforms, frame_counts, statistics)
        ]
        frames = max(frame_counts)
        device = features[0].device
        mask = torch.arange(frames, device=device)[None, :] < torch.tensor(frame_counts, device=device)[:, None]
        hidden = nn.utils.rnn.pad_sequence(features, batch_first=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            projected = self.base.feature_projection(hidden)
            if isinstance(projected, tuple):  # wav2vec2 also returns the normalised CNN features
                projected = projected[0]
            padded = not bool(mask.all())
            if self.training:
                projected = self.base._mask_hidden_states(projected, attention_mask=mask if padded else None)
            encoded = self.base.encoder(projected, attention_mask=mask if padded else None)[0]
            logits = self.ctc.lm_head(self.ctc.dropout(encoded))
        return logits.float(), mask
