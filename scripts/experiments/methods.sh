#!/usr/bin/env bash
# The SSL methods side by side on one dataset (issue 17 §3), one run at a time, resumable.
#
#   DS=euroms bash scripts/experiments/methods.sh           # EuroSAT 13 bands, 64 px
#   DS=aid SIZE=64 bash scripts/experiments/methods.sh      # the AID subset (150 px files) at 64 px
#
# For every mode in MODES (default 910-916), with the same budget for all:
#   1. lr: the recipe's lr (--recipe $RECIPE at batch $BS) times each factor of GRID (default 0.5 1 2),
#      each a $GRID_STEPS-step run (pretraining seed 0); the lr whose run ends with the best kNN
#      accuracy on the VALIDATION slice wins (ties: the recipe's own, then the smaller). The label
#      rule allows it: the slice is the only labelled data model selection may read. Every later
#      row says how its lr was chosen (--lr-selection val-knn:GRID@STEPS -> pretrain_lr_selection).
#      GRID=none: no grid, the recipe's own lr at this batch (--lr-selection recipe), for a short budget.
#   2. the completed schedule: $STEPS optimiser steps for each pretraining seed in SEEDS, read at its
#      final checkpoint (nothing selects an epoch);
#   3. the logistic-regression probe at 5 and 20 labels per class x $DRAWS draws, under each BatchNorm
#      policy in POLICIES (reestimated: statistics of plain training views, like for like with random
#      init; as-trained: the checkpoint's own).
# The loop is seed-major: every mode's seed 0, then every mode's seed 1, ... so a run stopped early
# leaves a table with the same number of pretraining seeds for every method (give or take the last).
# Random init is probed the same way, one initialisation per seed of SEEDS (--init-seed), so each
# pretraining seed k pairs with initialisation k in the summary (pretraining seed x draw x test image,
# crossed bootstrap).
#
# Runs never overlap (2 cores: co-scheduled runs measure nothing); each records its wall time and
# images/s in $OUT/runs.csv. Everything resumes from what exists: a finished run is skipped, an
# interrupted one continues from its last training state (--ckpt_freq), a probe whose rows exist is
# skipped. Kill it at any time and start it again with the same variables.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=${PY:-.venv/bin/python}
DS=${DS:-euroms}
ROOT=${ROOT:-../shared/data}
SIZE=${SIZE:-64}
NET=${NET:-090000}
BS=${BS:-64}
STEPS=${STEPS:-1000}
GRID_STEPS=${GRID_STEPS:-250}
GRID=${GRID:-"0.5 1 2"}
SEEDS=${SEEDS:-"0 1 2"}
MODES=${MODES-"910 911 912 913 914 915 916"}
RECIPE=${RECIPE:-small}
DRAWS=${DRAWS:-5}
POLICIES=${POLICIES:-"reestimated as-trained"}
EXTRA=${EXTRA:-}                         # more pretraining flags for every run, e.g. "--amp"
SUMMARY_FLAGS=${SUMMARY_FLAGS:-}         # e.g. --include-dirty for a try-out on uncommitted code
OUT=${OUT:-runs/methods_$DS}
RES=${RES:-results/methods_$DS.csv}
declare -A MODE_FLAGS=([916]="--local-crops 0")      # DINO: two global views, as many pixels as the others

mkdir -p "$OUT" "$(dirname "$RES")"
trap 'exit 2' TERM
COMMON=(--ds "$DS" --data-root "$ROOT" --input_size "$SIZE" --netnum "$NET" --no-progress)
log() { echo "[$(date '+%F %T')] $*" | tee -a "$OUT/times.txt"; }
[ -f "$OUT/runs.csv" ] || echo "mode,seed,lr,steps,expnum,seconds,img_per_s,role" > "$OUT/runs.csv"

plan_json() {   # mode extra-flags... -> the resolved plan (lr, iterations per epoch) as JSON; stops the script on error
  local mode=$1 out; shift
  # shellcheck disable=SC2086
  if ! out=$("$PY" main_cls_ss_train.py --mode "$mode" "${COMMON[@]}" --bs "$BS" --recipe "$RECIPE" --ckpt "$OUT/ck" \
             ${MODE_FLAGS[$mode]:-} $EXTRA "$@" --dry-run 2>"$OUT/dry_run.err"); then
    log "mode $mode: the plan does not resolve: $(grep -v '^[0-9:]* [IW] ' "$OUT/dry_run.err" | tail -1)" >&2
    kill -TERM $$                       # a command substitution cannot exit the script itself (trap: exit 2)
    exit 2
  fi
  echo "$out" | tail -1
}
field() { "$PY" -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }

pretrain() {   # mode seed lr steps tag [flags...] -> 0 when $OUT/<tag>.done, 1 when the run diverged
  local mode=$1 seed=$2 lr=$3 steps=$4 tag=$5; shift 5
  local state="$OUT/$tag.expnum" js iters epochs exp s=$SECONDS resume=() freq rc=0
  [ -f "$OUT/$tag.done" ] && return 0
  [ -f "$OUT/$tag.failed" ] && return 1
  js=$(plan_json "$mode" --lr "$lr" --seed "$seed")
  iters=$(field "$js" iters_per_epoch)
  epochs=$(( (steps + iters - 1) / iters ))
  freq=$(( epochs / 4 > 0 ? epochs / 4 : 1 ))          # a resumable state every quarter of the run
  if [ -s "$state" ]; then
    exp=$(cat "$state")
    if [ -f "$OUT/ck/${NET}_${exp}_${epochs}.pth" ]; then      # finished, killed before it was marked
      finish "$mode" "$seed" "$lr" $(( epochs * iters )) "$exp" "$tag" "$s"; return 0
    fi
    [ -f "$OUT/ck/${NET}_${exp}_state.pth" ] && resume=(--resume "$OUT/ck/${NET}_${exp}_state.pth")
  fi
  if [ ${#resume[@]} -eq 0 ]; then
    exp=$(date +%y%j%H%M%S)_m${mode}_${tag//[^A-Za-z0-9]/}_pretrain
    echo "$exp" > "$state"
    resume=(--expnum "$exp")
  fi
  log "$tag: mode $mode seed $seed lr $lr, $epochs epochs x $iters steps ($exp)"
  # shellcheck disable=SC2086
  "$PY" main_cls_ss_train.py --mode "$mode" "${COMMON[@]}" --bs "$BS" --recipe "$RECIPE" --lr "$lr" \
    --seed "$seed" --mepoch "$epochs" --ckpt "$OUT/ck" --ckpt_freq "$freq" --pin-memory --workers 0 \
    ${MODE_FLAGS[$mode]:-} $EXTRA "$@" "${resume[@]}" >> "$OUT/$tag.log" 2>&1 || rc=$?
  echo $(( SECONDS - s )) >> "$OUT/$tag.seconds"
  if [ "$rc" -eq 1 ] && grep -q "the loss became" "$OUT/$tag.log"; then     # diverged: deterministic, do not retry
    touch "$OUT/$tag.failed"
    log "$tag: diverged ($(grep "the loss became" "$OUT/$tag.log" | tail -1 | cut -c1-160))"
    return 1
  fi
  [ "$rc" -eq 0 ] || { log "$tag: exit $rc (see $OUT/$tag.log)"; exit "$rc"; }
  finish "$mode" "$seed" "$lr" $(( epochs * iters )) "$exp" "$tag" "$s"
}

finish() {     # mode seed lr steps expnum tag start -> runs.csv line (img/s of the epochs, wall time), <tag>.done
  local ips wall
  ips=$("$PY" -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(round(sum(float(x['img_per_s']) for x in r)/len(r),1))" \
        "$OUT/ck/${NET}_$5_log.csv")
  wall=$(awk '{t += $1} END {print t + 0}' "$OUT/$6.seconds" 2>/dev/null || echo 0)
  echo "$1,$2,$3,$4,$5,$wall,$ips,${6%%_*}" >> "$OUT/runs.csv"
  touch "$OUT/$6.done"
  # the run is complete: its training state and intermediate backbones go (the final and best stay)
  "$PY" - "$OUT/ck" "${NET}_$5" <<'PYEOF'
import re, sys
from pathlib import Path
folder, stem = Path(sys.argv[1]), sys.argv[2]
numbered = sorted((int(m.group(1)), p) for p in folder.glob(f"{stem}_*.pth")
                  if (m := re.fullmatch(re.escape(stem) + r"_(\d+)\.pth", p.name)))
for _, p in numbered[:-1]:
    p.unlink()
(folder / f"{stem}_state.pth").unlink(missing_ok=True)
PYEOF
  log "$6: done, $wall s over all its invocations, $ips img/s"
}

last_knn() {   # expnum -> the validation kNN accuracy after the run's last epoch
  "$PY" -c "import csv,sys; r=list(csv.DictReader(open(sys.argv[1]))); print(r[-1]['knn_top1'])" \
    "$OUT/ck/${NET}_$1_log.csv"
}

choose_lr() {   # mode -> the grid lr with the best final validation kNN; writes $OUT/<mode>.selection, then .lr
  local mode=$1 base grid=() best="" best_knn=-1 f lr k
  if [ -s "$OUT/$mode.lr" ] && [ -s "$OUT/$mode.selection" ]; then return 0; fi
  base=$(field "$(plan_json "$mode")" lr)
  if [ "$GRID" = none ]; then
    echo recipe > "$OUT/$mode.selection"; echo "$base" > "$OUT/$mode.lr"
    log "mode $mode: the recipe's lr $base (GRID=none)"; return 0
  fi
  for f in $GRID; do grid+=("$("$PY" -c "print('%.10g' % (float($base) * float($f)))")"); done
  for lr in "${grid[@]}"; do
    if pretrain "$mode" 0 "$lr" "$GRID_STEPS" "grid_${mode}_lr${lr}" --knn-freq "$(( 1 << 20 ))"; then
      k=$(last_knn "$(cat "$OUT/grid_${mode}_lr${lr}.expnum")")
    else
      k=-1                                                       # diverged: never chosen
    fi
    log "grid $mode: lr $lr -> validation kNN $k"
    # the best kNN wins; a tie goes to the recipe's own lr, then to the smaller
    if "$PY" -c "import math,sys; a,b,l,base=map(float,sys.argv[1:]); sys.exit(0 if a>b or (a==b and math.isclose(l,base,rel_tol=1e-9)) else 1)" \
         "$k" "$best_knn" "$lr" "$base"; then best=$lr; best_knn=$k; fi
  done
  if [ -z "$best" ] || [ "$best_knn" = "-1" ]; then log "grid $mode: every lr diverged; skipping the mode"; return 1; fi
  (IFS=,; echo "val-knn:${grid[*]}@$GRID_STEPS") > "$OUT/$mode.selection"
  echo "$best" > "$OUT/$mode.lr"
  log "grid $mode: chose lr $best ($(cat "$OUT/$mode.selection"))"
}

probed() {   # random|ckpt key bn_stats -> exit 0 when RES already holds its rows (random: key = init seed)
  [ -f "$RES" ] && "$PY" - "$RES" "$1" "$2" "$3" "$DRAWS" "$NET" <<'PYEOF'
import csv, sys
path, kind, key, policy, draws, net = sys.argv[1:7]
def mine(r):
    if kind == "random":
        return r.get("pretrain_expnum") == "random" and r.get("pretrain_seed") == key and r.get("netnum") == net
    return r.get("pretrain_expnum") == key
rows = [r for r in csv.DictReader(open(path, newline="", encoding="utf-8-sig"))
        if mine(r) and r.get("bn_stats") == policy and r.get("probe") == "logreg"]
sys.exit(0 if len(rows) >= 2 * int(draws) else 1)
PYEOF
}

probe() {      # [mode seed] -> logistic regression at 5 and 20 labels x DRAWS, every BN policy
  local src s policy key
  for policy in $POLICIES; do
    if [ $# -eq 0 ]; then
      for s in $SEEDS; do
        probed random "$s" "$policy" && continue
        s0=$SECONDS
        "$PY" main_cls.py --mode 11 "${COMMON[@]}" --init-seed "$s" --probe logreg --ts 5,20 --nseeds "$DRAWS" \
          --bn-stats "$policy" --results "$RES" --workers 0 >> "$OUT/probe_random.log" 2>&1
        log "probe random init $s ($policy): $(( SECONDS - s0 )) s"
      done
    else
      local exp epochs
      exp=$(cat "$OUT/final_$1_s$2.expnum")
      probed ckpt "$exp" "$policy" && continue
      epochs=$("$PY" -c "import glob,re,sys; print(max(int(m.group(1)) for f in glob.glob(sys.argv[1]) if (m:=re.search(r'_(\d+)\.pth$', f))))" \
               "$OUT/ck/${NET}_${exp}_*.pth")
      s0=$SECONDS
      "$PY" main_cls.py --mode 41 "${COMMON[@]}" --expnum "$exp" --cepoch "$epochs" --ckpt "$OUT/ck" --probe logreg \
        --ts 5,20 --nseeds "$DRAWS" --bn-stats "$policy" --results "$RES" --workers 0 >> "$OUT/probe_$1.log" 2>&1
      log "probe $1 seed $2 ($policy): $(( SECONDS - s0 )) s"
    fi
  done
}

exec 9> "$OUT/lock"                                # one script per OUT: runs never overlap
flock -n 9 || { echo "another methods.sh is running on $OUT (lock $OUT/lock)" >&2; exit 2; }
for mode in $MODES; do plan_json "$mode" > /dev/null; done   # every plan resolves before anything runs
probe                                              # random init: nothing to wait for
declare -A STOPPED=()
for seed in $SEEDS; do                             # seed-major: an early stop leaves every method at the same seeds
  for mode in $MODES; do
    [ -n "${STOPPED[$mode]:-}" ] && continue
    choose_lr "$mode" || { STOPPED[$mode]=1; continue; }
    lr=$(cat "$OUT/$mode.lr")
    if ! pretrain "$mode" "$seed" "$lr" "$STEPS" "final_${mode}_s${seed}" --lr-selection "$(cat "$OUT/$mode.selection")"; then
      log "mode $mode: seed $seed diverged at the chosen lr $lr; the mode stops here (its rows so far stay)"
      STOPPED[$mode]=1; continue
    fi
    probe "$mode" "$seed"
  done
done
# shellcheck disable=SC2086
"$PY" scripts/summarize.py "$RES" --baseline pretext=random --pivot --out "${RES%.csv}_summary" $SUMMARY_FLAGS
OUT="$OUT" NET="$NET" MODES="$MODES" SEEDS="$SEEDS" "$PY" scripts/experiments/methods_diagnostics.py \
  > "${RES%.csv}_pretrain.md"
log "summary: ${RES%.csv}_summary.md, diagnostics: ${RES%.csv}_pretrain.md"
