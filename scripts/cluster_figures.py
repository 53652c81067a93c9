#!/usr/bin/env python3
"""The three scale-out figures of issue 16, measured on loopback with real processes.

Why: cluster mode (README "Scale out", docs/ARCHITECTURE.md section 5) makes three
promises that only real processes can show: the forwarder moves a replica's WAL onto
the shared label stream fast enough (target >= 20k labels/s to a local Redis), a
label given on one replica takes effect on another within a bounded time, and a
Redis outage fails no prediction and loses no acknowledged label. This script
starts redis-server (AOF: --appendonly yes --appendfsync everysec --save ""),
`adaptserve serve --cluster` replicas and `adaptserve train --cluster`, each on a
fresh state dir and a free port, measures, stops them, and prints a JSON summary.

  1. forwarder: Redis killed (SIGKILL), wrk (scripts/wrk_feedback.lua) sends
     labelled examples to one replica for --fill seconds, so they wait in its WAL
     (/v1/status cluster.forward.unsent); Redis restarted from its AOF; the
     replica's mark in Redis ({adaptserve}:forwarded) is polled every 5 ms until it
     reaches the WAL's last sequence number. Drained labels / drain time is the real
     forwarder's throughput (ring + WAL replay + the append-once Lua script in
     batches of 512), reported from Redis answering PING and from the forwarder's
     first append (the difference is its retry backoff, at most 2 s). Then, on the
     same Redis, the append script alone (EVALSHA of 512 records of 104 bytes, the
     WAL record size of 16 features, prebuilt, one at a time) and redis-benchmark's
     XADD of the same payload, pipelined.
  2. label to effect across replicas: two replicas and a trainer; per round,
     POST /v1/feedback on A, POST /v1/admin/sync on A (its reply names the
     version), then GET /v1/status on B until its model_version reaches it. The
     trainer's "published version=N" and each replica's "serving the cluster's new
     version" log lines split each sync into trainer and replica time.
  3. Redis outage under load: two replicas and a trainer under an open-loop load
     (Python threads; latency measured from each request's scheduled time) of
     /v1/infer, labelled examples and delayed labels by request_id (half on the
     replica that made the prediction, half on the other); Redis is
     SIGKILLed (restarted from its AOF) or SIGSTOPped (SIGCONT) for --outage
     seconds. Counts failed inferences, the p99 before, during and after, the time
     until each replica's backlog at the moment Redis returned is on the stream and
     until a replica serves a new version, and, after a final sync on every
     replica, whether the trainer's labels_learned plus labels_skipped (labels of
     versions its guard rejected) equals the labels answered 202
     (and duplicates == 0). A label by request_id sent to the other replica while
     Redis is away is answered 503 (documented: retry), so it is not acknowledged.

Stdlib only (Python >= 3.8); needs redis-server, wrk and redis-benchmark on PATH
and a release build:

  cargo build --release --workspace --locked
  scripts/cluster_figures.py [--bin target/release/adaptserve] [--figures 1,2,3]
      [--runs 3] [--rounds 60] [--outage-modes kill,stop] > figures.json

Progress goes to stderr, the JSON summary to stdout. Medians are over the runs of
one invocation; the machine is shared, so run it more than once. Every process it
starts is stopped at the end (SIGTERM, then SIGKILL after 15 s); --keep keeps the
state dirs and the processes' logs under --workdir. BENCHMARKS.md, "Scale-out on
Redis Streams", has the figures and what they showed.
"""

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "figures-token"
PREFIX = "{adaptserve}"
BASE = [0.7, -1200.5, 0.0031, 45.2, 880000.0, -0.02, 3.3, 0.9, 12.0, -0.4,
        7000.0, 0.11, -2.5, 0.0009, 61.0, -330000.0]
PROCS = []  # every process this script started, stopped at exit



def read_once(trainer):
    """Labels the trainer read once: in the served weights, or held by a version
    its guard rejected (counted as skipped, not learned)."""
    return trainer["labels_learned"] + trainer.get("labels_skipped", 0)

def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    """The q-th percentile (nearest rank) of values; None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(q / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def example(rng, label=None):
    """A labelled example around the default model's feature scales (as wrk_feedback.lua)."""
    if label is None:
        label = rng.randrange(4)
    x = [b * (1 + 0.5 * (((j + 1 + label) % 4) - 1.5) + 0.3 * rng.gauss(0, 1))
         for j, b in enumerate(BASE)]
    return x, label


# --- Redis ------------------------------------------------------------------------


class RedisError(Exception):
    pass


class Resp:
    """A minimal RESP2 client: enough for PING, HGET, XLEN, SCRIPT LOAD, EVALSHA."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if not isinstance(a, bytes):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def raw(self, data):
        self.sock.sendall(data)
        return self.read()

    def cmd(self, *args):
        return self.raw(self.encode(*args))

    def read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, body = line[:1], line[1:-2]
        if kind == b"+":
            return body.decode()
        if kind == b"-":
            raise RedisError(body.decode())
        if kind == b":":
            return int(body)
        if kind == b"$":
            n = int(body)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if kind == b"*":
            n = int(body)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RedisError("unexpected reply %r" % line)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Redis:
    """redis-server with AOF on a fixed port and dir; killed, stopped and restarted."""

    def __init__(self, port, workdir):
        self.port = port
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def start(self):
        """Starts it and returns once it answers PING (after replaying its AOF)."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        PROCS.append(self.proc)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                c = Resp(self.port, timeout=1)
                try:
                    if c.cmd("PING") == "PONG":
                        return
                finally:
                    c.close()
            except (OSError, RedisError, ConnectionError):
                time.sleep(0.005)
        raise RuntimeError("redis-server on %d did not answer" % self.port)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def client(self):
        return Resp(self.port)


# --- adaptserve processes -----------------------------------------------------------


class Http:
    """One keep-alive connection; reconnects after any failure."""

    def __init__(self, port, timeout=10.0):
        self.port, self.timeout, self.conn = port, timeout, None

    def request(self, method, path, body=None, token=False, retry=False):
        """One request; with `retry` (idempotent reads only), once more on a new
        connection when a reused one was closed without an answer (logged)."""
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = "Bearer " + TOKEN
        data = None if body is None else json.dumps(body).encode()
        reused = self.conn is not None
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self.close()
            if retry and reused and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                   BrokenPipeError)):
                log("%s %s on port %d: %r on a reused connection; retried" % (method, path, self.port, e))
                return self.request(method, path, body, token)
            raise
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return resp.status, parsed

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Replica:
    def __init__(self, args, workdir, redis, replica_id):
        self.id = replica_id
        self.port = free_port()
        self.state = os.path.join(workdir, "replica%d" % replica_id)
        self.log = os.path.join(workdir, "replica%d.log" % replica_id)
        cmd = [args.bin, "serve", "--model", args.model, "--cluster", redis.url,
               "--replica-id", str(replica_id), "--port", str(self.port),
               "--state-dir", self.state, "--admin-token", TOKEN]
        env = dict(os.environ, NO_COLOR="1")
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        PROCS.append(self.proc)
        self.http = Http(self.port)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.http.request("GET", "/health/ready")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("replica %d did not become ready; see %s" % (replica_id, self.log))

    def status(self):
        return self.http.request("GET", "/v1/status", retry=True)[1]

    def cluster(self):
        code, body = self.http.request("GET", "/v1/cluster", retry=True)
        return body if code == 200 else None


class Trainer:
    def __init__(self, args, workdir, redis):
        self.log = os.path.join(workdir, "trainer.log")
        cmd = [args.bin, "train", "--cluster", redis.url, "--model", args.model,
               "--trainer-id", "figures"]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, NO_COLOR="1"))
        PROCS.append(self.proc)


def stop_all():
    """SIGTERM (SIGCONT first, for a stopped Redis), then SIGKILL after 15 s."""
    for p in PROCS:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGCONT)
                p.terminate()
            except ProcessLookupError:
                pass
    for p in PROCS:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    PROCS.clear()


def wait_trainer_leads(replica, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = replica.cluster()
        if view and view.get("trainer"):
            return view["trainer"]
        time.sleep(0.1)
    raise RuntimeError("no trainer status within %d s" % timeout)


def sync(replica):
    t = time.perf_counter()
    code, body = replica.http.request("POST", "/v1/admin/sync", token=True)
    return code, body, time.perf_counter() - t


def log_times(path, pattern):
    """{N: unix seconds} of the first log line matching `pattern` (one group, N)."""
    import datetime
    out = {}
    rx = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z .*" + pattern)
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return out
    for line in lines:
        m = rx.match(line)
        if m:
            stamp = datetime.datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f")
            out.setdefault(int(m.group(2)), stamp.replace(tzinfo=datetime.timezone.utc).timestamp())
    return out


# --- figure 1 -----------------------------------------------------------------------


def parse_wrk(out):
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError("wrk printed no RESULT line:\n" + out)
    f = m.group(1).split()
    return {"requests": int(f[0]), "seconds": float(f[1]), "non_2xx": int(f[2]),
            "socket_errors": sum(int(x) for x in f[3:7]),
            "rate_per_s": round(int(f[0]) / float(f[1])),
            "p50_us": float(f[7]), "p99_us": float(f[8])}


def append_script_alone(redis, batches, batch=512, payload_bytes=104):
    """The forwarder's append-once script on its own: EVALSHA of `batch` records,
    prebuilt, one call at a time (no pipelining, as the forwarder)."""
    script_src = open(os.path.join(ROOT, "crates/cluster/src/labels.rs")).read()
    lua = re.search(r'const APPEND_ONCE: &str = r"\n(.*?)";', script_src, re.S).group(1)
    c = redis.client()
    sha = c.cmd("SCRIPT", "LOAD", lua).decode()
    keys = ("{bench}:forwarded", "{bench}:labels")
    payload = bytes(random.getrandbits(8) for _ in range(payload_bytes))
    calls = []
    seq = 0
    for _ in range(batches):
        args = ["EVALSHA", sha, 2, keys[0], keys[1], 1]
        for _ in range(batch):
            seq += 1
            args += [seq, payload]
        calls.append(Resp.encode(*args))
    t = time.perf_counter()
    for call in calls:
        reply = c.raw(call)
        assert reply[2] == batch, reply
    elapsed = time.perf_counter() - t
    c.cmd("DEL", keys[0], keys[1])
    c.close()
    return {"records": seq, "seconds": round(elapsed, 3),
            "records_per_s": round(seq / elapsed), "batch": batch,
            "ms_per_batch": round(1000 * elapsed / batches, 3)}


def redis_benchmark_xadd(redis, payload_bytes=104, n=200000, pipeline=64):
    """redis-benchmark's XADD of the same payload (pipelined): Redis's raw append rate."""
    if not shutil.which("redis-benchmark"):
        return None
    out = subprocess.run(
        ["redis-benchmark", "-p", str(redis.port), "-n", str(n), "-c", "1",
         "-P", str(pipeline), "--csv", "XADD", "{bench}:raw", "*", "r", "1", "s", "1",
         "u", "x" * payload_bytes], capture_output=True, text=True, timeout=300).stdout
    c = redis.client()
    c.cmd("DEL", "{bench}:raw")
    c.close()
    rows = [line for line in out.splitlines() if line.startswith('"XADD')]
    if not rows:
        return None
    return {"records_per_s": round(float(rows[-1].split(",")[1].strip('"'))),
            "pipeline": pipeline, "clients": 1}


def figure1(args, run):
    work = tempfile.mkdtemp(prefix="fig1-", dir=args.workdir)
    redis = Redis(free_port(), work)
    try:
        redis.start()
        replica = Replica(args, work, redis, 1)
        time.sleep(1.5)  # a heartbeat, so the replica has talked to Redis
        redis.kill()
        log("fig1 run %d: Redis killed; wrk fills the WAL for %d s" % (run, args.fill))
        wrk = subprocess.run(
            ["wrk", "-t2", "-c%d" % args.wrk_connections, "-d%ds" % args.fill,
             "-s", os.path.join(ROOT, "scripts/wrk_feedback.lua"),
             "http://127.0.0.1:%d/v1/feedback" % replica.port],
            capture_output=True, text=True, timeout=args.fill + 60)
        filled = parse_wrk(wrk.stdout)
        time.sleep(1.0)  # requests wrk left in flight are logged or dropped
        st = replica.status()["cluster"]["forward"]
        logged = st["forwarded_seq"] + st["unsent"]
        log("fig1 run %d: %d labels acknowledged by wrk, %d in the WAL, %d unsent"
            % (run, filled["requests"] - filled["non_2xx"], logged, st["unsent"]))
        t_restart = time.perf_counter()
        redis.start()
        t_up = time.perf_counter()
        c = redis.client()
        t_first = t_done = None
        curve = []
        deadline = time.time() + 600
        while time.time() < deadline:
            mark = c.cmd("HGET", PREFIX + ":forwarded", "1")
            mark = int(mark) if mark else 0
            now = time.perf_counter()
            if mark > 0 and t_first is None:
                t_first = now
            if not curve or now - curve[-1][0] >= 0.5:
                curve.append((now, mark))
            if mark >= logged:
                t_done = now
                break
            time.sleep(0.005)
        if t_done is None:
            raise RuntimeError("the backlog did not drain in 600 s")
        xlen = c.cmd("XLEN", PREFIX + ":labels")
        c.close()
        after = replica.status()["cluster"]["forward"]
        drain_up, drain_first = t_done - t_up, t_done - t_first
        result = {
            "labels": logged,
            "fill": filled,
            "redis_restart_s": round(t_up - t_restart, 3),
            "first_append_after_up_s": round(t_first - t_up, 3),
            "drain_from_up_s": round(drain_up, 3),
            "drain_from_first_append_s": round(drain_first, 3),
            "labels_per_s_from_up": round(logged / drain_up),
            "labels_per_s_from_first_append": round(logged / drain_first),
            "stream_length": xlen,
            "status_after": {"unsent": after["unsent"], "forwarded": after["forwarded"],
                             "resent_gaps": after["resent_gaps"]},
            "progress": [(round(t - t_up, 2), m) for t, m in curve],
        }
        log("fig1 run %d: %d labels drained in %.2f s from PING (%.2f s from the first "
            "append): %d/s (%d/s)" % (run, logged, drain_up, drain_first,
                                      result["labels_per_s_from_up"],
                                      result["labels_per_s_from_first_append"]))
        result["append_script_alone"] = append_script_alone(redis, args.script_batches)
        result["redis_benchmark_xadd"] = redis_benchmark_xadd(redis)
        log("fig1 run %d: append script alone %d records/s; XADD pipelined %s/s" % (
            run, result["append_script_alone"]["records_per_s"],
            (result["redis_benchmark_xadd"] or {}).get("records_per_s")))
        return result
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --- figure 2 -----------------------------------------------------------------------


def figure2(args):
    work = tempfile.mkdtemp(prefix="fig2-", dir=args.workdir)
    redis = Redis(free_port(), work)
    rng = random.Random(2)
    try:
        redis.start()
        a = Replica(args, work, redis, 1)
        b = Replica(args, work, redis, 2)
        Trainer(args, work, redis)
        wait_trainer_leads(a)
        # Warm: a few hundred labels on both and a few syncs, so the first versions
        # (and the guard's early verdicts) are behind us.
        for i in range(300):
            x, y = example(rng)
            (a if i % 2 else b).http.request("POST", "/v1/feedback", {"features": x, "label": y})
        rounds = []
        poll_rtts = []
        for i in range(args.warm_rounds + args.rounds):
            x, y = example(rng)
            t0 = time.perf_counter()
            code, body = a.http.request("POST", "/v1/feedback", {"features": x, "label": y})
            t1 = time.perf_counter()
            if code != 202:
                raise RuntimeError("feedback answered %s %s" % (code, body))
            wall_sync = time.time()
            code, reply, _ = sync(a)
            t2 = time.perf_counter()
            if code != 200:
                raise RuntimeError("sync answered %s %s" % (code, reply))
            target = reply["model_version"]
            polls = 0
            while True:
                tp = time.perf_counter()
                v = b.status()["model_version"]
                polls += 1
                t3 = time.perf_counter()
                poll_rtts.append(t3 - tp)
                if v >= target:
                    break
                if t3 - t2 > 30:
                    raise RuntimeError("B did not reach v%d in 30 s (serves v%d)" % (target, v))
            if i >= args.warm_rounds:
                rounds.append({"feedback_ms": (t1 - t0) * 1e3, "sync_ms": (t2 - t1) * 1e3,
                               "b_after_sync_ms": (t3 - t2) * 1e3, "total_ms": (t3 - t0) * 1e3,
                               "version": target, "polls": polls, "wall_sync": wall_sync})
            time.sleep(rng.uniform(0.02, 0.1))
        view = a.cluster()
        # Where a sync's time goes, from the processes' own log lines: the trainer's
        # "published version=N" and each replica's "serving the cluster's new version".
        published = log_times(os.path.join(work, "trainer.log"), r"published version=(\d+) ")
        adopted_a = log_times(a.log, r"serving the cluster's new version version=(\d+) ")
        adopted_b = log_times(b.log, r"serving the cluster's new version version=(\d+) ")
        for r in rounds:
            v = r["version"]
            if v in published:
                r["trainer_published_ms"] = (published[v] - r["wall_sync"]) * 1e3
                if v in adopted_a:
                    r["a_adopted_after_publish_ms"] = (adopted_a[v] - published[v]) * 1e3
                if v in adopted_b:
                    r["b_adopted_after_publish_ms"] = (adopted_b[v] - published[v]) * 1e3

        def summary(key):
            vals = [r[key] for r in rounds if key in r]
            if not vals:
                return None
            return {"median": round(median(vals), 2), "p99": round(pct(vals, 99), 2),
                    "min": round(min(vals), 2), "max": round(max(vals), 2)}

        result = {
            "rounds": len(rounds),
            "label_to_effect_on_b_ms": summary("total_ms"),
            "sync_on_a_ms": summary("sync_ms"),
            "feedback_on_a_ms": summary("feedback_ms"),
            "b_after_a_sync_ms": summary("b_after_sync_ms"),
            "from_logs": {
                "sync_call_to_trainer_publish_ms": summary("trainer_published_ms"),
                "publish_to_a_serving_ms": summary("a_adopted_after_publish_ms"),
                "publish_to_b_serving_ms": summary("b_adopted_after_publish_ms"),
            },
            "b_already_there": sum(1 for r in rounds if r["polls"] == 1),
            "label_to_effect_sorted_ms": sorted(round(r["total_ms"], 1) for r in rounds),
            "status_poll_ms": {"median": round(median(poll_rtts) * 1e3, 3),
                               "p99": round(pct(poll_rtts, 99) * 1e3, 3)},
            "versions": [rounds[0]["version"], rounds[-1]["version"]],
            "trainer": view.get("trainer") if view else None,
        }
        log("fig2: label to effect on B median %.1f ms p99 %.1f ms; A's sync median %.1f ms p99 %.1f ms"
            % (result["label_to_effect_on_b_ms"]["median"], result["label_to_effect_on_b_ms"]["p99"],
               result["sync_on_a_ms"]["median"], result["sync_on_a_ms"]["p99"]))
        return result
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --- figure 3 -----------------------------------------------------------------------


class Load:
    """Open-loop load: inferences and labelled examples at fixed rates, round-robin
    over the replicas, plus a label by request_id for every `rid_every`-th
    prediction (drawn at random), `rid_delay` s after its answer, on the replica
    that made it or the other one (half each), with the example's class. Each
    request's latency is measured from its scheduled time."""

    def __init__(self, replicas, infer_rate, label_rate, rid_every, rid_delay,
                 infer_threads=16, label_threads=64):
        import queue
        self.replicas = replicas
        self.infer_rate, self.label_rate = infer_rate, label_rate
        self.rid_every, self.rid_delay = rid_every, rid_delay
        self.infer_q, self.label_q = queue.Queue(), queue.Queue()
        self.delayed = []  # (due, port_index, request_id)
        self.delayed_lock = threading.Lock()
        self.infers = []  # (scheduled, done, status or error)
        self.labels = []  # (scheduled, done, status or error, kind)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._scheduler, daemon=True)]
        self.threads += [threading.Thread(target=self._infer_worker, args=(i,), daemon=True)
                         for i in range(infer_threads)]
        self.threads += [threading.Thread(target=self._label_worker, args=(i,), daemon=True)
                         for i in range(label_threads)]
        self.rng = random.Random(3)

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for _ in range(200):
            self.infer_q.put(None)
            self.label_q.put(None)
        for t in self.threads:
            t.join(timeout=30)

    def _scheduler(self):
        t0 = time.perf_counter()
        ni, nl = 0, 0
        while not self.stop.is_set():
            now = time.perf_counter()
            next_i = t0 + ni / self.infer_rate
            next_l = t0 + nl / self.label_rate
            with self.delayed_lock:
                due = [d for d in self.delayed if d[0] <= now]
                self.delayed = [d for d in self.delayed if d[0] > now]
                next_d = min((d[0] for d in self.delayed), default=now + 1)
            for d in due:
                self.label_q.put((d[3], d[0], d[1], d[2]))
            if next_i <= now:
                x, y = example(self.rng)
                self.infer_q.put((next_i, ni % len(self.replicas), (x, y)))
                ni += 1
                continue
            if next_l <= now:
                x, y = example(self.rng)
                self.label_q.put(("features", next_l, nl % len(self.replicas), (x, y)))
                nl += 1
                continue
            time.sleep(max(0.0, min(next_i, next_l, next_d) - time.perf_counter()))

    def _infer_worker(self, i):
        clients = [Http(r.port, timeout=10) for r in self.replicas]
        rng = random.Random(100 + i)
        while True:
            item = self.infer_q.get()
            if item is None:
                return
            scheduled, k, (x, y) = item
            try:
                code, body = clients[k].request("POST", "/v1/infer", {"inputs": [x]})
                outcome = code
            except Exception as e:  # noqa: BLE001 -- any failure is counted
                outcome, body = type(e).__name__, None
            done = time.perf_counter()
            self.infers.append((scheduled, done, outcome))
            if outcome == 200 and self.rid_every and rng.random() < 1.0 / self.rid_every:
                # The example's own class, on the replica that answered or another.
                rid = body["predictions"][0]["request_id"]
                other = rng.random() < 0.5
                target = (k + 1) % len(self.replicas) if other else k
                with self.delayed_lock:
                    self.delayed.append((done + self.rid_delay, target, (rid, y),
                                         "rid-other" if other else "rid-same"))

    def _label_worker(self, i):
        clients = [Http(r.port, timeout=10) for r in self.replicas]
        while True:
            item = self.label_q.get()
            if item is None:
                return
            kind, scheduled, k, payload = item
            if kind.startswith("rid"):
                body = {"request_id": payload[0], "label": payload[1]}
            else:
                body = {"features": payload[0], "label": payload[1]}
            try:
                outcome = clients[k].request("POST", "/v1/feedback", body)[0]
            except Exception as e:  # noqa: BLE001
                outcome = type(e).__name__
            self.labels.append((scheduled, time.perf_counter(), outcome, kind))


def latency_summary(rows, start, end):
    lat = [(d - s) * 1e3 for s, d, o, *_ in rows if start <= s < end and o in (200, 202)]
    return {"n": len(lat), "p50_ms": round(pct(lat, 50), 2) if lat else None,
            "p99_ms": round(pct(lat, 99), 2) if lat else None,
            "max_ms": round(max(lat), 2) if lat else None}


def figure3(args, mode):
    work = tempfile.mkdtemp(prefix="fig3-", dir=args.workdir)
    redis = Redis(free_port(), work)
    rng = random.Random(4)
    try:
        redis.start()
        replicas = [Replica(args, work, redis, i) for i in (1, 2)]
        Trainer(args, work, redis)
        wait_trainer_leads(replicas[0])
        acked = 0
        for i in range(500):
            x, y = example(rng)
            code, _ = replicas[i % 2].http.request("POST", "/v1/feedback", {"features": x, "label": y})
            acked += code == 202
        load = Load(replicas, args.infer_rate, args.label_rate, args.rid_every, args.rid_delay)
        load.start()
        t_load = time.perf_counter()
        time.sleep(args.warm + args.before)
        t_out = time.perf_counter()
        (redis.kill if mode == "kill" else redis.pause)()
        log("fig3 %s: Redis %s for %d s under load" % (mode, "killed" if mode == "kill" else "stopped",
                                                       args.outage))
        while time.perf_counter() - t_out < args.outage:
            time.sleep(0.05)
        if mode == "kill":
            redis.start()
        else:
            redis.resume()
        t_back = time.perf_counter()
        # The backlog when Redis returned: every record logged by then.
        backlog = {r.id: r.status()["cluster"]["forward"] for r in replicas}
        targets = {i: f["forwarded_seq"] + f["unsent"] for i, f in backlog.items()}
        version_at_return = replicas[0].status()["model_version"]
        new_version_s = None
        last_look = 0.0
        c = None
        drained = {}
        deadline = time.time() + 600
        while (len(drained) < len(replicas) or new_version_s is None) and time.time() < deadline:
            now = time.perf_counter()
            if new_version_s is None and now - last_look >= 0.1:
                last_look = now
                if replicas[0].status()["model_version"] > version_at_return:
                    new_version_s = time.perf_counter() - t_back
            try:
                if c is None:
                    c = redis.client()
                for i, target in targets.items():
                    if i in drained:
                        continue
                    mark = c.cmd("HGET", PREFIX + ":forwarded", str(i))
                    if mark is not None and int(mark) >= target:
                        drained[i] = time.perf_counter() - t_back
            except (OSError, RedisError, ConnectionError):
                if c is not None:
                    c.close()
                c = None
            time.sleep(0.02)
        if c is not None:
            c.close()
        log("fig3 %s: backlog %s drained in %s s; replica 1 served a new version after %s s" % (
            mode, {i: targets[i] - backlog[i]["forwarded_seq"] for i in targets},
            {i: round(s, 2) for i, s in drained.items()}, new_version_s))
        time.sleep(args.after)
        t_end = time.perf_counter()
        load.finish()
        # Everything answered 202 must be learned once: wait for the forwarders, sync
        # every replica, then read the trainer's lineage counts.
        for _ in range(600):
            if all(r.status()["cluster"]["forward"]["unsent"] == 0 for r in replicas):
                break
            time.sleep(0.1)
        syncs = []
        for r in replicas:
            code, body, secs = sync(r)
            syncs.append({"replica": r.id, "code": code, "reply": body, "ms": round(secs * 1e3, 1)})
        acked += sum(1 for *_, o, _k in load.labels if o == 202)
        trainer = None
        for _ in range(100):
            view = replicas[0].cluster()
            trainer = view.get("trainer") if view else None
            if trainer and read_once(trainer) >= acked:
                break
            time.sleep(0.2)
        statuses = [r.status() for r in replicas]
        infer_outcomes, label_outcomes = {}, {}
        for *_, o in load.infers:
            infer_outcomes[str(o)] = infer_outcomes.get(str(o), 0) + 1
        for *_, o, k in load.labels:
            key = "%s %s" % (k, o)
            label_outcomes[key] = label_outcomes.get(key, 0) + 1
        t_load_w = t_load + args.warm
        failed = sum(n for o, n in infer_outcomes.items() if o != "200")
        result = {
            "mode": mode,
            "outage_s": round(t_back - t_out, 2),
            "infer_rate_per_s": args.infer_rate, "label_rate_per_s": args.label_rate,
            "inferences": len(load.infers), "inferences_failed": failed,
            "infer_outcomes": infer_outcomes,
            "label_outcomes": label_outcomes,
            "infer_latency": {
                "before": latency_summary(load.infers, t_load_w, t_out),
                "outage": latency_summary(load.infers, t_out, t_back),
                "after": latency_summary(load.infers, t_back, t_end),
            },
            "label_latency": {
                "before": latency_summary(load.labels, t_load_w, t_out),
                "outage": latency_summary(load.labels, t_out, t_back),
                "after": latency_summary(load.labels, t_back, t_end),
            },
            "unsent_at_return": {i: targets[i] - backlog[i]["forwarded_seq"] for i in targets},
            "drain_s": {i: round(s, 3) for i, s in drained.items()},
            "drain_s_max": round(max(drained.values()), 3) if len(drained) == len(replicas) else None,
            "first_new_version_after_return_s": round(new_version_s, 2) if new_version_s else None,
            "labels_acked": acked,
            "labels_learned": trainer["labels_learned"] if trainer else None,
            "labels_skipped": trainer.get("labels_skipped", 0) if trainer else None,
            "lost_labels": (acked - read_once(trainer)) if trainer else None,
            "duplicates": trainer["duplicates"] if trainer else None,
            "trainer": trainer,
            "final_syncs": syncs,
            "replicas": {s["cluster"]["replica_id"]: {
                "model_version": s["model_version"],
                "resent_gaps": s["cluster"]["forward"]["resent_gaps"],
                "redis_errors": s["cluster"]["redis_errors"],
                "versions_refused": s["cluster"]["versions_refused"],
                "pending": s["cluster"]["pending"],
                "ring_dropped": s["ring"]["dropped"],
            } for s in statuses},
        }
        log("fig3 %s: %d of %d inferences failed; p99 before %s ms, outage %s ms; acked %d, "
            "learned %s, duplicates %s; drain %s s" % (
                mode, failed, len(load.infers), result["infer_latency"]["before"]["p99_ms"],
                result["infer_latency"]["outage"]["p99_ms"], acked, result["labels_learned"],
                result["duplicates"], result["drain_s_max"]))
        return result
    finally:
        stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# --- main ---------------------------------------------------------------------------


def build_info(binary):
    def git(*a):
        try:
            return subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True).stdout.strip()
        except OSError:
            return None
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "binary": binary, "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(binary))),
            "redis": subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()}


def machine_info():
    model = ""
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": model, "loadavg_start": os.getloadavg()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    p.add_argument("--bin", default=os.path.join(target, "release", "adaptserve"))
    p.add_argument("--model", default=os.path.join(ROOT, "models", "default"))
    p.add_argument("--figures", default="1,2,3")
    p.add_argument("--runs", type=int, default=3, help="figure 1 fills and drains")
    p.add_argument("--fill", type=int, default=25, help="figure 1: seconds of wrk")
    p.add_argument("--wrk-connections", type=int, default=32)
    p.add_argument("--script-batches", type=int, default=200, help="figure 1: append script alone")
    p.add_argument("--rounds", type=int, default=60, help="figure 2 rounds")
    p.add_argument("--warm-rounds", type=int, default=5)
    p.add_argument("--outage-modes", default="kill,stop", help="figure 3: kill and/or stop")
    p.add_argument("--outage", type=int, default=30)
    p.add_argument("--warm", type=float, default=5, help="figure 3: seconds of load left out")
    p.add_argument("--before", type=float, default=20)
    p.add_argument("--after", type=float, default=10, help="figure 3: seconds of load after the drain")
    p.add_argument("--infer-rate", type=float, default=400)
    p.add_argument("--label-rate", type=float, default=80)
    p.add_argument("--rid-every", type=int, default=10)
    p.add_argument("--rid-delay", type=float, default=0.2)
    p.add_argument("--workdir", default=None, help="where the state dirs go [a temp dir]")
    p.add_argument("--keep", action="store_true", help="keep state dirs and logs")
    args = p.parse_args()
    args.bin = os.path.abspath(args.bin)
    args.model = os.path.abspath(args.model)
    for tool in ("redis-server", "wrk"):
        if not shutil.which(tool):
            sys.exit("%s is required (apt-get install -y redis-server wrk)" % tool)
    if not os.path.exists(args.bin):
        sys.exit("no binary at %s: cargo build --release --workspace" % args.bin)
    figures = {f.strip() for f in args.figures.split(",")}
    out = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
           "build": build_info(args.bin), "machine": machine_info(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        if "1" in figures:
            runs = [figure1(args, i + 1) for i in range(args.runs)]
            out["figure1"] = {
                "runs": runs,
                "median": {
                    "labels": median([r["labels"] for r in runs]),
                    "fill_rate_per_s": median([r["fill"]["rate_per_s"] for r in runs]),
                    "labels_per_s_from_up": median([r["labels_per_s_from_up"] for r in runs]),
                    "labels_per_s_from_first_append": median([r["labels_per_s_from_first_append"] for r in runs]),
                    "first_append_after_up_s": median([r["first_append_after_up_s"] for r in runs]),
                    "append_script_alone_per_s": median([r["append_script_alone"]["records_per_s"] for r in runs]),
                    "redis_benchmark_xadd_per_s": median([(r["redis_benchmark_xadd"] or {}).get("records_per_s") for r in runs]),
                },
                "target_labels_per_s": 20000,
            }
            out["figure1"]["met"] = out["figure1"]["median"]["labels_per_s_from_up"] >= 20000
        if "2" in figures:
            out["figure2"] = figure2(args)
        if "3" in figures:
            out["figure3"] = [figure3(args, m.strip()) for m in args.outage_modes.split(",") if m.strip()]
    finally:
        stop_all()
    out["machine"]["loadavg_end"] = os.getloadavg()
    for run in out.get("figure1", {}).get("runs", []):
        run.pop("progress", None) if not args.keep else None
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
