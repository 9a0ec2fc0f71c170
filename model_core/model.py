"""MemoryTalker: audio -> CTC logits -> motion memory -> transformer decoder -> vertex displacements,
with a speaking-style encoder (stage 2) that re-weights the memory slots per sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import AudioEncoder, backbone_from_config, backbone_from_pretrained
from .config import MemoryTalkerConfig
from .logmel import LogMel

STYLE_CHUNK_SECONDS = 60  # the style encoder pools long clips in chunks of this length


class PeriodicPositionalEncoding(nn.Module):
    """Sinusoidal encoding that repeats every `period` frames, computed for any length."""

    def __init__(self, dim: int, period: int, dropout: float):
        super().__init__()
        position = torch.arange(period, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(period, dim)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div)
        self.register_buffer("table", table, persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        index = (torch.arange(x.shape[1], device=x.device) + offset) % self.table.shape[0]
        return self.dropout(x + self.table[index])


class MotionMemory(nn.Module):
    """n learned motion slots of width c, addressed by text (CTC logits) or by motion features."""

    def __init__(self, slots: int, dim: int, kappa: float):
        super().__init__()
        self.kappa = kappa
        self.slots = nn.Parameter(torch.empty(slots, dim))
        nn.init.xavier_normal_(self.slots)

    def text_addressing(self, logits: torch.Tensor) -> torch.Tensor:
        """K_txt = softmax(kappa * a) over the slots, from the raw CTC logits."""
        return F.softmax(self.kappa * logits, dim=-1)

    def motion_log_addressing(self, motion_features: torch.Tensor) -> torch.Tensor:
        """log V_m, V_m = softmax(kappa * cos(f_m, M))."""
        cosine = F.normalize(motion_features, dim=-1) @ F.normalize(self.slots, dim=-1).t()
        return F.log_softmax(self.kappa * cosine, dim=-1)

    @staticmethod
    def retrieve(weights: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """weights (B, T, n) x memory (n, c) or per-sample (B, n, c) -> (B, T, c)."""
        if memory.dim() == 2:
            return weights @ memory
        return torch.bmm(weights, memory)

    def losses(self, logits: torch.Tensor, motion_features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L_mem and L_align. Inputs are detached: only the memory learns from these losses.

        L_mem = MSE(f_m, V_m M) over valid frames; L_align = KL(K_txt || V_m), summed over slots and
        averaged over valid frames (so its weight does not depend on clip length).
        """
        f_m = motion_features.detach()
        k_txt = self.text_addressing(logits.detach())
        log_v = self.motion_log_addressing(f_m)
        reconstruction = self.retrieve(log_v.exp(), self.slots)
        valid = mask.float()
        frames = valid.sum().clamp(min=1)
        loss_mem = ((reconstruction - f_m).square().mean(-1) * valid).sum() / frames
        kl = (k_txt * (torch.log(k_txt.clamp(min=1e-30)) - log_v)).sum(-1)
        loss_align = (kl * valid).sum() / frames
        return loss_mem, loss_align


class DecoderLayer(nn.Module):
    """A post-norm transformer decoder layer (as torch's TransformerDecoderLayer, ReLU) whose
    cross-attention has the diagonal mask of the method: frame i attends only audio frame i.

    With one visible key the attention weight is 1, so cross-attention reduces exactly to
    out(value(memory_i)); computing it that way costs O(T) instead of an O(T^2) masked product.
    Attention dropout on that single weight drops whole heads per frame, as in the masked version.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.attn_dropout = dropout
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_value = nn.Linear(dim, dim)
        self.cross_out = nn.Linear(dim, dim)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.self_attn(x, x, x, key_padding_mask=padding_mask, need_weights=False)[0]
        x = self.norm1(x + self.dropout1(attended))
        value = self.cross_value(memory)
        if self.training and self.attn_dropout > 0:
            b, t, c = value.shape
            keep = F.dropout(value.new_ones(b, t, self.heads, 1), self.attn_dropout, training=True)
            value = (value.view(b, t, self.heads, c // self.heads) * keep).view(b, t, c)
        x = self.norm2(x + self.dropout2(self.cross_out(value)))
        ff = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout3(ff))


def _reflect_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    k = conv.kernel_size[0]
    return conv(F.pad(x, (k // 2, k // 2 - 1 if k % 2 == 0 else k // 2), mode="reflect"))


class SpeakerEncoder(nn.Module):
    """AdaIN-VC speaker encoder: conv bank (k = 1..8), residual conv blocks with subsampling,
    average pooling over time, residual dense blocks, linear output.

    Split into `frame_features` (before pooling) and `head` (after), so a long clip's style can be
    pooled over windows in bounded memory.
    """

    def __init__(self, n_mels: int, channels: int, out_dim: int, bank_size: int, kernel_size: int,
                 subsample: list[int], dense_blocks: int):
        super().__init__()
        self.subsample = list(subsample)
        self.conv_bank = nn.ModuleList(nn.Conv1d(n_mels, channels, kernel_size=k) for k in range(1, bank_size + 1))
        self.in_conv_layer = nn.Conv1d(channels * bank_size + n_mels, channels, kernel_size=1)
        self.first_conv_layers = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size) for _ in subsample)
        self.second_conv_layers = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, stride=s) for s in subsample)
        self.first_dense_layers = nn.ModuleList(nn.Linear(channels, channels) for _ in range(dense_blocks))
        self.second_dense_layers = nn.ModuleList(nn.Linear(channels, channels) for _ in range(dense_blocks))
        self.output_layer = nn.Linear(channels, out_dim)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def min_frames(self) -> int:
        """Shortest mel input for which every reflect pad sees more frames than it pads."""
        length = len(self.conv_bank) // 2 + 1
        while not self._pads_fit(length):
            length += 1
        return length

    def _pads_fit(self, length: int) -> bool:
        kernel = self.first_conv_layers[0].kernel_size[0]
        for step in self.subsample:
            if length <= kernel // 2:
                return False
            length = (length + 2 * (kernel // 2) - kernel) // step + 1
        return True

    def frame_features(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, T) -> (B, C, T') features before time pooling."""
        if mel.shape[-1] < self.min_frames:
            mel = F.pad(mel, (0, self.min_frames - mel.shape[-1]), mode="replicate")
        bank = [F.relu(_reflect_conv(mel, conv)) for conv in self.conv_bank]
        out = F.relu(_reflect_conv(torch.cat(bank + [mel], dim=1), self.in_conv_layer))
        for first, second, step in zip(self.first_conv_layers, self.second_conv_layers, self.subsample):
            y = F.relu(_reflect_conv(F.relu(_reflect_conv(out, first)), second))
            if step > 1:
                out = F.avg_pool1d(out, kernel_size=step, ceil_mode=True)
            out = y + out
        return out

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        out = pooled
        for first, second in zip(self.first_dense_layers, self.second_dense_layers):
            out = F.relu(second(F.relu(first(out)))) + out
        return self.output_layer(out)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.frame_features(mel).mean(-1))


class SpeakingStyleEncoder(nn.Module):
    """log-mel -> f_s (slots) -> slot weights w_s (see config.style_weights); a triplet head on f_s
    for L_style."""

    def __init__(self, config: MemoryTalkerConfig):
        super().__init__()
        n = config.mem_slots
        self.residual = config.style_weights == "residual"
        self.logmel = LogMel(config.sample_rate, config.n_fft, config.hop_length, config.n_mels)
        self.chunk_samples = STYLE_CHUNK_SECONDS * config.sample_rate // config.hop_length * config.hop_length
        self.speaker = SpeakerEncoder(
            config.n_mels, config.style_channels, config.style_embedding_dim, config.style_bank_size,
            config.style_kernel_size, config.style_subsample, config.style_dense_blocks,
        )
        self.to_slots = nn.Linear(config.style_embedding_dim, n)
        self.to_scale = nn.Linear(n, 1, bias=False)
        self.triplet_head = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, n))
        for m in [self.to_slots, self.to_scale, *self.triplet_head]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.prosody_head: nn.Linear | None = None
        if config.prosody_targets:
            self.add_prosody_head(len(config.prosody_targets))
        if self.residual:
            nn.init.zeros_(self.to_scale.weight)

    def embed(self, waveforms: list[torch.Tensor]) -> torch.Tensor:
        """One style vector f_s per clip (B, slots); clips run unpadded so padding cannot leak in."""
        return torch.cat([self._embed_clip(w) for w in waveforms])

    def _embed_clip(self, waveform: torch.Tensor) -> torch.Tensor:
        """The speaker encoder's conv features averaged over the whole clip before its dense head,
        computed in chunks so a long recording's style costs bounded memory."""
        total, count = 0.0, 0
        for start in range(0, waveform.shape[-1], self.chunk_samples):
            chunk = waveform[start:start + self.chunk_samples].float()  # a long line's samples can be float16
            features = self.speaker.frame_features(self.logmel(chunk)[None])
            total = total + features.sum(-1)
            count += features.shape[-1]
        return self.to_slots(self.speaker.head(total / count))

    def add_prosody_head(self, outputs: int) -> None:
        """A linear head on f_s predicting `outputs` prosody measures, for stage 2's prosody term."""
        self.prosody_head = nn.Linear(self.to_slots.out_features, outputs).to(self.to_slots.weight.device)
        nn.init.xavier_uniform_(self.prosody_head.weight)
        nn.init.zeros_(self.prosody_head.bias)

    @torch.no_grad()
    def standardise_output(self, waveforms: list[torch.Tensor]) -> None:
        """Rescale to_slots so that f_s has zero mean and unit spread per slot over `waveforms`.

        The encoder reads log-mel in dB unnormalised (as published), so an untrained encoder's f_s
        lies around +-70 with a spread of about 9 between clips: sigmoid(f_s) is 0 or 1 for 99 % of
        the slots, and no gradient reaches the gates. Standardised, the gates start where they can learn.
        """
        f_s = self.embed(waveforms)
        mean, spread = f_s.mean(0), f_s.std(0).clamp(min=1e-6)
        self.to_slots.weight.div_(spread[:, None])
        self.to_slots.bias.sub_(mean).div_(spread)

    def weights(self, f_s: torch.Tensor) -> torch.Tensor:
        """Per-sample slot weights w_s (B, slots); never averaged over the batch."""
        return self.gated(f_s, self.to_scale(f_s))

    def gated(self, f_s: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Slot weights from f_s (B, slots) and a scale (B, 1): the form config.style_weights names."""
        gate = torch.sigmoid(f_s) * scale
        return 1.0 + gate if self.residual else gate

    def triplet_loss(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
        head = self.triplet_head
        return F.triplet_margin_loss(head(anchor), head(positive), head(negative), margin=margin)


class MemoryTalker(nn.Module):
    def __init__(self, config: MemoryTalkerConfig, ctc_backbone: nn.Module | None = None):
        super().__init__()
        if ctc_backbone is None:
            if config.backbone_config is None:
                raise ValueError("no backbone given: pass a pretrained backbone or set config.backbone_config")
            ctc_backbone = backbone_from_config(config.backbone_config)
        self.config = config
        c, n = config.feature_dim, config.mem_slots
        self.audio_encoder = AudioEncoder(config, ctc_backbone)
        self.text_proj = nn.Linear(n, c)
        self.motion_encoder = nn.Linear(config.vertex_dim, c)
        self.memory = MotionMemory(n, c, config.kappa)
        self.fusion = nn.Linear(2 * c if config.use_memory else c, c)
        self.ppe = PeriodicPositionalEncoding(c, config.period, config.dropout)
        self.decoder = nn.ModuleList(
            DecoderLayer(c, config.decoder_heads, config.decoder_ff_dim, config.dropout) for _ in range(config.decoder_layers)
        )
        self.output_proj = nn.Linear(c, config.vertex_dim)
        self.style_encoder = SpeakingStyleEncoder(config)
        # The neutral mesh the motion was learned on (mean training template); displacements are
        # relative to whatever mesh they are applied to, the template is kept for export and checks.
        self.register_buffer("template", torch.zeros(config.num_vertices, 3))
        # Not saved with the weights: it comes from the config (see phoneme_logit_bias there).
        logit_bias = torch.zeros(n)
        for phoneme, bias in config.phoneme_logit_bias.items():
            logit_bias[config.vocabulary.index(phoneme)] = bias
        self.register_buffer("logit_bias", logit_bias, persistent=False)
        for layer in (self.text_proj, self.motion_encoder, self.fusion):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.output_proj.weight)  # start from the template: zero displacement
        nn.init.zeros_(self.output_proj.bias)
        self._frozen_stage: str | None = None
        self._frozen_backbone = False

    def add_prosody_head(self, targets: list[str]) -> None:
        """Give the style encoder a head predicting the prosody measures `targets` from f_s
        (config.prosody_targets), for stage 2's prosody term."""
        self.style_encoder.add_prosody_head(len(targets))
        self.config.prosody_targets = list(targets)

    def set_phoneme_logit_bias(self, bias: dict[str, float]) -> None:
        """Replaces config.phoneme_logit_bias (checked like a loaded config) and what predict adds."""
        self.config = self.config.replace(phoneme_logit_bias=dict(bias))
        self.logit_bias.zero_()
        for phoneme, value in bias.items():
            self.logit_bias[self.config.vocabulary.index(phoneme)] = value

    @classmethod
    def from_pretrained_backbone(cls, config: MemoryTalkerConfig) -> "MemoryTalker":
        """A new model whose audio encoder starts from `config.backbone` (hub id or local folder)."""
        ctc = backbone_from_pretrained(config.backbone, config.mem_slots)
        config = config.replace(backbone_config=ctc.config.to_dict())
        return cls(config, ctc)

    # -- training modes -------------------------------------------------------------------------
    def set_stage(self, stage: str, freeze_backbone: bool = False) -> list[nn.Parameter]:
        """Freeze what the stage does not train and return the parameters it does train.

        stage "asr": the whole audio backbone, CNN included (a phoneme recogniser trained from
        scratch); stage "1": everything but the backbone CNN and the style encoder, or with
        `freeze_backbone` also without the audio backbone (which then runs in eval mode); stage
        "2": the style encoder only (all the rest runs in eval mode, so no dropout or masking
        touches it).
        """
        if freeze_backbone and stage != "1":
            raise ValueError("freeze_backbone applies to stage 1 (stage 2 trains only the style encoder)")
        self._frozen_stage = stage
        self._frozen_backbone = freeze_backbone
        self.audio_encoder.train_cnn = stage == "asr"
        for p in self.parameters():
            p.requires_grad_(False)
        if stage == "asr":
            trainable = list(self.audio_encoder.parameters())
        elif stage == "2":
            trainable = list(self.style_encoder.parameters())
        elif stage == "1":
            frozen = ("style_encoder.", "audio_encoder." if freeze_backbone else
                      "audio_encoder.ctc." + self.audio_encoder.ctc.base_model_prefix + ".feature_extractor.")
            trainable = [p for name, p in self.named_parameters() if not name.startswith(frozen)]
        else:
            raise ValueError(f"unknown training stage {stage!r}")
        for p in trainable:
            p.requires_grad_(True)
        self.train(self.training)
        return trainable

    @property
    def backbone_fixed(self) -> bool:
        """Whether the training stage keeps the audio backbone fixed (eval mode, no gradients):
        stage 2, or stage 1 with `freeze_backbone`."""
        return self._frozen_stage == "2" or self._frozen_backbone

    def train(self, mode: bool = True) -> "MemoryTalker":
        super().train(mode)
        if self._frozen_stage == "2":
            for child in self.children():
                if child is not self.style_encoder:
                    child.eval()
        elif self._frozen_backbone:
            self.audio_encoder.eval()
        return self

    # -- forward pieces -------------------------------------------------------------------------
    def memory_bank(self, style_weights: torch.Tensor | None) -> torch.Tensor:
        """M (n, c), or the stylized diag(w_s) M per sample (B, n, c)."""
        # The memory learns only from L_mem and L_align, so the retrieval path sees it detached.
        slots = self.memory.slots.detach()
        if style_weights is None:
            return slots
        return style_weights[:, :, None] * slots[None]

    def decoder_features(self, logits: torch.Tensor, retrieved: torch.Tensor | None, mask: torch.Tensor,
                         offset: int = 0) -> torch.Tensor:
        """Fusion + PPE + decoder -> the features (B, T, feature_dim) that the output projection maps to motion."""
        f_txt = self.text_proj(logits)
        query_in = torch.cat([f_txt, retrieved], dim=-1) if retrieved is not None else f_txt
        x = self.ppe(self.fusion(query_in), offset)
        padding = None if bool(mask.all()) else ~mask
        for layer in self.decoder:
            x = layer(x, f_txt, padding)
        return x

    def decode(self, logits: torch.Tensor, retrieved: torch.Tensor | None, mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Fusion + PPE + decoder + output projection -> displacements (B, T, 3V)."""
        return self.output_proj(self.decoder_features(logits, retrieved, mask, offset))

    def retrieve(self, logits: torch.Tensor, style_weights: torch.Tensor | None) -> torch.Tensor | None:
        if not self.config.use_memory:
            return None
        return self.memory.retrieve(self.memory.text_addressing(logits), self.memory_bank(style_weights))

    def predict(self, logits: torch.Tensor, mask: torch.Tensor, style_weights: torch.Tensor | None = None, offset: int = 0) -> torch.Tensor:
        """Displacements (B, T, 3V) from the backbone's logits."""
        return self.output_proj(self.predict_features(logits, mask, style_weights, offset))

    def predict_features(self, logits: torch.Tensor, mask: torch.Tensor, style_weights: torch.Tensor | None = None,
                         offset: int = 0) -> torch.Tensor:
        """predict's decoder features (B, T, feature_dim), before the output projection: inference
        blends and resamples these instead of the displacements (output_proj is affine, so convex
        blends of features project to the same blends of motion, at a 150th of the size)."""
        if not self.training and self.config.phoneme_logit_bias:
            logits = logits + self.logit_bias.to(logits.dtype)
        return self.decoder_features(logits, self.retrieve(logits, style_weights), mask, offset)

    def style_weights_from_embedding(self, f_s: torch.Tensor, strength: float = 1.0) -> torch.Tensor | None:
        """Slot weights for a style strength: 0 -> the generic memory, 1 -> the speaker's own style."""
        if not self.config.stylized or strength == 0.0:
            return None
        w_s = self.style_encoder.weights(f_s)
        return 1.0 + strength * (w_s - 1.0)

    def style_weights(self, waveforms: list[torch.Tensor], strength: float = 1.0) -> torch.Tensor | None:
        """Slot weights for the style heard in `waveforms`; None (the generic memory) when the model
        has no trained style or the strength is 0, without running the style encoder."""
        if not self.config.stylized or strength == 0.0:
            return None
        return self.style_weights_from_embedding(self.style_encoder.embed(waveforms), strength)

    def forward(self, waveforms: list[torch.Tensor], frame_counts: list[int], style_strength: float = 1.0) -> torch.Tensor:
        """Displacements (B, T, V, 3) for unpadded waveforms (normalised, at config.sample_rate)."""
        logits, mask = self.audio_encoder(waveforms, frame_counts)
        out = self.predict(logits, mask, self.style_weights(waveforms, style_strength))
        return out.view(out.shape[0], out.shape[1], self.config.num_vertices, 3)
