#!/usr/bin/env bash
# The demo model's whole recipe: the synthetic corpus and a first model on it (phoneme-recogniser
# backbone, stage 1, stage 2), then recorded speech: the recogniser, stage 1, the no-memory
# baseline and stage 2 again, the p, b, m bias, the model card's table and the shipped folder. Every step checkpoints each
# epoch and resumes when the script is run again. DEVICE=cuda trains on a GPU; the defaults are
# the CPU recipe.
#   scripts/train_demo_model.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/synth-2h-72-free}
RUNS=${RUNS:-runs/demo}
DEVICE=${DEVICE:-auto}
PY=.venv/bin/python
train() { "$PY" -m model_core train --data "$DATA" --batch-size 4 --seed 0 --device "$DEVICE" --resume "$@"; }

# Half the sentences in random word order: with the grammar alone, the recogniser learns the word
# order and mishears sentences outside it (model card, "How the recipe got here").
[ -f "$DATA/summary.json" ] || "$PY" -m model_core synth --out "$DATA" --speakers 72 --sentences 28 --free-text 0.5 --seed 0 --dtype float16
# The recogniser learns CTC plus a frame-wise phoneme term, so the memory is read at the moment a
# phoneme sounds (CTC alone fires about 150 ms early on this corpus).
train --stage asr --out "$RUNS/asr" --config model_core/recipes/demo_small.json --asr-frame-weight 1 --epochs "${ASR_EPOCHS:-4}"
# Stage 1 reads the recogniser as it is (--freeze-backbone: its logits are computed once, in the
# first epoch) and learns at full Adam steps (--adam-eps 1e-12) with the output projection
# at its own small rate (--output-lr). A CPU budget of 16 epochs instead of the published 100:
# 10 at 3e-4, then a step down to the published 1e-4 (explicit rates on resume) for epochs 11-16.
# Stage 2: 1 epoch at 3e-4.
flags=(--stage 1 --out "$RUNS/stage1" --init "$RUNS/asr/best" --freeze-backbone --adam-eps 1e-12)
train "${flags[@]}" --epochs 10 --lr 3e-4 --output-lr 1e-6
train "${flags[@]}" --epochs "${STAGE1_EPOCHS:-16}" --lr 1e-4 --output-lr 3e-7
train --stage 2 --out "$RUNS/stage2" --init "$RUNS/stage1/best" --epochs "${STAGE2_EPOCHS:-1}" --lr 3e-4

# Real voices. The model above has heard only espeak-ng; it goes on from there on recorded speech
# (6.8 h, 493 voices; scripts/get_real_speech.py) mixed with the synthetic corpus. These are the
# steps the shipped model went through, in this order (model card, "Real recorded speech").
# data/real holds the recorded speech alone (the figures on held-out real speakers), data/real-synth
# the same plus the synthetic corpus (training); a speaker lands in the same split in both.
REAL=${REAL:-data/real-synth}
REAL_ONLY=${REAL_ONLY:-data/real}
REAL_RUNS=$RUNS/real
[ -d data/real-sources ] || "$PY" scripts/get_real_speech.py --out data/real-sources
for corpus in "$REAL_ONLY" "$REAL"; do
  extra=(); [ "$corpus" = "$REAL" ] && extra=(--include "$DATA")
  [ -f "$corpus/summary.json" ] || "$PY" -m model_core corpus data/real-sources/*/manifest.csv \
    --lexicon data/real-sources/speechocean762/lexicon.txt "${extra[@]}" --out "$corpus"
done
[ -d "$REAL_RUNS/start" ] || "$PY" -c "import sys; from model_core.checkpoint import load_model, save_model
model = load_model(sys.argv[1]); model.config.stylized = False; save_model(model, sys.argv[2], model.metadata)" \
  "$RUNS/stage2/best" "$REAL_RUNS/start"
real() { "$PY" -m model_core train --data "$REAL" --batch-size 4 --seed 0 --device "$DEVICE" --resume "$@"; }
s1=(--stage 1 --freeze-backbone --adam-eps 1e-12 --lr 1e-4 --output-lr 3e-7)
# The recogniser hears real voices (augmented); the decoder learns on its logits.
real --stage asr --out "$REAL_RUNS/asr" --init "$REAL_RUNS/start" --asr-frame-weight 1 --augment --lr 2e-4 --epochs 1
real "${s1[@]}" --out "$REAL_RUNS/stage1-first" --init "$REAL_RUNS/asr/best" --epochs 2
# Frames inside p, b, m count 4 times: the recogniser is sure of twice as many bilabials. The
# decoder keeps its two epochs and learns one more, weighted the same, on the new recogniser.
real --stage asr --out "$REAL_RUNS/asr-bilabial" --init "$REAL_RUNS/asr/best" --asr-frame-weight 1 --bilabial-weight 4 \
  --augment --lr 2e-4 --epochs 1
[ -d "$REAL_RUNS/stage1-start" ] || "$PY" -c "import sys; from model_core.checkpoint import load_model, save_model
model = load_model(sys.argv[1]); model.audio_encoder.load_state_dict(load_model(sys.argv[2]).audio_encoder.state_dict())
save_model(model, sys.argv[3], model.metadata)" "$REAL_RUNS/stage1-first/best" "$REAL_RUNS/asr-bilabial/best" "$REAL_RUNS/stage1-start"
real "${s1[@]}" --out "$REAL_RUNS/stage1" --init "$REAL_RUNS/stage1-start" --bilabial-weight 4 --epochs 1
real "${s1[@]}" --out "$REAL_RUNS/nomem" --init "$REAL_RUNS/asr-bilabial/best" --no-memory --bilabial-weight 4 --epochs 1
# Stage 2 on real and synthetic voices, with each training speaker's fitted slot weights as a
# second target (--fitted-style-weight; model_core guide, finding 12): the published loss alone
# leaves the style barely heard.
real --stage 2 --out "$REAL_RUNS/stage2" --init "$REAL_RUNS/stage1/best" --epochs 1 --lr 3e-4 --fitted-style-weight 0.1
# The p, b, m logit bias, chosen on the held-out real speakers (validation split) and given to
# each variant, so the table compares the decoders under the same recogniser reading.
"$PY" scripts/real_speech_eval.py --data "$REAL_ONLY" --model "$REAL_RUNS/stage2/best" --split val \
  --bilabial-bias 0,1,1.25,1.5,1.75,2 --write
for variant in stage1 nomem; do
  "$PY" -c "import sys; from model_core.checkpoint import read_model_document, update_model_config
update_model_config(sys.argv[1], phoneme_logit_bias=read_model_document(sys.argv[2])['config']['phoneme_logit_bias'])" \
    "$REAL_RUNS/$variant/best" "$REAL_RUNS/stage2/best"
done
"$PY" scripts/model_card_table.py --data "$DATA" --runs "$REAL_RUNS"
# The shipped model folder: stage 1 + 2 in float16 (half the size; outputs move by under 0.01 mm)
# and the mesh it animates.
"$PY" -c "import sys, torch; from model_core.checkpoint import load_model, save_model
model = load_model(sys.argv[1]); save_model(model, sys.argv[2], model.metadata, weights_dtype=torch.float16)" \
  "$REAL_RUNS/stage2/best" model_core/models/demo
cp "$DATA/demo_head.obj" "$DATA/demo_head.json" model_core/models/demo/
