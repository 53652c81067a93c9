#!/usr/bin/env bash
# The Python client (clients/python): builds its sdist and wheel, checks the wheel
# holds the package and installs, then runs its tests against a real server.
#
#   scripts/check_python_client.sh [path/to/adaptserve]   (default: the debug build)
#
# The tests start the given binary themselves (free ports, fresh state dirs), so it
# needs `update-worker` beside it: `cargo build --workspace` builds both.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/adaptserve}"
[ -x "$bin" ] || { echo "no server binary at $bin (cargo build --workspace)" >&2; exit 2; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

VENV=$(bash scripts/python_env.sh)
py="$VENV/bin/python"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "build: sdist and wheel (the wheel is built from the sdist)"
if ! "$py" -m build clients/python --outdir "$work/dist" >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  exit 1
fi
version=$("$py" -c 'import re,sys; print(re.search(r"__version__ = \"(.+)\"", open(sys.argv[1]).read())[1])' \
  clients/python/src/adaptserve/_version.py)
wheel="$work/dist/adaptserve-$version-py3-none-any.whl"
sdist="$work/dist/adaptserve-$version.tar.gz"
for f in "$wheel" "$sdist"; do
  [ -f "$f" ] || { echo "missing $(basename "$f"); built: $(ls "$work/dist")" >&2; exit 1; }
done
ls -l "$work/dist" | tail -n +2

echo "wheel: contents, metadata, install, import"
"$py" - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
want = {f"adaptserve/{m}" for m in ("__init__.py", "py.typed", "client.py", "aio.py", "models.py", "errors.py", "_protocol.py", "_version.py")}
missing = want - names
assert not missing, f"the wheel lacks {sorted(missing)}"
meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
text = zipfile.ZipFile(sys.argv[1]).read(meta).decode()
for dep in ("httpx", "numpy"):
    assert f"Requires-Dist: {dep}" in text, f"METADATA does not require {dep}"
print(f"  {len(names)} files, py.typed present, requires httpx and numpy")
PY
# pip resolves the wheel (its dependencies are in the venv already) without installing.
"$py" -m pip install --dry-run --no-index --find-links "$work/dist" "$wheel" >"$work/pip.log" 2>&1 \
  || { cat "$work/pip.log" >&2; exit 1; }
grep -E "^Would install" "$work/pip.log" | sed 's/^/  /'
# Import the wheel itself (not the editable checkout) from outside the repo.
mkdir -p "$work/unpacked"
"$py" -m zipfile -e "$wheel" "$work/unpacked"
(cd "$work" && PYTHONPATH="$work/unpacked" "$py" -c "
import adaptserve, sys
assert adaptserve.__file__.startswith(sys.argv[1]), adaptserve.__file__
assert adaptserve.__version__ == sys.argv[2]
print('  import adaptserve', adaptserve.__version__, 'from the wheel:', sorted(adaptserve.__all__)[:4], '...')
" "$work/unpacked" "$version")

echo "tests against $bin"
ADAPTSERVE_BIN="$bin" "$py" -m pytest clients/python/tests -q -p no:schemathesis -p no:cacheprovider
