"""Obtains the recorded speech the demo model trains on and writes one manifest per source.

    .venv/bin/python scripts/get_real_speech.py --out data/real-sources [--git-base https://github.com]

Each source lands in OUT/<source>/ with a `manifest.csv` (audio,text,speaker) that
`python -m model_core corpus` reads. Nothing here is committed to the project; the model card
credits every source with its licence:

| source          | where from                                   | audio  | speakers | licence      |
|-----------------|----------------------------------------------|--------|----------|--------------|
| speechocean762  | github.com/jimbozhang/speechocean762         | 5.6 h  | 250      | CC BY 4.0    |
| speechcommands  | Speech Commands v0.02 test set, as kept in github.com/thegtagamer/PICO-tinyML-benchmark | 1.25 h | 239 | CC BY 4.0 |
| asterisk        | Debian asterisk-core-sounds-en-wav (+ -en for the prompt texts) | 0.42 h | 1 | CC BY-SA 3.0 |
| fsdd            | github.com/Jakobovski/free-spoken-digit-dataset | 0.37 h | 6      | CC BY-SA 4.0 |

Needs git and (for asterisk) apt-get and dpkg-deb. `--git-base` points at another host or at a
local folder of clones laid out as OWNER/NAME (offline machines).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DIGITS = "zero one two three four five six seven eight nine".split()
# Speech Commands folders that are not a spoken word (or not the word named).
SPEECH_COMMANDS_SKIP = {"_silence_", "_background_noise_"}


def run(*command: str, cwd: Path | None = None) -> None:
    subprocess.run(command, check=True, cwd=cwd)


def clone(git_base: str, repo: str, into: Path, *paths: str) -> Path:
    """A shallow clone holding only `paths` (the repositories carry much else)."""
    if not (into / ".git").exists():
        source = f"{git_base.rstrip('/')}/{repo}"
        shallow = [] if Path(source).is_dir() else ["--depth", "1"]  # local clones share objects instead
        run("git", "clone", "--quiet", *shallow, "--no-checkout", source, str(into))
    run("git", "-C", str(into), "checkout", "--quiet", "HEAD", "--", *paths)
    return into


def write_manifest(folder: Path, rows: list[tuple[str, str, str]]) -> int:
    with open(folder / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["audio", "text", "speaker"])
        writer.writerows(sorted(rows))
    return len(rows)


def speechocean762(out: Path, git_base: str) -> int:
    repo = clone(git_base, "jimbozhang/speechocean762", out / "repo", "WAVE", "train", "test",
                 "resource/lexicon.txt")
    rows = []
    for part in ("train", "test"):
        paths = dict(line.split(maxsplit=1) for line in (repo / part / "wav.scp").read_text().splitlines() if line.strip())
        for line in (repo / part / "text").read_text().splitlines():
            if not line.strip():
                continue
            utterance, text = line.split(maxsplit=1)
            speaker = Path(paths[utterance].strip()).parent.name.replace("SPEAKER", "")
            rows.append((f"repo/{paths[utterance].strip()}", text.strip(), f"so762-{speaker}"))
    # Its lexicon has the stress-marked CMU phones of every word it uses; the corpus builder reads it.
    shutil.copy(repo / "resource" / "lexicon.txt", out / "lexicon.txt")
    return write_manifest(out, rows)


def speechcommands(out: Path, git_base: str) -> int:
    repo = clone(git_base, "thegtagamer/PICO-tinyML-benchmark", out / "repo", "MLTK_keyworkSpotting/dataset")
    dataset = repo / "MLTK_keyworkSpotting" / "dataset"
    rows = []
    for wav in sorted(dataset.glob("*/*.wav")):
        if wav.parent.name in SPEECH_COMMANDS_SKIP:
            continue
        # <word>/<speaker>_nohash_<n>.wav, or _unknown_/<word>_<speaker>_nohash_<n>.wav.wav
        stem = wav.name.split(".")[0]
        if wav.parent.name == "_unknown_":
            word, speaker = stem.split("_")[:2]
        else:
            word, speaker = wav.parent.name, stem.split("_")[0]
        rows.append((str(wav.relative_to(out)), word, f"sc-{speaker}"))
    return write_manifest(out, rows)


def asterisk(out: Path, git_base: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        run("apt-get", "download", "asterisk-core-sounds-en-wav", "asterisk-core-sounds-en", cwd=Path(tmp))
        for deb in Path(tmp).glob("*.deb"):
            run("dpkg-deb", "-x", str(deb), str(out / "root"))
    texts = {}
    with gzip.open(out / "root/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz", "rt", encoding="utf-8",
                   errors="replace") as f:
        for line in f:
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";"):
                texts[name.strip()] = text.strip()
    sounds = out / "root/usr/share/asterisk/sounds/en_US_f_Allison"
    rows = []
    for wav in sorted(sounds.rglob("*.wav")):
        name = str(wav.relative_to(sounds).with_suffix(""))
        text = texts.get(name)
        if text and not re.fullmatch(r"[\W_]*", text):
            rows.append((str(wav.relative_to(out)), text, "asterisk-allison"))
    return write_manifest(out, rows)


def fsdd(out: Path, git_base: str) -> int:
    repo = clone(git_base, "Jakobovski/free-spoken-digit-dataset", out / "repo", "recordings")
    rows = []
    for wav in sorted((repo / "recordings").glob("*.wav")):
        digit, speaker, _ = wav.stem.split("_")
        rows.append((str(wav.relative_to(out)), DIGITS[int(digit)], f"fsdd-{speaker}"))
    return write_manifest(out, rows)


FETCHERS = {"speechocean762": speechocean762, "speechcommands": speechcommands, "asterisk": asterisk, "fsdd": fsdd}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--git-base", default="https://github.com",
                        help="where OWNER/NAME repositories are cloned from (a URL or a local folder)")
    parser.add_argument("--sources", nargs="+", choices=list(FETCHERS), default=list(FETCHERS))
    args = parser.parse_args()
    for source in args.sources:
        folder = args.out / source
        folder.mkdir(parents=True, exist_ok=True)
        count = FETCHERS[source](folder, args.git_base)
        print(f"{source}: {count} clips, manifest {folder / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
