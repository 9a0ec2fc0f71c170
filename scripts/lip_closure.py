"""Do the lips close on p, b and m? Measured over a whole split of a synthetic corpus (the model
card's lip-closure figures).

    .venv/bin/python scripts/lip_closure.py --data data/synth-2h-72-free [--model MODEL_DIR] [--split test]

For every p, b or m of every clip (the corpus's phoneme timings), the smallest lip aperture (upper
to lower lip centre, the corpus's `demo_head.json` landmarks) within one frame of the phoneme, for
the model and for the ground truth; printed per speaker and over the split, as medians and as the
share of bilabials closed to within 2 mm (the bar of tests/test_demo_model.py). One test
sentence is a small sample: this reads hundreds of bilabials of unseen speakers.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_core.checkpoint import BUNDLED_MODEL, load_model  # noqa: E402
from model_core.data import DatasetInfo, TalkingFaceDataset  # noqa: E402
from model_core.errors import MemoryTalkerError  # noqa: E402
from model_core.synthetic.visemes import BILABIAL, expand  # noqa: E402

CLOSED = 0.002  # metres: "closed" as tests/test_demo_model.py counts it


def closest_apertures(aperture: np.ndarray, segments: list[tuple[str, float, float]], fps: float) -> list[float]:
    """The smallest aperture within one frame of each bilabial segment."""
    out = []
    for name, start, end in expand(segments):
        if name in BILABIAL:
            first = max(int(start * fps) - 1, 0)
            last = min(int(np.ceil(end * fps)) + 1, len(aperture) - 1)
            if first <= last:
                out.append(float(aperture[first:last + 1].min()))
    return out


def summary(values: list[float]) -> str:
    values = np.asarray(values)
    return f"median {1e3 * np.median(values):.1f} mm, {np.mean(values < CLOSED):.0%} within 2 mm"


def measure(model, data: Path, split: str, style_strength: float = 1.0) -> dict[str, dict[str, list[float]]]:
    """Per speaker of the split: the closest aperture at each bilabial, {"model": [...], "truth": [...]}."""
    import torch

    head_file = data / "demo_head.json"
    if not head_file.exists():
        raise MemoryTalkerError(f"{head_file} is missing: this measure needs a synthetic corpus (python -m model_core synth)")
    landmarks = json.loads(head_file.read_text())["landmarks"]
    upper, lower = landmarks["upper_lip_center"], landmarks["lower_lip_center"]
    info = DatasetInfo.open(data)
    dataset = TalkingFaceDataset(info, split, model.config.sample_rate)
    found: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"model": [], "truth": []})
    model.eval()
    with torch.inference_mode():
        for i in range(len(dataset)):
            segments = dataset.phoneme_segments(i)
            if segments is None:
                raise MemoryTalkerError(f"{dataset.items[i].name} has no phoneme timings (phonemes/NAME.json)")
            sample = dataset[i]
            gt = sample["vertices"].numpy().reshape(len(sample["vertices"]), -1, 3)
            template = sample["template"].numpy().reshape(-1, 3)
            motion = template + model([sample["audio"]], [len(gt)], style_strength)[0].numpy()
            for key, mesh in (("model", motion), ("truth", gt)):
                aperture = np.linalg.norm(mesh[:, upper] - mesh[:, lower], axis=1)
                found[dataset.items[i].subject][key] += closest_apertures(aperture, segments, info.fps)
    return dict(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a corpus made by `python -m model_core synth`")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--split", default="test")
    parser.add_argument("--style-strength", type=float, default=1.0)
    args = parser.parse_args()
    try:
        found = measure(load_model(args.model), args.data, args.split, args.style_strength)
    except MemoryTalkerError as error:
        raise SystemExit(f"error: {error}")
    print(f"{args.model} on the {args.split} split of {args.data.name}, style strength {args.style_strength}:")
    for speaker, values in sorted(found.items()):
        print(f"  {speaker}: {len(values['model'])} bilabials; model {summary(values['model'])}; "
              f"ground truth {summary(values['truth'])}")
    every = {key: [v for values in found.values() for v in values[key]] for key in ("model", "truth")}
    print(f"  all: {len(every['model'])} bilabials; model {summary(every['model'])}; "
          f"ground truth {summary(every['truth'])}")


if __name__ == "__main__":
    main()
