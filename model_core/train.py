"""Training of stage 1 (memorizing) and stage 2 (animating): checkpoint every epoch, resumable,
best checkpoint chosen on the validation split's LVE, seeded per epoch so a resumed run equals an
uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .augment import DEFAULT_PROBABILITY, Augmentation
from .checkpoint import load_model, save_model
from .config import MemoryTalkerConfig
from .data import Batch, DatasetInfo, TalkingFaceDataset, collate
from .errors import MemoryTalkerError
from .evaluate import evaluate_model, phoneme_recognition
from .inference import resolve_device
from .losses import asr_losses, stage1_losses, stage2_losses
from .model import MemoryTalker

log = logging.getLogger(__name__)
DEFAULT_LR = {"asr": 5e-4, "1": 1e-4, "2": 5e-5}
# Adam's epsilon: PyTorch's default. Gradients of an MSE on displacements in metres are about as
# small (RMS 1e-9 to 1e-8 on most weights of the demo model), so this epsilon shrinks many steps;
# --adam-eps 1e-12 removes that, but then stage 1 fine-tunes the backbone to the training voices
# and does worse on unseen ones (docs/model_card.md: test LVE 2.86 against 1.84, same start).
ADAM_EPS = 1e-8
# The output projection maps features of order one to displacements in metres, so its weights are
# tiny (RMS 5e-5 to 8e-5 in the demo model) and one Adam step at the body's rate (about lr in
# size) rewrites them: training stalls at a noise floor. --output-lr gives that layer its own rate.
OUTPUT_LAYER = "output_proj."
STATE_FILE = "training_state.pt"


@dataclass
class TrainOptions:
    stage: str
    data: Path
    out: Path
    epochs: int = 100
    lr: float | None = None
    batch_size: int = 1
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    init: Path | None = None  # a model folder: required for stage 2 (the stage-1 model)
    backbone: str | None = None  # hub id or folder for a new stage-1 model
    config: Path | None = None  # JSON of MemoryTalkerConfig fields for a new stage-1 model
    dataset: str | None = None  # preset: vocaset or biwi (default: dataset.json or vocaset)
    num_workers: int = 0
    progress: bool = True
    no_memory: bool = False  # stage 1 of the "no memory" ablation (from --init: its backbone, a new decoder)
    adam_eps: float = ADAM_EPS
    asr_frame_weight: float = 0.0  # weight of the frame-wise phoneme term beside CTC in the asr stage
    bilabial_weight: float = 1.0  # asr frame term and stage-1 L_mse: weight of the frames inside p, b, m
    freeze_backbone: bool = False  # stage 1: train the memory and decoder on a fixed audio backbone
    output_lr: float | None = None  # stage 1: the output projection's own learning rate (default: lr)
    augment: bool = False  # degrade the training audio afresh every epoch (augment.py)
    augment_prob: float | None = None  # with augment: each effect's probability (default augment.DEFAULT_PROBABILITY)


class FixedBackboneLogits:
    """A fixed backbone's logits per training clip, computed the first time the clip is seen.

    In stage 2, and in stage 1 with --freeze-backbone, the backbone runs in eval mode without
    gradients, so a clip's logits never change: computing them once leaves later epochs only the
    parts being trained to run. Each clip is encoded on its own, as at inference, so padding never
    enters its logits. With `reuse=False` (training with augmentation: a clip's audio differs every
    epoch) nothing is kept and every batch is encoded afresh; keying the cache by epoch instead
    would only fill memory, since no epoch's audio comes back.
    """

    def __init__(self, model: MemoryTalker, reuse: bool = True):
        self.encoder = model.audio_encoder
        self.reuse = reuse
        self.logits: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits if self.reuse else {}
        for name, waveform, frames in zip(batch.names, batch.waveforms, batch.frame_counts):
            if name not in logits:
                logits[name] = self.encoder([waveform], [frames])[0][0]
        padded = torch.nn.utils.rnn.pad_sequence([logits[name] for name in batch.names], batch_first=True)
        return padded, batch.mask


def _seed(seed: int, epoch: int) -> torch.Generator:
    torch.manual_seed(seed * 1_000_003 + epoch)
    np.random.seed((seed * 1_000_003 + epoch) % 2**32)
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def phoneme_vocabulary(info: DatasetInfo) -> list[str]:
    """["<blank>"] + every phoneme of the training split's labels, sorted."""
    dataset = TalkingFaceDataset(info, "train")
    seen: set[str] = set()
    for i in range(len(dataset)):
        labels = dataset.phonemes(i)
        if labels is None:
            raise MemoryTalkerError(f"{dataset.items[i].name} has no phoneme labels (phonemes/NAME.json): "
                                    "the asr stage needs them for every clip")
        seen.update(labels)
    if not seen:
        raise MemoryTalkerError(f"{info.root}: the training split has no phoneme labels")
    return ["<blank>"] + sorted(seen)


def _new_stage1_model(opts: TrainOptions, info: DatasetInfo) -> MemoryTalker:
    fields = json.loads(Path(opts.config).read_text()) if opts.config else {}
    if opts.stage == "asr":
        if not fields.get("backbone_config"):
            raise MemoryTalkerError("the asr stage trains a backbone from scratch: give its architecture as "
                                    "'backbone_config' (a transformers HuBERT/wav2vec2 config) in --config")
        vocabulary = phoneme_vocabulary(info)
        fields.update(vocabulary=vocabulary, mem_slots=len(vocabulary), backbone=None)
        fields["backbone_config"] = {**fields["backbone_config"], "vocab_size": len(vocabulary), "pad_token_id": 0}
    fields.setdefault("num_vertices", info.num_vertices)
    fields.setdefault("fps", info.fps)
    if opts.backbone:
        fields.update(backbone=opts.backbone, backbone_config=None)
    config = MemoryTalkerConfig.from_dict(fields)
    if config.num_vertices != info.num_vertices:
        raise MemoryTalkerError(f"the config has {config.num_vertices} vertices, the data {info.num_vertices}")
    torch.manual_seed(opts.seed)
    model = MemoryTalker(config) if config.backbone_config else MemoryTalker.from_pretrained_backbone(config)
    model.template.copy_(torch.from_numpy(np.mean(list(info.templates.values()), axis=0)))
    return model


def _without_memory(model: MemoryTalker, seed: int) -> MemoryTalker:
    """The same model with the memory removed: every weight whose shape still fits is kept (the
    backbone, motion and output layers), the fusion layer starts afresh."""
    torch.manual_seed(seed)
    ablated = MemoryTalker(model.config.replace(use_memory=False))
    target = ablated.state_dict()
    kept = {k: v for k, v in model.state_dict().items() if k in target and v.shape == target[k].shape}
    ablated.load_state_dict(kept, strict=False)
    return ablated


def _build_model(opts: TrainOptions, info: DatasetInfo) -> MemoryTalker:
    if opts.resume and (opts.out / "last").exists():
        return load_model(opts.out / "last")
    if opts.init:
        model = load_model(opts.init)
        if opts.no_memory and model.config.use_memory:
            model = _without_memory(model, opts.seed)
    elif opts.stage == "2":
        raise MemoryTalkerError("stage 2 starts from a stage-1 model: pass --init STAGE1_MODEL_DIR")
    elif opts.stage == "asr" and opts.backbone:
        raise MemoryTalkerError("the asr stage trains a new backbone from --config; --backbone names a pretrained one")
    else:
        model = _new_stage1_model(opts, info)
        if opts.no_memory:
            model = _without_memory(model, opts.seed)
    if opts.no_memory and opts.stage != "1":
        raise MemoryTalkerError("--no-memory is the stage-1 ablation: use it with --stage 1")
    if model.config.num_vertices != info.num_vertices:
        raise MemoryTalkerError(f"the model has {model.config.num_vertices} vertices, the data {info.num_vertices}")
    if opts.stage == "2":
        model.config.stylized = True
    return model


def make_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], lr: float, eps: float = ADAM_EPS,
                   output_lr: float | None = None) -> torch.optim.Adam:
    """The training optimiser: Adam at the published rates; with `output_lr`, the output
    projection's parameters form a second group ("output") at that rate."""
    is_output = [output_lr is not None and name.startswith(OUTPUT_LAYER) for name, _ in named_params]
    groups = [{"params": [p for (_, p), out in zip(named_params, is_output) if not out], "name": "body"}]
    if output_lr is not None:
        groups.append({"params": [p for (_, p), out in zip(named_params, is_output) if out], "name": "output",
                       "lr": output_lr})
    return torch.optim.Adam(groups, lr=lr, eps=eps)


def train(opts: TrainOptions) -> Path:
    """Runs (or resumes) training; returns the folder of the best model."""
    if opts.stage not in DEFAULT_LR:
        raise MemoryTalkerError(f"unknown stage {opts.stage!r}; use asr, 1 or 2")
    if opts.freeze_backbone and opts.stage != "1":
        raise MemoryTalkerError("--freeze-backbone is for stage 1 (stage 2 trains only the style encoder, "
                                "the asr stage trains the backbone itself)")
    if opts.output_lr is not None and opts.stage != "1":
        raise MemoryTalkerError("--output-lr is for stage 1, the only stage that trains the output projection")
    if opts.bilabial_weight != 1.0 and (opts.stage == "2" or (opts.stage == "asr" and not opts.asr_frame_weight)):
        raise MemoryTalkerError("--bilabial-weight weights frames of the asr stage's frame term (give "
                                "--asr-frame-weight too) or of stage 1's vertex error; stage 2 has no use for it")
    if opts.augment_prob is not None and not opts.augment:
        raise MemoryTalkerError("--augment-prob sets the probability of each effect of --augment: give --augment too")
    opts.out = Path(opts.out)
    info = DatasetInfo.open(opts.data, opts.dataset)
    device = resolve_device(opts.device)
    model = _build_model(opts, info).to(device)
    trainable = set(model.set_stage(opts.stage, opts.freeze_backbone))
    optimizer = make_optimizer([(name, p) for name, p in model.named_parameters() if p in trainable],
                               opts.lr or DEFAULT_LR[opts.stage], opts.adam_eps, opts.output_lr)
    # The training split only: validation and test clips are always heard as recorded.
    augmentation = Augmentation(DEFAULT_PROBABILITY if opts.augment_prob is None else opts.augment_prob,
                                model.config.sample_rate) if opts.augment else None
    augmentation_record = augmentation.describe() if augmentation else None
    train_set = TalkingFaceDataset(info, "train", model.config.sample_rate, triplets=opts.stage == "2",
                                   seed=opts.seed, augmentation=augmentation)
    has_val = bool(info.items("val")) if "val" in info.splits else False
    lips = torch.from_numpy(info.lip_indices).to(device)
    fixed_logits = FixedBackboneLogits(model, reuse=augmentation is None) if model.backbone_fixed else None

    start_epoch, best, history = 0, float("inf"), []
    state_path = opts.out / STATE_FILE
    if opts.resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["stage"] != opts.stage:
            raise MemoryTalkerError(f"{opts.out} holds a stage-{state['stage']} run; cannot resume it as stage {opts.stage}")
        saved_groups = [group.get("name", "body") for group in state["optimizer"]["param_groups"]]
        if saved_groups != [group["name"] for group in optimizer.param_groups]:
            raise MemoryTalkerError(f"{opts.out} was trained {'with' if 'output' in saved_groups else 'without'} "
                                    "--output-lr: resume it the same way, or start a new run in another --out folder")
        # Runs saved before augmentation existed have no record: they trained without it.
        saved_augmentation = state.get("augmentation")
        if saved_augmentation != augmentation_record:
            raise MemoryTalkerError(
                f"{opts.out} was trained " + (f"with --augment (probabilities {saved_augmentation})"
                                              if saved_augmentation else "without --augment")
                + ": resume it the same way, or start a new run in another --out folder")
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["eps"] = opts.adam_eps
            # an explicit rate on resume continues at that rate (a step decay by hand)
            new_lr = opts.output_lr if group.get("name") == "output" else opts.lr
            if new_lr:
                group["lr"] = new_lr
        start_epoch, best, history = state["epoch"] + 1, state["best"], json.loads(state["history"])
        log.info("resuming at epoch %d", start_epoch + 1)

    for epoch in range(start_epoch, opts.epochs):
        generator = _seed(opts.seed, epoch)
        train_set.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(train_set, batch_size=opts.batch_size, shuffle=True, generator=generator,
                                             collate_fn=collate, num_workers=opts.num_workers)
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"stage {opts.stage} epoch {epoch + 1}/{opts.epochs}", disable=not opts.progress)
        for batch in bar:
            batch = batch.to(device)
            if opts.stage == "asr":
                losses = asr_losses(model, batch, opts.asr_frame_weight, opts.bilabial_weight)
            elif opts.stage == "1":
                losses = stage1_losses(model, batch, fixed_logits(batch) if fixed_logits else None, opts.bilabial_weight)
            else:
                losses = stage2_losses(model, batch, lips, fixed_logits(batch))
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(loss=f"{sums['total'] / (bar.n + 1):.3e}")
        record = {"epoch": epoch + 1, **{f"train_{k}": v / len(loader) for k, v in sums.items()}}
        if has_val and opts.stage == "asr":
            record.update({f"val_{k}": v for k, v in phoneme_recognition(model, info, "val").items()})
        elif has_val:
            record.update({f"val_{k}": v for k, v in evaluate_model(model, info, "val", progress=False).items()})
        score = record.get("val_PER", record.get("val_LVE", record["train_total"]))
        history.append(record)
        meta = {"stage": opts.stage, "epoch": epoch + 1, "seed": opts.seed, "data": str(opts.data),
                "augmentation": augmentation_record, "metrics": record}
        save_model(model, opts.out / "last", meta)
        if score < best:
            best = score
            shutil.copytree(opts.out / "last", opts.out / "best", dirs_exist_ok=True)
        torch.save({"stage": opts.stage, "epoch": epoch, "best": best, "history": json.dumps(history),
                    "augmentation": augmentation_record, "optimizer": optimizer.state_dict()}, state_path)
        (opts.out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        log.info("epoch %d: %s", epoch + 1, record)
    return opts.out / "best"
