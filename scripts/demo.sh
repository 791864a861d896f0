#!/usr/bin/env bash
# README command 1 (make demo): the whole workflow on the built-in demo data, on CPU.
#   1. generate the demo dataset (13-band GeoTIFFs) and print its summary
#   2. SimCLR pretraining (mode 910) on its training split
#   3. few-shot evaluation at 5 and 20 labels per class over 3 seeds:
#      SimCLR features vs random-init features (logistic-regression probe), and random
#      init trained end to end
#   4. the summary table (mean, std and 95 % CI over seeds and test images; differences to random init)
# Everything goes to ./data, ./ckpt/demo and ./runs/demo (none of it is tracked by git).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EPOCHS=${DEMO_EPOCHS:-30}
WARMUP=$(( EPOCHS > 2 ? 1 : 0 ))   # one warm-up epoch, when the run is long enough for it
NET=090000                      # ResNet-18 (standard stem): fast enough for 64x64 on 2 CPU cores
RUN=runs/demo
RES=$RUN/results.csv
EXP=$(date +%y%j%H%M%S)_pretrain
mkdir -p "$RUN"
rm -f "$RES"
COMMON=(--ds demo --netnum $NET --workers 1 --no-progress)

echo "== 1/4 demo dataset"
"$PY" -m datasets --ds demo

echo "== 2/4 SimCLR pretraining, $EPOCHS epochs ($EXP)"
"$PY" main_cls_ss_train.py --mode 910 "${COMMON[@]}" --ts 1 --lr 1e-3 --lr_policy cosine --warmup "$WARMUP" \
  --mepoch "$EPOCHS" --bs 64 --loss NTXentLoss --optimizer adam --pin-memory --aug 5 --aug_p S5 --tau 0.2 \
  --ckpt ckpt/demo --expnum "$EXP"

echo "== 3/4 few-shot evaluation (5 and 20 labels per class, seeds 0-2)"
for ts in 5 20; do
  "$PY" main_cls.py "${COMMON[@]}" --mode 41 --ts $ts --probe logreg --nseeds 3 \
    --ckpt ckpt/demo --expnum "$EXP" --cepoch "$EPOCHS" --results "$RES"
  "$PY" main_cls.py "${COMMON[@]}" --mode 11 --ts $ts --probe logreg --nseeds 3 --results "$RES"
  "$PY" main_cls.py "${COMMON[@]}" --mode 11 --ts $ts --hos 0 --mepoch 30 --lr 1e-3 --optimizer adam \
    --lr_policy cosine --bs 32 --nseeds 3 --pin-memory --ckpt ckpt/demo --results "$RES"
done

echo "== 4/4 summary"
# --include-dirty: the demo summarises its own fresh rows also when the checkout has local changes
"$PY" scripts/summarize.py "$RES" --out "$RUN/summary" --baseline pretext=random --include-dirty
