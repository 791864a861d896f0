#!/usr/bin/env bash
# Diagnostic: how the SimCLR representation changes with pretraining length. The
# logistic-regression probe (5 and 20 labels, 5 seeds) on every checkpoint the run saved
# (--ckpt_freq 25). Rows go to results/euroms_simclr_epochs.csv. Every epoch is reported:
# nothing is selected on the test split.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-../shared/data}
CKPT=${CKPT:-ckpt/euroms}
EXP=${EXP:?set EXP to the SimCLR run, e.g. 26326120000_pretrain}
for ep in ${EPOCHS_LIST:-25 50 75 100 125 150}; do
  for ts in 5 20; do
    "$PY" main_cls.py --ds euroms --data-root "$ROOT" --netnum 090000 --workers 1 --no-progress \
      --results results/euroms_simclr_epochs.csv --mode 41 --ts $ts --probe logreg --nseeds 5 \
      --expnum "$EXP" --cepoch $ep --ckpt "$CKPT"
  done
done
