#!/usr/bin/env bash
# The demo model's whole recipe: corpus, phoneme-recogniser backbone, stage 1, stage 2, and the
# no-memory baseline for the model card. Every step checkpoints each epoch and resumes when the
# script is run again. DEVICE=cuda trains on a GPU; the defaults are the CPU recipe.
#   scripts/train_demo_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/synth-2h}
RUNS=${RUNS:-runs/demo}
DEVICE=${DEVICE:-auto}
PY=.venv/bin/python
train() { "$PY" -m model_core train --data "$DATA" --batch-size 4 --seed 0 --device "$DEVICE" --resume "$@"; }

[ -f "$DATA/summary.json" ] || "$PY" -m model_core synth --out "$DATA" --speakers 24 --sentences 84 --seed 0 --dtype float16
train --stage asr --out "$RUNS/asr" --config model_core/recipes/demo_small.json --epochs "${ASR_EPOCHS:-5}"
# lr 3e-4 rather than the published 1e-4: a CPU budget of a few epochs instead of 100.
train --stage 1 --out "$RUNS/stage1" --init "$RUNS/asr/best" --epochs "${STAGE1_EPOCHS:-8}" --lr 3e-4
train --stage 1 --no-memory --out "$RUNS/nomem" --init "$RUNS/asr/best" --epochs "${STAGE1_EPOCHS:-8}" --lr 3e-4
train --stage 2 --out "$RUNS/stage2" --init "$RUNS/stage1/best" --epochs "${STAGE2_EPOCHS:-5}"
"$PY" scripts/model_card_table.py --data "$DATA" --runs "$RUNS"
