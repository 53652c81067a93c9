#!/usr/bin/env bash
# Drives the Open Inference Protocol routes (/v2) with the real third-party clients:
# tests/python/test_oip.py runs tritonclient.http and the kserve SDK against a live
# server, and labels a returned prediction through POST /v1/feedback.
#
#   scripts/check_oip.sh [path/to/adaptserve]   (default: the debug build)
#
# Starts the server on a free port with a fresh state dir, waits for /health/ready,
# runs pytest with ADAPTSERVE_URL set in the virtualenv of scripts/python_env.sh,
# stops the server, and exits non-zero if any test failed.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/adaptserve}"
[ -x "$bin" ] || { echo "no server binary at $bin (cargo build -p adaptserve --bin adaptserve)" >&2; exit 2; }
venv=$(bash scripts/python_env.sh)

work=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NO_COLOR=1 "$bin" serve --port "$port" --state-dir "$work/state" 2>"$work/server.log" &
pid=$!
url="http://127.0.0.1:$port"
ready=""
for _ in $(seq 1 300); do
  if curl -sf "$url/health/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the server at $url never became ready; its log:" >&2
  cat "$work/server.log" >&2
  exit 1
fi

status=0
ADAPTSERVE_URL="$url" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python/test_oip.py || status=$?
if [ "$status" -ne 0 ]; then
  echo "--- server log (last 40 lines) ---" >&2
  tail -n 40 "$work/server.log" >&2
fi
exit "$status"
