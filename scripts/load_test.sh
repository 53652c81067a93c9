#!/usr/bin/env bash
# Load test of /v1/infer against the bare-HTTP baseline (/health/live) of the same
# server, at 1 and 64 connections, with wrk. Prints req/s, p50, p99 and infer/bare.
#
#   scripts/load_test.sh [--url http://127.0.0.1:8080] [--duration 10] [--warm 2000]
#                        [--config FILE]
#
# The infer requests are confident, so each becomes a pseudo-label and the memory
# grows towards its capacity during the run; pass a config with
# `[engine] pseudo_labels = false` to hold the memory at the warm size instead.
#
# Without --url it builds the release binary, starts it on a free port with a fresh
# state dir, warms the memory with --warm labelled feedbacks, and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

url="" duration=10 warm=2000 config=""
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --warm) warm="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 2; }

work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ -z "$url" ]; then
  cargo build --release --workspace --quiet
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  extra=()
  [ -n "$config" ] && extra=(--config "$config")
  NO_COLOR=1 "${CARGO_TARGET_DIR:-target}/release/adaptserve" serve --port "$port" \
    --state-dir "$work/state" "${extra[@]}" 2>"$work/server.log" &
  server_pid=$!
  url="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -sf "$url/health/ready" >/dev/null && break; sleep 0.1; done
fi

# One fixed row of the default model's 16 features (the synthetic task's scale).
row='[0.7,-1200.5,0.0031,45.2,880000.0,-0.02,3.3,0.9,12.0,-0.4,7000.0,0.11,-2.5,0.0009,61.0,-330000.0]'

if [ "$warm" -gt 0 ]; then
  python3 - "$url" "$warm" <<'PY'
import json, random, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(7)
base = [0.7,-1200.5,0.0031,45.2,880000.0,-0.02,3.3,0.9,12.0,-0.4,7000.0,0.11,-2.5,0.0009,61.0,-330000.0]
for i in range(n):
    x = [v * (1 + rng.gauss(0, 0.3)) for v in base]
    body = json.dumps({"features": x, "label": i % 4}).encode()
    req = urllib.request.Request(url + "/v1/feedback", body, {"content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
fi

cat > "$work/infer.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"inputs": [$row]}'
LUA
cat > "$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.0f %.0f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
LUA
cat "$work/report.lua" >> "$work/infer.lua"

run() { # connections threads script path
  local out
  if [ -n "$3" ]; then
    out=$(wrk -c "$1" -t "$2" -d "${duration}s" --latency -s "$3" "$url$4")
  else
    out=$(wrk -c "$1" -t "$2" -d "${duration}s" --latency -s "$work/report.lua" "$url$4")
  fi
  echo "$out" | grep '^RESULT' | cut -d' ' -f2-
}

printf '%-22s %6s %10s %9s %9s %7s\n' target conns req/s p50_us p99_us errors
declare -A rps
for conns in 1 64; do
  threads=$([ "$conns" -eq 1 ] && echo 1 || echo 2)
  read -r r50 p50 p99 errs _ <<<"$(run "$conns" "$threads" "" /health/live)"
  printf '%-22s %6s %10s %9s %9s %7s\n' "GET /health/live" "$conns" "$r50" "$p50" "$p99" "$errs"
  bare=$r50
  read -r r50 p50 p99 errs _ <<<"$(run "$conns" "$threads" "$work/infer.lua" /v1/infer)"
  printf '%-22s %6s %10s %9s %9s %7s\n' "POST /v1/infer" "$conns" "$r50" "$p50" "$p99" "$errs"
  rps[$conns]=$(python3 -c "print(f'{$r50/$bare:.2f}')")
done
echo "ratio infer/bare: 1 conn ${rps[1]}, 64 conns ${rps[64]}"
if [ -n "$server_pid" ]; then
  curl -s "$url/v1/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("memory:", s["experiences"], s["memory"]["backend"], "batches:", s["batcher"]["batches"], "rows:", s["batcher"]["rows"])'
  echo "server RSS: $(ps -o rss= -p "$server_pid" | awk '{printf "%.1f MB", $1/1024}')"
fi
