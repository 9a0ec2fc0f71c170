"""The model card's quality table: the demo model's variants on the test split (unseen speakers).

    .venv/bin/python scripts/model_card_table.py --data data/synth-2h --runs runs/demo [--out docs/model_card_results.json]

Rows: (a) the same decoder without memory, (b) stage 1, (c) stage 1 + 2 at style strength 0, 0.5
and 1. Metric definitions: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from model_core.checkpoint import load_model
from model_core.data import DatasetInfo
from model_core.evaluate import DISPLAY, evaluate_model

ROWS = [("(a) no memory", "nomem", 1.0), ("(b) stage 1", "stage1", 1.0),
        ("(c) stage 1 + 2, style 0", "stage2", 0.0), ("(c) stage 1 + 2, style 0.5", "stage2", 0.5),
        ("(c) stage 1 + 2, style 1", "stage2", 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=Path("docs/model_card_results.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    info = DatasetInfo.open(args.data)
    results = {}
    for label, run, strength in ROWS:
        model = load_model(args.runs / run / "best")
        results[label] = evaluate_model(model, info, args.split, strength, progress=False)
    header = "| model | " + " | ".join(f"{n} (x{s:.0e})" if s != 1.0 else n for n, s in DISPLAY) + " |"
    lines = [header, "|" + "---|" * (len(DISPLAY) + 1)]
    for label, values in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[n] / s:.4f}" for n, s in DISPLAY) + " |")
    base, stage1, stage2 = (results[ROWS[i][0]]["LVE"] for i in (0, 1, 4))
    lines.append(f"\nLVE ratios: stage 1 / no memory = {stage1 / base:.3f} (goal <= 0.7); "
                 f"stage 2 / stage 1 = {stage2 / stage1:.3f} (goal <= 0.9)")
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"split": args.split, "data": str(args.data), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
