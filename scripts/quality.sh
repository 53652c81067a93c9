#!/usr/bin/env bash
# The QUALITY.md table, end to end: River's streams for one seed, River's learners on
# them, `adaptserve eval` on them (all labels; 1 label in 10 with pseudo-labels on
# and off), then the Markdown table.
#
#   scripts/quality.sh [--seed 42] [--samples 20000] [--config FILE] [--out DIR]
#
# Report on seed 42; tune on other seeds (e.g. 7), so no figure is fitted to the
# stream it is reported on. Takes ~12 minutes on 2 cores, most of it River's ARF.
# Needs: pip install river (0.26). Without ADAPTSERVE_BIN it builds the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."

seed=42 samples=20000 config="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
out=${out:-out/quality/seed$seed}
python3 -c 'import river' 2>/dev/null || { echo "River is required: pip install river" >&2; exit 2; }
if [ -z "${ADAPTSERVE_BIN:-}" ]; then
  cargo build --release --workspace --quiet
  ADAPTSERVE_BIN="${CARGO_TARGET_DIR:-target}/release/adaptserve"
fi

python3 scripts/quality.py streams --seed "$seed" --samples "$samples" --out "$out"
mkdir -p "$out/results"
# River's two label regimes side by side (one core each), our runs after them.
python3 scripts/quality.py river --streams "$out" --out "$out/results/river_all.json" \
  2>"$out/results/river_all.log" &
river_all=$!
python3 scripts/quality.py river --streams "$out" --label-every 10 \
  --out "$out/results/river_10.json" 2>"$out/results/river_10.log" &
river_10=$!
wait "$river_all" "$river_10"

extra=()
[ -n "$config" ] && extra=(--config "$config")
ours=()
for stream in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))))' "$out/streams.json"); do
  for regime in "all 1 on" "10 10 on" "10-nopseudo 10 off"; do
    read -r tag every pseudo <<<"$regime"
    dir="$out/results/ours/$tag/$stream"
    mkdir -p "$dir"
    "$ADAPTSERVE_BIN" eval --csv "$out/$stream.csv" --label-every "$every" \
      --pseudo-labels "$pseudo" --output "$dir" "${extra[@]}" 2>"$dir.log" || {
        echo "eval failed on $stream ($tag): see $dir.log" >&2; exit 1; }
    ours+=("$dir/results.json")
  done
done
python3 scripts/quality.py table --river "$out/results/river_all.json" "$out/results/river_10.json" \
  --ours "${ours[@]}" | tee "$out/results/table.md"
