#!/usr/bin/env bash
# Checks deploy/ (Dockerfile, docker compose, Kubernetes, the HAProxy and nginx
# configs) against what scripts/cluster.sh really runs.
#
#   scripts/check_deploy.sh          exit 0 when they agree, 1 naming each mismatch
#
# Why: the containers and manifests cannot be run here, while scripts/cluster.sh runs
# the cluster for real on loopback. So cluster.sh is the reference: its
# --print-commands output gives the subcommands and flags of the replicas
# (serve --cluster ... --replica-id ...) and the trainers (train --cluster ...) and
# Redis's AOF options, and its haproxy-config renders the balancer's config (health
# check path, balancing algorithm, retries). This script holds every deploy file to
# them: same flag sets, same AOF options, the readiness path HAProxy checks, the
# shipped haproxy.cfg copies byte-identical to a fresh rendering for their replicas,
# replica ids unique and each on its own state volume, the state dir on the image's
# volume, the default model where the binary looks for it.
#
# With PyYAML (python3 -c 'import yaml') the YAML is parsed; without it, or with
# CHECK_DEPLOY_NO_YAML=1, a coarser grep of the same rules runs. haproxy -c and
# nginx -t validate the configs when those binaries are installed, and a built
# adaptserve (ADAPTSERVE_BIN, else target/release or target/debug under
# CARGO_TARGET_DIR) parses cluster.sh's serve and train command lines.
set -uo pipefail
shopt -s extglob
cd "$(dirname "$0")/.." || exit 1

failures=0 checks=0
ok() { checks=$((checks + 1)); echo "ok: $*"; }
bad() { checks=$((checks + 1)); failures=$((failures + 1)); echo "MISMATCH: $*"; }
# expect OK_MESSAGE BAD_MESSAGE COMMAND...: ok when COMMAND succeeds, a mismatch otherwise.
expect() {
  local good=$1 wrong=$2
  shift 2
  if "$@"; then ok "$good"; else bad "$wrong"; fi
}

ref=$(bash scripts/cluster.sh --print-commands) || { echo "scripts/cluster.sh --print-commands failed" >&2; exit 1; }
echo "reference (scripts/cluster.sh --print-commands):"
echo "  ${ref//$'\n'/$'\n'  }"
reference_cfg=$(bash scripts/cluster.sh haproxy-config --port 8080 127.0.0.1:8081) ||
  { echo "scripts/cluster.sh haproxy-config failed" >&2; exit 1; }
health_path=$(awk '$1 == "option" && $2 == "httpchk" { print $4 }' <<<"$reference_cfg")
balance=$(awk '$1 == "balance" { print $2 }' <<<"$reference_cfg")
echo "reference (scripts/cluster.sh haproxy-config): health check GET $health_path, balance $balance"
if [ -z "$health_path" ] || [ -z "$balance" ]; then
  echo "no httpchk or balance line in the rendered template" >&2
  exit 1
fi
echo

# --- the reference parses with the binary, when one is built ---------------------------
# clap rejects an unknown flag before it reaches --help, so this proves each flag of
# cluster.sh's commands (and so of deploy/'s, held to the same sets below) exists.
bin=${ADAPTSERVE_BIN:-}
for candidate in "${CARGO_TARGET_DIR:-target}/release/adaptserve" "${CARGO_TARGET_DIR:-target}/debug/adaptserve"; do
  [ -n "$bin" ] || { [ -x "$candidate" ] && bin=$candidate; }
done
if [ -n "$bin" ] && [ -x "$bin" ]; then
  while read -r line; do
    read -ra argv <<<"${line//\{*([A-Z_])\}/0}"
    [ "${argv[1]:-}" = serve ] || [ "${argv[1]:-}" = train ] || continue
    if msg=$("$bin" "${argv[@]:1}" --help 2>&1 >/dev/null); then
      ok "$bin accepts: ${argv[*]:1}"
    else
      bad "$bin refuses cluster.sh's command ${argv[*]:1}: $(head -1 <<<"$msg")"
    fi
  done <<<"$ref"
else
  echo "(no adaptserve binary built: the commands are not parsed by it)"
fi

# --- label affinity: the template's replica id is the server's -------------------------
# The template routes a label to the replica whose id is request_id / 2^COUNTER_BITS;
# the server's ids.rs decides COUNTER_BITS. A change there must be followed here.
ids_rs=crates/server/src/engine/ids.rs
bits=$(awk '$1 == "pub" && $2 == "const" && $3 == "COUNTER_BITS:" { gsub(/;/, "", $NF); print $NF }' "$ids_rs" 2>/dev/null)
divisor=$(grep -oE 'div\([0-9]+\)' deploy/haproxy.cfg.tmpl | grep -oE '[0-9]+' | head -1)
if [ -z "$bits" ]; then
  bad "$ids_rs: no COUNTER_BITS, so the label affinity's divisor ($divisor) in deploy/haproxy.cfg.tmpl cannot be checked"
else
  expect "deploy/haproxy.cfg.tmpl: label affinity divides request_id by 2^$bits, the counter bits of $ids_rs" \
    "deploy/haproxy.cfg.tmpl: label affinity divides by ${divisor:-nothing}, but request ids keep the replica above 2^$bits ($((1 << bits))) in $ids_rs" \
    test "$divisor" = "$((1 << bits))"
fi

# --- the Dockerfile (plain text: grep in both modes) ------------------------------------
df=deploy/Dockerfile
if [ ! -f "$df" ]; then
  bad "$df is missing"
else
  froms=$(grep -cE '^FROM ' "$df")
  if [ "$froms" -ge 2 ] && grep -qE '^FROM rust:' "$df" && tail -n +2 <(grep -E '^FROM ' "$df") | tail -1 | grep -qE '^FROM debian:[^ ]*-slim'; then
    ok "$df: multi-stage, built on rust, run on debian-slim"
  else
    bad "$df: expected a rust build stage and a final debian-slim stage"
  fi
  expect "$df: cargo build --release --workspace (builds update-worker too)" \
    "$df: no 'cargo build --release --workspace' (update-worker must be built beside adaptserve)" \
    grep -qE 'cargo build .*--release.*--workspace|cargo build .*--workspace.*--release' "$df"
  copy=$(grep -E '^COPY --from=.*adaptserve.*update-worker|^COPY --from=.*update-worker.*adaptserve' "$df")
  expect "$df: adaptserve and update-worker copied to one dir ($(awk '{ print $NF }' <<<"$copy"))" \
    "$df: adaptserve and update-worker are not copied together (the server starts the worker found beside it)" \
    test -n "$copy"
  workdir=$(awk '$1 == "WORKDIR" { w = $2 } END { print w }' "$df")
  model_dest=$(awk '$1 == "COPY" && $2 == "models/default" { print $3 }' "$df")
  expect "$df: models/default at $model_dest, the relative default from WORKDIR $workdir" \
    "$df: the default model (COPY models/default -> '${model_dest:-none}') is not WORKDIR ($workdir)/models/default, where serve/train look without --model" \
    test -n "$model_dest" -a "${model_dest%/}" = "${workdir%/}/models/default"
  expect "$df: ENTRYPOINT adaptserve" "$df: ENTRYPOINT is not [\"adaptserve\"] (compose and k8s pass only the subcommand)" \
    grep -qE '^ENTRYPOINT \["adaptserve"\]' "$df"
fi

# --- the YAML ------------------------------------------------------------------------------
if [ -z "${CHECK_DEPLOY_NO_YAML:-}" ] && python3 -c 'import yaml' 2>/dev/null; then
  echo "(YAML parsed with PyYAML)"
  out=$(REF="$ref" HEALTH="$health_path" BALANCE="$balance" python3 - <<'PY'
import os, re, shlex, subprocess, sys
import yaml

def ok(m): print("ok: " + m, flush=True)
def bad(m): print("MISMATCH: " + m, flush=True)

ref = [shlex.split(l) for l in os.environ["REF"].splitlines() if l.strip()]
health, balance = os.environ["HEALTH"], os.environ["BALANCE"]

def flags(argv):
    """--flag value pairs of an argv (a flag without a value maps to None)."""
    out, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[a] = argv[i + 1]; i += 2; continue
            out[a] = None
        i += 1
    return out

def subcommand(argv):
    """The adaptserve subcommand of argv, with or without the binary in front."""
    if argv and argv[0] in ("serve", "train"):
        return argv[0], argv[1:]
    if len(argv) > 1 and (argv[0].endswith("adaptserve") or argv[0] == "{BIN}"):
        return argv[1], argv[2:]
    return None, argv

ref_redis = flags(next(c for c in ref if c[0] == "redis-server")[1:])
ref_serve = [flags(subcommand(c)[1]) for c in ref if subcommand(c)[0] == "serve"]
ref_train = [flags(subcommand(c)[1]) for c in ref if subcommand(c)[0] == "train"]
SERVE_FLAGS = set(ref_serve[0]) - {"--model"}
TRAIN_FLAGS = set(ref_train[0]) - {"--model"}
# Redis: the AOF options are the contract and must be identical; where it listens is
# the environment's (loopback here, a private network in containers).
AOF = {k: ref_redis[k] for k in ("--appendonly", "--appendfsync", "--save")}
REDIS_REQUIRED = set(ref_redis) - {"--bind"}
REDIS_ALLOWED_EXTRA = {"--bind", "--protected-mode"}
BALANCE_NGINX = {"leastconn": "least_conn", "roundrobin": None}

def check_redis(where, argv):
    if argv[:1] == ["redis-server"]:
        argv = argv[1:]
    f = flags(argv)
    diff = {k: (v, f.get(k, "<absent>")) for k, v in AOF.items() if f.get(k, "<absent>") != v}
    if diff:
        bad(f"{where}: Redis AOF options differ from scripts/cluster.sh: " +
            ", ".join(f"{k} {v[1]!r} where cluster.sh has {v[0]!r}" for k, v in diff.items()))
    else:
        ok(f"{where}: Redis AOF options as cluster.sh: " + " ".join(f"{k} {v!r}" for k, v in AOF.items()))
    missing, extra = REDIS_REQUIRED - set(f), set(f) - set(ref_redis) - REDIS_ALLOWED_EXTRA
    if missing or extra:
        bad(f"{where}: Redis flags: missing {sorted(missing)}, not in cluster.sh {sorted(extra)}")
    return f

def check_flagset(where, kind, f, expected):
    f = {k: v for k, v in f.items() if k != "--model"}
    if set(f) == expected:
        ok(f"{where}: `{kind}` with the flags of cluster.sh: {' '.join(sorted(expected))}")
    else:
        bad(f"{where}: `{kind}` flags {sorted(f)} where scripts/cluster.sh runs {sorted(expected)}")

def check_cluster_url(where, url, redis_hosts):
    m = re.fullmatch(r"redis://([^:/]+):(\d+)/?", url or "")
    if not m:
        bad(f"{where}: --cluster {url!r} is not redis://HOST:PORT")
    elif (m.group(1), m.group(2)) not in redis_hosts:
        bad(f"{where}: --cluster {url} names no Redis of this deployment (there: {sorted(redis_hosts)})")
    else:
        ok(f"{where}: --cluster {url} is this deployment's Redis")

def render(bind, port, servers):
    return subprocess.run(["bash", "scripts/cluster.sh", "haproxy-config", "--bind", bind, "--port", str(port), *servers],
                          check=True, capture_output=True, text=True).stdout

def check_rendered(path, bind, port, servers):
    try:
        have = open(path).read()
    except OSError:
        bad(f"{path} is missing"); return
    want = render(bind, port, servers)
    if have == want:
        ok(f"{path}: the template as cluster.sh renders it for {' '.join(servers)} (balance {balance}, GET {health})")
    else:
        import difflib
        d = "".join(list(difflib.unified_diff(want.splitlines(True), have.splitlines(True), "rendered", path))[:30])
        bad(f"{path} differs from `scripts/cluster.sh haproxy-config --bind '{bind}' --port {port} {' '.join(servers)}`"
            f" (re-render it):\n{d}")

dockerfile = open("deploy/Dockerfile").read() if os.path.exists("deploy/Dockerfile") else ""
m = re.search(r'^VOLUME \[?"?([^"\]\s]+)', dockerfile, re.M)
image_volume = m.group(1) if m else None

# ---------------------------------------------------------------- docker compose
compose_path = "deploy/docker-compose.yml"
compose = yaml.safe_load(open(compose_path))
services = compose.get("services", {})
redis_hosts, replicas, trainers, images, haproxy_svc = set(), [], [], {}, None
for name, svc in services.items():
    cmd = svc.get("command") or []
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    if cmd[:1] == ["redis-server"]:
        f = check_redis(f"{compose_path} service {name}", cmd)
        redis_hosts.add((name, f.get("--port") or "6379"))
        images["redis"] = svc.get("image")
    elif subcommand(cmd)[0] == "serve":
        replicas.append((name, svc, flags(subcommand(cmd)[1])))
    elif subcommand(cmd)[0] == "train":
        trainers.append((name, svc, flags(subcommand(cmd)[1])))
    elif str(svc.get("image", "")).startswith("haproxy"):
        images["haproxy"] = svc.get("image")
        haproxy_svc = (name, svc)

def mounts(svc):
    """container path -> source of a compose service's volumes."""
    out = {}
    for v in svc.get("volumes", []):
        parts = v.split(":") if isinstance(v, str) else [v.get("source"), v.get("target")]
        out[parts[1]] = parts[0]
    return out

if not replicas:
    bad(f"{compose_path}: no `serve` service")
ids, volumes = {}, {}
for name, svc, f in replicas:
    where = f"{compose_path} service {name}"
    check_flagset(where, "serve --cluster", f, SERVE_FLAGS)
    check_cluster_url(where, f.get("--cluster"), redis_hosts)
    if f.get("--host") != "0.0.0.0":
        bad(f"{where}: --host {f.get('--host')} (a replica in a container must bind 0.0.0.0 for the balancer to reach it)")
    rid = f.get("--replica-id", "")
    if not rid.isdigit() or not 1 <= int(rid) <= 1023:
        bad(f"{where}: --replica-id {rid!r} is not in 1..=1023")
    elif rid in ids:
        bad(f"{where}: --replica-id {rid} is also {ids[rid]}'s")
    else:
        ids[rid] = name
    src = mounts(svc).get(f.get("--state-dir"))
    if not src:
        bad(f"{where}: --state-dir {f.get('--state-dir')} is not on a volume")
    elif src in volumes:
        bad(f"{where}: state volume {src} is shared with {volumes[src]}")
    else:
        volumes[src] = name
    if image_volume and f.get("--state-dir") != image_volume:
        bad(f"{where}: --state-dir {f.get('--state-dir')} is not the image's VOLUME {image_volume} (owned by its user)")
    if f.get("--advertise") != f"http://{name}:{f.get('--port')}":
        bad(f"{where}: --advertise {f.get('--advertise')} where the service is reached at http://{name}:{f.get('--port')}")
    hc = " ".join(map(str, (svc.get("healthcheck") or {}).get("test", [])))
    if health not in hc:
        bad(f"{where}: healthcheck {hc!r} does not probe {health}")
if ids and sorted(map(int, ids)) == list(range(1, len(ids) + 1)):
    ok(f"{compose_path}: replica ids {' '.join(sorted(ids, key=int))}, each on its own state volume")
elif ids:
    bad(f"{compose_path}: replica ids {sorted(map(int, ids))} are not 1..{len(ids)}")
if not trainers:
    bad(f"{compose_path}: no `train` service")
for name, svc, f in trainers:
    where = f"{compose_path} service {name}"
    check_flagset(where, "train --cluster", f, TRAIN_FLAGS)
    check_cluster_url(where, f.get("--cluster"), redis_hosts)
    if not mounts(svc).get(f.get("--state-dir")):
        bad(f"{where}: --state-dir {f.get('--state-dir')} is not on a volume")
ports = {f.get("--port") for _, _, f in replicas}
if len(ports) != 1:
    bad(f"{compose_path}: replicas listen on different ports {sorted(ports)}")
replica_port = ports.pop() if len(ports) == 1 else "8080"
if haproxy_svc:
    name, svc = haproxy_svc
    cfg_src = {v: k for k, v in mounts(svc).items()}.get("/usr/local/etc/haproxy/haproxy.cfg") or \
        next((s for t, s in mounts(svc).items() if t.endswith("haproxy.cfg")), None)
    if cfg_src is None:
        bad(f"{compose_path} service {name}: no haproxy.cfg mounted")
    port_map = [str(p) for p in svc.get("ports", [])]
    lb_port = port_map[0].split(":")[-1] if port_map else "8080"
    servers = [f"{ids[r]}:{replica_port}" for r in sorted(ids, key=int)]
    # The mount is relative to the compose file's directory.
    mounted = {v.split(":")[0] for v in svc.get("volumes", []) if isinstance(v, str)}
    if "./haproxy.cfg" not in mounted:
        bad(f"{compose_path} service {name}: mounts {sorted(mounted)}, not ./haproxy.cfg (deploy/haproxy.cfg)")
    check_rendered("deploy/haproxy.cfg", "", lb_port, servers)
else:
    bad(f"{compose_path}: no haproxy service")

# nginx alternative: same replicas, the same algorithm.
if os.path.exists("deploy/nginx.conf"):
    ngx = open("deploy/nginx.conf").read()
    ngx_servers = re.findall(r"^\s*server\s+(\S+?:\d+)", ngx, re.M)
    want = BALANCE_NGINX.get(balance)
    if want and not re.search(rf"^\s*{want};", ngx, re.M):
        bad(f"deploy/nginx.conf: no `{want};` (HAProxy balances {balance})")
    elif ngx_servers != servers:
        bad(f"deploy/nginx.conf: upstream servers {ngx_servers}, compose replicas {servers}")
    else:
        ok(f"deploy/nginx.conf: {want} over {' '.join(ngx_servers)}")

# ---------------------------------------------------------------- Kubernetes
kdir = "deploy/k8s"
kust = yaml.safe_load(open(f"{kdir}/kustomization.yaml"))
ns = kust.get("namespace", "default")
docs = []
for r in kust.get("resources", []):
    docs += [d for d in yaml.safe_load_all(open(f"{kdir}/{r}")) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

def containers(d):
    return d["spec"]["template"]["spec"]["containers"]

def argv_of(c):
    return list(c.get("command") or []) + list(c.get("args") or [])

def pod_env(c):
    return {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", e.get("value")) for e in c.get("env", [])}

k_redis_hosts, k_replica_sets, k_trainers, k_haproxy, k_replicas = set(), [], [], None, None
services_by_name = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
for d in by_kind.get("StatefulSet", []) + by_kind.get("Deployment", []):
    for c in containers(d):
        argv = argv_of(c)
        where = f"{kdir} {d['kind']} {d['metadata']['name']}"
        if argv[:1] == ["redis-server"] or (c.get("image", "").startswith("redis") and "--appendonly" in argv):
            f = check_redis(where, argv)
            svc = d["spec"].get("serviceName", d["metadata"]["name"])
            k_redis_hosts.add((svc, f.get("--port") or "6379"))
            k_redis_hosts.add((f"{svc}.{ns}.svc.cluster.local", f.get("--port") or "6379"))
            images.setdefault("k8s redis", c.get("image"))
            if images.get("redis") and c.get("image") != images["redis"]:
                bad(f"{where}: image {c.get('image')}, compose runs {images['redis']}")
            mount = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            claims = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
            if mount.get(f.get("--dir")) not in claims:
                bad(f"{where}: --dir {f.get('--dir')} is not on a volumeClaimTemplate (the AOF would not survive the pod)")
            else:
                ok(f"{where}: the AOF dir {f.get('--dir')} is on a persistent volume")
        elif argv[:2] in (["/bin/sh", "-c"], ["sh", "-c"]):
            script = argv[2] if len(argv) > 2 else ""
            line = next((l for l in script.splitlines() if re.match(r"\s*exec\s+\S*adaptserve\s", l)), None)
            if line is None:
                bad(f"{where}: a shell command without `exec adaptserve ...`")
                continue
            inner = shlex.split(line.strip())[1:]
            if subcommand(inner)[0] == "serve":
                k_replica_sets.append((where, d, c, flags(subcommand(inner)[1]), script))
        elif subcommand(argv)[0] == "serve":
            k_replica_sets.append((where, d, c, flags(subcommand(argv)[1]), ""))
        elif subcommand(argv)[0] == "train":
            k_trainers.append((where, d, c, flags(subcommand(argv)[1])))
        elif c.get("image", "").startswith("haproxy"):
            k_haproxy = (where, d, c)

if not k_replica_sets:
    bad(f"{kdir}: no `serve` container")
for where, d, c, f, script in k_replica_sets:
    check_flagset(where, "serve --cluster", f, SERVE_FLAGS)
    check_cluster_url(where, f.get("--cluster"), k_redis_hosts)
    if d["kind"] != "StatefulSet":
        bad(f"{where}: replicas must be a StatefulSet (a stable ordinal gives a stable --replica-id)")
        continue
    n = d["spec"].get("replicas", 1)
    rid = f.get("--replica-id", "")
    env = pod_env(c)
    var = next((k for k, v in env.items() if v == "metadata.name"), None)
    if not (var and re.search(r"\$\{(%s|HOSTNAME)##\*-\}" % var, script) and "+ 1" in rid):
        bad(f"{where}: --replica-id {rid!r} is not the pod ordinal plus one (read from the pod name's suffix)")
    elif not 1 <= n <= 1023:
        bad(f"{where}: {n} replicas give ids outside 1..=1023")
    else:
        ok(f"{where}: --replica-id is the pod ordinal + 1 ({var} suffix), ids 1..{n}")
    if f.get("--host") != "0.0.0.0":
        bad(f"{where}: --host {f.get('--host')} (a pod must bind 0.0.0.0)")
    ns_var = next((k for k, v in env.items() if v == "metadata.namespace"), None)
    want_adv = f"http://${{{var}}}.{d['spec'].get('serviceName')}.${{{ns_var}}}.svc.cluster.local:{f.get('--port')}"
    if f.get("--advertise") != want_adv:
        bad(f"{where}: --advertise {f.get('--advertise')}, where the pod is reached at {want_adv}")
    else:
        ok(f"{where}: --advertise is the pod's DNS name through {d['spec'].get('serviceName')}")
    probe = (c.get("readinessProbe") or {}).get("httpGet", {})
    cport = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    pport = cport.get(probe.get("port"), probe.get("port"))
    if probe.get("path") != health or str(pport) != f.get("--port"):
        bad(f"{where}: readinessProbe GET {probe.get('path')} on {pport}; HAProxy checks GET {health} and the replica listens on {f.get('--port')}")
    else:
        ok(f"{where}: readinessProbe GET {health} on port {pport}, the path HAProxy checks")
    mount = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
    if mount.get(f.get("--state-dir")) not in claims:
        bad(f"{where}: --state-dir {f.get('--state-dir')} is not on a volumeClaimTemplate")
    else:
        ok(f"{where}: each replica's --state-dir {f.get('--state-dir')} on its own volumeClaimTemplate")
    if image_volume and f.get("--state-dir") != image_volume:
        bad(f"{where}: --state-dir {f.get('--state-dir')} is not the image's VOLUME {image_volume}")
    svc = services_by_name.get(d["spec"].get("serviceName"))
    if not svc or svc["spec"].get("clusterIP") != "None":
        bad(f"{where}: serviceName {d['spec'].get('serviceName')} is not a headless Service (haproxy.cfg names pods by it)")
    k_replicas = (d["metadata"]["name"], d["spec"]["serviceName"], n, f.get("--port"))

if not k_trainers:
    bad(f"{kdir}: no `train` container")
for where, d, c, f in k_trainers:
    check_flagset(where, "train --cluster", f, TRAIN_FLAGS)
    check_cluster_url(where, f.get("--cluster"), k_redis_hosts)
    n = d["spec"].get("replicas", 1)
    tid = f.get("--trainer-id", "")
    env = pod_env(c)
    if n < 2:
        bad(f"{where}: {n} trainer(s): one must stand by to take the lease over")
    elif not (re.fullmatch(r"\$\((\w+)\)", tid) and env.get(tid[2:-1]) == "metadata.name"):
        bad(f"{where}: --trainer-id {tid!r} is not the pod name, so the {n} trainers would share one id")
    else:
        ok(f"{where}: {n} trainers, each --trainer-id its pod name (one leads, one stands by)")

if k_haproxy and k_replicas:
    where, d, c = k_haproxy
    sts, svc, n, port = k_replicas
    if images.get("haproxy") and c.get("image") != images["haproxy"]:
        bad(f"{where}: image {c.get('image')}, compose runs {images['haproxy']}")
    lb_port = c.get("ports", [{}])[0].get("containerPort", 8080)
    servers = [f"{sts}-{i}.{svc}.{ns}.svc.cluster.local:{port}" for i in range(n)]
    gen = {g["name"]: g.get("files", []) for g in kust.get("configMapGenerator", [])}
    vols = {v["name"]: v.get("configMap", {}).get("name") for v in d["spec"]["template"]["spec"].get("volumes", [])}
    mnts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    cm = vols.get(mnts.get("/usr/local/etc/haproxy"))
    if cm not in gen or "haproxy.cfg" not in gen[cm]:
        bad(f"{where}: /usr/local/etc/haproxy is not the ConfigMap generated from {kdir}/haproxy.cfg")
    else:
        ok(f"{where}: haproxy.cfg comes from kustomization's configMapGenerator {cm}")
    check_rendered(f"{kdir}/haproxy.cfg", "", lb_port, servers)
else:
    bad(f"{kdir}: no HAProxy Deployment in front of the replicas")
PY
)
  status=$?
  echo "$out"
  [ $status -eq 0 ] || bad "the YAML check itself failed (status $status)"
  checks=$((checks + $(grep -c '^ok: \|^MISMATCH: ' <<<"$out")))
  failures=$((failures + $(grep -c '^MISMATCH: ' <<<"$out")))
else
  echo "(no PyYAML: grep checks)"
  # Flow lists and shell lines alike become space-separated words; "" stays visible.
  norm() { sed -e 's/""/<empty>/g' -e "s/''/<empty>/g" -e 's/[][",]/ /g' "$@" | tr -s ' \t' '  '; }
  ref_norm=$(norm <<<"$ref")
  compose=deploy/docker-compose.yml
  for f in "$compose" deploy/k8s/redis.yaml; do
    for opt in --appendonly --appendfsync --save; do
      want=$(grep -oE -- "$opt [^ ]+" <<<"$ref_norm" | head -1)
      expect "$f: Redis $want" "$f: no '$want' (scripts/cluster.sh runs Redis with it)" grep -qF -- "$want" <(norm "$f")
    done
  done
  serve_flags=$(grep -E '^[^ ]+ serve ' <<<"$ref" | head -1 | grep -oE -- '--[a-z-]+' | grep -v -- --model | sort -u)
  train_flags=$(grep -E '^[^ ]+ train ' <<<"$ref" | head -1 | grep -oE -- '--[a-z-]+' | grep -v -- --model | sort -u)
  for pair in "$compose:serve:$serve_flags" "deploy/k8s/replicas.yaml:serve:$serve_flags" \
    "$compose:train:$train_flags" "deploy/k8s/trainer.yaml:train:$train_flags"; do
    f=${pair%%:*} rest=${pair#*:} sub=${rest%%:*} want=${rest#*:}
    norm "$f" | grep -qE "(^| )$sub --cluster" || { bad "$f: no '$sub --cluster'"; continue; }
    # shellcheck disable=SC2086 # one flag a word
    have=$(norm "$f" | grep -E "(^| )$sub --cluster" | grep -oE -- '--[a-z-]+' | grep -v -- --model | sort -u)
    expect "$f: '$sub' with the flags of cluster.sh: $(tr '\n' ' ' <<<"$want")" \
      "$f: '$sub' flags $(tr '\n' ' ' <<<"$have")where cluster.sh has $(tr '\n' ' ' <<<"$want")" \
      test "$have" = "$want"
  done
  expect "deploy/k8s/replicas.yaml: readiness $health_path" "deploy/k8s/replicas.yaml: no readinessProbe path $health_path" \
    grep -qE "path: $health_path\$" deploy/k8s/replicas.yaml
  expect "$compose: healthcheck $health_path" "$compose: no healthcheck of $health_path" grep -qF "$health_path" "$compose"
  ids=$(norm "$compose" | grep -oE -- '--replica-id [0-9]+' | awk '{ print $2 }' | sort -n | tr '\n' ' ')
  expect "$compose: replica ids $ids" "$compose: replica ids '$ids' are not 1..N" \
    test "$ids" = "$(seq -s ' ' 1 "$(wc -w <<<"$ids")") "
  servers=$(grep -oE '^  replica-[0-9]+:' "$compose" | tr -d ' :' | sed 's/$/:8080/')
  # shellcheck disable=SC2086 # one server a word
  expect "deploy/haproxy.cfg: the template rendered for $(tr '\n' ' ' <<<"$servers")" \
    "deploy/haproxy.cfg differs from scripts/cluster.sh haproxy-config --bind '' --port 8080 $(tr '\n' ' ' <<<"$servers")" \
    cmp -s <(bash scripts/cluster.sh haproxy-config --bind '' --port 8080 $servers) deploy/haproxy.cfg
  ns=$(awk '$1 == "namespace:" { print $2; exit }' deploy/k8s/kustomization.yaml)
  sts=$(awk '$1 == "kind:" && $2 == "StatefulSet" { s = 1 } s && $1 == "name:" { print $2; exit }' deploy/k8s/replicas.yaml)
  n=$(awk '$1 == "replicas:" { print $2; exit }' deploy/k8s/replicas.yaml)
  svc=$(awk '$1 == "serviceName:" { print $2; exit }' deploy/k8s/replicas.yaml)
  k_servers=$(for ((i = 0; i < n; i++)); do echo "$sts-$i.$svc.$ns.svc.cluster.local:8080"; done)
  # shellcheck disable=SC2086
  expect "deploy/k8s/haproxy.cfg: the template rendered for $n pods of $sts" \
    "deploy/k8s/haproxy.cfg differs from the template rendered for $n pods of $sts in namespace $ns" \
    cmp -s <(bash scripts/cluster.sh haproxy-config --bind '' --port 8080 $k_servers) deploy/k8s/haproxy.cfg
  expect "deploy/nginx.conf: least_conn" "deploy/nginx.conf: no least_conn" grep -qE '^\s*least_conn;' deploy/nginx.conf
fi

# --- the configs as their programs read them --------------------------------------------
if command -v haproxy >/dev/null; then
  for cfg in deploy/haproxy.cfg deploy/k8s/haproxy.cfg; do
    # Names of other networks do not resolve here: init-addr none lets them be down.
    if msg=$(haproxy -c -f "$cfg" 2>&1); then ok "$cfg: haproxy -c accepts it"
    else bad "$cfg: haproxy -c refuses it: $(grep -E 'ALERT' <<<"$msg" | head -3)"; fi
  done
fi
if command -v nginx >/dev/null && [ -f deploy/nginx.conf ]; then
  tmp=$(mktemp -d)
  # The replica names resolve only on the compose network: test with loopback.
  sed -E 's/server replica-[0-9]+:/server 127.0.0.1:/' deploy/nginx.conf >"$tmp/nginx.conf"
  if msg=$(nginx -t -q -c "$tmp/nginx.conf" -g "pid $tmp/nginx.pid;" 2>&1); then ok "deploy/nginx.conf: nginx -t accepts it"
  else bad "deploy/nginx.conf: nginx -t refuses it: $msg"; fi
  rm -rf "$tmp"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "check_deploy: $failures of $checks checks FAILED: deploy/ does not run what scripts/cluster.sh runs"
  exit 1
fi
echo "check_deploy: all $checks checks agree with scripts/cluster.sh"
