"""The style encoder's log-mel equals the reference transform, written here from its formula."""
import numpy as np
import torch

from model_core.logmel import LogMel


def reference_logmel(x: np.ndarray, sr=16000, n_fft=400, hop=160, n_mels=80) -> np.ndarray:
    """torchaudio MelSpectrogram + AmplitudeToDB defaults, from first principles in float64."""
    padded = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (len(padded) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    idx = np.arange(n_fft)[None] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(padded[idx] * window, axis=1)) ** 2  # (frames, n_fft/2+1)
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731  HTK
    mel_to_hz = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)  # noqa: E731
    bins = np.linspace(0, sr // 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    fb = np.zeros((len(bins), n_mels))
    for m in range(n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (bins - lo) / (centre - lo)
        falling = (hi - bins) / (hi - centre)
        fb[:, m] = np.maximum(0.0, np.minimum(rising, falling))  # no area normalisation
    mel = power @ fb
    return (10.0 * np.log10(np.maximum(mel, 1e-10))).T  # (n_mels, frames), no top-dB clamp


def test_logmel_matches_reference_formula():
    rng = np.random.default_rng(0)
    t = np.arange(16000 + 123) / 16000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    ours = LogMel()(torch.from_numpy(x)).numpy()
    ref = reference_logmel(x)
    assert ours.shape == ref.shape == (80, 1 + len(x) // 160)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_logmel_is_batched_and_handles_digital_silence():
    x = torch.zeros(2, 4000)
    x[1] = torch.randn(4000)
    out = LogMel()(x)
    assert out.shape == (2, 80, 26)
    assert torch.all(out[0] == -100.0)  # 10*log10(1e-10): the amplitude floor, not -inf
    torch.testing.assert_close(out[1], LogMel()(x[1]))
