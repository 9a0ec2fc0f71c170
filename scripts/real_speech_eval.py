"""Does the model lip-sync recorded human speech? The acceptance figures, measured over a split
(the held-out speakers by default) of a corpus in the VOCASET-like layout that
`python -m model_core synth` writes: wav/, vertices_npy/, phonemes/NAME.json ([[IPA phoneme,
start_s, end_s], ...], "_" = silence; forced-aligned for real recordings), dataset.json and
demo_head.json (the lip landmarks).

    .venv/bin/python scripts/real_speech_eval.py --data CORPUS [--model MODEL_DIR] [--split test] [--json out.json]

Lip aperture: the distance between the upper and lower lip centre landmarks of the animated mesh
(template + displacements), per frame at the corpus's frame rate. Per speaker and over the split:

  PER          the backbone's greedy CTC transcription against the clip's phonemes without silence
               (model_core.evaluate.phoneme_recognition); n/a for a model without a vocabulary.
  closure      the share of p, b, m whose smallest aperture within the phone (+-1 frame) is below
               25 % of the clip's median aperture at open-vowel centres and below 3 mm. A clip
               without an open vowel has no reference: its bilabials are counted apart and left out.
  ratio        mean aperture at bilabial centres / mean aperture at open-vowel centres (a ɑ ɒ ɐ æ ʌ ɔ,
               after diphthongs are split); a centre is the frame at the segment's midpoint.
  pauses       the median aperture over the frames inside silences ("_"), leading and trailing ones
               included. Silences shorter than 0.2 s are skipped, and 0.1 s is left out at each side
               that touches speech, because the mouth legitimately moves into and out of speech there.

The same figures for the corpus's ground-truth meshes (vertices_npy) are printed as a sanity
line: the ground truth should close on about every bilabial with a low ratio.

Style: where the corpus's speakers.json gives each speaker's drawn jaw amplitude, the Pearson
correlation over the split's speakers between that amplitude and the speaker's mean chin drop
(the chin landmark's fall below the neutral head, over the frames of speech) of the model's motion
(goal at least 0.5: the model opens wider for speakers whose style opens wider) and of the ground truth.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
# The repository for model_core; this folder for lip_closure when the file is loaded by path (tests).
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from lip_closure import closest_apertures  # noqa: E402
from model_core.checkpoint import BUNDLED_MODEL, load_model, update_model_config  # noqa: E402
from model_core.data import DatasetInfo, TalkingFaceDataset, spoken_phonemes  # noqa: E402
from model_core.errors import DataError, MemoryTalkerError  # noqa: E402
from model_core.evaluate import phoneme_recognition  # noqa: E402
from model_core.model import MemoryTalker  # noqa: E402
from model_core.synthetic.visemes import BILABIAL, expand  # noqa: E402

OPEN_VOWELS = {"a", "ɑ", "ɒ", "ɐ", "æ", "ʌ", "ɔ"}
CLOSED_SHARE_OF_OPEN = 0.25  # a bilabial is closed below this share of the clip's open-vowel aperture...
CLOSED_MAX = 0.003  # ...and below 3 mm (metres)
SHORTEST_PAUSE = 0.2  # seconds
PAUSE_EDGE = 0.1  # seconds left out next to speech
GOALS = {"PER": ("<=", 0.35), "closure_rate": (">=", 0.8), "ratio": ("<", 0.3), "pause_aperture_mm": ("<", 1.5)}
GOALS_LINE = "goals: PER <= 0.35, closure rate >= 0.8, ratio < 0.3, pauses < 1.5 mm"
# A bias is chosen only if it shuts at most this share of the open vowels' centres (under 3 mm).
MOST_OPEN_VOWELS_SHUT = 0.05
STYLE_GOAL = 0.5  # correlation of the speakers' jaw amplitude with the model's mean chin drop


def lip_landmarks(root: Path) -> tuple[int, int]:
    """The vertex indices of the upper and lower lip centres, from the corpus's demo_head.json."""
    head_file = root / "demo_head.json"
    if not head_file.exists():
        raise DataError(f"{head_file} is missing: the lip aperture needs the head's upper_lip_center and "
                        "lower_lip_center landmarks (a corpus written by `python -m model_core synth` has it)")
    landmarks = json.loads(head_file.read_text()).get("landmarks", {})
    if "upper_lip_center" not in landmarks or "lower_lip_center" not in landmarks:
        raise DataError(f"{head_file}: its \"landmarks\" need upper_lip_center and lower_lip_center (vertex indices)")
    return landmarks["upper_lip_center"], landmarks["lower_lip_center"]


def lip_aperture(mesh: np.ndarray, upper: int, lower: int) -> np.ndarray:
    """(frames, V, 3) absolute positions -> (frames,) distance between the lip centres."""
    return np.linalg.norm(mesh[:, upper] - mesh[:, lower], axis=1)


def centre_apertures(aperture: np.ndarray, segments: list[tuple[str, float, float]], fps: float,
                     phonemes: set[str]) -> list[float]:
    """The aperture at the middle frame of each segment of `phonemes` (diphthongs split first);
    segments past the last frame are left out."""
    frames = [int((start + end) / 2 * fps) for name, start, end in expand(segments) if name in phonemes]
    return [float(aperture[f]) for f in frames if f < len(aperture)]


def pause_apertures(aperture: np.ndarray, segments: list[tuple[str, float, float]], fps: float) -> list[float]:
    """The aperture at the frames (by their centre time) inside pauses: runs of "_" of at least
    SHORTEST_PAUSE, less PAUSE_EDGE at each side that touches speech."""
    runs: list[list] = []
    for name, start, end in segments:
        silent = name == "_"
        if runs and runs[-1][0] == silent:
            runs[-1][2] = end
        else:
            runs.append([silent, start, end])
    times = (np.arange(len(aperture)) + 0.5) / fps
    inside = np.zeros(len(aperture), bool)
    for k, (silent, start, end) in enumerate(runs):
        if silent and end - start >= SHORTEST_PAUSE:
            first = start + (PAUSE_EDGE if k > 0 else 0.0)
            last = end - (PAUSE_EDGE if k < len(runs) - 1 else 0.0)
            inside |= (times >= first) & (times < last)
    return aperture[inside].tolist()


@dataclasses.dataclass
class ClipApertures:
    """One clip's apertures (metres) at the places the figures read."""

    bilabial_closest: list[float]  # the smallest within each p, b, m (+-1 frame)
    bilabial_centres: list[float]
    open_vowel_centres: list[float]
    pauses: list[float]

    def closed(self) -> list[bool] | None:
        """Per bilabial, whether it closed; None when the clip has no open vowel to compare with."""
        if not self.open_vowel_centres:
            return None
        threshold = min(CLOSED_SHARE_OF_OPEN * float(np.median(self.open_vowel_centres)), CLOSED_MAX)
        return [value < threshold for value in self.bilabial_closest]


def clip_apertures(aperture: np.ndarray, segments: list[tuple[str, float, float]], fps: float) -> ClipApertures:
    return ClipApertures(closest_apertures(aperture, segments, fps), centre_apertures(aperture, segments, fps, BILABIAL),
                         centre_apertures(aperture, segments, fps, OPEN_VOWELS), pause_apertures(aperture, segments, fps))


def figures(clips: list[ClipApertures]) -> dict[str, float | int | None]:
    """Closure rate, ratio and pause aperture over clips (None where nothing was measured)."""
    closed = [c for clip in clips if (flags := clip.closed()) is not None for c in flags]
    bilabial = [v for clip in clips for v in clip.bilabial_centres]
    open_vowel = [v for clip in clips for v in clip.open_vowel_centres]
    pauses = [v for clip in clips for v in clip.pauses]
    open_mean = float(np.mean(open_vowel)) if open_vowel else 0.0
    return {
        "closure_rate": float(np.mean(closed)) if closed else None,
        "ratio": float(np.mean(bilabial)) / open_mean if bilabial and open_mean > 0 else None,
        "pause_aperture_mm": 1e3 * float(np.median(pauses)) if pauses else None,
        "bilabial_centre_mm": 1e3 * float(np.mean(bilabial)) if bilabial else None,
        "open_vowel_centre_mm": 1e3 * open_mean if open_vowel else None,
        # The price of closing eagerly: open vowels whose centre is shut (under 3 mm).
        "open_vowels_shut": float(np.mean(np.array(open_vowel) < CLOSED_MAX)) if open_vowel else None,
        "bilabials": sum(len(clip.bilabial_closest) for clip in clips),
        "bilabials_without_reference": sum(len(clip.bilabial_closest) for clip in clips if clip.closed() is None),
        "open_vowels": len(open_vowel),
        "pause_frames": len(pauses),
    }


def speech_frames(segments: list[tuple[str, float, float]], frames: int, fps: float) -> np.ndarray:
    """Whether each frame's centre lies inside a spoken (not "_") segment."""
    times = (np.arange(frames) + 0.5) / fps
    inside = np.zeros(frames, bool)
    for name, start, end in segments:
        if name != "_":
            inside |= (times >= start) & (times < end)
    return inside


def style_correlation(data: Path, chin_drops: dict[str, dict[str, list[float]]]) -> dict | None:
    """Pearson r between each speaker's drawn jaw amplitude (speakers.json) and their mean chin
    drop, for the model and the ground truth; None without speakers.json or with under 3 speakers."""
    path = data / "speakers.json"
    if not path.exists():
        return None
    amplitude = {s["name"]: s["style"]["jaw_amplitude"] for s in json.loads(path.read_text()) if "style" in s}
    speakers = [s for s in sorted(chin_drops) if s in amplitude and chin_drops[s]["model"]]
    if len(speakers) < 3:
        return None
    truth = [amplitude[s] for s in speakers]
    result = {"speakers": len(speakers)}
    for key in ("model", "ground_truth"):
        drops = [float(np.mean(chin_drops[s][key])) for s in speakers]
        result[key] = float(np.corrcoef(truth, drops)[0, 1])
    return result


def recogniser_per(model: MemoryTalker, info: DatasetInfo, split: str, names_by_speaker: dict[str, list[str]],
                   labels_by_speaker: dict[str, int]) -> dict[str, float]:
    """PER per speaker (phoneme_recognition on the speaker's clips alone) and over all of them
    ("all": the speakers' errors summed over their labels summed, which is the split's PER)."""
    per = {speaker: phoneme_recognition(model, dataclasses.replace(info, splits={split: {"files": names}}), split)["PER"]
           for speaker, names in names_by_speaker.items()}
    errors = sum(per[s] * labels_by_speaker[s] for s in per)
    per["all"] = errors / max(sum(labels_by_speaker.values()), 1)
    return per


def evaluate(model: MemoryTalker, data: Path, split: str = "test", style_strength: float = 1.0, progress: bool = False) -> dict:
    """The report: counts, and per speaker and over the split ("all") the figures of the model
    ("model", PER included) and of the ground truth ("ground_truth")."""
    info = DatasetInfo.open(data)
    upper, lower = lip_landmarks(data)
    dataset = TalkingFaceDataset(info, split, model.config.sample_rate)
    if model.config.num_vertices != info.num_vertices:
        raise DataError(f"the model animates {model.config.num_vertices} vertices but {data} has {info.num_vertices}")
    segments = [dataset.phoneme_segments(i) for i in range(len(dataset))]
    missing = [item.name for item, s in zip(dataset.items, segments) if s is None]
    if missing:
        raise DataError(f"{len(missing)} of the {len(dataset)} clips of the '{split}' split have no phoneme timings "
                        f"({data / 'phonemes' / missing[0]}.json and others): every clip needs phonemes/NAME.json")
    found: dict[str, dict[str, list[ClipApertures]]] = defaultdict(lambda: {"model": [], "ground_truth": []})
    chin_drops: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"model": [], "ground_truth": []})
    chin = json.loads((data / "demo_head.json").read_text())["landmarks"]["chin"]
    seconds = 0.0
    model.eval()
    with torch.inference_mode():
        for i in tqdm(range(len(dataset)), desc=f"real-speech eval {split}", disable=not progress, leave=False):
            sample = dataset[i]
            truth = sample["vertices"].numpy().reshape(len(sample["vertices"]), -1, 3)
            template = sample["template"].numpy().reshape(-1, 3)
            motion = template + model([sample["audio"]], [len(truth)], style_strength)[0].numpy()
            seconds += len(sample["audio"]) / model.config.sample_rate
            spoken = speech_frames(segments[i], len(truth), info.fps)
            for key, mesh in (("model", motion), ("ground_truth", truth)):
                found[sample["subject"]][key].append(clip_apertures(lip_aperture(mesh, upper, lower), segments[i], info.fps))
                if spoken.any():
                    chin_drops[sample["subject"]][key].append(float(np.mean(template[chin, 1] - mesh[spoken, chin, 1])))
    speakers = sorted(found)
    per = None
    if model.config.vocabulary is not None:
        names = {s: [item.name for item in dataset.items if item.subject == s] for s in speakers}
        labels = {s: sum(len(spoken_phonemes(segments[i])) for i, item in enumerate(dataset.items) if item.subject == s)
                  for s in speakers}
        per = recogniser_per(model, info, split, names, labels)
    report = {"data": str(data), "split": split, "style_strength": style_strength, "clips": len(dataset),
              "speakers": len(speakers), "minutes": seconds / 60, "goals": {k: list(v) for k, v in GOALS.items()}}
    for key in ("model", "ground_truth"):
        table = {s: figures(found[s][key]) for s in speakers}
        table["all"] = figures([clip for s in speakers for clip in found[s][key]])
        for s, row in table.items():
            row["PER"] = per[s] if per is not None and key == "model" else None
        report[key] = table
    report["bilabials"] = report["model"]["all"]["bilabials"]
    report["style"] = style_correlation(data, chin_drops)
    return report


def bias_sweep(model: MemoryTalker, data: Path, split: str, candidates: list[float], style_strength: float = 1.0,
               progress: bool = False) -> list[dict]:
    """The figures over the split for each candidate phoneme_logit_bias on p, b and m (the backbone
    runs once per clip), with the mean absolute error of the lip aperture against the ground truth."""
    info = DatasetInfo.open(data)
    upper, lower = lip_landmarks(data)
    dataset = TalkingFaceDataset(info, split, model.config.sample_rate)
    vocabulary = model.config.vocabulary or []
    if not BILABIAL <= set(vocabulary):
        raise DataError("the bilabial bias needs a model whose recogniser has the phonemes p, b and m "
                        "(a backbone trained with `python -m model_core train --stage asr`)")
    kept = dict(model.config.phoneme_logit_bias)
    clips: dict[float, list[ClipApertures]] = {c: [] for c in candidates}
    errors: dict[float, list[float]] = {c: [] for c in candidates}
    model.eval()
    try:
        with torch.inference_mode():
            for i in tqdm(range(len(dataset)), desc=f"bilabial bias {split}", disable=not progress, leave=False):
                sample = dataset[i]
                frames = len(sample["vertices"])
                truth = lip_aperture(sample["vertices"].numpy().reshape(frames, -1, 3), upper, lower)
                template = sample["template"].numpy().reshape(-1, 3)
                logits, mask = model.audio_encoder([sample["audio"]], [frames])
                style = model.style_weights([sample["audio"]], style_strength)
                for candidate in candidates:
                    model.set_phoneme_logit_bias({**kept, **{p: candidate for p in sorted(BILABIAL)}})
                    motion = template + model.predict(logits, mask, style)[0].numpy().reshape(frames, -1, 3)
                    aperture = lip_aperture(motion, upper, lower)
                    clips[candidate].append(clip_apertures(aperture, dataset.phoneme_segments(i), info.fps))
                    errors[candidate].append(float(np.mean(np.abs(aperture - truth))))
    finally:
        model.set_phoneme_logit_bias(kept)
    return [{"bilabial_bias": c, **figures(clips[c]), "aperture_error_mm": 1e3 * float(np.mean(errors[c]))}
            for c in candidates]


def choose_bias(rows: list[dict]) -> dict:
    """The smallest bias that meets the closure goal while shutting at most MOST_OPEN_VOWELS_SHUT of
    the open vowels; if none does, the one that closes most within that limit."""
    allowed = [r for r in rows if (r["open_vowels_shut"] or 0.0) <= MOST_OPEN_VOWELS_SHUT and r["closure_rate"] is not None]
    if not allowed:
        return min(rows, key=lambda r: r["bilabial_bias"])
    meeting = [r for r in allowed if meets("closure_rate", r["closure_rate"])]
    if meeting:
        return min(meeting, key=lambda r: r["bilabial_bias"])
    return max(allowed, key=lambda r: r["closure_rate"])


def format_sweep(rows: list[dict], chosen: dict) -> str:
    lines = [f"  {'bias':>6}{'closure':>10}{'ratio':>8}{'pauses mm':>11}{'vowels shut':>13}{'aperture err mm':>17}"]
    for r in rows:
        lines.append(f"  {r['bilabial_bias']:>6.2f}{r['closure_rate']:>10.0%}{r['ratio']:>8.3f}{r['pause_aperture_mm']:>11.2f}"
                     f"{r['open_vowels_shut']:>13.1%}{r['aperture_error_mm']:>17.2f}" + ("  <- chosen" if r is chosen else ""))
    return "\n".join(lines)


def meets(name: str, value: float) -> bool:
    comparison, goal = GOALS[name]
    return {"<=": value <= goal, ">=": value >= goal, "<": value < goal}[comparison]


def format_row(label: str, row: dict, mark: bool = False) -> str:
    cells = []
    for name, fmt in (("PER", "{:.3f}"), ("closure_rate", "{:.0%}"), ("ratio", "{:.3f}"), ("pause_aperture_mm", "{:.2f}")):
        value = row[name]
        cell = "n/a" if value is None else fmt.format(value)
        if mark and value is not None:
            cell += " ok" if meets(name, value) else " NO"
        cells.append(f"{cell:>10}")
    unreferenced = row["bilabials_without_reference"]
    note = f" ({unreferenced} in clips without an open vowel, left out)" if unreferenced else ""
    return f"  {label:<22}" + "".join(cells) + f"{row['bilabials']:>11}{note}"


def format_report(report: dict, model_name: str) -> str:
    lines = [f"{model_name} on the '{report['split']}' split of {report['data']}: {report['clips']} clips, "
             f"{report['speakers']} speakers, {report['bilabials']} bilabials, {report['minutes']:.1f} min"
             f" (style strength {report['style_strength']})",
             GOALS_LINE,
             f"  {'':<22}{'PER':>10}{'closure':>10}{'ratio':>10}{'pauses mm':>10}{'bilabials':>11}"]
    lines += [format_row(f"model {speaker}", row) for speaker, row in report["model"].items() if speaker != "all"]
    lines.append(format_row("model, all speakers", report["model"]["all"], mark=True))
    lines.append(format_row("ground truth, all", report["ground_truth"]["all"]))
    style = report.get("style")
    if style:
        verdict = "ok" if style["model"] >= STYLE_GOAL else "NO"
        lines.append(f"  style: jaw amplitude vs mean chin drop over {style['speakers']} speakers: model r = "
                     f"{style['model']:.2f} {verdict} (goal >= {STYLE_GOAL}), ground truth r = {style['ground_truth']:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a corpus in the layout of `python -m model_core synth`")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="a model folder (default: the bundled demo model)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--style-strength", type=float, default=1.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--bilabial-bias", metavar="B1,B2,...",
                        help="instead of the report: the figures for each of these phoneme_logit_bias values on p, b "
                             "and m, and the one chosen (the smallest meeting the closure goal while shutting at "
                             f"most {100 * MOST_OPEN_VOWELS_SHUT:.0f} %% of open vowels). Choose on held-out speakers (--split val)")
    parser.add_argument("--write", action="store_true", help="with --bilabial-bias: store the chosen bias in the model folder")
    args = parser.parse_args()
    if args.write and not args.bilabial_bias:
        parser.error("--write needs --bilabial-bias")
    if args.bilabial_bias:
        try:
            candidates = sorted({float(v) for v in args.bilabial_bias.split(",")})
        except ValueError:
            parser.error(f"--bilabial-bias takes numbers separated by commas, e.g. 0,1,1.5,2; got {args.bilabial_bias!r}")
        try:
            model = load_model(args.model)
            rows = bias_sweep(model, args.data, args.split, candidates, args.style_strength, progress=True)
        except MemoryTalkerError as error:
            raise SystemExit(f"error: {error}")
        chosen = choose_bias(rows)
        print(f"{args.model} on the '{args.split}' split of {args.data}: p, b, m logit bias")
        print(format_sweep(rows, chosen))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"sweep": rows, "chosen": chosen["bilabial_bias"]}, indent=1) + "\n")
        if args.write:
            bias = {**model.config.phoneme_logit_bias, **{p: chosen["bilabial_bias"] for p in sorted(BILABIAL)}}
            update_model_config(args.model, phoneme_logit_bias=bias)
            print(f"wrote phoneme_logit_bias {bias} into {args.model / 'config.json'}")
        return
    try:
        report = evaluate(load_model(args.model), args.data, args.split, args.style_strength, progress=True)
    except MemoryTalkerError as error:
        raise SystemExit(f"error: {error}")
    report["model_folder"] = str(args.model)
    print(format_report(report, str(args.model)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
