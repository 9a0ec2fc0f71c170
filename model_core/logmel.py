"""80-band log-mel spectrogram for the speaking-style encoder.

Numerically the transform the method was trained with (torchaudio's MelSpectrogram + AmplitudeToDB
with their defaults), computed without torchaudio: centred STFT with reflect padding and a periodic
Hann window, power spectrum, HTK-scale triangular filters without area normalisation, then
10 * log10(max(x, 1e-10)) with no top-dB clamp.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

AMPLITUDE_FLOOR = 1e-10


@functools.lru_cache(maxsize=8)
def _filter_bank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    return mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm=None,
        mel_scale="htk",
    ).astype(np.float32)


class LogMel(torch.nn.Module):
    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 80):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("filters", torch.from_numpy(_filter_bank(n_fft, n_mels, sample_rate)), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(..., samples) -> (..., n_mels, frames) in dB."""
        shape = waveform.shape
        flat = waveform.reshape(-1, shape[-1]).float()
        if flat.shape[-1] <= self.n_fft // 2:
            # Reflect padding needs more samples than half a window; pad tiny clips with zeros.
            flat = torch.nn.functional.pad(flat, (0, self.n_fft // 2 + 1 - flat.shape[-1]))
        spec = torch.stft(
            flat,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(-1, -2), self.filters).transpose(-1, -2)
        db = 10.0 * torch.log10(torch.clamp(mel, min=AMPLITUDE_FLOOR))
        return db.reshape(*shape[:-1], db.shape[-2], db.shape[-1])
