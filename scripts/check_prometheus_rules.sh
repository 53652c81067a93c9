#!/usr/bin/env bash
# Checks the Prometheus alerting rules in deploy/prometheus/ against promtool and
# against what a real server exports.
#
#   scripts/check_prometheus_rules.sh [path/to/adaptserve]   (default: the debug build)
#
# 1. `promtool check rules` on adaptserve.rules.yml;
# 2. `promtool test rules` on adaptserve.rules.test.yml (each alert fires and stays
#    quiet on the series it should);
# 3. `promtool check config` on prometheus.yml (syntax and the rule file it loads;
#    the targets need not exist);
# 4. so the rules cannot drift from the code: starts the server binary twice on free
#    ports with fresh state dirs, standalone and as a cluster replica whose Redis does
#    not answer (only a replica exports the adaptserve_cluster_* gauges), sends a
#    little traffic, scrapes both /metrics, and checks every adaptserve_* series a
#    rule selects: the name exists (name_bucket/_count/_sum of a histogram too), a name
#    under rate() or increase() is a counter or a histogram's series, and every label
#    value a selector names (state="suspended", route="/v1/infer", each alternative
#    of state=~"starting|restarting") occurs in the scrape;
# 5. runs a real Prometheus (the `prometheus` binary of the same Debian package) with
#    the rules over those two servers, scraping every second, and checks that every
#    rule evaluates without error, that AdaptserveClusterRedisUnreachable goes
#    pending or firing for the replica, and that AdaptserveTargetDown stays quiet.
#
# Exit 0 when all pass; 1 naming every check that failed; 2 when a tool or the
# binary is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/adaptserve}"
dir=deploy/prometheus
rules="$dir/adaptserve.rules.yml"
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null || { echo "$tool is required: apt-get install --no-install-recommends prometheus" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 2; }
[ -x "$bin" ] || { echo "no server binary at $bin (cargo build -p adaptserve --bin adaptserve)" >&2; exit 2; }

failed=()
fail() { failed+=("$1"); echo "FAILED: $1" >&2; }
step() { printf '\n--- %s\n' "$1"; }

step "promtool check rules $rules"
promtool check rules "$rules" || fail "promtool check rules $rules"

step "promtool test rules $dir/adaptserve.rules.test.yml"
(cd "$dir" && promtool test rules adaptserve.rules.test.yml) || fail "promtool test rules $dir/adaptserve.rules.test.yml"

step "promtool check config $dir/prometheus.yml"
promtool check config "$dir/prometheus.yml" || fail "promtool check config $dir/prometheus.yml"

work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME ARGS...: serves the binary on a free port (set in `port`) with its own
# state dir, and waits until it is ready.
start() {
  local name=$1
  shift
  port=$(free_port)
  NO_COLOR=1 "$bin" serve --port "$port" --state-dir "$work/$name" "$@" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the $name server did not get ready on port $port; its log:" >&2
  cat "$work/$name.log" >&2
  return 1
}

step "the rules' adaptserve_* series against a live /metrics ($bin)"
if start standalone && standalone=$port && start replica --cluster "redis://127.0.0.1:$(free_port)" --replica-id 1 && replica=$port; then
  row='[0.1, 2.0, 30000, 0.002, 1.5, -7, 0.3, 12, 500000, 0.01, 3, 0, 1, 2, 3, 4]'
  for p in "$standalone" "$replica"; do
    for _ in $(seq 1 10); do
      curl -s "http://127.0.0.1:$p/v1/infer" -H 'content-type: application/json' -d "{\"inputs\": [$row]}" >/dev/null
      curl -s "http://127.0.0.1:$p/v1/feedback" -H 'content-type: application/json' -d "{\"features\": $row, \"label\": 1}" >/dev/null
    done
  done
  curl -sf "http://127.0.0.1:$standalone/metrics" >"$work/standalone.prom"
  curl -sf "http://127.0.0.1:$replica/metrics" >"$work/replica.prom"
  python3 - "$rules" "$work/standalone.prom" "$work/replica.prom" <<'EOF' || fail "the rules' adaptserve_* series do not match a live server's /metrics (above)"
import re
import sys

rules_path, *scrapes = sys.argv[1:]

# The rules' expressions: `expr: ...` on one line, or `expr: |` and the lines indented
# deeper below it. (A line parser: the file's own layout, no YAML library needed.)
exprs, lines = [], open(rules_path).read().splitlines()
for i, line in enumerate(lines):
    m = re.match(r"^(\s*)expr:\s*(.*)$", line)
    if not m:
        continue
    indent, rest = len(m.group(1)), m.group(2).strip()
    if rest not in ("|", ">", "|-", ">-"):
        exprs.append(rest)
        continue
    body = []
    for follow in lines[i + 1:]:
        if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
            break
        body.append(follow.strip())
    exprs.append(" ".join(body))
alerts = sum(1 for l in lines if re.match(r"^\s*- alert:", l))
problems = []
if len(exprs) != alerts:
    problems.append(f"{rules_path}: found {len(exprs)} expressions for {alerts} alerts")

# The scrape: metric families by type, and each series' labels.
types, series = {}, {}
label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
for path in scrapes:
    for line in open(path):
        line = line.strip()
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            m = re.match(r"^(\w+)(\{.*\})?\s", line)
            if m:
                series.setdefault(m.group(1), []).append(dict(label_re.findall(m.group(2) or "")))

def family(name):
    """The exported family a sample name belongs to, and its type."""
    if name in types:
        return name, types[name]
    for suffix in ("_bucket", "_count", "_sum"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            if suffix != "_bucket" or types[base] == "histogram":
                return base, types[base]
    return None, None

selector_re = re.compile(r"\b(adaptserve_\w+)\s*(\{[^}]*\})?")
matcher_re = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
counted = set(re.findall(r"\b(?:rate|irate|increase)\s*\(\s*(adaptserve_\w+)", " ".join(exprs)))
used = set()
for expr in exprs:
    for name, selector in selector_re.findall(expr):
        used.add(name)
        base, kind = family(name)
        if base is None:
            problems.append(f"{name}: no such metric in the scrape")
            continue
        if name in counted and not (kind == "counter" or name != base):
            problems.append(f"{name}: under rate()/increase() but exported as a {kind}")
        for label, op, value in matcher_re.findall(selector or ""):
            present = [s[label] for s in series.get(name, []) if label in s]
            if not present:
                problems.append(f"{name}: no series with a label {label}")
            elif op == "=" and value not in present:
                problems.append(f'{name}{{{label}="{value}"}}: no such series (values seen: {sorted(set(present))})')
            elif op == "=~" and re.fullmatch(r"[\w/.:-]+(\|[\w/.:-]+)*", value):
                for alternative in value.split("|"):
                    if alternative not in present:
                        problems.append(f'{name}{{{label}=~"{value}"}}: no series with {label}="{alternative}"')
problems = list(dict.fromkeys(problems))
for p in problems:
    print("  " + p)
print(f"  {len(exprs)} rules, {len(used)} adaptserve_* names: {' '.join(sorted(used))}")
sys.exit(1 if problems else 0)
EOF
else
  fail "a server for the live /metrics check did not start"
fi

step "a real Prometheus evaluating the rules over those servers"
if [ -n "${standalone:-}" ] && [ -n "${replica:-}" ]; then
  prom_port=$(free_port)
  cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/$rules
scrape_configs:
  - job_name: adaptserve
    static_configs:
      - targets: ["127.0.0.1:$standalone", "127.0.0.1:$replica"]
EOF
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" 2>"$work/prometheus.log" &
  pids+=($!)
  python3 - "http://127.0.0.1:$prom_port" "127.0.0.1:$replica" <<'EOF' || { fail "Prometheus did not evaluate the rules as expected (above)"; tail -5 "$work/prometheus.log" | cut -c1-400 >&2; }
import json
import sys
import time
import urllib.request

url, replica = sys.argv[1:]

def get(path):
    with urllib.request.urlopen(url + path, timeout=5) as r:
        return json.load(r)

# Give it 60 s: starting up, a few scrapes, a few evaluations.
deadline, problems = time.time() + 60, ["Prometheus never answered"]
while time.time() < deadline:
    time.sleep(1)
    try:
        rules = [r for g in get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]
        alerts = get("/api/v1/alerts")["data"]["alerts"]
    except OSError as e:
        problems = [f"Prometheus at {url}: {e}"]
        continue
    problems = []
    if not rules:
        problems.append("no rules loaded")
    for r in rules:
        if r.get("health") != "ok":
            problems.append(f"{r['name']}: health {r.get('health')} {r.get('lastError', '')}".rstrip())
    redis = [a for a in alerts if a["labels"]["alertname"] == "AdaptserveClusterRedisUnreachable"
             and a["labels"].get("instance") == replica]
    if not redis:
        problems.append(f"AdaptserveClusterRedisUnreachable is not pending or firing for the replica {replica}, whose Redis does not answer")
    down = [a["labels"].get("instance") for a in alerts if a["labels"]["alertname"] == "AdaptserveTargetDown"]
    if down:
        problems.append(f"AdaptserveTargetDown for {down}, which answer")
    # An evaluation error will not go away: report it without waiting out the minute.
    if any(r.get("health") == "err" for r in rules):
        break
    if not problems:
        active = sorted(f"{a['labels']['alertname']}@{a['labels'].get('instance')} ({a['state']})" for a in alerts)
        print(f"  {len(rules)} rules evaluate; active: {', '.join(active)}")
        sys.exit(0)
for p in problems:
    print("  " + p)
sys.exit(1)
EOF
else
  fail "no servers for Prometheus to scrape"
fi

echo
if [ "${#failed[@]}" -gt 0 ]; then
  echo "check_prometheus_rules: ${#failed[@]} check(s) failed:" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "check_prometheus_rules: ok"
