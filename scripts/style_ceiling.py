"""How much can a speaking style heard in the voice lower the vertex error, at most? (model_core
guide, finding 12.)

    .venv/bin/python scripts/style_ceiling.py --data data/synth-2h-72-free \\
        --fitted runs/demo/real/stage2/fitted_style_weights.json [--model MODEL_DIR] [--split test]

For each speaker of the split, slot weights are chosen in several ways and the LVE is measured on
every second clip of the speaker (the clips in between are the ones weights are fitted on):
none (stage 1: the model's memory as it is); fitted on up to 6 of the speaker's other clips (what
a speaker-level style can do at all); mapped linearly from the speaker's drawn style, from its jaw
amplitude alone, from the audible part of the jaw amplitude (the gain `synth` multiplies it by)
and from the four prosody measures, each map fitted by least squares to the weights fitted on the
corpus's synthetic training speakers (`--fitted`, written by `train --stage 2
--fitted-style-weight`); and the model's own style encoder, reading each clip. Needs a corpus
written by `synth` (its speakers.json holds the drawn styles).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_core.checkpoint import BUNDLED_MODEL, load_model  # noqa: E402
from model_core.data import DatasetInfo, TalkingFaceDataset, collate  # noqa: E402
from model_core.metrics import MetricAccumulator  # noqa: E402
from model_core.synthetic.prosody import Prosody, audible_jaw_gain  # noqa: E402
from model_core.train import SPEAKER_FIT_CLIPS, fit_slot_weights  # noqa: E402

STYLE_FACTORS = ("jaw_amplitude", "protrusion", "spread", "closure_tightness", "asymmetry", "smoothness")
PROSODY = ("pitch_level", "pitch_range", "speaking_rate", "loudness_dynamics")
PREDICTORS = {
    "the speaker's whole drawn style": lambda s: [s["style"][k] for k in STYLE_FACTORS],
    "its jaw amplitude alone": lambda s: [s["style"]["jaw_amplitude"]],
    "the audible part of the jaw amplitude": lambda s: [np.log(audible_jaw_gain(Prosody(**s["prosody"])))],
    "the four prosody measures": lambda s: [s["prosody"][k] for k in PROSODY],
}


def fit_weights(model, batch) -> torch.Tensor:
    """The slot weights that bring the model closest to the batch's motion, as read at inference."""
    with torch.no_grad():
        logits, mask = model.audio_encoder(batch.waveforms, batch.frame_counts)
        logits = logits + model.logit_bias.to(logits.dtype)  # as at inference
    return fit_slot_weights(model, logits, mask, batch.vertices - batch.templates[:, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a corpus written by `python -m model_core synth`")
    parser.add_argument("--fitted", type=Path, required=True, help="a stage-2 run's fitted_style_weights.json")
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL, help="a stage-2 model folder")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()

    model = load_model(args.model).eval()
    info = DatasetInfo.open(args.data)
    clips = TalkingFaceDataset(info, args.split, model.config.sample_rate)
    speakers = {s["name"]: s for s in json.loads((args.data / "speakers.json").read_text())}
    targets = json.loads(args.fitted.read_text())
    training = [name for name in targets if speakers.get(name, {}).get("split") == "train"]
    if not training:
        raise SystemExit(f"{args.fitted} holds no weights for the training speakers of {args.data}")

    weights: dict[str, dict[str, torch.Tensor | None]] = {"none (stage 1)": {}, "fitted on the speaker's other clips": {}}
    for speaker, indices in sorted(clips.by_subject.items()):
        weights["none (stage 1)"][speaker] = None
        fit_clips = collate([clips[i] for i in indices[::2][:SPEAKER_FIT_CLIPS]])
        weights["fitted on the speaker's other clips"][speaker] = fit_weights(model, fit_clips)
    fitted = np.array([targets[name] for name in training])
    for label, predictor in PREDICTORS.items():
        features = np.array([predictor(speakers[name]) for name in training])
        mean, spread = features.mean(0), features.std(0) + 1e-9
        design = np.c_[(features - mean) / spread, np.ones(len(features))]
        coefficients = np.linalg.solve(design.T @ design + 1e-3 * np.eye(design.shape[1]), design.T @ fitted)
        weights[f"mapped from {label}"] = {
            speaker: torch.tensor(np.r_[(np.array(predictor(speakers[speaker])) - mean) / spread, 1.0] @ coefficients,
                                  dtype=torch.float32)[None]
            for speaker in clips.by_subject}
    weights["the model's style encoder"] = {speaker: "encoder" for speaker in clips.by_subject}

    results = {label: MetricAccumulator(info.lip_indices, info.upper_face_indices) for label in weights}
    with torch.inference_mode():
        for speaker, indices in sorted(clips.by_subject.items()):
            for i in indices[1::2]:
                clip = clips[i]
                truth = clip["vertices"].numpy().reshape(len(clip["vertices"]), -1, 3)
                template = clip["template"].numpy().reshape(-1, 3)
                logits, mask = model.audio_encoder([clip["audio"]], [len(truth)])
                for label, chosen in weights.items():
                    w = chosen[speaker]
                    if isinstance(w, str):
                        w = model.style_weights([clip["audio"]])
                    motion = model.predict(logits, mask, w)[0].view(len(truth), -1, 3).numpy()
                    results[label].add(template + motion, truth, template)
    stage1 = results["none (stage 1)"].result()["LVE"]
    print(f"{args.model} on the {args.split!r} split of {args.data} ({len(clips.by_subject)} speakers)")
    print(f"{'slot weights':60s} {'LVE (x 1e-5)':>12s} {'/ stage 1':>9s}")
    for label, accumulator in results.items():
        lve = accumulator.result()["LVE"]
        print(f"{label:60s} {lve * 1e5:12.3f} {lve / stage1:9.3f}")


if __name__ == "__main__":
    main()
