#!/usr/bin/env bash
# Lints a live /metrics scrape with promtool and times the scrape.
#
#   scripts/check_metrics.sh [path/to/adaptserve]   (default: the debug build)
#
# Starts the server on a free port with a fresh state dir, sends a little traffic so
# every family has samples, scrapes /metrics, runs `promtool check metrics` on it
# (exit 1 on any lint problem), then prints the median and p90 of 200 scrapes.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/adaptserve}"
command -v promtool >/dev/null || { echo "promtool is required: apt-get install --no-install-recommends prometheus" >&2; exit 2; }
[ -x "$bin" ] || { echo "no server binary at $bin (cargo build --workspace)" >&2; exit 2; }

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NO_COLOR=1 "$bin" serve --port "$port" --state-dir "$work/state" 2>"$work/server.log" &
pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -sf "$url/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$url/health/ready" >/dev/null || { cat "$work/server.log" >&2; exit 1; }

row='[0.1, 2.0, 30000, 0.002, 1.5, -7, 0.3, 12, 500000, 0.01, 3, 0, 1, 2, 3, 4]'
for _ in $(seq 1 20); do
  curl -s "$url/v1/infer" -H 'content-type: application/json' -d "{\"inputs\": [$row]}" >/dev/null
  curl -s "$url/v1/feedback" -H 'content-type: application/json' -d "{\"features\": $row, \"label\": 1}" >/dev/null
done
curl -s "$url/nope" >/dev/null

curl -sf "$url/metrics" >"$work/metrics.txt"
echo "promtool check metrics ($(grep -c '^# TYPE' "$work/metrics.txt") families):"
promtool check metrics <"$work/metrics.txt"
echo "ok"

for _ in $(seq 1 200); do
  curl -s -o /dev/null -w '%{time_total}\n' "$url/metrics"
done | sort -n | awk '{ t[NR] = $1 } END { printf "scrape: median %.2f ms, p90 %.2f ms over %d scrapes\n", t[int(NR/2)] * 1000, t[int(NR*0.9)] * 1000, NR }'
