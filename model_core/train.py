"""Training of stage 1 (memorizing) and stage 2 (animating): checkpoint every epoch, resumable,
best checkpoint chosen on the validation split's LVE, seeded per epoch so a resumed run equals an
uninterrupted one.

Under `torchrun --nproc-per-node N -m model_core train ...` the N processes train one model with
DistributedDataParallel (gloo on CPU, nccl on CUDA, process i on cuda:i): each step's global batch is
the one a single process would draw, split over the processes, and its gradient is the single
process's (see shard_objective). Process 0 alone writes the run folder and logs.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterator, Sized
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
from .losses import asr_losses, bilabial_frame_weights, stage1_losses, stage2_losses
from .model import MemoryTalker
from .synthetic.prosody import REFERENCE as PROSODY_REFERENCE, z_scores as prosody_z_scores

log = logging.getLogger(__name__)
DEFAULT_LR = {"asr": 5e-4, "1": 1e-4, "2": 5e-5}
STYLE_SAMPLE_CLIPS = 32  # clips that set the scale of an untrained style encoder's output (stage 2)
# Fitting a training speaker's slot weights on the frozen stage-1 model: clips, Adam steps and rate.
SPEAKER_FIT_CLIPS, SPEAKER_FIT_STEPS, SPEAKER_FIT_LR = 6, 60, 0.05
FITTED_STYLE_FILE = "fitted_style_weights.json"
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
    batch_size: int = 1  # clips per optimiser step in all; under torchrun each of N processes takes batch_size / N
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
    prosody_weight: float = 0.0  # stage 2: weight of L_prosody (the style encoder predicting the speaker's prosody)
    fitted_style_weight: float = 0.0  # stage 2: weight of the distance to each speaker's fitted slot weights


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


def _seed(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """Seeds the global generators for the epoch and returns the generator that shuffles its clips.

    The shuffle depends on (seed, epoch) alone, so every process of a torchrun launch draws the same
    global batches. The global generators (dropout, the backbone's time masking) get a stream of
    their own in each process, so that processes do not drop the same units of different clips;
    rank 0 keeps the single-process stream."""
    epoch_seed = seed * 1_000_003 + epoch
    process_seed = epoch_seed if rank == 0 else \
        int(np.random.SeedSequence([epoch_seed % 2**64, rank]).generate_state(1)[0])
    torch.manual_seed(process_seed)
    np.random.seed(process_seed % 2**32)
    return torch.Generator().manual_seed(epoch_seed)


@dataclass
class Processes:
    """The processes of a torchrun launch; rank 0 writes the run folder and the logs."""

    rank: int
    local_rank: int
    count: int

    @classmethod
    def from_environment(cls) -> "Processes | None":
        """This process's place as torchrun describes it in the environment; None for a single process."""
        count = int(os.environ.get("WORLD_SIZE", "1"))
        if count == 1:
            return None
        return cls(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), count)

    def device(self, requested: torch.device) -> torch.device:
        """The device of this process: CPU, or the CUDA device of its local rank."""
        if requested.type != "cuda":
            return requested
        if requested.index is not None:
            raise MemoryTalkerError(f"under torchrun each process trains on cuda:LOCAL_RANK; give --device cuda "
                                    f"(or auto) instead of --device {requested}")
        if self.local_rank >= torch.cuda.device_count():
            raise MemoryTalkerError(f"torchrun started more processes on this machine than it has CUDA devices "
                                    f"({torch.cuda.device_count()}): use --nproc-per-node "
                                    f"{torch.cuda.device_count()} or fewer, or --device cpu")
        return torch.device("cuda", self.local_rank)

    def shard(self, batch: list[int]) -> list[int]:
        """This process's clips of a global batch: every count-th one, from its rank on."""
        return batch[self.rank::self.count]


def writes_outputs() -> bool:
    """Whether this process writes the run folder and reports: a single process, or rank 0 of a torchrun launch."""
    processes = Processes.from_environment()
    return processes is None or processes.rank == 0


def loss_denominators(stage: str, batch: Batch, fps: float, bilabial_weight: float = 1.0) -> dict[str, float]:
    """What each loss term of the stage (losses.py) averages over in this batch: valid frames
    (weighted as the term weights them), pairs of consecutive valid frames, or clips.

    A term's mean over one process's share of a batch is not its mean over the batch; these counts
    are what it takes to put the batch's mean back together (shard_objective)."""
    frames = float(sum(batch.frame_counts))
    pairs = float(sum(max(count - 1, 0) for count in batch.frame_counts))
    clips = float(len(batch.frame_counts))
    weighted_frames = frames
    if stage == "asr" or (stage == "1" and bilabial_weight != 1.0):
        weights = bilabial_frame_weights(batch, max(batch.frame_counts), fps, bilabial_weight)
        weighted_frames = float(sum(row[:count].sum() for row, count in zip(weights, batch.frame_counts)))
    return {"asr": {"ctc": clips, "frame": weighted_frames},
            "1": {"mse": weighted_frames, "vel": pairs, "mem": frames, "align": frames},
            "2": {"mse": frames, "vel": pairs, "lip": frames, "style": clips, "prosody": clips, "fitted": clips}}[stage]


def total_coefficients(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """losses["total"] as a linear combination of the other terms: each term's coefficient, i.e.
    the gradient of the total with respect to the term (the weights of losses.py, read off rather
    than copied)."""
    terms = [k for k in losses if k != "total"]
    gradients = torch.autograd.grad(losses["total"], [losses[k] for k in terms], retain_graph=True)
    return {k: float(g) for k, g in zip(terms, gradients)}


def shard_objective(losses: dict[str, torch.Tensor], coefficients: dict[str, float], shard: dict[str, float],
                    batch: dict[str, float], processes: int) -> torch.Tensor:
    """The loss one process back-propagates for its shard of a batch.

    Each term is a mean over the shard, numerator / shard[k]; over the batch it is the sum of the
    shards' numerators / batch[k]. DistributedDataParallel averages the processes' gradients, so
    each term weighs processes * shard[k] / batch[k]: the average is then the gradient of the batch's
    loss, as one process computing the whole batch would have it."""
    return sum(coefficients[k] * processes * (shard[k] / batch[k] if batch[k] else 0.0) * losses[k]
               for k in coefficients)


class StageLoss(torch.nn.Module):
    """The stage's loss terms of a batch, as a module's forward: DistributedDataParallel prepares
    its gradient all-reduce in the forward pass of the module it wraps."""

    def __init__(self, model: MemoryTalker, opts: TrainOptions, lips: torch.Tensor,
                 fixed_logits: FixedBackboneLogits | None, prosody: dict[str, torch.Tensor] | None = None,
                 fitted_style: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.stage = opts.stage
        self.asr_frame_weight = opts.asr_frame_weight
        self.bilabial_weight = opts.bilabial_weight
        self.prosody_weight = opts.prosody_weight
        self.lips = lips
        self.fixed_logits = fixed_logits
        self.prosody = prosody
        self.fitted_style_weight = opts.fitted_style_weight
        self.fitted_style = fitted_style

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.stage == "asr":
            return asr_losses(self.model, batch, self.asr_frame_weight, self.bilabial_weight)
        encoded = self.fixed_logits(batch) if self.fixed_logits else None
        if self.stage == "1":
            return stage1_losses(self.model, batch, encoded, self.bilabial_weight)
        return stage2_losses(self.model, batch, self.lips, encoded, self._per_clip(self.prosody, batch),
                             self.prosody_weight, self._per_clip(self.fitted_style, batch), self.fitted_style_weight)

    def _per_clip(self, per_speaker: dict[str, torch.Tensor] | None, batch: Batch) -> torch.Tensor | None:
        """A per-speaker table's rows for the batch's clips (B, ...), or None without a table."""
        if not per_speaker:
            return None
        return torch.stack([per_speaker[s] for s in batch.subjects]).to(self.lips.device)


class ShardLoss(torch.nn.Module):
    """One process's part of a batch's loss under torchrun: the module DistributedDataParallel wraps.

    Its forward returns what the process back-propagates for its shard (shard_objective) and the
    whole batch's loss terms for the log, the same in every process. The total's coefficients are
    read inside the forward: DistributedDataParallel passes the outputs of the module it wraps
    through a node of its own, which cuts the total off from its terms."""

    def __init__(self, stage_loss: StageLoss, processes: Processes, device: torch.device):
        super().__init__()
        self.stage_loss = stage_loss
        self.processes = processes
        self.device = device

    def forward(self, batch: Batch, stand_in: bool) -> tuple[torch.Tensor, dict[str, float]]:
        losses = self.stage_loss(batch)
        coefficients = total_coefficients(losses)
        shard = loss_denominators(self.stage_loss.stage, batch, self.stage_loss.model.config.fps,
                                  self.stage_loss.bilabial_weight)
        missing = set(coefficients) - set(shard)
        if missing:
            raise ValueError(f"loss_denominators does not say what loss term(s) {', '.join(sorted(missing))} "
                             "average over")
        if stand_in:
            shard = dict.fromkeys(shard, 0.0)
        terms = list(coefficients)
        # One all-reduce for the batch's denominators and the numerators of its terms.
        shared = torch.tensor([shard[k] for k in terms] + [shard[k] * float(losses[k].detach()) for k in terms],
                              dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(shared)
        denominators = dict(zip(terms, shared[:len(terms)].tolist()))
        values = {k: numerator / denominators[k] if denominators[k] else 0.0
                  for k, numerator in zip(terms, shared[len(terms):].tolist())}
        values["total"] = sum(coefficients[k] * values[k] for k in terms)
        return shard_objective(losses, coefficients, shard, denominators, self.processes.count), values


class EpochBatches:
    """The batch sampler of an epoch: this process's clips of each batch.

    The global batches are those of a shuffling DataLoader: its sampler, drawn from the generator
    after the DataLoader has drawn its worker seed from it, as it does when it shuffles itself.
    Under torchrun each process takes every N-th clip of a batch, from its rank on; a process left
    without clips in the short last batch gets the batch's first clip as a stand-in, to be weighted
    zero, since every process takes part in each step's gradient all-reduce. (DistributedSampler
    would instead repeat clips to even the processes out, training on those clips twice.)
    """

    def __init__(self, dataset: Sized, batch_size: int, generator: torch.Generator, processes: Processes | None):
        self.global_batches = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
        self.processes = processes
        rank = processes.rank if processes else 0
        # Whether this process stands in at each step: its rank is past the end of the batch.
        self.stand_ins = [rank >= min(batch_size, len(dataset) - start)
                          for start in range(0, len(dataset), batch_size)]

    def __len__(self) -> int:
        return len(self.global_batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            yield (self.processes.shard(batch) or batch[:1]) if self.processes else batch


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
        # The two style terms need gates that can move (standardise_output says why); the published
        # loss alone keeps the published start, so the recipe of the shipped model reproduces it.
        if not model.config.stylized and (opts.prosody_weight or opts.fitted_style_weight):
            model.style_encoder.standardise_output(_style_sample(info, model.config.sample_rate, opts.seed))
        model.config.stylized = True
        if opts.prosody_weight and not model.config.prosody_targets:
            model.add_prosody_head(list(PROSODY_REFERENCE))
    return model


def _style_sample(info: DatasetInfo, sample_rate: int, seed: int) -> list[torch.Tensor]:
    """The audio of up to STYLE_SAMPLE_CLIPS training clips, drawn for the seed, to start stage 2's style encoder from."""
    clips = TalkingFaceDataset(info, "train", sample_rate)
    chosen = np.random.default_rng(seed).permutation(len(clips))[:STYLE_SAMPLE_CLIPS]
    return [torch.from_numpy(clips.audio(int(i))) for i in sorted(chosen)]


class ProjectedVertexError:
    """masked_mse(projection(features), target, mask) for a fixed target, from the features alone.

    With W and b the output projection's weight and bias, |W x + b - y|^2 = x'(W'W)x - 2 x'W'(y - b)
    + |y - b|^2: once W'W and W'(y - b) are known, each evaluation costs feature_dim^2 per frame
    instead of feature_dim x 3V (96 x 96 against 96 x 14532 for the demo model), and so do the
    gradients. Used where only what comes before the projection changes."""

    def __init__(self, projection: torch.nn.Linear, target: torch.Tensor, mask: torch.Tensor):
        weight = projection.weight.detach()
        residual = target - projection.bias.detach() if projection.bias is not None else target
        self.gram = weight.T @ weight
        self.projected = residual @ weight
        self.constant = residual.square().sum(-1)
        self.mask = mask.to(weight.dtype)
        self.count = self.mask.sum().clamp(min=1) * weight.shape[0]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        per_frame = ((features @ self.gram) * features).sum(-1) - 2 * (features * self.projected).sum(-1) + self.constant
        return (per_frame * self.mask).sum() / self.count


def fit_speaker_style_weights(model: MemoryTalker, info: DatasetInfo, encode: FixedBackboneLogits,
                              seed: int, progress: bool = True, known: dict[str, torch.Tensor] | None = None,
                              on_fitted: Callable[[dict[str, torch.Tensor]], None] | None = None
                              ) -> dict[str, torch.Tensor]:
    """Each training speaker's best slot weights w_s for the frozen stage-1 model: w_s (one per
    speaker) fitted by Adam to L_mse over up to SPEAKER_FIT_CLIPS of the speaker's clips, in the
    style encoder's own form (a free f_s and scale through SpeakingStyleEncoder.gated, starting at
    the plain memory's weights), so that the encoder can reach every target.

    Stage 2 learns these weights only through the vertex error, whose gradients in metres are
    about 1e-4 of the triplet term's; the fitted weights give the style encoder a target in the
    weights' own units. Fitted on a synthetic test speaker's clips they cut its vertex error by
    about 45 % (docs/model_core.md, finding 12).

    Speakers in `known` are kept as they are; `on_fitted` gets the weights so far after each
    speaker, so that an interrupted fit can go on where it stopped. Each speaker's clips are drawn
    from the seed and the speaker's name alone, so the result does not depend on where it stopped."""
    clips = TalkingFaceDataset(info, "train", model.config.sample_rate)
    fitted = {s: w for s, w in (known or {}).items() if s in clips.by_subject}
    to_fit = sorted(s for s in clips.by_subject if s not in fitted)
    if not to_fit:
        return fitted
    was_training = model.training
    model.train()  # as in the stage-2 steps: the fixed parts without dropout, no inference-only logit bias
    for speaker in tqdm(to_fit, desc="fitting each speaker's style weights", disable=not progress,
                        initial=len(fitted), total=len(clips.by_subject)):
        indices = clips.by_subject[speaker]
        rng = np.random.default_rng([seed, zlib.crc32(speaker.encode("utf-8"))])
        chosen = sorted(int(i) for i in rng.permutation(indices)[:SPEAKER_FIT_CLIPS])
        batch = collate([clips[i] for i in chosen]).to(model.template.device)
        logits, mask = encode(batch)
        fitted[speaker] = fit_slot_weights(model, logits, mask, batch.vertices - batch.templates[:, None])[0].cpu()
        if on_fitted:
            on_fitted(fitted)
    model.train(was_training)
    return fitted


def fit_slot_weights(model: MemoryTalker, logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One set of slot weights (1, slots) that brings the model's motion for these clips' logits
    closest to `target` (their displacements), by SPEAKER_FIT_STEPS of Adam in the style encoder's
    own form. The logits are used as given: add the inference bias first to fit for inference."""
    vertex_error = ProjectedVertexError(model.output_proj, target, mask)
    f_s = torch.zeros(1, model.config.mem_slots, device=target.device, requires_grad=True)
    # Both forms start at weights of about 1: residual 1 + sigmoid(0) x 0.01, product sigmoid(0) x 2.
    scale = torch.full((1, 1), 0.01 if model.style_encoder.residual else 2.0, device=target.device,
                       requires_grad=True)
    optimizer = torch.optim.Adam([f_s, scale], lr=SPEAKER_FIT_LR)
    for _ in range(SPEAKER_FIT_STEPS):
        optimizer.zero_grad()
        weights = model.style_encoder.gated(f_s, scale).expand(len(logits), -1)
        vertex_error(model.decoder_features(logits, model.retrieve(logits, weights), mask)).backward()
        optimizer.step()
    return model.style_encoder.gated(f_s, scale).detach()


def speaker_prosody(info: DatasetInfo, targets: list[str], speakers: set[str]) -> dict[str, torch.Tensor]:
    """Each speaker's prosody `targets` as z-scores (synthetic/prosody.py), from the "prosody" the
    corpus builders write into speakers.json (the median over the speaker's clips)."""
    path = info.root / "speakers.json"
    if not path.exists():
        raise MemoryTalkerError(f"--prosody-weight needs each speaker's measured prosody: {path} does not exist "
                                "(corpora written by `python -m model_core synth` or `corpus` have it)")
    measured = {s["name"]: s.get("prosody") for s in json.loads(path.read_text(encoding="utf-8"))}
    missing = sorted(s for s in speakers if not measured.get(s) or any(k not in measured[s] for k in targets))
    if missing:
        raise MemoryTalkerError(f"--prosody-weight: {path} gives no prosody ({', '.join(targets)}) for "
                                f"{len(missing)} training speaker(s): {', '.join(missing[:5])}")
    return {s: torch.tensor([prosody_z_scores(measured[s])[k] for k in targets], dtype=torch.float32)
            for s in speakers}


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
    if (opts.prosody_weight or opts.fitted_style_weight) and opts.stage != "2":
        raise MemoryTalkerError("--prosody-weight and --fitted-style-weight weight terms of stage 2: use them with --stage 2")
    if opts.augment_prob is not None and not opts.augment:
        raise MemoryTalkerError("--augment-prob sets the probability of each effect of --augment: give --augment too")
    opts.out = Path(opts.out)
    processes = Processes.from_environment()
    if processes is None:
        return _train(opts, resolve_device(opts.device), None)
    if opts.batch_size % processes.count:
        raise MemoryTalkerError(f"--batch-size is the global batch, split evenly over the {processes.count} "
                                f"processes torchrun started: give a multiple of {processes.count} "
                                f"(not {opts.batch_size})")
    device = processes.device(resolve_device(opts.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # gloo is torch's backend for CPU tensors, nccl the one for CUDA tensors.
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(opts, device, processes)
    finally:
        torch.distributed.destroy_process_group()


def _fitted_style_weights(model: MemoryTalker, info: DatasetInfo, encode: FixedBackboneLogits, opts: TrainOptions,
                          leader: bool) -> dict[str, torch.Tensor]:
    """fit_speaker_style_weights, kept in the run folder speaker by speaker, so that a resumed run
    learns the same targets and a fit that was stopped goes on from the last speaker done."""
    path = opts.out / FITTED_STYLE_FILE
    known = ({s: torch.tensor(w) for s, w in json.loads(path.read_text()).items()}
             if opts.resume and path.exists() else None)

    def save(fitted: dict[str, torch.Tensor]) -> None:
        opts.out.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps({s: w.tolist() for s, w in fitted.items()}))
        partial.replace(path)  # a stop mid-write leaves the previous file whole

    return fit_speaker_style_weights(model, info, encode, opts.seed, opts.progress and leader, known,
                                     save if leader else None)


def _train(opts: TrainOptions, device: torch.device, processes: Processes | None) -> Path:
    leader = writes_outputs()
    info = DatasetInfo.open(opts.data, opts.dataset)
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
        if leader:
            log.info("resuming at epoch %d", start_epoch + 1)

    prosody = (speaker_prosody(info, model.config.prosody_targets, set(train_set.by_subject))
               if opts.prosody_weight else None)
    fitted_style = _fitted_style_weights(model, info, fixed_logits, opts, leader) if opts.fitted_style_weight else None
    stage_loss = StageLoss(model, opts, lips, fixed_logits, prosody, fitted_style)
    # Some trainable parameters can go unused in a step: the memory of a --no-memory model, layers
    # that the backbone's layer drop skips.
    shard_loss = None if processes is None else torch.nn.parallel.DistributedDataParallel(
        ShardLoss(stage_loss, processes, device), find_unused_parameters=True)
    for epoch in range(start_epoch, opts.epochs):
        generator = _seed(opts.seed, epoch, processes.rank if processes else 0)
        train_set.set_epoch(epoch)
        batches = EpochBatches(train_set, opts.batch_size, generator, processes)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=batches, generator=generator, collate_fn=collate,
                                             num_workers=opts.num_workers)
        model.train()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"stage {opts.stage} epoch {epoch + 1}/{opts.epochs}",
                   disable=not (opts.progress and leader))
        for batch, stand_in in zip(bar, batches.stand_ins):
            batch = batch.to(device)
            if shard_loss is None:
                losses = stage_loss(batch)
                objective, values = losses["total"], {k: float(v.detach()) for k, v in losses.items()}
            else:
                objective, values = shard_loss(batch, stand_in)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['total'] / (bar.n + 1):.3e}")
        if processes is not None and not leader:
            # Process 0 validates and writes the checkpoint; the others wait for it.
            torch.distributed.barrier()
            continue
        record = {"epoch": epoch + 1, **{f"train_{k}": v / len(batches) for k, v in sums.items()}}
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
        if processes is not None:
            torch.distributed.barrier()
    return opts.out / "best"
