import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_VERTICES, tiny_config, tiny_model

from model_core import MemoryTalkerConfig
from model_core.model import DecoderLayer, MotionMemory, PeriodicPositionalEncoding


def test_config_defaults_are_the_published_ones_and_round_trip_json(tmp_path):
    config = MemoryTalkerConfig()
    assert (config.mem_slots, config.feature_dim, config.kappa, config.period) == (32, 96, 16.0, 30)
    assert (config.decoder_layers, config.decoder_heads, config.decoder_ff_dim, config.fps) == (1, 4, 192, 30.0)
    assert config.backbone == "facebook/hubert-base-ls960" and config.num_vertices == 5023
    config.to_json(tmp_path / "c.json")
    assert MemoryTalkerConfig.from_json(tmp_path / "c.json") == config


def test_backbone_vocabulary_must_match_memory_slots():
    with pytest.raises(ValueError, match="vocabulary"):
        tiny_config(mem_slots=16)


def test_text_and_motion_addressing_and_memory_losses_equal_hand_computation():
    torch.manual_seed(0)
    memory = MotionMemory(slots=4, dim=3, kappa=16.0)
    logits = torch.randn(1, 2, 4)
    motion = torch.randn(1, 2, 3)
    mask = torch.tensor([[True, True]])
    M = memory.slots.detach().numpy().astype(np.float64)
    a = logits.numpy()[0].astype(np.float64)
    f = motion.numpy()[0].astype(np.float64)

    k_txt = np.exp(16 * a) / np.exp(16 * a).sum(1, keepdims=True)
    np.testing.assert_allclose(memory.text_addressing(logits)[0].numpy(), k_txt, rtol=1e-5)

    cos = np.array([[fi @ mj / np.linalg.norm(fi) / np.linalg.norm(mj) for mj in M] for fi in f])
    v_m = np.exp(16 * cos) / np.exp(16 * cos).sum(1, keepdims=True)
    np.testing.assert_allclose(memory.motion_log_addressing(motion)[0].exp().detach().numpy(), v_m, rtol=1e-5)

    loss_mem, loss_align = memory.losses(logits, motion, mask)
    np.testing.assert_allclose(float(loss_mem.detach()), np.mean((v_m @ M - f) ** 2), rtol=1e-5)
    kl_per_frame = (k_txt * (np.log(k_txt) - np.log(v_m))).sum(1)
    np.testing.assert_allclose(float(loss_align.detach()), kl_per_frame.mean(), rtol=1e-4)
    # Only the memory learns from these losses.
    logits.requires_grad_(True)
    motion.requires_grad_(True)
    sum(memory.losses(logits, motion, mask)).backward()
    assert logits.grad is None and motion.grad is None and memory.slots.grad is not None


def test_memory_losses_ignore_padded_frames():
    torch.manual_seed(1)
    memory = MotionMemory(4, 3, 16.0)
    logits, motion = torch.randn(1, 3, 4), torch.randn(1, 3, 3)
    padded = memory.losses(torch.cat([logits, torch.randn(1, 2, 4)], 1), torch.cat([motion, torch.randn(1, 2, 3)], 1),
                           torch.tensor([[True] * 3 + [False] * 2]))
    plain = memory.losses(logits, motion, torch.ones(1, 3, dtype=torch.bool))
    for x, y in zip(padded, plain):
        torch.testing.assert_close(x, y)


def test_periodic_positional_encoding_works_for_any_length():
    ppe = PeriodicPositionalEncoding(16, period=30, dropout=0.0)
    x = torch.zeros(1, 5000, 16)  # the research code's fixed buffer crashes past ~630 frames
    out = ppe(x)
    torch.testing.assert_close(out[0, 30:60], out[0, :30])
    torch.testing.assert_close(out[0, 4980:5000], out[0, 0:20])
    torch.testing.assert_close(ppe(x[:, :10], offset=45)[0], out[0, 45:55])
    assert out[0, 0, 1] == 1.0 and out[0, 1, 0] == pytest.approx(math.sin(1.0))


def test_decoder_layer_equals_torch_decoder_layer_with_diagonal_memory_mask():
    torch.manual_seed(0)
    dim, heads, ff, frames = 16, 4, 32, 7
    reference = torch.nn.TransformerDecoderLayer(dim, heads, ff, batch_first=True).eval()
    ours = DecoderLayer(dim, heads, ff, 0.1).eval()
    sd = reference.state_dict()
    ours.load_state_dict({
        **{k: v for k, v in sd.items() if not k.startswith("multihead_attn.")},
        "cross_value.weight": sd["multihead_attn.in_proj_weight"][2 * dim:],
        "cross_value.bias": sd["multihead_attn.in_proj_bias"][2 * dim:],
        "cross_out.weight": sd["multihead_attn.out_proj.weight"],
        "cross_out.bias": sd["multihead_attn.out_proj.bias"],
    })
    x, memory = torch.randn(2, frames, dim), torch.randn(2, frames, dim)
    diagonal_mask = ~torch.eye(frames, dtype=torch.bool)  # True = masked: frame i sees audio frame i only
    torch.testing.assert_close(ours(x, memory, None), reference(x, memory, memory_mask=diagonal_mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ["hubert", "wav2vec2"])
def test_forward_shapes_for_both_backbones(model_type):
    from model_core.config import tiny_backbone_config

    model = tiny_model(backbone_config=tiny_backbone_config(model_type))
    out = model([torch.randn(16000), torch.randn(8000)], [30, 15])
    assert out.shape == (2, 30, NUM_VERTICES, 3)


def test_new_model_outputs_the_template_exactly():
    model = tiny_model(randomize_output=False)
    out = model([torch.randn(16000)], [30])
    assert torch.count_nonzero(out) == 0


def test_padded_batch_gives_each_clip_its_unbatched_result():
    model = tiny_model(stylized=True)
    a, b = torch.randn(16000), torch.randn(9600)
    batched = model([a, b], [30, 18])
    torch.testing.assert_close(batched[0], model([a], [30])[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched[1, :18], model([b], [18])[0], atol=1e-5, rtol=1e-4)


def test_style_weights_are_per_sample_not_batch_averaged():
    model = tiny_model(stylized=True)
    torch.manual_seed(3)
    a, b = torch.randn(16000), 0.2 * torch.randn(16000) + torch.sin(torch.arange(16000) * 0.3)
    f_s = model.style_encoder.embed([a, b])
    w = model.style_encoder.weights(f_s)
    assert w.shape == (2, 32) and not torch.allclose(w[0], w[1])
    torch.testing.assert_close(w[0], model.style_encoder.weights(model.style_encoder.embed([a]))[0])
    bank = model.memory_bank(w)
    torch.testing.assert_close(bank[1], w[1][:, None] * model.memory.slots)


def test_stage_two_starts_from_the_stage_one_memory_unchanged():
    model = tiny_model(stylized=True, randomize_output=False)
    with torch.no_grad():
        model.output_proj.weight.normal_(0, 0.05)
    wave = torch.randn(16000)
    torch.testing.assert_close(model.style_encoder.weights(model.style_encoder.embed([wave])), torch.ones(1, 32))
    torch.testing.assert_close(model([wave], [30]), model([wave], [30], style_strength=0.0))
    imported = tiny_model(stylized=True, style_weights="product")
    assert not torch.allclose(imported.style_encoder.weights(imported.style_encoder.embed([wave])), torch.ones(1, 32))


def test_style_strength_interpolates_between_generic_and_stylized_memory():
    model = tiny_model(stylized=True)
    f_s = model.style_encoder.embed([torch.randn(16000)])
    full = model.style_encoder.weights(f_s)
    assert model.style_weights_from_embedding(f_s, 0.0) is None
    torch.testing.assert_close(model.style_weights_from_embedding(f_s, 1.0), full)
    torch.testing.assert_close(model.style_weights_from_embedding(f_s, 0.5), 0.5 + 0.5 * full)


def test_frozen_cnn_stays_in_eval_mode_and_has_no_gradients():
    model = tiny_model()
    trainable = model.set_stage("1")
    model.train()
    cnn = model.audio_encoder.base.feature_extractor
    assert not cnn.training and all(not p.requires_grad for p in cnn.parameters())
    assert not any(p is q for p in trainable for q in cnn.parameters())
    assert not any(p is q for p in trainable for q in model.style_encoder.parameters())
    model.set_stage("2")
    model.train()
    assert model.style_encoder.training
    assert not any(m.training for name, m in model.named_modules() if name and not name.startswith("style_encoder"))


def test_no_memory_ablation_builds_and_runs():
    model = tiny_model(use_memory=False)
    assert model.fusion.in_features == model.config.feature_dim
    assert model([torch.randn(8000)], [15]).shape == (1, 15, NUM_VERTICES, 3)


def test_interpolated_features_are_time_aligned_for_windows():
    from model_core.backbone import resample_features

    feats = torch.randn(3, 100)
    whole = resample_features(feats, 60, 50.0, 30.0)
    window = resample_features(feats[:, 5:], 57, 50.0, 30.0)  # 5 feature frames = 3 motion frames
    torch.testing.assert_close(window, whole[:, 3:])
    assert F.mse_loss(whole[:, 0], feats[:, 0]) == 0


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_chunked_cnn_equals_the_transformers_feature_encoder(norm):
    from model_core.config import tiny_backbone_config

    model = tiny_model(backbone_config=tiny_backbone_config(feat_extract_norm=norm, conv_bias=True))
    waveform = torch.randn(16000 * 23 + 123)  # ten 2.5 s chunks, the last one partial
    encoder = model.audio_encoder
    with torch.no_grad():
        reference = encoder.base.feature_extractor(waveform[None])[0]
    ours = encoder.cnn_features(waveform)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-4)
