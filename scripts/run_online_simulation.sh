#!/usr/bin/env bash
# Runs `adaptserve simulate`, passing every argument through:
#
#   scripts/run_online_simulation.sh --duration 90s --chaos --output out/
#   scripts/run_online_simulation.sh --duration 8h --rate 200 --chaos --crash-probability 0.01
#
# Builds the server and the update-worker first (release unless PROFILE=debug).
# ADAPTSERVE_BIN=/path/to/adaptserve skips the build (the update-worker must sit
# beside it). Exit status: 0 if every check passed, 1 if one failed, 2 on a usage or
# startup error.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-release}"
bin="${ADAPTSERVE_BIN:-}"
if [ -z "$bin" ]; then
  if [ "$profile" = "release" ]; then
    cargo build --release --workspace --locked
  else
    cargo build --workspace --locked
  fi
  bin="${CARGO_TARGET_DIR:-target}/$profile/adaptserve"
fi
[ -x "$bin" ] || { echo "no adaptserve binary at $bin" >&2; exit 2; }
exec "$bin" simulate "$@"
