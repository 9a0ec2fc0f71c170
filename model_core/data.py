"""Talking-face datasets in the FaceFormer/VOCASET layout (also BIWI):

    ROOT/wav/<subject>_<sentenceNN>.wav
    ROOT/vertices_npy/<subject>_<sentenceNN>.npy   (T x 3V at the source frame rate)
    ROOT/templates.pkl                              (subject -> V x 3; or templates.npz)
    a lip-index file (and optionally an upper-face index file, for FDD)
    ROOT/dataset.json                               (optional: fps, source_fps, splits)
    ROOT/phonemes/<subject>_<sentenceNN>.json       (optional: [[phoneme, start_s, end_s], ...],
                                                     "_" = silence; labels for `train --stage asr`)
"""
from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .audio import load_audio
from .errors import DataError

if TYPE_CHECKING:  # augment.py imports resample_motion from here
    from .augment import Augmentation

VOCASET_TRAIN = [f"FaceTalk_{s}_TA" for s in (
    "170728_03272", "170904_00128", "170725_00137", "170915_00223",
    "170811_03274", "170913_03279", "170904_03276", "170912_03278")]
VOCASET_VAL = ["FaceTalk_170811_03275_TA", "FaceTalk_170908_03277_TA"]
VOCASET_TEST = ["FaceTalk_170809_00138_TA", "FaceTalk_170731_00024_TA"]
BIWI_SUBJECTS = ["F2", "F3", "F4", "M3", "M4", "M5"]

PRESETS: dict[str, dict[str, Any]] = {
    "vocaset": {
        "fps": 30, "source_fps": 60, "num_vertices": 5023,
        "splits": {
            "train": {"subjects": VOCASET_TRAIN, "sentences": list(range(1, 41))},
            "val": {"subjects": VOCASET_VAL, "sentences": list(range(21, 41))},
            "test": {"subjects": VOCASET_TEST, "sentences": list(range(21, 41))},
        },
    },
    "biwi": {
        "fps": 25, "source_fps": 25, "num_vertices": 23370,
        "splits": {
            "train": {"subjects": BIWI_SUBJECTS, "sentences": list(range(1, 33))},
            "val": {"subjects": BIWI_SUBJECTS, "sentences": list(range(33, 37))},
            "test": {"subjects": BIWI_SUBJECTS, "sentences": list(range(37, 41))},
        },
    },
}

# Index files, in the order they are looked for (ours, CodeTalker's, MemoryTalker's, FLAME masks).
LIP_INDEX_FILES = ("lip_indices.txt", "regions/lve.txt", "lip_indices.npy", "range/lips_coordinates.npy")
UPPER_FACE_INDEX_FILES = ("upper_face_indices.txt", "regions/fdd.txt", "upper_face_indices.npy")
FLAME_MASKS = "FLAME_masks.pkl"

_NAME = re.compile(r"^(?P<subject>.+)_(?P<sentence>[A-Za-z]*\d+)$")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Reads pickles of dicts/lists of numpy arrays (templates.pkl, FLAME_masks.pkl) and refuses
    anything that would run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"), ("builtins", "set"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def read_array_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: {exc}; convert it to .npz with numpy") from None


def read_templates(root: Path) -> dict[str, np.ndarray]:
    if (root / "templates.npz").exists():
        with np.load(root / "templates.npz") as z:
            return {k: z[k].astype(np.float32).reshape(-1, 3) for k in z.files}
    if (root / "templates.pkl").exists():
        raw = read_array_pickle(root / "templates.pkl")
        return {str(k): np.asarray(v, np.float32).reshape(-1, 3) for k, v in raw.items()}
    raise DataError(f"{root}: no templates.pkl or templates.npz (subject -> neutral mesh V x 3)")


def _read_index_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).astype(np.int64).ravel()
    text = path.read_text().replace(",", " ").split()
    return np.array([int(float(t)) for t in text], dtype=np.int64)


def read_region(root: Path, candidates: tuple[str, ...], mask_keys: tuple[str, ...]) -> np.ndarray | None:
    for name in candidates:
        if (root / name).exists():
            return _read_index_file(root / name)
    if (root / FLAME_MASKS).exists():
        masks = read_array_pickle(root / FLAME_MASKS)
        found = [np.asarray(masks[k]).ravel() for k in mask_keys if k in masks]
        if found:
            return np.unique(np.concatenate(found)).astype(np.int64)
    return None


@dataclass
class DatasetInfo:
    root: Path
    fps: float
    source_fps: float
    splits: dict[str, dict[str, list]]
    templates: dict[str, np.ndarray]
    lip_indices: np.ndarray
    upper_face_indices: np.ndarray | None
    num_vertices: int

    @classmethod
    def open(cls, root: str | Path, preset: str | None = None, splits: dict | None = None) -> "DatasetInfo":
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such data folder")
        for sub in ("wav", "vertices_npy"):
            if not (root / sub).is_dir():
                raise DataError(f"{root}: missing the '{sub}/' folder of the VOCASET layout (wav/, vertices_npy/, templates.pkl)")
        meta: dict[str, Any] = {}
        if (root / "dataset.json").exists():
            meta = json.loads((root / "dataset.json").read_text())
        # A folder without dataset.json is taken to be VOCASET; one with it names a preset or is self-describing.
        preset_name = preset or meta.get("preset") or (None if meta else "vocaset")
        if preset_name is not None and preset_name not in PRESETS:
            raise DataError(f"unknown dataset preset {preset_name!r}; use one of {', '.join(PRESETS)}")
        base = PRESETS[preset_name] if preset_name else {}
        merged = {**base, **{k: v for k, v in meta.items() if k != "preset"}}
        # Splits named in dataset.json or by the caller replace the preset's split of the same name only.
        merged["splits"] = {**base.get("splits", {}), **meta.get("splits", {}), **(splits or {})}
        templates = read_templates(root)
        lips = read_region(root, LIP_INDEX_FILES, ("lips",))
        if lips is None:
            raise DataError(f"{root}: no lip-index file; add one of {', '.join(LIP_INDEX_FILES)} or {FLAME_MASKS}")
        upper = read_region(root, UPPER_FACE_INDEX_FILES, ("forehead", "eye_region"))
        num_vertices = len(next(iter(templates.values())))
        if "fps" not in merged or not merged["splits"]:
            raise DataError(f"{root}/dataset.json must give 'fps' and 'splits' (or name a 'preset': vocaset or biwi)")
        return cls(root, float(merged["fps"]), float(merged.get("source_fps", merged["fps"])), merged["splits"],
                   templates, lips, upper, num_vertices)

    def items(self, split: str) -> list["Item"]:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; this dataset has {', '.join(self.splits)}")
        spec = self.splits[split]
        subjects, sentences = set(spec.get("subjects", [])), spec.get("sentences")
        files = set(spec.get("files", []))
        found = []
        for wav in sorted((self.root / "wav").glob("*.wav")):
            match = _NAME.match(wav.stem)
            if not match:
                continue
            subject = match["subject"]
            sentence = int(re.sub(r"\D", "", match["sentence"])[-2:])
            chosen = wav.stem in files if files else subject in subjects and (sentences is None or sentence in sentences)
            vertices = self.root / "vertices_npy" / f"{wav.stem}.npy"
            if chosen and vertices.exists() and subject in self.templates:
                found.append(Item(wav.stem, subject, sentence, wav, vertices))
        return found


@dataclass
class Item:
    name: str
    subject: str
    sentence: int
    wav: Path
    vertices: Path


def resample_motion(frames: np.ndarray, source_fps: float, fps: float) -> np.ndarray:
    """(T, D) at source_fps -> fps: every k-th frame for integer ratios (VOCASET 60 -> 30), else linear."""
    if source_fps == fps:
        return frames
    ratio = source_fps / fps
    if abs(ratio - round(ratio)) < 1e-9:
        return frames[:: int(round(ratio))]
    positions = np.arange(int(round(len(frames) / ratio))) * ratio
    left = np.clip(np.floor(positions).astype(int), 0, len(frames) - 1)
    right = np.clip(left + 1, 0, len(frames) - 1)
    w = (positions - left)[:, None].astype(np.float32)
    return frames[left] * (1 - w) + frames[right] * w


def spoken_phonemes(segments: list[tuple[str, float, float]] | None) -> list[str] | None:
    """The phoneme labels of timed segments, silence ("_") left out; None stays None."""
    return None if segments is None else [p for p, _, _ in segments if p != "_"]


class TalkingFaceDataset(torch.utils.data.Dataset):
    """Clips of one split. With `triplets`, each item also carries a positive clip (another sentence
    of the same speaker) and a negative clip (a sentence of another speaker of the split), drawn
    reproducibly from (seed, epoch, index). With `augmentation` (for the training split only), each
    item's audio is degraded afresh every epoch, reproducibly from (seed, epoch, index), with its
    phoneme times and motion stretched along when the effects change its speed."""

    def __init__(self, info: DatasetInfo, split: str, sample_rate: int = 16000, triplets: bool = False, seed: int = 0,
                 augmentation: Augmentation | None = None):
        self.info = info
        self.split = split
        self.items = info.items(split)
        if not self.items:
            raise DataError(f"{info.root}: the '{split}' split is empty (check subjects/sentences and file names)")
        self.sample_rate = sample_rate
        self.triplets = triplets
        self.seed = seed
        self.epoch = 0
        self.augmentation = augmentation
        self.by_subject: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            self.by_subject.setdefault(item.subject, []).append(i)
        if triplets and len(self.by_subject) < 2:
            raise DataError(f"triplet sampling needs at least two speakers in the '{split}' split")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def audio(self, index: int) -> np.ndarray:
        return load_audio(self.items[index].wav, self.sample_rate).samples

    def phoneme_segments(self, index: int) -> list[tuple[str, float, float]] | None:
        """The clip's timed phonemes [(phoneme, start_s, end_s)], silence "_" included, or None
        when the dataset has none."""
        path = self.info.root / "phonemes" / f"{self.items[index].name}.json"
        if not path.exists():
            return None
        return [(str(p), float(start), float(end)) for p, start, end in json.loads(path.read_text(encoding="utf-8"))]

    def phonemes(self, index: int) -> list[str] | None:
        """The clip's phoneme labels (silence left out), or None when the dataset has none."""
        return spoken_phonemes(self.phoneme_segments(index))

    def vertices(self, index: int) -> np.ndarray:
        item = self.items[index]
        raw = np.load(item.vertices, mmap_mode="r", allow_pickle=False)
        raw = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
        # A copy: the file is memory-mapped read-only, and torch needs a writable array.
        return np.array(resample_motion(raw, self.info.source_fps, self.info.fps), dtype=np.float32, order="C")

    def _other_clip(self, index: int) -> Callable[[np.random.Generator], np.ndarray] | None:
        """For babble: a function drawing the audio of a clip other than `index` (None if there is none)."""
        if len(self.items) < 2:
            return None
        return lambda rng: self.audio(int((index + 1 + rng.integers(len(self.items) - 1)) % len(self.items)))

    def _triplet_audio(self, source: int, index: int, role: str) -> np.ndarray:
        """Clip `source`'s audio as the `role` ("positive" or "negative") of item `index`; with
        augmentation degraded too, but without a speed change: these clips only feed the style
        encoder's triplet loss, have no motion to keep in sync, and a speed change moves pitch and
        speaking rate, the very cues that tell the positive's speaker from the negative's."""
        if self.augmentation is None:
            return self.audio(source)
        rng = self.augmentation.generator(self.seed, self.epoch, index, role)
        clip = self.augmentation(self.audio(source), rng=rng, other_clip=self._other_clip(source),
                                 change_speed_allowed=False)
        return clip.waveform

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        audio, vertices, segments = self.audio(index), self.vertices(index), self.phoneme_segments(index)
        if self.augmentation is not None:
            rng = self.augmentation.generator(self.seed, self.epoch, index)
            clip = self.augmentation(audio, segments, vertices, rng=rng, other_clip=self._other_clip(index))
            audio, vertices, segments = clip.waveform, clip.vertices, clip.phoneme_segments
        sample = {
            "name": item.name,
            "subject": item.subject,
            "audio": torch.from_numpy(audio),
            "vertices": torch.from_numpy(vertices),
            "template": torch.from_numpy(self.info.templates[item.subject].reshape(-1)),
            "phoneme_segments": segments,
        }
        if self.triplets:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            same = [i for i in self.by_subject[item.subject] if i != index] or [index]
            others = [s for s in self.by_subject if s != item.subject]
            negative = int(rng.choice(self.by_subject[others[rng.integers(len(others))]]))
            positive = int(rng.choice(same))
            sample["positive_audio"] = torch.from_numpy(self._triplet_audio(positive, index, "positive"))
            sample["negative_audio"] = torch.from_numpy(self._triplet_audio(negative, index, "negative"))
        return sample


@dataclass
class Batch:
    names: list[str]
    subjects: list[str]
    waveforms: list[torch.Tensor]  # unpadded: the backbone CNN and style encoder run per clip
    frame_counts: list[int]
    vertices: torch.Tensor  # (B, T, 3V), zero-padded
    templates: torch.Tensor  # (B, 3V)
    positive_waveforms: list[torch.Tensor] = field(default_factory=list)
    negative_waveforms: list[torch.Tensor] = field(default_factory=list)
    phoneme_segments: list[list[tuple[str, float, float]] | None] = field(default_factory=list)  # for the asr stage

    @property
    def phonemes(self) -> list[list[str] | None]:
        """The clips' phoneme labels without silence (the CTC targets)."""
        return [spoken_phonemes(s) for s in self.phoneme_segments]

    def to(self, device: torch.device) -> "Batch":
        move = lambda ws: [w.to(device) for w in ws]  # noqa: E731
        return Batch(self.names, self.subjects, move(self.waveforms), self.frame_counts, self.vertices.to(device),
                     self.templates.to(device), move(self.positive_waveforms), move(self.negative_waveforms),
                     self.phoneme_segments)

    @property
    def mask(self) -> torch.Tensor:
        counts = torch.tensor(self.frame_counts, device=self.vertices.device)
        return torch.arange(self.vertices.shape[1], device=counts.device)[None] < counts[:, None]


def collate(samples: list[dict[str, Any]]) -> Batch:
    return Batch(
        names=[s["name"] for s in samples],
        subjects=[s["subject"] for s in samples],
        waveforms=[s["audio"] for s in samples],
        frame_counts=[len(s["vertices"]) for s in samples],
        vertices=torch.nn.utils.rnn.pad_sequence([s["vertices"] for s in samples], batch_first=True),
        templates=torch.stack([s["template"] for s in samples]),
        positive_waveforms=[s["positive_audio"] for s in samples if "positive_audio" in s],
        negative_waveforms=[s["negative_audio"] for s in samples if "negative_audio" in s],
        phoneme_segments=[s.get("phoneme_segments") for s in samples],
    )
