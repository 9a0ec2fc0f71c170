"""How the demo model's lips behave on real recorded speech (the model card's real-speech section).

    .venv/bin/python scripts/real_speech_check.py [--model MODEL_DIR] [--plot docs/images/real_speech_aperture.png]

Joins spoken English words recorded by a person (Debian `ktuberling-data`,
/usr/share/ktuberling/sounds/en), trimmed, into one clip with 0.3 s pauses of low noise, animates it on the demo head and
measures the lip aperture (distance between the upper and lower lip centres). Phone times come
from pocketsphinx forced alignment to the known words (`pip install pocketsphinx`), so the
aperture can be read at the centres of p/b/m and of open vowels. Writes a plot of aperture over
time against the waveform and prints the figures (also saved as JSON beside the plot).
Needs matplotlib and pocketsphinx (`pip install matplotlib pocketsphinx`); neither is a
dependency of the project.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model_core.audio import load_audio  # noqa: E402
from model_core.checkpoint import BUNDLED_MODEL, load_model  # noqa: E402
from model_core.inference import Animator  # noqa: E402
from model_core.synthetic.head import demo_head  # noqa: E402

RECORDINGS = Path("/usr/share/ktuberling/sounds/en")
# file stem -> the words spoken; chosen for bilabials (p, b, m) next to open vowels.
WORDS = {
    "pizzeria_pepperoni": "pepperoni", "pizzeria_mushroom": "mushroom", "pizzeria_pineapple": "pineapple",
    "pizzeria_bacon": "bacon", "pizzeria_broccolli": "broccoli", "umbrella": "umbrella",
    "pizzeria_pepper": "pepper", "egypt_pyramid": "pyramid", "tv_bicycle": "bicycle", "ball": "ball",
    "moon_monster": "monster", "egypt_palmtree": "palm tree", "mouth": "mouth", "egypt_camel": "camel",
}
PAUSE_SECONDS = 0.3
FPS = 30.0
SAMPLE_RATE = 16000
BILABIALS = {"P", "B", "M"}
OPEN_VOWELS = {"AA", "AE", "AH", "AO", "AW", "AY"}


def align(samples: np.ndarray, text: str) -> list[tuple[str, float, float]]:
    """(ARPAbet phone, start s, end s) by pocketsphinx forced alignment of `text`."""
    from pocketsphinx import Decoder

    pcm = (np.clip(samples / max(np.abs(samples).max(), 1e-9), -1, 1) * 32767).astype(np.int16).tobytes()
    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    decoder.set_align_text(text)
    decoder.start_utt()  # the first pass finds the words, the second the phones within them
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    decoder.set_alignment()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    frame = 0.01
    return [(phone.name, phone.start * frame, (phone.start + phone.duration) * frame)
            for word in decoder.get_alignment() for phone in word if phone.name != "SIL"]


def trim(samples: np.ndarray, threshold_db: float = -35.0) -> np.ndarray:
    """The word without its leading and trailing near-silence (the aligner assumes speech from the
    first sample to the last)."""
    hop = SAMPLE_RATE // 100
    rms = np.array([np.sqrt(np.mean(samples[i:i + hop] ** 2)) for i in range(0, len(samples) - hop + 1, hop)])
    loud = np.flatnonzero(rms > rms.max() * 10 ** (threshold_db / 20))
    return samples[max(loud[0] - 2, 0) * hop:(loud[-1] + 3) * hop]


def room_tone(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A pause with a -60 dBFS noise floor, as a real recording has, rather than digital zeros."""
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 1e-3).astype(np.float32)


def build_clip() -> tuple[np.ndarray, list[tuple[str, float, float]], list[tuple[str, float, float]]]:
    """The joined clip (peak-normalised words), its word intervals and its aligned phones."""
    rng = np.random.default_rng(0)
    pieces, words, phones, t = [room_tone(PAUSE_SECONDS, rng)], [], [], PAUSE_SECONDS
    for stem, text in WORDS.items():
        samples = trim(load_audio(RECORDINGS / f"{stem}.ogg", SAMPLE_RATE).samples)
        samples = samples / np.abs(samples).max() * 0.5
        duration = len(samples) / SAMPLE_RATE
        phones += [(name, t + start, t + end) for name, start, end in align(samples, text)]
        words.append((text, t, t + duration))
        pieces += [samples.astype(np.float32), room_tone(PAUSE_SECONDS, rng)]
        t += duration + PAUSE_SECONDS
    return np.concatenate(pieces), words, phones


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "real_speech_aperture.png")
    args = parser.parse_args()
    if not RECORDINGS.is_dir():
        print(f"error: {RECORDINGS} is missing: install the Debian package ktuberling-data", file=sys.stderr)
        return 2
    clip, words, phones = build_clip()
    head = demo_head()
    motion = Animator(load_model(args.model), "cpu").animate(clip, fps=FPS, sample_rate=SAMPLE_RATE).displacements
    lips = head.vertices[None] + motion
    aperture = np.linalg.norm(lips[:, head.landmarks["upper_lip_center"]] - lips[:, head.landmarks["lower_lip_center"]], axis=1) * 1000
    times = np.arange(len(aperture)) / FPS

    def at_centres(names: set[str]) -> np.ndarray:
        frames = [min(int(round((s + e) / 2 * FPS)), len(aperture) - 1) for n, s, e in phones if n in names]
        return aperture[frames]

    in_words = np.zeros(len(aperture), bool)
    for _, start, end in words:
        in_words[int(start * FPS):int(np.ceil(end * FPS))] = True
    closed, opened = at_centres(BILABIALS), at_centres(OPEN_VOWELS)
    figures = {
        "model": str(args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model),
        "seconds": round(len(clip) / SAMPLE_RATE, 2), "words": len(words),
        "bilabial_centres": len(closed), "open_vowel_centres": len(opened),
        "aperture_mm_median": {
            "bilabial_centres": round(float(np.median(closed)), 2),
            "open_vowel_centres": round(float(np.median(opened)), 2),
            "pauses": round(float(np.median(aperture[~in_words])), 2),
            "neutral_head": round(float(np.linalg.norm(head.vertices[head.landmarks["upper_lip_center"]]
                                                      - head.vertices[head.landmarks["lower_lip_center"]]) * 1000), 2),
        },
        "bilabial_centres_under_2mm": round(float(np.mean(closed < 2.0)), 2),
        "aperture_vs_loudness_correlation": round(float(np.corrcoef(aperture, loudness(clip, len(aperture)))[0, 1]), 2),
    }
    print(json.dumps(figures, indent=2))
    plot(args.plot, clip, times, aperture, words, phones)
    args.plot.with_suffix(".json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.plot} and {args.plot.with_suffix('.json')}")
    return 0


def loudness(clip: np.ndarray, frames: int) -> np.ndarray:
    """RMS of the waveform in each motion frame."""
    hop = SAMPLE_RATE / FPS
    return np.array([np.sqrt(np.mean(clip[int(i * hop):int((i + 1) * hop)] ** 2) + 1e-12) for i in range(frames)])


def plot(path: Path, clip, times, aperture, words, phones) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 4.2), sharex=True, gridspec_kw={"height_ratios": [1, 1.4]})
    top.plot(np.arange(len(clip)) / SAMPLE_RATE, clip, lw=0.3, color="0.3")
    top.set_ylabel("waveform")
    top.set_yticks([])
    for text, start, end in words:
        top.text((start + end) / 2, 0.55, text, ha="center", va="bottom", fontsize=8)
    top.set_ylim(-0.6, 0.8)
    bottom.plot(times, aperture, color="tab:red", lw=1.2, label="lip aperture (model)")
    for name, start, end in phones:
        if name in BILABIALS:
            bottom.axvspan(start, end, color="tab:blue", alpha=0.18, lw=0)
        elif name in OPEN_VOWELS:
            bottom.axvspan(start, end, color="tab:orange", alpha=0.15, lw=0)
    bottom.plot([], [], color="tab:blue", alpha=0.4, lw=6, label="p / b / m (forced alignment)")
    bottom.plot([], [], color="tab:orange", alpha=0.4, lw=6, label="open vowels")
    bottom.set_ylabel("aperture (mm)")
    bottom.set_xlabel("time (s)")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
