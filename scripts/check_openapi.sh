#!/usr/bin/env bash
# Checks the OpenAPI document against a live server, and fuzzes the server with it.
#
#   scripts/check_openapi.sh [path/to/adaptserve]   (default: the debug build)
#
# Starts the server on a free port with a fresh state dir and an admin token, then:
#  1. openapi-spec-validator: docs/openapi.json is a valid OpenAPI 3.1 document;
#  2. GET /openapi.json is docs/openapi.json, byte for byte;
#  3. schemathesis fuzzes every route of the document (valid and invalid bodies,
#     with and without the token) and requires zero failures: no 5xx, every status
#     documented, every body conforming to its schema, invalid data refused;
#  4. the server is still alive (/health/live 200);
#  5. a refused request changed nothing: the labels counted and the request ids
#     handed out moved by exactly what the accepted (2xx) responses in the fuzz's
#     network log account for.
# Bounded to about two minutes. FUZZ_EXAMPLES (default 300) sets the examples per
# route, FUZZ_SEED a seed to replay a run.
#
# Every route is fuzzed, admin ones included: a rollback, a sync or a worker
# restart is a legitimate change of state for a holder of the token. The k-NN
# fault injection route is fuzzed too, but this server runs without
# engine.fault_injection, so every call to it must be refused (409 or 4xx), never
# applied: chaos in the memory would make the counters of step 5 meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/adaptserve}"
examples="${FUZZ_EXAMPLES:-300}"
[ -x "$bin" ] || { echo "no server binary at $bin (cargo build -p adaptserve --bin adaptserve)" >&2; exit 2; }
VENV=$(bash scripts/python_env.sh)
py="$VENV/bin/python"

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

token="openapi-$RANDOM$RANDOM"
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
NO_COLOR=1 "$bin" serve --port "$port" --state-dir "$work/state" --admin-token "$token" 2>"$work/server.log" &
pid=$!
for _ in $(seq 1 200); do
  curl -sf "$url/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$url/health/ready" >/dev/null || { echo "server never became ready:" >&2; cat "$work/server.log" >&2; exit 1; }

echo "1. openapi-spec-validator docs/openapi.json"
"$VENV/bin/openapi-spec-validator" docs/openapi.json

echo "2. GET /openapi.json equals docs/openapi.json"
curl -sf "$url/openapi.json" >"$work/served.json"
if ! cmp -s "$work/served.json" docs/openapi.json; then
  diff -u docs/openapi.json "$work/served.json" | head -40 >&2 || true
  echo "the served document differs from docs/openapi.json; regenerate it:" >&2
  echo "  UPDATE_OPENAPI=1 cargo test -p adaptserve --test api openapi" >&2
  exit 1
fi

curl -sf "$url/v1/status" >"$work/before.json"

# The document cannot know the model's input_dim (it depends on the model served),
# so a random row almost never has the right length and the fuzz would stop at the
# dimension check. The fuzz runs on a copy that pins the row lengths and the label
# range to this server's model, so valid rows reach the model, the memory and the
# update path. Responses are checked against the same schemas as the served ones.
"$py" - "$work/before.json" docs/openapi.json "$work/fuzz.json" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
dim, classes = status["input_dim"], status["num_classes"]
schemas = doc["components"]["schemas"]
row = schemas["InferRequest"]["properties"]["inputs"]["items"]
row.update(minItems=dim, maxItems=dim)
schemas["InferRequest"]["properties"]["inputs"].update(minItems=1, maxItems=8)
schemas["FeedbackRequest"]["properties"]["features"].update(minItems=dim, maxItems=dim)
# Values must be within +-1e18 (as the descriptions say): valid rows stay valid,
# hypothesis tries the bounds themselves, and the invalid data it generates goes
# past them.
for name in ("InferRequest", "FeedbackRequest"):
    for prop in schemas[name]["properties"].values():
        items = prop.get("items", {})
        items = items.get("items", items)
        if items.get("format") == "float":
            items.update(minimum=-1e18, maximum=1e18)
# The /v2 routes serve one model: name it, so requests get past the 404; the version
# is left free (the serving one moves as the model learns; others are 404).
for item in doc["paths"].values():
    for op in item.values():
        for param in op.get("parameters", []):
            if param["name"] == "name":
                param["schema"] = {"type": "string", "enum": ["adaptserve"]}
for choice in schemas["LabelRef"]["oneOf"]:
    if choice.get("type") == "integer":
        choice["maximum"] = classes - 1
json.dump(doc, open(sys.argv[3], "w"), indent=2)
EOF

echo "3. schemathesis: $examples examples per route, all checks"
seed=()
[ -n "${FUZZ_SEED:-}" ] && seed=(--hypothesis-seed "$FUZZ_SEED")
status=0
timeout 150 "$VENV/bin/st" run "$work/fuzz.json" \
  --base-url "$url" \
  --experimental=openapi-3.1 \
  --checks all \
  --data-generation-method all \
  --experimental-negative-data-rejection-allowed-statuses 400,401,403,404,413,415,422 \
  --header "Authorization: Bearer $token" \
  --hypothesis-max-examples "$examples" \
  --hypothesis-deadline 5000 \
  --hypothesis-suppress-health-check=filter_too_much,too_slow \
  --request-timeout 10000 \
  --cassette-path "$work/cassette.yaml" \
  --no-color \
  "${seed[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  [ "$status" -eq 124 ] && echo "schemathesis did not finish within 150 s" >&2
  echo "schemathesis found failures (exit $status); server log tail:" >&2
  tail -20 "$work/server.log" >&2
  exit 1
fi

echo "4. the server is alive, and still learning"
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/health/live")
[ "$code" = 200 ] || { echo "/health/live answered $code after the fuzz" >&2; tail -20 "$work/server.log" >&2; exit 1; }
# The sync barrier returns once every accepted update is in the serving weights: an
# update the worker cannot learn from (it once crash-looped on one) shows up here.
code=$(curl -s -o "$work/sync.json" -w '%{http_code}' --max-time 60 -X POST -H "Authorization: Bearer $token" "$url/v1/admin/sync")
[ "$code" = 200 ] || { echo "POST /v1/admin/sync answered $code after the fuzz: $(cat "$work/sync.json")" >&2; tail -20 "$work/server.log" >&2; exit 1; }
echo "  synced: $(cat "$work/sync.json")"

echo "5. only accepted requests changed state"
curl -sf "$url/v1/status" >"$work/after.json"
"$py" - "$work/before.json" "$work/after.json" "$work/cassette.yaml" <<'EOF'
import base64, json, sys
import yaml

before, after = (json.load(open(p)) for p in sys.argv[1:3])
log = yaml.safe_load(open(sys.argv[3]))
accepted_labels = rows_answered = refused = 0
for interaction in log["http_interactions"]:
    request, response = interaction["request"], interaction["response"]
    if response is None:
        continue
    path = request["uri"].split("://", 1)[1].split("/", 1)[1].split("?")[0]
    code = int(response["status"]["code"])
    if request["method"] != "POST":
        continue
    if code >= 300:
        refused += 1
    elif path == "v1/feedback":
        accepted_labels += 1
    elif path == "v1/infer":
        body = response["body"]
        text = body.get("string") or base64.b64decode(body.get("base64_string", "")).decode()
        rows_answered += len(json.loads(text)["predictions"])
    elif path.startswith("v2/") and path.endswith("/infer"):
        body = response["body"]
        text = body.get("string") or base64.b64decode(body.get("base64_string", "")).decode()
        rows_answered += len(json.loads(text)["parameters"]["request_ids"].split(","))

def moved(*keys):
    a, b = before, after
    for k in keys:
        a, b = a[k], b[k]
    return b - a

checks = [
    ("labels received", moved("labels", "received"), accepted_labels, "202 feedback responses"),
    ("request ids handed out", moved("request_ids", "next"), rows_answered, "rows in 200 infer responses, /v1 and /v2"),
    ("rows answered", sum(moved("paths", p) for p in ("cold_start", "ensemble", "fallback")), rows_answered, "rows in 200 infer responses, /v1 and /v2"),
    ("faults injected", moved("knn_faults_injected"), 0, "fault injection is off"),
]
failed = False
for name, seen, expected, why in checks:
    ok = seen == expected
    failed |= not ok
    print(f"  {'ok ' if ok else 'BAD'} {name}: moved {seen}, expected {expected} ({why})")
print(f"  ({refused} POSTs refused)")
if failed:
    sys.exit("a refused request changed state, or an accepted one was not counted")
EOF
echo "ok"
