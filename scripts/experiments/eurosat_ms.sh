#!/usr/bin/env bash
# The real-data experiment of the README: EuroSAT 13-band subset (../shared/data/eurosat_ms),
# SimCLR pretraining on its training split, then 5 and 20 labels per class x 5 seeds for
#   random init trained end to end (mode 11, hos 0)      random-init features + logistic regression
#   SimCLR linear probe (hos 9)   SimCLR logistic-regression probe   SimCLR full fine-tune (hos 0)
# Rows go to results/euroms.csv; the summary to results/euroms_summary.{md,csv,png}.
# EXP=<expnum> skips pretraining and evaluates that checkpoint (epoch $EPOCHS).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}    # two of these jobs side by side on 2 cores do not thrash
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-../shared/data}
CKPT=${CKPT:-ckpt/euroms}
EPOCHS=${EPOCHS:-150}
NET=090000
RES=results/euroms.csv
COMMON=(--ds euroms --data-root "$ROOT" --netnum $NET --workers 1 --no-progress --results "$RES")
FT=(--bs 16 --optimizer adam --lr_policy cosine --wd 0 --nseeds 5 --pin-memory --ckpt "$CKPT")
# about the same number of optimiser steps at both scales (bs 16): 5 labels x 50 epochs = 200 steps,
# 20 labels x 20 epochs = 260 steps
declare -A EP=([5]=50 [20]=20)
t() { local s=$SECONDS; "$@"; echo "[time] $(( SECONDS - s )) s: ${*:0:8} ..." | tee -a "$CKPT/times.txt"; }
mkdir -p "$CKPT"

if [ -z "${EXP:-}" ]; then
  EXP=$(date +%y%j%H%M%S)_pretrain
  t "$PY" main_cls_ss_train.py --mode 910 --ds euroms --data-root "$ROOT" --ts 1 --netnum $NET \
    --lr 1e-3 --lr_policy cosine --warmup 5 --mepoch "$EPOCHS" --bs 128 --loss NTXentLoss --optimizer adam \
    --wd 1e-6 --pin-memory --aug 5 --aug_p S5 --tau 0.2 --workers 1 --ckpt "$CKPT" --ckpt_freq 25 \
    --expnum "$EXP" --no-progress
fi
PRE=(--expnum "$EXP" --cepoch "$EPOCHS")
for ts in 5 20; do
  t "$PY" main_cls.py "${COMMON[@]}" --mode 11 --ts $ts --probe logreg --nseeds 5
  t "$PY" main_cls.py "${COMMON[@]}" --mode 41 --ts $ts --probe logreg --nseeds 5 "${PRE[@]}" --ckpt "$CKPT"
  t "$PY" main_cls.py "${COMMON[@]}" --mode 41 --ts $ts --hos 9 --lr 3e-3 --mepoch ${EP[$ts]} "${FT[@]}" "${PRE[@]}"
  t "$PY" main_cls.py "${COMMON[@]}" --mode 41 --ts $ts --hos 0 --lr 4e-4 --mepoch ${EP[$ts]} "${FT[@]}" "${PRE[@]}"
  t "$PY" main_cls.py "${COMMON[@]}" --mode 11 --ts $ts --hos 0 --lr 4e-4 --mepoch ${EP[$ts]} "${FT[@]}"
done
"$PY" scripts/summarize.py "$RES" --out results/euroms_summary
