#!/usr/bin/env bash
# Issue-5 real-data rows: the multi-task pretext (920) and classic pretexts (96 inpainting,
# 98 colorization) pretrained on the EuroSAT 13-band training split, then the same few-shot
# protocol as SimCLR (logistic-regression probe, 5 and 20 labels, 5 seeds) into
# results/euroms.csv. EPOCHS defaults to 30 (CPU budget); MODES to "920 96 98".
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-../shared/data}
CKPT=${CKPT:-ckpt/euroms}
EPOCHS=${EPOCHS:-30}
NET=090000
mkdir -p "$CKPT"
for mode in ${MODES:-920 96 98}; do
  EXP=$(date +%y%j%H%M%S)_pretrain
  s=$SECONDS
  "$PY" main_cls_ss_train.py --mode "$mode" --ds euroms --data-root "$ROOT" --ts 1 --netnum $NET \
    --lr 1e-3 --lr_policy cosine --warmup 2 --mepoch "$EPOCHS" --bs 64 --optimizer adam --wd 1e-6 \
    --pin-memory --workers 1 --ckpt "$CKPT" --expnum "$EXP" --no-progress
  echo "[time] pretrain $mode: $(( SECONDS - s )) s ($EXP)" | tee -a "$CKPT/times.txt"
  for ts in 5 20; do
    s=$SECONDS
    "$PY" main_cls.py --ds euroms --data-root "$ROOT" --netnum $NET --workers 1 --no-progress \
      --results results/euroms.csv --mode 41 --ts $ts --probe logreg --nseeds 5 \
      --expnum "$EXP" --cepoch "$EPOCHS" --ckpt "$CKPT"
    echo "[time] logreg $mode ts $ts: $(( SECONDS - s )) s" | tee -a "$CKPT/times.txt"
  done
done
