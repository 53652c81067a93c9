#!/usr/bin/env bash
# Drives the /ui status page in a real headless Chromium (scripts/check_ui.py) and
# holds what it shows to /v1/status and /health.
#
#   scripts/check_ui.sh [path/to/adaptserve] [screenshot.png]
#
# Defaults: the debug build, and the screenshot in a temp file (docs/ui.png is the
# README's copy: pass it to refresh that). Installs Debian's chromium if it is
# missing. Starts the server on a free port with a fresh state dir and a 1 s monitor
# interval (so /health has a p99 to show), sends labelled traffic, then checks the
# page idle, live, and with its fetches failing. Exit 1 names what differed.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/adaptserve}"
[ -x "$bin" ] || { echo "no server binary at $bin (cargo build -p adaptserve --bin adaptserve)" >&2; exit 2; }

if ! command -v chromium >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium --version 2>/dev/null

work=$(mktemp -d)
shot="${2:-$work/ui.png}"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

cat >"$work/config.toml" <<'TOML'
[monitor]
monitoring_interval_ms = 1000
TOML
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NO_COLOR=1 "$bin" serve --port "$port" --state-dir "$work/state" --config "$work/config.toml" 2>"$work/server.log" &
pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 200); do
  curl -sf "$url/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$url/health/ready" >/dev/null || { cat "$work/server.log" >&2; exit 1; }

if ! python3 scripts/check_ui.py --url "$url" --screenshot "$shot" --traffic; then
  echo "--- server log (tail)" >&2
  tail -n 30 "$work/server.log" >&2
  exit 1
fi
