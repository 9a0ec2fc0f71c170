"""Model configuration: a JSON-serialisable dataclass whose defaults are the published ones."""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError

DEFAULT_BACKBONE = "facebook/hubert-base-ls960"


@dataclass
class MemoryTalkerConfig:
    # Motion
    num_vertices: int = 5023  # FLAME topology (VOCASET)
    fps: float = 30.0  # the frame rate the model runs at; output is resampled from it
    # Memory and decoder (published defaults)
    mem_slots: int = 32  # equals the CTC vocabulary: logits address the slots directly
    # The CTC tokens, when the backbone was trained here as a phoneme recogniser (`train --stage
    # asr`): index 0 is the blank, then one phoneme per memory slot. None for pretrained backbones.
    vocabulary: list[str] | None = None
    # Added to the recogniser's logits of these phonemes before the memory and the decoder read
    # them, at inference only (training sees the recogniser's own logits). A recogniser trained on
    # a few hours of speech is unsure of p, b and m on unseen voices and the mouth then stays half
    # open; shifting their log-odds closes it where they are merely likely. Chosen on held-out
    # speakers after training (scripts/real_speech_eval.py --bilabial-bias); needs `vocabulary`.
    phoneme_logit_bias: dict[str, float] = field(default_factory=dict)
    feature_dim: int = 96
    kappa: float = 16.0
    period: int = 30
    decoder_layers: int = 1
    decoder_heads: int = 4
    decoder_ff_dim: int = 192
    dropout: float = 0.1
    use_memory: bool = True  # False gives the "no memory" ablation (decoder on the text feature only)
    # Audio backbone: a hub id or local folder (used to initialise training), or a transformers
    # config dict (model_type "hubert" or "wav2vec2"). A saved model always stores the dict,
    # so loading a model folder never needs the network.
    sample_rate: int = 16000
    backbone: str | None = DEFAULT_BACKBONE
    backbone_config: dict[str, Any] | None = None
    # Speaking-style encoder (AdaIN-VC speaker encoder on an 80-band log-mel spectrogram)
    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    style_channels: int = 128
    style_bank_size: int = 8
    style_kernel_size: int = 5
    style_subsample: list[int] = field(default_factory=lambda: [1, 2, 1, 2, 1, 2])
    style_dense_blocks: int = 6
    style_embedding_dim: int = 256
    triplet_margin: float = 1.0
    # How f_s becomes slot weights. "product": w_s = sigmoid(f_s) * Linear(f_s), the research
    # code's form (kept for imported checkpoints). "residual": w_s = 1 + sigmoid(f_s) * Linear(f_s)
    # with the Linear zero-initialised, so stage 2 starts from the stage-1 memory unchanged; with
    # the product form the initial weights ranged 0..113 on the demo model and stage 2 began far
    # worse than stage 1 (val LVE 7.3 against 2.3 x 1e-5 after an epoch).
    style_weights: str = "residual"
    # Stage 2 with a prosody weight: names of the audible prosody measures (synthetic/prosody.py)
    # that a linear head on f_s learns to predict, as z-scores of the speaker's median. A training
    # aid that steers f_s towards what the style depends on; inference never uses the head.
    prosody_targets: list[str] = field(default_factory=list)
    # True once stage 2 has trained the style encoder: only then do style weights apply.
    stylized: bool = False

    def __post_init__(self) -> None:
        if self.backbone is None and self.backbone_config is None:
            raise ValueError("the config needs an audio backbone: a hub id/folder or a transformers config dict")
        if self.backbone_config is not None:
            vocab = self.backbone_config.get("vocab_size")
            if vocab is not None and vocab != self.mem_slots:
                raise ValueError(
                    f"the backbone's CTC vocabulary ({vocab}) must equal mem_slots ({self.mem_slots}): "
                    "the logits address the memory slots directly"
                )
        if self.vocabulary is not None and len(self.vocabulary) != self.mem_slots:
            raise ValueError(f"the vocabulary has {len(self.vocabulary)} tokens but mem_slots is {self.mem_slots}")
        if self.phoneme_logit_bias:
            unknown = sorted(set(self.phoneme_logit_bias) - set(self.vocabulary or ()))
            if unknown:
                raise ValueError(f"phoneme_logit_bias names {', '.join(unknown)}, which "
                                 + ("the vocabulary lacks" if self.vocabulary else
                                    "needs a phoneme vocabulary (a backbone trained with `train --stage asr`)"))
            if not all(math.isfinite(v) for v in self.phoneme_logit_bias.values()):
                raise ValueError("phoneme_logit_bias values must be finite numbers")
        if self.feature_dim % self.decoder_heads:
            raise ValueError(f"feature_dim {self.feature_dim} is not divisible by decoder_heads {self.decoder_heads}")
        if self.style_weights not in ("residual", "product"):
            raise ValueError(f"style_weights must be 'residual' or 'product', not {self.style_weights!r}")
        if len(self.style_subsample) < 1:
            raise ValueError("style_subsample needs at least one conv block")

    @property
    def vertex_dim(self) -> int:
        return 3 * self.num_vertices

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> "MemoryTalkerConfig":
        """A config from parsed JSON, each field's type checked first; errors name `source`, the file."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}the model config must be a JSON object of field: value, "
                                  f"got {type(data).__name__} {data!r:.60}")
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise CheckpointError(f"{where}unknown model config keys: {', '.join(unknown)}")
        for name, value in data.items():
            if not _is_json_of_type(value, hints[name]):
                raise CheckpointError(f"{where}{name} must be {_json_type_name(hints[name])}, got {value!r:.60}")
        try:
            return cls(**data)
        except ValueError as exc:
            raise CheckpointError(f"{where}invalid model config ({exc})") from None

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> "MemoryTalkerConfig":
        return cls.from_dict(json.loads(Path(path).read_text()), path)

    def replace(self, **changes: Any) -> "MemoryTalkerConfig":
        return dataclasses.replace(self, **changes)


_JSON_SCALARS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
                 str: ("a string", "strings")}


def _is_json_of_type(value: Any, hint: Any) -> bool:
    """Whether parsed JSON `value` fits the field type `hint`. Python's bool is an int, so true and
    false are kept out of the numbers explicitly."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_json_of_type(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_json_of_type(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_is_json_of_type(k, key) and _is_json_of_type(v, item)
                                               for k, v in value.items())
    raise TypeError(f"no JSON check for the config field type {hint}; add one to _is_json_of_type")


def _json_type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_json_type_name(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is list:
        return f"a list of {_JSON_SCALARS[typing.get_args(hint)[0]][1]}"
    if origin is dict:
        return "a JSON object"
    return _JSON_SCALARS[hint][0]


def tiny_backbone_config(model_type: str = "hubert", mem_slots: int = 32, **overrides: Any) -> dict[str, Any]:
    """A small randomly initialised backbone config (tests, demos, benchmarks): no download."""
    cfg: dict[str, Any] = dict(
        model_type=model_type,
        vocab_size=mem_slots,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        mask_time_prob=0.0,
        layerdrop=0.0,
    )
    cfg.update(overrides)
    return cfg


def hubert_base_config(mem_slots: int = 32) -> dict[str, Any]:
    """The architecture of facebook/hubert-base-ls960 (94 M parameters), without its weights."""
    from transformers import HubertConfig

    cfg = HubertConfig(vocab_size=mem_slots).to_dict()
    return cfg
