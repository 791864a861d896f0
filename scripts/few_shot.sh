#!/usr/bin/env bash
# Few-shot sweep: main_cls.py over train scales and seeds, for one pretrained checkpoint
# or for random/ImageNet initialisation. Every run appends its rows to the results CSV.
#
#   scripts/few_shot.sh --ds euroms --netnum 000000 --expnum E --cepoch 100 --protocol logreg
#   scripts/few_shot.sh --ds euroms --netnum 000000 --protocol hos0 --mepoch 100   # random init, end to end
#
# --protocol: hos0 | hos1 | hos9 (train; with --expnum these fine-tune, mode 41) or
#             logreg | knn (frozen features, extracted once; all train scales in one call).
# Other flags after -- go to main_cls.py unchanged.
set -euo pipefail
PY=${PY:-python}
DS=""; NET=""; EXP=""; CEP=""; TS="5 20"; SEEDS=5; PROTO="hos9"; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ds) DS=$2; shift 2;;
    --netnum) NET=$2; shift 2;;
    --expnum) EXP=$2; shift 2;;
    --cepoch) CEP=$2; shift 2;;
    --ts) TS=$2; shift 2;;
    --seeds) SEEDS=$2; shift 2;;
    --protocol) PROTO=$2; shift 2;;
    --) shift; EXTRA=("$@"); break;;
    *) echo "few_shot.sh: unknown option $1 (see the header of this script)" >&2; exit 2;;
  esac
done
if [ -z "$DS" ] || [ -z "$NET" ]; then echo "few_shot.sh: --ds and --netnum are required" >&2; exit 2; fi
if [ -n "$EXP" ]; then MODE=41; INIT=(--expnum "$EXP" --cepoch "${CEP:?--cepoch is required with --expnum}"); else MODE=11; INIT=(); fi
case "$PROTO" in
  hos0|hos1|hos9) PFLAGS=(--hos "${PROTO#hos}");;
  logreg|knn) PFLAGS=(--probe "$PROTO");;
  *) echo "few_shot.sh: --protocol $PROTO is not one of hos0 hos1 hos9 logreg knn" >&2; exit 2;;
esac
if [ "$PROTO" = logreg ] || [ "$PROTO" = knn ]; then
  # one process for the whole sweep: features once, one row per (train scale, seed)
  "$PY" main_cls.py --ds "$DS" --ts "$(echo $TS | tr ' ' ',')" --mode "$MODE" --netnum "$NET" "${INIT[@]}" \
    "${PFLAGS[@]}" --seed 0 --nseeds "$SEEDS" "${EXTRA[@]}"
else
  for ts in $TS; do
    "$PY" main_cls.py --ds "$DS" --ts "$ts" --mode "$MODE" --netnum "$NET" "${INIT[@]}" "${PFLAGS[@]}" \
      --seed 0 --nseeds "$SEEDS" "${EXTRA[@]}"
  done
fi
