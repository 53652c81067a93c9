#!/usr/bin/env bash
# A real adaptserve cluster on loopback: Redis with AOF, N replicas, K trainers and an
# HAProxy in front of the replicas.
#
#   scripts/cluster.sh [--replicas N] [--trainers K] [--port P] [--redis-port P]
#                      [--run-dir DIR] [--bin PATH] [--model DIR] [--detach]
#   scripts/cluster.sh stop RUN_DIR        stop a cluster started with --detach
#   scripts/cluster.sh status RUN_DIR      which of its processes run, and GET /v1/cluster
#   scripts/cluster.sh restart RUN_DIR NAME  start one process of a detached cluster
#                                          again (NAME: replica-2, trainer-1, redis, haproxy),
#                                          on the same ports and state dir (haproxy with
#                                          its config rendered again from the template)
#   scripts/cluster.sh --print-commands [flags]   the command lines it runs, one a line,
#                                          with {RUN}, {BIN}, {REDIS_PORT}, {PORT} for
#                                          the run dir, the binary and the ports
#   scripts/cluster.sh haproxy-config [--bind ADDR] [--port P] HOST:PORT...
#                                          deploy/haproxy.cfg.tmpl rendered for those replicas
#
# Why: cluster mode has moving parts that unit tests do not put together: Redis
# restarting from its AOF, replicas forwarding labels through it, a trainer holding the
# lease (a second one standing by), and a balancer routing around a replica that dies.
# This script runs exactly that on one machine, so it can be tried, demonstrated and
# broken by hand (kill -9 a replica and watch the balancer keep answering). The
# command lines it prints with --print-commands are what scripts/check_deploy.sh holds
# deploy/ (Dockerfile, docker compose, Kubernetes) to.
#
# Ports: the balancer on --port (default 8080), replica i on --port + i, Redis on
# --redis-port (default 6390). Everything lives in the run dir: redis/ (the AOF),
# replica-i/ and trainer-k/ (state dirs), one log per process, haproxy.cfg, and for a
# detached cluster pids.env. A run dir given again starts the cluster on the state it
# left. Environment: ADAPTSERVE_BIN (the binary, like --bin), READY_TIMEOUT (seconds to
# wait for each replica, default 90), and any ADAPTSERVE_* setting of `serve`, which
# the replicas inherit (ADAPTSERVE_ADMIN_TOKEN opens /v1/admin/sync).
#
# Without --detach it stays in the foreground, reports a process that exits, and on
# Ctrl-C or SIGTERM stops everything (balancer first, Redis last) and exits 130 or 143.
# Other exit statuses: 0 once a detached cluster is up (or stopped), 1 when a
# prerequisite is missing or the cluster did not come up, 2 on a usage error.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
template="$repo/deploy/haproxy.cfg.tmpl"

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
say() { echo "cluster.sh: $*" >&2; }

# --- the commands ---------------------------------------------------------------------
# Each process's command line is built here and nowhere else: the launcher and
# --print-commands both call build_cmd, so what is printed is what runs.

# build_cmd NAME: sets the array `cmd` for process NAME (redis, trainer-K, replica-I,
# haproxy) from run_dir, bin, redis_port, lb_port and model.
build_cmd() {
  local name=$1 redis_url="redis://127.0.0.1:$redis_port"
  case $name in
    redis)
      cmd=(redis-server --port "$redis_port" --bind 127.0.0.1
        --appendonly yes --appendfsync everysec --save "" --dir "$run_dir/redis") ;;
    trainer-*)
      cmd=("$bin" train --cluster "$redis_url" --trainer-id "$name"
        --state-dir "$run_dir/$name" ${model:+--model "$model"}) ;;
    replica-*)
      cmd=("$bin" serve --cluster "$redis_url" --replica-id "${name#replica-}"
        --host 127.0.0.1 --port "$(replica_port "${name#replica-}")"
        --advertise "http://127.0.0.1:$(replica_port "${name#replica-}")"
        --state-dir "$run_dir/$name" ${model:+--model "$model"}) ;;
    haproxy)
      cmd=(haproxy -db -f "$run_dir/haproxy.cfg") ;;
    *) die "no process called $name" ;;
  esac
}

# In --print-commands mode the ports are placeholders, not numbers.
replica_port() { if [ "$lb_port" = "{LB_PORT}" ]; then echo "{PORT}"; else echo $((lb_port + $1)); fi; }

# The processes in start order; stop order is the reverse, so the balancer stops
# taking requests first and Redis, which the others flush to, goes last.
process_names() {
  local i
  echo redis
  for ((i = 1; i <= trainers; i++)); do echo "trainer-$i"; done
  for ((i = 1; i <= replicas; i++)); do echo "replica-$i"; done
  echo haproxy
}

# Shell quoting that leaves placeholders and URLs readable: an argument is quoted only
# when it needs to be, and the empty one is "".
quote_cmd() {
  local a out=""
  for a in "$@"; do
    if [ -z "$a" ]; then a='""'
    elif [[ ! $a =~ ^[A-Za-z0-9_@%+=:,./{}-]+$ ]]; then a="'${a//\'/\'\\\'\'}'"
    fi
    out+="${out:+ }$a"
  done
  printf '%s\n' "$out"
}

# render_haproxy BIND PORT HOST:PORT...: the template with a server line and its label
# affinity rule per replica; the i-th address is the replica with --replica-id i.
render_haproxy() {
  local bind=$1 port=$2 servers="" i=0 addr
  shift 2
  [ -f "$template" ] || die "no template at $template"
  for addr in "$@"; do
    i=$((i + 1))
    servers+="    server replica-$i $addr"$'\n'
    servers+="    use-server replica-$i if { var(txn.made_by) -m int $i }"$'\n'
  done
  echo "# Rendered from deploy/haproxy.cfg.tmpl by scripts/cluster.sh haproxy-config; edit the template, not this copy."
  BIND=$bind PORT=$port SERVERS=$servers awk '
    /^[[:space:]]*#/ { print; next }
    /^@SERVERS@$/ { printf "%s", ENVIRON["SERVERS"]; next }
    { gsub(/@BIND@/, ENVIRON["BIND"]); gsub(/@PORT@/, ENVIRON["PORT"]); print }' "$template"
}

# RUN/haproxy.cfg: the template for this run's replicas, checked by HAProxy itself.
write_haproxy_cfg() {
  local servers=() i
  for ((i = 1; i <= replicas; i++)); do servers+=("127.0.0.1:$(replica_port "$i")"); done
  render_haproxy 127.0.0.1 "$lb_port" "${servers[@]}" >"$run_dir/haproxy.cfg"
  haproxy -c -q -f "$run_dir/haproxy.cfg" || die "HAProxy refused $run_dir/haproxy.cfg"
}

# --- processes ------------------------------------------------------------------------

names=() pids=()

# Start time of a pid (clock ticks since boot), so a pid reused by another program is
# never taken for ours.
# A pid that is gone (or 0, for a process known to be gone) has none: empty output.
proc_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  awk '{ print $20 }' <<<"$stat"
}

launch() {
  local name=$1
  build_cmd "$name"
  [ "$name" = haproxy ] || mkdir -p "$run_dir/$name"
  # setsid: the process outlives a detached script and takes no terminal signals; the
  # script stops it itself.
  NO_COLOR=1 setsid "${cmd[@]}" >>"$run_dir/$name.log" 2>&1 </dev/null &
  names+=("$name") pids+=("$!")
  say "started $name (pid $!): $(quote_cmd "${cmd[@]}")"
}

# stop_pid NAME PID: SIGTERM, then SIGKILL after 15 s. PID 0 stands for a process
# known to be gone, and must never reach kill, where 0 means our own process group.
stop_pid() {
  local name=$1 pid=$2 i
  [[ $pid =~ ^[1-9][0-9]*$ ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || { say "stopped $name"; return 0; }
    sleep 0.1
  done
  say "$name (pid $pid) did not stop within 15 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

stop_all() {
  local i
  for ((i = ${#names[@]} - 1; i >= 0; i--)); do
    stop_pid "${names[i]}" "${pids[i]}"
  done
  wait 2>/dev/null || true
}

# wait_ready NAME PID URL: until URL answers 200, while the process lives.
wait_ready() {
  local name=$1 pid=$2 url=$3 deadline=$((SECONDS + ${READY_TIMEOUT:-90}))
  while ! curl -sf -o /dev/null --max-time 2 "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$run_dir/$name.log" >&2 || true
      die "$name exited before $url answered (log: $run_dir/$name.log)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$run_dir/$name.log" >&2 || true
      die "$url did not answer 200 within ${READY_TIMEOUT:-90} s (log: $run_dir/$name.log)"
    fi
    sleep 0.2
  done
}

wait_redis() {
  local pid=$1 deadline=$((SECONDS + 20))
  until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = "PONG" ]; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$run_dir/redis.log" >&2; die "redis-server exited (log: $run_dir/redis.log)"; }
    ((SECONDS < deadline)) || die "redis-server did not answer PING within 20 s"
    sleep 0.1
  done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_tools() {
  local missing=() sudo=""
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v curl >/dev/null || missing+=(curl)
  command -v setsid >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -ne 0 ] && sudo="sudo "
    echo "cluster.sh: missing ${missing[*]}; install with:" >&2
    echo "  ${sudo}apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
}

# --- pids.env ------------------------------------------------------------------------

write_pids_env() {
  local f="$run_dir/pids.env" i id procs=""
  {
    echo "# Written by scripts/cluster.sh --detach; read by: scripts/cluster.sh stop|status|restart RUN_DIR"
    printf 'URL=%q\nRUN_DIR=%q\nBIN=%q\nMODEL=%q\n' "http://127.0.0.1:$lb_port" "$run_dir" "$bin" "$model"
    printf 'LB_PORT=%s\nREDIS_PORT=%s\nREPLICAS=%s\nTRAINERS=%s\n' "$lb_port" "$redis_port" "$replicas" "$trainers"
    for ((i = 0; i < ${#names[@]}; i++)); do
      id=${names[i]^^}; id=${id//-/_}
      printf '%s_PID=%s\n' "$id" "${pids[i]}"
      [[ ${names[i]} == replica-* ]] && printf '%s_PORT=%s\n' "$id" "$(replica_port "${names[i]#replica-}")"
      procs+="${procs:+ }${names[i]}:${pids[i]}:$(proc_start "${pids[i]}")"
    done
    echo "# name:pid:start time, in start order"
    printf 'PROCESSES=%q\n' "$procs"
  } >"$f.tmp"
  mv "$f.tmp" "$f"
}

json_line() {
  local i out="" reps="" trs="" esc=${run_dir//\\/\\\\}
  esc=${esc//\"/\\\"}
  for ((i = 0; i < ${#names[@]}; i++)); do
    case ${names[i]} in
      redis) out+="\"redis\":{\"pid\":${pids[i]},\"port\":$redis_port}," ;;
      haproxy) out+="\"lb\":{\"pid\":${pids[i]},\"port\":$lb_port}," ;;
      replica-*) reps+="${reps:+,}{\"id\":${names[i]#replica-},\"pid\":${pids[i]},\"port\":$(replica_port "${names[i]#replica-}"),\"url\":\"http://127.0.0.1:$(replica_port "${names[i]#replica-}")\"}" ;;
      trainer-*) trs+="${trs:+,}{\"id\":\"${names[i]}\",\"pid\":${pids[i]}}" ;;
    esac
  done
  printf '{"url":"http://127.0.0.1:%s","run_dir":"%s",%s"replicas":[%s],"trainers":[%s]}\n' \
    "$lb_port" "$esc" "$out" "$reps" "$trs"
}

# load_run RUN_DIR: reads pids.env into the globals and names/pids; a process whose
# pid now belongs to another program (or to nobody) gets pid 0.
load_run() {
  [ -f "$1/pids.env" ] || die "no $1/pids.env: not a cluster started with --detach"
  # shellcheck disable=SC1091
  . "$1/pids.env"
  # shellcheck disable=SC2153 # the upper-case variables come from pids.env
  run_dir=$RUN_DIR bin=$BIN model=$MODEL lb_port=$LB_PORT redis_port=$REDIS_PORT replicas=$REPLICAS trainers=$TRAINERS
  local entry name pid start
  names=() pids=()
  for entry in $PROCESSES; do
    IFS=: read -r name pid start <<<"$entry"
    if [ "$pid" = 0 ] || [ -z "$start" ] || [ "$(proc_start "$pid")" != "$start" ]; then pid=0; fi
    names+=("$name") pids+=("$pid")
  done
}

# --- subcommands ------------------------------------------------------------------------

cmd_stop() {
  [ $# -eq 1 ] || usage
  load_run "$1"
  stop_all
  rm -f "$run_dir/pids.env"
  echo "stopped; state and logs kept in $run_dir"
}

cmd_status() {
  [ $# -eq 1 ] || usage
  load_run "$1"
  local i
  for ((i = 0; i < ${#names[@]}; i++)); do
    if [ "${pids[i]}" != 0 ]; then echo "${names[i]}: running (pid ${pids[i]})"
    else echo "${names[i]}: not running"; fi
  done
  echo "GET $URL/v1/cluster:"
  curl -s --max-time 2 "$URL/v1/cluster" || echo "(no answer)"
  echo
}

cmd_restart() {
  [ $# -eq 2 ] || usage
  load_run "$1"
  local name=$2 i found=""
  for ((i = 0; i < ${#names[@]}; i++)); do
    [ "${names[i]}" = "$name" ] || continue
    found=1
    if [ "${pids[i]}" != 0 ]; then stop_pid "$name" "${pids[i]}"; fi
    local port=""
    case $name in
      redis) port=$redis_port ;;
      haproxy) port=$lb_port ;;
      replica-*) port=$(replica_port "${name#replica-}") ;;
    esac
    # The balancer comes back with the template as it is now.
    if [ "$name" = haproxy ]; then write_haproxy_cfg; fi
    if [ -n "$port" ] && port_in_use "$port"; then
      die "port $port is taken by a process this run does not know (not $name's recorded pid); stop it first"
    fi
    launch "$name"
    pids[i]=${pids[-1]}
    unset 'names[-1]' 'pids[-1]'
    case $name in
      replica-*) wait_ready "$name" "${pids[i]}" "http://127.0.0.1:$(replica_port "${name#replica-}")/health/ready" ;;
      redis) wait_redis "${pids[i]}" ;;
    esac
  done
  [ -n "$found" ] || die "no process $name in $run_dir (processes: ${names[*]})"
  write_pids_env
  echo "restarted $name"
}

cmd_haproxy_config() {
  local bind=127.0.0.1 port=8080
  while [ $# -gt 0 ]; do
    case $1 in
      --bind) bind=$2; shift 2 ;;
      --port) port=$2; shift 2 ;;
      -*) usage ;;
      *) break ;;
    esac
  done
  [ $# -gt 0 ] || usage
  render_haproxy "$bind" "$port" "$@"
}

case ${1:-} in
  stop) shift; cmd_stop "$@"; exit ;;
  status) shift; cmd_status "$@"; exit ;;
  restart) shift; cmd_restart "$@"; exit ;;
  haproxy-config) shift; cmd_haproxy_config "$@"; exit ;;
  start) shift ;;
esac

# --- start ---------------------------------------------------------------------------

replicas=3 trainers=1 lb_port=8080 redis_port=6390 run_dir="" bin="${ADAPTSERVE_BIN:-}"
model="" detach="" print_commands=""
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
while [ $# -gt 0 ]; do
  case $1 in
    --replicas) replicas=${2:?}; shift 2 ;;
    --trainers) trainers=${2:?}; shift 2 ;;
    --port) lb_port=${2:?}; shift 2 ;;
    --redis-port) redis_port=${2:?}; shift 2 ;;
    --run-dir) run_dir=$(abs "${2:?}"); shift 2 ;;
    --bin) bin=${2:?}; shift 2 ;;
    --model) model=$(abs "${2:?}"); shift 2 ;;
    --detach) detach=1; shift ;;
    --print-commands) print_commands=1; shift ;;
    -h | --help) usage ;;
    *) echo "cluster.sh: unknown argument $1" >&2; usage ;;
  esac
done
for v in "$replicas" "$trainers" "$lb_port" "$redis_port"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "cluster.sh: not a number: $v" >&2; exit 2; }
done
((replicas >= 1 && replicas <= 1023)) || { echo "cluster.sh: --replicas must be 1..1023" >&2; exit 2; }
((trainers >= 1)) || { echo "cluster.sh: --trainers must be at least 1" >&2; exit 2; }

if [ -n "$print_commands" ]; then
  run_dir="{RUN}" bin="{BIN}" redis_port="{REDIS_PORT}" lb_port="{LB_PORT}"
  while read -r name; do
    build_cmd "$name"
    quote_cmd "${cmd[@]}"
  done < <(process_names)
  exit 0
fi

require_tools
if [ -z "$bin" ]; then
  bin="${CARGO_TARGET_DIR:-$repo/target}/release/adaptserve"
  if [ ! -x "$bin" ]; then
    say "no $bin: building it (cargo build --release --workspace --locked)"
    (cd "$repo" && cargo build --release --workspace --locked) >&2
  fi
fi
bin=$(abs "$bin")
[ -x "$bin" ] || die "no adaptserve binary at $bin"
[ -x "$(dirname "$bin")/update-worker" ] ||
  say "warning: no update-worker beside $bin; replicas serve but their worker cannot start"
[ -n "$run_dir" ] || run_dir=$(mktemp -d "${TMPDIR:-/tmp}/adaptserve-cluster.XXXXXX")
mkdir -p "$run_dir"
[ ! -f "$run_dir/pids.env" ] || die "$run_dir/pids.env exists: a detached cluster may be running there (scripts/cluster.sh stop $run_dir)"
for p in "$redis_port" "$lb_port" $(for ((i = 1; i <= replicas; i++)); do replica_port "$i"; done); do
  ! port_in_use "$p" || die "port $p is in use on 127.0.0.1 (choose others with --port / --redis-port)"
done
# Relative defaults of the binary (models/default) resolve against the repository.
cd "$repo"

started=""
on_exit() {
  local status=$?
  if [ -z "$started" ] || [ -z "$detach" ]; then stop_all; fi
  exit "$status"
}
trap on_exit EXIT
trap 'say "stopping"; exit 130' INT
trap 'say "stopping"; exit 143' TERM

write_haproxy_cfg

# Redis first, then the trainers and the replicas side by side; the balancer starts once
# every replica is ready, so it begins with all of them up.
while read -r name; do
  if [ "$name" = haproxy ]; then
    for ((i = 0; i < ${#names[@]}; i++)); do
      case ${names[i]} in
        replica-*) wait_ready "${names[i]}" "${pids[i]}" "http://127.0.0.1:$(replica_port "${names[i]#replica-}")/health/ready" ;;
        trainer-*) kill -0 "${pids[i]}" 2>/dev/null || die "${names[i]} exited (log: $run_dir/${names[i]}.log)" ;;
      esac
    done
  fi
  launch "$name"
  case $name in
    redis) wait_redis "${pids[-1]}" ;;
    haproxy) wait_ready haproxy "${pids[-1]}" "http://127.0.0.1:$lb_port/health/ready" ;;
  esac
done < <(process_names)
started=1

if [ -n "$detach" ]; then
  write_pids_env
  echo "ready: http://127.0.0.1:$lb_port"
  json_line
  say "stop it with: scripts/cluster.sh stop $run_dir"
  exit 0
fi

echo "ready: http://127.0.0.1:$lb_port"
say "logs and state in $run_dir; Ctrl-C stops everything"
# Report each process that exits (a replica killed by hand, say) once, and carry on.
declare -A reported=()
while :; do
  sleep 1 &
  wait $! || true
  for ((i = 0; i < ${#names[@]}; i++)); do
    if [ -z "${reported[$i]:-}" ] && ! kill -0 "${pids[i]}" 2>/dev/null; then
      reported[$i]=1
      status=0
      wait "${pids[i]}" 2>/dev/null || status=$?
      say "${names[i]} (pid ${pids[i]}) exited with status $status (log: $run_dir/${names[i]}.log)"
    fi
  done
done
