"""The model card's quality table: the demo model's variants on the test split (unseen speakers).

    .venv/bin/python scripts/model_card_table.py --data data/synth-2h-72-free --runs runs/demo

Rows: (a) the same decoder without memory, (b) stage 1, (c) stage 1 + 2 at style strength 0, 0.5
and 1. Metric definitions: docs/metrics.md. Prints the table, saves the figures as JSON
(docs/model_card_results.json) and writes the same table into docs/model_card.md between its
table markers. A row whose run folder is missing (RUNS/nomem/best, ...) keeps the figures saved
in that JSON, and the printout says so: after retraining one step, only its rows are measured again.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("(a) no memory", "nomem", 1.0), ("(b) stage 1", "stage1", 1.0),
        ("(c) stage 1 + 2, style 0", "stage2", 0.0), ("(c) stage 1 + 2, style 0.5", "stage2", 0.5),
        ("(c) stage 1 + 2, style 1", "stage2", 1.0)]
# (metric, printed in units of) -- LVE and FVE in 1e-5 m^2 as the papers print them.
COLUMNS = [("LVE", 1e-5), ("FVE", 1e-5), ("LDTW", 1e-3), ("Lip-max", 1e-3), ("FDD", 1e-7)]
UNITS = {"LVE": "x 1e-5 m^2", "FVE": "x 1e-5 m^2", "LDTW": "mm", "Lip-max": "mm", "FDD": "x 1e-7 m^2"}
MARKERS = ("<!-- model_card_table.py: start -->", "<!-- model_card_table.py: end -->")


def render(document: dict) -> str:
    """The markdown table and the goal ratios for the saved results."""
    results = document["results"]
    lines = ["| model | " + " | ".join(f"{name} ({UNITS[name]})" for name, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for label, values in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[name] / unit:.3f}" for name, unit in COLUMNS) + " |")
    base, stage1, stage2 = (results[ROWS[i][0]]["LVE"] for i in (0, 1, 4))
    lines += ["", f"Test split: {results[ROWS[0][0]]['sequences']} sequences, {results[ROWS[0][0]]['frames']} frames "
              "(speakers with voices never heard in training).",
              f"LVE ratios: stage 1 / no memory = {stage1 / base:.3f} (goal <= 0.7); "
              f"stage 2 / stage 1 = {stage2 / stage1:.3f} (goal <= 0.9)."]
    return "\n".join(lines)


def write_into_card(card: Path, table: str) -> None:
    text = card.read_text()
    pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{card} has no table markers {MARKERS}")
    card.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{table}\n{MARKERS[1]}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "model_card_results.json")
    parser.add_argument("--card", type=Path, default=ROOT / "docs" / "model_card.md")
    args = parser.parse_args()

    from model_core.checkpoint import load_model
    from model_core.data import DatasetInfo
    from model_core.evaluate import evaluate_model

    saved = json.loads(args.out.read_text())["results"] if args.out.exists() else {}
    info = None
    results = {}
    for label, run, strength in ROWS:
        folder = args.runs / run / "best"
        if folder.exists():
            info = info or DatasetInfo.open(args.data)
            results[label] = evaluate_model(load_model(folder), info, args.split, strength, progress=False)
        elif label in saved:
            print(f"{label}: no {folder}; its figures are the ones saved in {args.out}")
            results[label] = saved[label]
        else:
            raise SystemExit(f"no {folder} and no saved figures for {label!r} in {args.out}: train that step first")
    document = {"split": args.split, "data": args.data.name, "results": results}
    table = render(document)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    write_into_card(args.card, table)
    print(f"saved {args.out} and the table in {args.card}")


if __name__ == "__main__":
    main()
