#!/usr/bin/env bash
# Issue 12 §4: the SSL methods side by side on real data, same budget for every method.
#
# Data: the EuroSAT 13-band subset in ../shared/data/eurosat_ms (469 GeoTIFFs, 64x64); each
# method pretrains on the training split (no labels), then the logistic-regression probe on
# frozen features at 5 and 20 labels per class x 5 seeds, plus random-init features.
# Rows go to $RES, the table to ${RES%.csv}_summary.{md,csv,png}.
#
# The same budget for every method: backbone ResNet-18 (090000) at 64 px, $EPOCHS epochs,
# batch $BS, cosine schedule with $WARMUP warm-up epochs, two views per image (DINO without
# local crops, so it sees as many pixels as the others), each method's own view recipe
# (SimCLR/MoCo/SimSiam: SimCLR's S5 pair; BYOL/Barlow/VICReg: BYOL's asymmetric pair; DINO:
# its two global crops). Optimiser, weight decay and learning rate follow each paper, the lr
# by the paper's linear scaling rule lr = base x BS / 256 (no sweep: too expensive here):
#   910 SimCLR    LARS   base 0.3     wd 1e-6    (Chen et al. 2020, §B.1)
#   911 MoCo v2   SGD    base 0.03    wd 1e-4    (Chen et al. 2020b; lr 0.03 at batch 256)
#   912 BYOL      LARS   base 0.2     wd 1.5e-6  (Grill et al. 2020, §3.3 / App. C)
#   913 SimSiam   SGD    base 0.05    wd 1e-4    (Chen & He 2021, §4)
#   914 Barlow    LARS   base 0.2     wd 1.5e-6  (Zbontar et al. 2021, §4; bias lr 0.0048 not reproduced)
#   915 VICReg    LARS   base 0.2     wd 1e-6    (Bardes et al. 2022, App. C)
#   916 DINO      AdamW  base 0.0005  wd 0.04    (Caron et al. 2021, §4.1 / App. ; wd kept constant)
# Barlow Twins and VICReg use 2048-d projectors instead of 8192 (CPU budget; the issue allows it).
#
# A small-scale comparison: 375 unlabelled images and 50 optimiser steps per method (10 epochs
# of 5 batches: what a 2-core CPU shared with other jobs allows) are far from the papers'
# regimes; read it as "what these methods do at this scale". --ckpt_freq 5 keeps epoch 5 too.
# MODES picks the pretraining modes (default all seven); existing checkpoints are reused
# (state in $CKPT/<mode>.expnum), so the script can be re-run to add methods or probes.
# PROBE_EPOCH (default EPOCHS) names the checkpoint epoch the probes read (5 or EPOCHS).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
ROOT=${ROOT:-../shared/data}
CKPT=${CKPT:-ckpt/euroms_methods}
RES=${RES:-results/euroms_methods.csv}
EPOCHS=${EPOCHS:-10}
BS=${BS:-64}
WARMUP=${WARMUP:-2}
PAR=${PAR:-8}                       # runs side by side (each pretraining is followed by its probe)
MODES=${MODES-"910 911 912 913 914 915 916"}     # MODES="" probes random init only
PROBE_EPOCH=${PROBE_EPOCH:-$EPOCHS}
PROBE_RANDOM=${PROBE_RANDOM:-1}     # 0: no random-init row (when adding methods to a table that has it)
NET=090000

declare -A OPTIM=([910]=lars [911]=sgd [912]=lars [913]=sgd [914]=lars [915]=lars [916]=adamw)
declare -A BASE=([910]=0.3 [911]=0.03 [912]=0.2 [913]=0.05 [914]=0.2 [915]=0.2 [916]=0.0005)
declare -A WD=([910]=1e-6 [911]=1e-4 [912]=1.5e-6 [913]=1e-4 [914]=1.5e-6 [915]=1e-6 [916]=0.04)
declare -A EXTRA=([910]="--aug 5 --aug_p S5" [911]="" [912]="" [913]=""
                  [914]="--hidden-dim 2048 --feature_dim 2048" [915]="--hidden-dim 2048 --feature_dim 2048"
                  [916]="--local-crops 0")
mkdir -p "$CKPT" "$(dirname "$RES")"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$CKPT/times.txt"; }

pretrain() {   # mode -> checkpoint expnum in $CKPT/<mode>.expnum (skipped when it exists)
  local mode=$1 lr exp s=$SECONDS
  if [ -s "$CKPT/$mode.expnum" ] && [ -f "$CKPT/${NET}_$(cat "$CKPT/$mode.expnum")_$PROBE_EPOCH.pth" ]; then
    log "mode $mode: reusing $(cat "$CKPT/$mode.expnum")"; return 0
  fi
  lr=$("$PY" -c "print(${BASE[$mode]} * $BS / 256)")
  exp=$(date +%y%j%H%M%S)_m${mode}_pretrain
  log "mode $mode: pretraining $exp (${OPTIM[$mode]}, lr $lr, wd ${WD[$mode]})"
  # shellcheck disable=SC2086
  "$PY" main_cls_ss_train.py --mode "$mode" --ds euroms --data-root "$ROOT" --ts 1 --netnum $NET \
    --mepoch "$EPOCHS" --bs "$BS" --optimizer "${OPTIM[$mode]}" --lr "$lr" --wd "${WD[$mode]}" \
    --lr_policy cosine --warmup "$WARMUP" --pin-memory --workers 0 --knn-freq 5 --ckpt_freq 5 --ckpt "$CKPT" \
    --expnum "$exp" --no-progress ${EXTRA[$mode]} > "$CKPT/$exp.log" 2>&1
  echo "$exp" > "$CKPT/$mode.expnum"
  log "mode $mode: pretrained in $(( SECONDS - s )) s"
}

probe() {      # logistic regression at 5 and 20 labels x 5 seeds; no arguments = random init
  local s=$SECONDS src=(--mode 11)
  [ $# -gt 0 ] && src=(--mode 41 --expnum "$(cat "$CKPT/$1.expnum")" --cepoch "$PROBE_EPOCH" --ckpt "$CKPT")
  "$PY" main_cls.py --ds euroms --data-root "$ROOT" --netnum $NET --workers 0 --no-progress \
    --results "$RES" --ts 5,20 --probe logreg --nseeds 5 "${src[@]}" > /dev/null
  log "probe ${1:-random}: $(( SECONDS - s )) s"
}

running=0
if [ "$PROBE_RANDOM" = 1 ]; then probe & running=1; fi     # random init: no pretraining to wait for
for mode in $MODES; do
  { pretrain "$mode" && probe "$mode"; } &
  running=$(( running + 1 ))
  if [ "$running" -ge "$PAR" ]; then wait -n; running=$(( running - 1 )); fi
done
wait
"$PY" scripts/summarize.py "$RES" --out "${RES%.csv}_summary"

# Pretraining diagnostics from each run's log: loss and embedding std (std over the batch of
# the L2-normalised projector output, averaged over dimensions: about 1/sqrt(d) when spread,
# ~0 when collapsed) at the first and last epoch, and the monitor's kNN accuracy.
CKPT="$CKPT" NET=$NET MODES="$MODES" OUT="${RES%.csv}_pretrain.md" "$PY" - <<'PYEOF'
import csv, os
from pathlib import Path
from config.codes import PRETEXTS
ck, net = Path(os.environ["CKPT"]), os.environ["NET"]
lines = ["| mode | method | epochs logged | loss first -> last | emb_std first -> last (min) | kNN last (%) | run |",
         "|---|---|---|---|---|---|---|"]
for mode in os.environ["MODES"].split():
    exp = (ck / f"{mode}.expnum").read_text().strip()
    rows = list(csv.DictReader(open(ck / f"{net}_{exp}_log.csv")))
    std = [float(r["emb_std"]) for r in rows]
    knn = [r.get("knn_top1") for r in rows if r.get("knn_top1")]
    last_knn = f"{float(knn[-1]):.1f}" if knn else "-"
    lines.append(f"| {mode} | {PRETEXTS[int(mode)][0]} | {rows[-1]['epoch']} | {float(rows[0]['loss']):.3f} -> {float(rows[-1]['loss']):.3f} | "
                 f"{std[0]:.4f} -> {std[-1]:.4f} ({min(std):.4f}) | {last_knn} | {exp} |")
Path(os.environ["OUT"]).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
