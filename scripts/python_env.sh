#!/usr/bin/env bash
# Creates (once) and prints the path of the virtual environment the ecosystem checks
# run in: scripts/requirements-ci.txt plus the Python client in clients/python,
# installed editable. Reused across runs; reinstalled when the requirements change.
#   VENV=$(bash scripts/python_env.sh)   # then "$VENV/bin/python" ...
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${ADAPTSERVE_VENV:-$HOME/.cache/adaptserve/venv}"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2 || {
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    python3 -m venv "$venv" >&2
  }
fi
# The checkout's path too: the client is installed editable from it.
want="$(pwd)
$(cat scripts/requirements-ci.txt)"
if [ -f clients/python/pyproject.toml ]; then
  want="$want$(cat clients/python/pyproject.toml)"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r scripts/requirements-ci.txt >&2
  if [ -f clients/python/pyproject.toml ]; then
    "$venv/bin/python" -m pip install -q -e clients/python >&2
  fi
  printf '%s' "$want" > "$stamp"
fi
echo "$venv"
