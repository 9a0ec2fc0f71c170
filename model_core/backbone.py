"""The audio encoder: a transformers HuBERT (or wav2vec2) CTC model whose CNN features are
resampled to the motion frame rate before the feature projection and transformer.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemoryTalkerConfig
from .errors import CheckpointError

SUPPORTED_BACKBONES = ("hubert", "wav2vec2")
CNN_CHUNK_SECONDS = 10  # chunk length for the whole-clip statistics and the windowed CNN


def _ctc_class(model_type: str):
    from transformers import HubertForCTC, Wav2Vec2ForCTC

    classes = {"hubert": HubertForCTC, "wav2vec2": Wav2Vec2ForCTC}
    if model_type not in classes:
        raise ValueError(f"unsupported audio backbone type {model_type!r}; use one of {', '.join(SUPPORTED_BACKBONES)}")
    return classes[model_type]


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
        self.feature_rate = config.sample_rate / self._total_stride()

    def _total_stride(self) -> int:
        stride = 1
        for s in self.ctc.config.conv_stride:
            stride *= s
        return stride

    @property
    def base(self) -> nn.Module:
        return getattr(self.ctc, self.ctc.base_model_prefix)

    @property
    def samples_per_feature(self) -> int:
        return self._total_stride()

    def train(self, mode: bool = True) -> "AudioEncoder":
        super().train(mode)
        self.base.feature_extractor.eval()  # frozen: no stochastic behaviour, no gradients
        return self

    def _pad_short(self, waveform: torch.Tensor) -> torch.Tensor:
        min_len = self.ctc.config.conv_kernel[0]
        return F.pad(waveform, (0, min_len - waveform.shape[-1])) if waveform.shape[-1] < min_len else waveform

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
        waveform = self._pad_short(waveform)
        step = CNN_CHUNK_SECONDS * self.sample_rate // stride * stride
        counts, means, variances = [], [], []
        for start in range(0, waveform.shape[-1] - kernel + 1, step):
            out = conv(waveform[start:start + step + kernel - stride][None, None])[0]
            variance, mean = torch.var_mean(out, dim=-1, correction=0)
            counts.append(out.shape[-1])
            means.append(mean.double())
            variances.append(variance.double())
        # Pool the chunks' moments: E[x] and E[x^2] weighted by each chunk's frame count.
        weights = torch.tensor(counts, dtype=torch.float64, device=waveform.device)[:, None] / sum(counts)
        mean = (weights * torch.stack(means)).sum(0)
        second = (weights * (torch.stack(variances) + torch.stack(means).square())).sum(0)
        return mean.float(), (second - mean.square()).clamp(min=0).float()

    def cnn_features(self, waveform: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(samples,) -> (C, T_cnn).

        With whole-clip statistics (see clip_statistics) the first layer is normalised with them and
        the CNN, then local, runs in chunks with receptive-field overlap: same features, a fraction
        of the activation memory.
        """
        waveform = self._pad_short(waveform)
        with torch.no_grad():
            if statistics is None:
                return self.base.feature_extractor(waveform[None])[0]
            stride, field = self.samples_per_feature, self.receptive_field
            frames = (waveform.shape[-1] - field) // stride + 1
            chunk = CNN_CHUNK_SECONDS * self.sample_rate // stride
            return torch.cat([
                self._normalised_cnn(waveform[f * stride:(min(f + chunk, frames) - 1) * stride + field], statistics)
                for f in range(0, frames, chunk)
            ], dim=-1)

    def _normalised_cnn(self, waveform: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        layers = self.base.feature_extractor.conv_layers
        norm = self._first_norm()
        mean, var = statistics
        scale = norm.weight * torch.rsqrt(var + norm.eps)
        hidden = layers[0].conv(waveform[None, None])
        hidden = layers[0].activation(torch.addcmul((norm.bias - mean * scale)[:, None], hidden, scale[:, None]))
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
