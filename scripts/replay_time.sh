#!/usr/bin/env bash
# How long a restarted server takes to rebuild its k-NN memory from the WAL alone
# (no snapshot), and to start listening: the worst case the periodic snapshot bounds.
#
#   scripts/replay_time.sh [--seconds 20] [--connections 16]
#
# Builds the release binary, starts it with no worker (so no swap truncates the WAL)
# and no periodic snapshot, fills the WAL with labelled feedbacks for --seconds
# (wrk), SIGKILLs it, starts it again on the same state dir, and prints the WAL's
# records and bytes, the replay's milliseconds (`recovery.memory.ms` in
# /v1/status) and the time from exec to listening.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20 connections=16
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 2; }

work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill -9 "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --workspace --quiet
bin="${CARGO_TARGET_DIR:-target}/release/adaptserve"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
cat > "$work/config.toml" <<'TOML'
[worker]
enabled = false
[memory]
snapshot_interval_secs = 86400
TOML

start() {
  NO_COLOR=1 "$bin" serve --port "$port" --state-dir "$work/state" --config "$work/config.toml" \
    2>>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 3000); do curl -sf "$url/health/ready" >/dev/null && return; sleep 0.01; done
  echo "the server did not start; see its log:" >&2; tail "$work/server.log" >&2; exit 1
}

start
# Labelled examples of the default model's 16 features, varied per request.
cat > "$work/feedback.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local x = {}
  for i = 1, 16 do x[i] = string.format("%.4f", math.sin(n * i) * 10) end
  return wrk.format(nil, nil, nil,
    '{"features": [' .. table.concat(x, ",") .. '], "label": ' .. (n % 4) .. '}')
end
LUA
wrk -t 2 -c "$connections" -d "${seconds}s" -s "$work/feedback.lua" "$url/v1/feedback" >"$work/wrk.txt"
records=$(curl -s "$url/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["updates"]["sent"])')
kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null || true
bytes=$(du -sb "$work/state/wal" | cut -f1)
t0=$(date +%s%N)
start
t1=$(date +%s%N)
curl -s "$url/v1/status" | python3 -c '
import json, sys
s = json.load(sys.stdin)
m = s["recovery"]["memory"]
records, size, t0, t1 = (int(a) for a in sys.argv[1:5])
print("WAL records %d, %.1f MiB; replayed %d in %d ms; experiences %d; exec to listening %.0f ms"
      % (records, size / 2**20, m["replayed"], m["ms"], s["experiences"], (t1 - t0) / 1e6))
' "$records" "$bytes" "$t0" "$t1"
