"""The audio encoder: a transformers HuBERT (or wav2vec2) CTC model whose CNN features are
resampled to the motion frame rate before the feature projection and transformer.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemoryTalkerConfig

SUPPORTED_BACKBONES = ("hubert", "wav2vec2")


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

    hf_config = AutoConfig.from_pretrained(name_or_path)
    model_cls = _ctc_class(hf_config.model_type)
    # The published backbone is a pretrained (not ASR-fine-tuned) model: its CTC head starts random.
    return model_cls.from_pretrained(name_or_path, vocab_size=mem_slots, ignore_mismatched_sizes=True)


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

    def cnn_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(samples,) -> (C, T_cnn). The receptive field of the CNN needs at least one window of input."""
        min_len = self.ctc.config.conv_kernel[0]
        if waveform.shape[-1] < min_len:
            waveform = F.pad(waveform, (0, min_len - waveform.shape[-1]))
        with torch.no_grad():
            return self.base.feature_extractor(waveform[None])[0]

    def forward(
        self,
        waveforms: list[torch.Tensor],
        frame_counts: list[int],
        autocast_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpadded waveforms -> CTC logits (B, T, slots) at the motion frame rate, and a frame mask.

        The frozen CNN runs per clip on its true length, so padding never changes a clip's features.
        """
        features = [
            resample_features(self.cnn_features(w), n, self.feature_rate, self.fps).transpose(0, 1)
            for w, n in zip(waveforms, frame_counts)
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
