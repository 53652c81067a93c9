#!/usr/bin/env python3
"""Issue 17: the request path as ratios, measured in one run, in the same minutes.

Why: absolute req/s depend on the machine (bare HTTP on one connection does anywhere
from 8k to 30k req/s on the machines this project has run on), so the request path is
judged by ratios to things measured in the same run: /v1/infer against the same
server's bare GET /health/live under wrk, and adaptserve against Vowpal Wabbit's
daemon with the same client and the same rows.

What it does, in one invocation:
  1. wrk (must be installed). Starts the server (default config, its own temp state
     dir, a free port picked here), warms it with --warm labelled experiences
     (POST /v1/feedback, 16 features around the default model's scales, label i % 4,
     class-dependent shift), then runs GET /health/live (bare) and POST /v1/infer
     (one row, scripts/wrk_request_path.lua) at 1 and at 64 connections, --duration
     seconds each, bare and infer alternated --rounds times; prints req/s, p50/p99,
     infer/bare (medians over the alternations), and per request the server's CPU time
     and context switches (all its threads, from /proc, over each wrk run). With
     --syscalls, one more 1-connection infer run under `strace -f -c` counts system
     calls (futex among them) per request. Then a second fresh server with a
     10k memory (config file: [memory] capacity = 10000, max_age = 0 so the whole 10k
     is scanned; pseudo-labels stay on) warmed with 10 000 experiences, at 64
     connections.
  2. Vowpal Wabbit, if --vw-python can `import vowpalwabbit` (stdlib only here; VW
     lives in a venv: python3 -m venv /work/venv-vw && /work/venv-vw/bin/pip install
     vowpalwabbit). The daemon `python -m vowpalwabbit --daemon --foreground
     --num_children 1 --passes 1 --oaa 4 --loss_function logistic --nn 32 --port P`
     against adaptserve serving a fresh `init-model --input-dim 10 --num-classes 4`
     model (default config). One keep-alive socket, pre-encoded requests sent one at
     a time, the same --rows rows of a 10-feature drifting hyperplane stream (4
     classes) for both: first every row labelled (VW: "y | f..."; adaptserve:
     POST /v1/feedback), then every row predicted (VW: " | f..."; adaptserve:
     POST /v1/infer), then --rows bare GET /health/live to adaptserve with the same
     client. VW and adaptserve alternate --vw-rounds times, each round fresh.

  scripts/request_path.py --bin /path/to/release/adaptserve   # update-worker beside it
      [--duration 10] [--rounds 2] [--warm 2000] [--warm-10k 10000]
      [--vw-python /work/venv-vw/bin/python] [--rows 20000] [--vw-rounds 2] [--no-vw]
      [--syscalls]

Without --bin it uses $CARGO_TARGET_DIR/release/adaptserve (default target/); it does
not build. Prints everything to stdout; exit status 0 unless something failed to run.
"""
import argparse
import http.client
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = os.environ.get("RP_LUA") or os.path.join(ROOT, "scripts", "wrk_request_path.lua")
BASE16 = [0.7, -1200.5, 0.0031, 45.2, 880000.0, -0.02, 3.3, 0.9, 12.0, -0.4,
          7000.0, 0.11, -2.5, 0.0009, 61.0, -330000.0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port, path, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                c.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no 200 from :{port}{path} within {timeout}s")


def wait_tcp(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on :{port} within {timeout}s")


class Proc:
    """A child in its own process group, stopped by its own id."""

    def __init__(self, argv, log, env=None):
        self.log = open(log, "wb")
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=env, start_new_session=True)

    def pid(self):
        return self.p.pid

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


def start_server(bin_, work, name, model=None, config=None):
    port = free_port()
    state = os.path.join(work, name + "-state")
    argv = [bin_, "serve", "--port", str(port), "--state-dir", state,
            "--model", model or os.path.join(ROOT, "models", "default")]
    if config:
        argv += ["--config", config]
    env = dict(os.environ, NO_COLOR="1")
    proc = Proc(argv, os.path.join(work, name + ".log"), env)
    wait_http(port, "/health/ready")
    return proc, port


def status(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/v1/status")
    return json.loads(c.getresponse().read())


def summary(st):
    return (f"{st.get('experiences')} experiences, paths {st.get('paths')}, "
            f"pseudo-labels {st.get('pseudo_labels')}, memory backend "
            f"{st.get('memory', {}).get('backend')}, batcher {st.get('batcher')}")


def warm(port, n, seed=7):
    """n labelled experiences over one keep-alive connection."""
    rng = random.Random(seed)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.time()
    for i in range(n):
        label = i % 4
        x = [b * (1 + 0.5 * (((j + 1 + label) % 4) - 1.5) + 0.3 * rng.gauss(0, 1))
             for j, b in enumerate(BASE16)]
        body = json.dumps({"features": x, "label": label})
        c.request("POST", "/v1/feedback", body, {"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 202:
            raise RuntimeError(f"warm feedback answered {r.status}")
    c.close()
    return time.time() - t0


def wrk(port, route, conns, duration):
    threads = 1 if conns == 1 else 2
    path = "/v1/infer" if route == "infer" else "/health/live"
    env = dict(os.environ, RP_ROUTE=route)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s",
                          "--latency", "-s", LUA, f"http://127.0.0.1:{port}{path}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    rps, p50, p99, non2xx, errs, reqs = line.split()[1:]
    return dict(rps=float(rps), p50=float(p50), p99=float(p99), non2xx=int(non2xx),
                errs=int(errs), reqs=int(reqs))


def med(xs):
    return statistics.median(xs)


def server_counters(pid):
    """CPU seconds and (voluntary, involuntary) context switches of every thread of
    process `pid` so far, from /proc."""
    tck = os.sysconf("SC_CLK_TCK")
    cpu = vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            cpu += (int(stat[11]) + int(stat[12])) / tck
            for line in open(f"/proc/{pid}/task/{tid}/status"):
                if line.startswith("voluntary_ctxt_switches"):
                    vol += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    invol += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return cpu, vol, invol


def wrk_counted(port, route, conns, duration, pid):
    """wrk, plus the server's CPU µs and context switches per request over the run."""
    c0, v0, i0 = server_counters(pid)
    m = wrk(port, route, conns, duration)
    c1, v1, i1 = server_counters(pid)
    n = max(m["reqs"], 1)
    m.update(cpu_us=(c1 - c0) * 1e6 / n, cs=((v1 - v0) + (i1 - i0)) / n)
    return m


def wrk_block(port, conns_list, rounds, duration, label, pid):
    """Alternate bare and infer `rounds` times per connection count; print and return
    {conns: (bare_runs, infer_runs, ratio)}."""
    res = {}
    for conns in conns_list:
        bare, infer = [], []
        for r in range(rounds):
            for route, acc in (("bare", bare), ("infer", infer)):
                m = wrk_counted(port, route, conns, duration, pid)
                acc.append(m)
                print(f"  [{label}] round {r + 1} {conns:>2} conn {route:<5} {m['rps']:>9.0f} req/s"
                      f"  p50 {m['p50']:>6.0f} µs  p99 {m['p99']:>6.0f} µs"
                      f"  server {m['cpu_us']:.1f} CPU µs and {m['cs']:.2f} context switches"
                      f" per request  non-2xx {m['non2xx']}  socket errors {m['errs']}", flush=True)
        ratios = [i["rps"] / b["rps"] for b, i in zip(bare, infer)]
        res[conns] = (bare, infer, med(ratios))
    return res


def print_block(title, res):
    print(f"\n{title}")
    print(f"| conns | bare req/s | bare p50 / p99 µs | infer req/s | infer p50 / p99 µs "
          f"| infer/bare req/s | infer p99 / bare p99 | server CPU µs/req bare, infer "
          f"| context switches/req bare, infer |")
    print("|---|---|---|---|---|---|---|---|---|")
    for conns, (bare, infer, ratio) in res.items():
        p99r = med([i["p99"] / b["p99"] for b, i in zip(bare, infer)])
        print(f"| {conns} | {med([m['rps'] for m in bare]):,.0f} | "
              f"{med([m['p50'] for m in bare]):.0f} / {med([m['p99'] for m in bare]):.0f} | "
              f"{med([m['rps'] for m in infer]):,.0f} | "
              f"{med([m['p50'] for m in infer]):.0f} / {med([m['p99'] for m in infer]):.0f} | "
              f"**{ratio:.2f}** | {p99r:.2f} | "
              f"{med([m['cpu_us'] for m in bare]):.1f}, {med([m['cpu_us'] for m in infer]):.1f} | "
              f"{med([m['cs'] for m in bare]):.2f}, {med([m['cs'] for m in infer]):.2f} |")


def syscalls(port, pid, duration):
    """System calls (futex among them) per /v1/infer at 1 connection, counted by
    `strace -f -c` attached to the server for one wrk run. strace slows every call,
    so only the counts per request mean anything, not the rate."""
    if not shutil.which("strace"):
        print("  [syscalls] skipped: strace is not installed")
        return
    out = os.path.join(tempfile.mkdtemp(prefix="strace."), "counts")
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)],
                              stderr=subprocess.DEVNULL)
    time.sleep(1)
    m = wrk(port, "infer", 1, duration)
    tracer.send_signal(signal.SIGINT)
    tracer.wait()
    counts = {}
    for line in open(out):
        f = line.split()
        if len(f) >= 5 and f[3].isdigit():
            counts[f[-1]] = int(f[3])
    n = max(m["reqs"], 1)
    total = sum(v for k, v in counts.items() if k != "total")
    top = sorted(((v, k) for k, v in counts.items() if k != "total"), reverse=True)[:6]
    print(f"  [syscalls] 1 conn /v1/infer under strace, {m['reqs']} requests: "
          f"{total / n:.2f} system calls per request, futex {counts.get('futex', 0) / n:.3f}; "
          + ", ".join(f"{k} {v / n:.2f}" for v, k in top), flush=True)


# ---------------------------------------------------------------- VW comparison

def hyperplane(n, seed=42, d=10, n_drift=5, mag=0.001, flip=0.1, noise=0.05):
    """A rotating hyperplane (MOA's), 4 classes by the quartiles of w·x/Σw."""
    rng = random.Random(seed)
    w = [rng.random() for _ in range(d)]
    sign = [1.0 if rng.random() < 0.5 else -1.0 for _ in range(d)]
    rows, scores = [], []
    for _ in range(n):
        x = [rng.random() for _ in range(d)]
        scores.append(sum(a * b for a, b in zip(w, x)) / sum(w))
        rows.append(x)
        for i in range(n_drift):
            w[i] += sign[i] * mag
            if rng.random() < flip:
                sign[i] = -sign[i]
            w[i] = min(max(w[i], 0.0), 1.0)
    q = statistics.quantiles(scores, n=4)
    labels = []
    for s in scores:
        y = sum(s > t for t in q)
        if rng.random() < noise:
            y = rng.randrange(4)
        labels.append(y)
    return rows, labels


class Client:
    """One keep-alive socket; send a pre-encoded request, read one reply."""

    def __init__(self, port, http):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")
        self.http = http

    def call(self, req):
        self.s.sendall(req)
        if not self.http:
            return self.f.readline()
        status = self.f.readline()
        length = 0
        while True:
            h = self.f.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        body = self.f.read(length)
        code = int(status.split()[1])
        if code >= 300:
            raise RuntimeError(f"HTTP {code}: {body[:200]!r}")
        return body

    def close(self):
        self.f.close()
        self.s.close()


def timed(client, reqs):
    lat = []
    t0 = time.perf_counter()
    replies = []
    for r in reqs:
        a = time.perf_counter_ns()
        replies.append(client.call(r))
        lat.append((time.perf_counter_ns() - a) / 1000)
    el = time.perf_counter() - t0
    lat.sort()
    return dict(rps=len(reqs) / el, p50=lat[len(lat) // 2],
                p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))]), replies


def fmt(v):
    return format(v, ".6g")


def http_req(method, path, body=None):
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
    if body is None:
        return (head + "\r\n").encode()
    b = body.encode()
    return (head + f"content-type: application/json\r\ncontent-length: {len(b)}\r\n\r\n").encode() + b


def run_vw(vw_python, work, rows, labels, rnd):
    port = free_port()
    argv = [vw_python, "-m", "vowpalwabbit", "--daemon", "--foreground", "--num_children", "1",
            "--passes", "1", "--oaa", "4", "--loss_function", "logistic", "--nn", "32",
            "--port", str(port)]
    proc = Proc(argv, os.path.join(work, f"vw-{rnd}.log"))
    try:
        wait_tcp(port)
        feats = [" | " + " ".join(f"f{i}:{fmt(v)}" for i, v in enumerate(x)) + "\n" for x in rows]
        lab = [(str(y + 1) + f).encode() for y, f in zip(labels, feats)]
        pred = [f.encode() for f in feats]
        c = Client(port, http=False)
        ml, _ = timed(c, lab)
        mp, replies = timed(c, pred)
        c.close()
        acc = sum(int(float(r.split()[0])) - 1 == y for r, y in zip(replies, labels)) / len(labels)
        return dict(labels=ml, preds=mp, acc=acc)
    finally:
        proc.stop()


def run_as(bin_, work, rows, labels, rnd):
    model = os.path.join(work, f"init-model-{rnd}")
    subprocess.run([bin_, "init-model", "--input-dim", "10", "--num-classes", "4",
                    "--output", model], check=True, capture_output=True)
    proc, port = start_server(bin_, work, f"as-vw-{rnd}", model=model)
    try:
        lab = [http_req("POST", "/v1/feedback",
                        '{"features":[' + ",".join(fmt(v) for v in x) + '],"label":' + str(y) + "}")
               for x, y in zip(rows, labels)]
        pred = [http_req("POST", "/v1/infer", '{"inputs":[[' + ",".join(fmt(v) for v in x) + "]]}")
                for x in rows]
        bare = [http_req("GET", "/health/live")] * len(rows)
        c = Client(port, http=True)
        ml, _ = timed(c, lab)
        mp, replies = timed(c, pred)
        mb, _ = timed(c, bare)
        c.close()
        acc = sum(json.loads(r)["predictions"][0]["label"] == y
                  for r, y in zip(replies, labels)) / len(labels)
        return dict(labels=ml, preds=mp, bare=mb, acc=acc)
    finally:
        proc.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "adaptserve"))
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--warm-10k", type=int, default=10000)
    ap.add_argument("--vw-python", default="/work/venv-vw/bin/python")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--vw-rounds", type=int, default=2)
    ap.add_argument("--no-vw", action="store_true")
    ap.add_argument("--syscalls", action="store_true",
                    help="also count system calls per /v1/infer with strace -c (slows the run)")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required: apt-get install wrk")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"no executable at {a.bin} (build it, or pass --bin)")

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, "
          f"python {platform.python_version()}; wrk, server and update-worker share the CPUs")
    print(f"binary: {a.bin}")
    print(f"started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    work = tempfile.mkdtemp(prefix="request_path.")
    procs = []
    try:
        # 1a. default config, 2k warm memory, pseudo-labels on
        proc, port = start_server(a.bin, work, "default")
        procs.append(proc)
        t = warm(port, a.warm)
        print(f"\n[default] warmed with {a.warm} labelled experiences in {t:.1f} s", flush=True)
        res2k = wrk_block(port, [1, 64], a.rounds, a.duration, "default", proc.pid())
        if a.syscalls:
            syscalls(port, proc.pid(), a.duration)
        print(f"  [default] after the runs: {summary(status(port))}")
        proc.stop()
        procs.remove(proc)

        # 1b. 10k memory
        cfg = os.path.join(work, "mem10k.toml")
        with open(cfg, "w") as f:
            f.write(f"[memory]\ncapacity = {a.warm_10k}\nmax_age = 0\n")
        proc, port = start_server(a.bin, work, "mem10k", config=cfg)
        procs.append(proc)
        t = warm(port, a.warm_10k)
        print(f"\n[10k] warmed with {a.warm_10k} labelled experiences in {t:.1f} s "
              f"(config: [memory] capacity = {a.warm_10k}, max_age = 0)", flush=True)
        res10k = wrk_block(port, [64], a.rounds, a.duration, "10k", proc.pid())
        print(f"  [10k] after the runs: {summary(status(port))}")
        proc.stop()
        procs.remove(proc)

        print_block(f"wrk, default config, warm {a.warm}, pseudo-labels on "
                    f"(medians of {a.rounds} alternations, {a.duration} s each)", res2k)
        print_block(f"wrk, [memory] capacity = {a.warm_10k}, max_age = 0, warm {a.warm_10k}, "
                    f"pseudo-labels on", res10k)

        # 2. VW
        vw_ok = False
        if not a.no_vw and os.access(a.vw_python, os.X_OK):
            vw_ok = subprocess.run([a.vw_python, "-c", "import vowpalwabbit"],
                                   capture_output=True).returncode == 0
        if not vw_ok:
            print(f"\nVowpal Wabbit: skipped ({a.vw_python} cannot import vowpalwabbit"
                  f"{' ; --no-vw' if a.no_vw else ''})")
            vw = None
        else:
            rows, labels = hyperplane(a.rows)
            vws, ases = [], []
            for r in range(a.vw_rounds):
                v = run_vw(a.vw_python, work, rows, labels, r)
                s = run_as(a.bin, work, rows, labels, r)
                vws.append(v)
                ases.append(s)
                print(f"  [vw] round {r + 1}: VW labels {v['labels']['rps']:.0f}/s preds "
                      f"{v['preds']['rps']:.0f}/s; adaptserve labels {s['labels']['rps']:.0f}/s "
                      f"preds {s['preds']['rps']:.0f}/s bare {s['bare']['rps']:.0f}/s", flush=True)

            def m(runs, kind, key):
                return med([x[kind][key] for x in runs])

            print(f"\nVowpal Wabbit daemon (nn32, --num_children 1) against adaptserve (fresh "
                  f"init-model 10→4, default config): one keep-alive socket, pre-encoded, one at a "
                  f"time, {a.rows} rows of a drifting hyperplane (10 features, 4 classes), all "
                  f"labelled then all predicted; medians of {a.vw_rounds} alternated rounds")
            print("| | VW daemon | adaptserve | adaptserve / VW |")
            print("|---|---|---|---|")
            for kind, name in (("preds", "predictions/s"), ("labels", "labels/s")):
                print(f"| {name} | {m(vws, kind, 'rps'):,.0f} (p50 {m(vws, kind, 'p50'):.0f} µs, "
                      f"p99 {m(vws, kind, 'p99'):.0f} µs) | {m(ases, kind, 'rps'):,.0f} (p50 "
                      f"{m(ases, kind, 'p50'):.0f} µs, p99 {m(ases, kind, 'p99'):.0f} µs) | "
                      f"**{m(ases, kind, 'rps') / m(vws, kind, 'rps'):.2f}** |")
            print(f"| bare `GET /health/live` | | {m(ases, 'bare', 'rps'):,.0f} (p50 "
                  f"{m(ases, 'bare', 'p50'):.0f} µs, p99 {m(ases, 'bare', 'p99'):.0f} µs) | |")
            print(f"| accuracy of the predictions on the rows just learned (sanity) | "
                  f"{med([x['acc'] for x in vws]):.3f} | {med([x['acc'] for x in ases]):.3f} | |")
            vw = (vws, ases, m)

        # targets
        print("\nissue 17 targets:")
        r64, r1, r10k = res2k[64][2], res2k[1][2], res10k[64][2]

        def ok(b):
            return "met" if b else "NOT met"

        def p99ratio(res, c):
            bare, infer, _ = res[c]
            return med([i["p99"] / b["p99"] for b, i in zip(bare, infer)])

        print(f"  64 conns infer/bare >= 0.7 (2k): {r64:.2f} {ok(r64 >= 0.7)}")
        print(f"  64 conns infer/bare >= 0.6 (10k): {r10k:.2f} {ok(r10k >= 0.6)}")
        print(f"  1 conn infer/bare >= 0.9: {r1:.2f} {ok(r1 >= 0.9)}")
        pr = p99ratio(res2k, 64)
        print(f"  64 conns infer p99 <= 1.5x bare p99 (2k): {pr:.2f}x {ok(pr <= 1.5)}")
        pr10 = p99ratio(res10k, 64)
        print(f"  64 conns infer p99 <= 1.5x bare p99 (10k): {pr10:.2f}x {ok(pr10 <= 1.5)}")
        if vw:
            vws, ases, m = vw
            for kind, name in (("preds", "predictions/s"), ("labels", "labels/s")):
                q = m(ases, kind, "rps") / m(vws, kind, "rps")
                print(f"  {name} >= VW: {q:.2f} {ok(q >= 1.0)}")
            for kind, name in (("preds", "infer"), ("labels", "feedback")):
                a99, v99 = m(ases, kind, "p99"), m(vws, kind, "p99")
                print(f"  1 conn {name} p99 <= VW's: {a99:.0f} vs {v99:.0f} µs {ok(a99 <= v99)}")
        else:
            print("  VW targets: not measured (VW skipped)")
        print("  per request: server CPU and context switches in the tables above, system "
              "calls with --syscalls, heap allocations: cargo bench --bench allocations")
        print(f"finished: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
