#!/usr/bin/env bash
# Diagnostic: does colour/grayscale augmentation hurt SimCLR on 13-band data? SimCLR with
# plan S4 (crop + rotation/flip only: spectra untouched) instead of S5, 50 epochs, then the
# logistic-regression probe (5 and 20 labels, 5 seeds) into results/euroms_ablation.csv.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-../shared/data}
CKPT=${CKPT:-ckpt/euroms}
EPOCHS=${EPOCHS:-50}
PLAN=${PLAN:-S4}
EXP=$(date +%y%j%H%M%S)_pretrain
"$PY" main_cls_ss_train.py --mode 910 --ds euroms --data-root "$ROOT" --ts 1 --netnum 090000 \
  --lr 1e-3 --lr_policy cosine --warmup 5 --mepoch "$EPOCHS" --bs 128 --optimizer adam --wd 1e-6 \
  --pin-memory --aug 5 --aug_p "$PLAN" --tau 0.2 --workers 1 --ckpt "$CKPT" --expnum "$EXP" --no-progress
for ts in 5 20; do
  "$PY" main_cls.py --ds euroms --data-root "$ROOT" --netnum 090000 --workers 1 --no-progress \
    --results results/euroms_ablation.csv --mode 41 --ts $ts --probe logreg --nseeds 5 \
    --expnum "$EXP" --cepoch "$EPOCHS" --ckpt "$CKPT"
done
echo "aug_p $PLAN: $EXP"
