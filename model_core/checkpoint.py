"""Model folders (config.json + model.safetensors, self-contained) and import of research checkpoints."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save_file

from .config import MemoryTalkerConfig
from .errors import CheckpointError
from .model import MemoryTalker

CONFIG_FILE = "config.json"
# The small demo model trained on the synthetic corpus, shipped inside the package (and the extension).
BUNDLED_MODEL = Path(__file__).resolve().parent / "models" / "demo"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "memorytalker"
FORMAT_VERSION = 1


def save_model(model: MemoryTalker, folder: str | Path, metadata: dict[str, Any] | None = None,
               weights_dtype: torch.dtype | None = None) -> Path:
    """`weights_dtype=torch.float16` halves the file (a shipped model); loading casts back to float32."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(weights_dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_dict(),
                "metadata": metadata or {}}
    (folder / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
    return folder


def update_model_config(folder: str | Path, **changes: Any) -> MemoryTalkerConfig:
    """Changes config fields of a saved model in place (config.json only; the weights stay as they
    are), checked as loading checks them."""
    folder = Path(folder)
    document = read_model_document(folder)
    config = MemoryTalkerConfig.from_dict({**document["config"], **changes}, folder / CONFIG_FILE)
    document["config"] = config.to_dict()
    partial = folder / f".{CONFIG_FILE}.partial"
    partial.write_text(json.dumps(document, indent=2) + "\n")
    partial.replace(folder / CONFIG_FILE)
    return config


def read_model_document(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such model folder")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: expected a model folder (config.json + model.safetensors), got a file"
                              + ("; for a research-code .pth use `python -m model_core import-official`" if folder.suffix in (".pth", ".pt") else ""))
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / n).exists()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())[:8]
        raise CheckpointError(f"{folder}: not a MemoryTalker model folder: missing {', '.join(missing)} "
                              f"(found: {', '.join(present) or 'nothing'})")
    try:
        document = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: expected a JSON object with \"format\": \"{FORMAT}\" and "
                              f"\"config\", got a {type(document).__name__}; save the model again with save_model")
    if document.get("format") != FORMAT or "config" not in document:
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a MemoryTalker config (no \"format\": \"{FORMAT}\")")
    if not isinstance(document["config"], dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: \"config\" must be a JSON object of model settings, "
                              f"got a {type(document['config']).__name__}")
    return document


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> MemoryTalker:
    """A model folder -> MemoryTalker in eval mode. Never touches the network."""
    folder = Path(folder)
    document = read_model_document(folder)
    config = MemoryTalkerConfig.from_dict(document["config"], folder / CONFIG_FILE)
    if config.backbone_config is None:
        raise CheckpointError(f"{folder / CONFIG_FILE}: the config has no backbone_config; the folder is incomplete")
    model = MemoryTalker(config)
    _load_weights(model, folder / WEIGHTS_FILE)
    model.metadata = document.get("metadata", {})
    return model.to(device).eval()


def _load_weights(model: MemoryTalker, path: Path) -> None:
    """Copies tensors one at a time into the model, so loading never holds two copies of the weights."""
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as weights:
            names = set(weights.keys())
            missing = sorted(set(expected) - names)
            unexpected = sorted(names - set(expected))
            shapes = {k: tuple(weights.get_slice(k).get_shape()) for k in names & set(expected)}
            wrong = sorted(k for k, shape in shapes.items() if shape != tuple(expected[k].shape))
            if missing or unexpected or wrong:
                parts = []
                if missing:
                    parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
                if unexpected:
                    parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
                if wrong:
                    parts.append("shape mismatch for " + ", ".join(f"{k} {shapes[k]} vs {tuple(expected[k].shape)}" for k in wrong[:3]))
                raise CheckpointError(f"{path}: weights do not match config.json: " + "; ".join(parts))
            with torch.no_grad():
                for name in names:
                    expected[name].copy_(weights.get_tensor(name))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable weights ({exc})") from None


# -- research-code checkpoints ------------------------------------------------------------------

# torch.save writes a zip archive (PyTorch 1.6 on) or a pickle of protocol 2 or above (b"\x80" + protocol).
_TORCH_MAGICS = (b"PK\x03\x04", b"\x80")
# How torch names the class or function that weights_only loading refused.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def read_torch_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, read with weights_only=True: anything needing code execution is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic.startswith(_TORCH_MAGICS):
        found = "an empty file" if not magic else "neither a zip archive nor a pickle"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({found}); give the .pth file that the research "
                              "code wrote with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged, or not written by "
                                  "torch.save); copy or save it again") from None
        raise CheckpointError(
            f"{path}: this checkpoint contains Python objects whose loading would run code, so it is refused "
            f"(it refers to {refused.group(1)}). Save a plain state dict in the research environment: "
            "torch.save(model.state_dict(), 'x.pth')"
        ) from None
    # What the unpickler and the zip reader raise on damaged bytes.
    except (RuntimeError, OSError, EOFError, KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc}); "
                              "copy or save it again") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# Research-code names -> ours (prefix rewrites, first match wins).
_OFFICIAL_PREFIXES = [
    ("E_aud.", "audio_encoder.ctc."),
    ("txt_proj.", "text_proj."),
    ("E_m.", "motion_encoder."),
    ("fusion_layer.", "fusion."),
    ("output_proj.", "output_proj."),
    ("memory_net.M_m", "memory.slots"),
    ("style_encoder.audio_encoder.", "style_encoder.speaker."),
    ("style_encoder.to_style_emb.", "style_encoder.to_slots."),
    ("style_encoder.to_scale.", "style_encoder.to_scale."),
    ("style_encoder.style_mlp.", "style_encoder.triplet_head."),
]
# Tensors of the research model that this architecture computes differently, on purpose.
_OFFICIAL_UNUSED = {
    "PPE.pe": "the periodic encoding is computed for any length instead of a fixed 600-frame buffer",
}


def convert_official_state(state: dict[str, torch.Tensor], feature_dim: int) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Returns (converted tensors, ignored research keys with the reason, keys with no counterpart)."""
    converted: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    unknown: list[str] = []
    d = feature_dim
    for key, value in state.items():
        if key in _OFFICIAL_UNUSED:
            ignored[key] = _OFFICIAL_UNUSED[key]
            continue
        if key.startswith("D_m.layers."):
            rest = key[len("D_m.layers."):]
            index, name = rest.split(".", 1)
            prefix = f"decoder.{index}."
            if name == "multihead_attn.in_proj_weight":
                converted[prefix + "cross_value.weight"] = value[2 * d:]
                ignored[key + "[:2d]"] = "query/key of the diagonal cross-attention do not change its output"
            elif name == "multihead_attn.in_proj_bias":
                converted[prefix + "cross_value.bias"] = value[2 * d:]
            elif name.startswith("multihead_attn.out_proj."):
                converted[prefix + "cross_out." + name.rsplit(".", 1)[1]] = value
            else:
                converted[prefix + name] = value
            continue
        for old, new in _OFFICIAL_PREFIXES:
            if key.startswith(old):
                converted[new + key[len(old):]] = value
                break
        else:
            unknown.append(key)
    return converted, ignored, unknown


def import_official(checkpoint: str | Path, out: str | Path, config: MemoryTalkerConfig) -> dict[str, Any]:
    """Convert a research-code state dict (stage 1 or 2) into a model folder; returns a report."""
    state = read_torch_state_dict(checkpoint)
    if "output_proj.weight" not in state or "memory_net.M_m" not in state:
        raise CheckpointError(f"{checkpoint}: not a MemoryTalker research checkpoint (no output_proj / memory_net.M_m)")
    feature_dim = state["output_proj.weight"].shape[1]
    backbone = dict(config.backbone_config)
    prefix = f"E_aud.{backbone.get('model_type', 'hubert')}."
    # Architecture switches that the tensors themselves reveal.
    backbone.update(
        feat_proj_layer_norm=prefix + "feature_projection.layer_norm.weight" in state,
        conv_bias=prefix + "feature_extractor.conv_layers.0.conv.bias" in state,
        feat_extract_norm="layer" if prefix + "feature_extractor.conv_layers.1.layer_norm.weight" in state else "group",
    )
    sizes = dict(
        backbone_config=backbone,
        num_vertices=state["output_proj.weight"].shape[0] // 3,
        feature_dim=feature_dim,
        mem_slots=state["memory_net.M_m"].shape[0],
        stylized=any(k.startswith("style_encoder.") for k in state),
        style_weights="product",
        decoder_layers=len({k.split(".")[2] for k in state if k.startswith("D_m.layers.")}),
    )
    if "D_m.layers.0.linear1.weight" in state:
        sizes["decoder_ff_dim"] = state["D_m.layers.0.linear1.weight"].shape[0]
    speaker = "style_encoder.audio_encoder."
    if speaker + "in_conv_layer.weight" in state:
        sizes.update(
            style_channels=state[speaker + "in_conv_layer.weight"].shape[0],
            style_embedding_dim=state[speaker + "output_layer.weight"].shape[0],
            style_dense_blocks=len({k.split(".")[3] for k in state if k.startswith(speaker + "first_dense_layers.")}),
        )
    config = config.replace(**sizes)
    model = MemoryTalker(config)
    converted, ignored, unknown = convert_official_state(state, feature_dim)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in converted and k != "template")
    mismatched = sorted(k for k in converted if k in expected and converted[k].shape != expected[k].shape)
    unknown += sorted(k for k in converted if k not in expected)
    if mismatched:
        raise CheckpointError(f"{checkpoint}: shapes do not match the config for: " +
                              ", ".join(f"{k} {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched))
    if missing and not all(k.startswith("style_encoder.") for k in missing):
        raise CheckpointError(f"{checkpoint}: missing tensors: {', '.join(missing)}")
    model.load_state_dict({k: v for k, v in converted.items() if k in expected}, strict=False)
    report = {"source": str(checkpoint), "stage": 2 if config.stylized else 1,
              "missing": missing, "ignored": ignored, "unexpected": unknown}
    save_model(model, out, metadata={"imported_from": report})
    return report
