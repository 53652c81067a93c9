#!/usr/bin/env python3
"""Drives the /ui status page in a real headless Chromium and holds what it shows to
/v1/status and /health.

    scripts/check_ui.py --url http://127.0.0.1:PORT --screenshot docs/ui.png [--traffic]

Standard library only. Chromium is driven over the DevTools protocol on a pipe
(scripts/devtools_pipe.py), so no port has to be picked for it and no websocket
client is needed.

Steps, each failing with a message that says what differed:
1. Open /ui; wait until the page has refreshed a few times.
2. With --traffic, while the page watches: labelled examples of a 4-class task, then
   predictions each followed by its label, so the mode, the voters' weights and
   accuracies, the WAL and the accuracy chart have something to show.
3. Idle: read the displayed values and /v1/status and /health around them; the
   values that hold still when idle (versions, mode, voter weights and accuracies to
   the displayed precision, worker state and restarts, ring and WAL depth, overall
   and per-component colours) must match.
4. Live: with a trickle of predictions running, the page must show a request rate
   above zero and a p99 latency; the screenshot is taken then.
5. Failure: Chromium fails the page's /v1/status fetches; the page must show its
   "disconnected" banner and no colour, then recover once they pass again.
"""

import argparse
import base64
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from devtools_pipe import Browser, DevToolsError

def fail(message):
    print(f"check_ui: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def http_json(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:  # /health answers 503 with JSON when red
        return e.code, json.load(e)


# ---------------------------------------------------------------------------
# Traffic


class Task:
    """Four Gaussian classes in 16 features, a fixed seed: learnable, not trivial."""

    def __init__(self, seed=7, dim=16, classes=4):
        rng = random.Random(seed)
        self.rng = rng
        self.dim, self.classes = dim, classes
        self.centres = [[rng.gauss(0, 1.5) for _ in range(dim)] for _ in range(classes)]

    def sample(self):
        label = self.rng.randrange(self.classes)
        return [c + self.rng.gauss(0, 1.0) for c in self.centres[label]], label


def send_traffic(base, task, labelled=120, joined=150, pause=0.04):
    for _ in range(labelled):
        x, y = task.sample()
        code, body = http_json(f"{base}/v1/feedback", {"features": x, "label": y})
        if code != 202:
            fail(f"/v1/feedback answered {code}: {body}")
    for _ in range(joined):
        x, y = task.sample()
        code, body = http_json(f"{base}/v1/infer", {"inputs": [x]})
        if code != 200:
            fail(f"/v1/infer answered {code}: {body}")
        request_id = body["predictions"][0]["request_id"]
        code, body = http_json(f"{base}/v1/feedback", {"request_id": request_id, "label": y})
        if code != 202:
            fail(f"/v1/feedback (request {request_id}) answered {code}: {body}")
        time.sleep(pause)
    print(f"check_ui: sent {labelled} labelled examples and {joined} predictions with their labels")


class Trickle(threading.Thread):
    """Predictions at about `per_second` until stopped (for the rate and the p99)."""

    def __init__(self, base, task, per_second=10):
        super().__init__(daemon=True)
        self.base, self.task, self.pause = base, task, 1.0 / per_second
        self.stopped = threading.Event()
        self.error = None

    def run(self):
        while not self.stopped.is_set():
            x, _ = self.task.sample()
            try:
                code, body = http_json(f"{self.base}/v1/infer", {"inputs": [x]})
                if code != 200:
                    self.error = f"/v1/infer answered {code}: {body}"
                    return
            except OSError as e:
                self.error = f"/v1/infer failed: {e}"
                return
            time.sleep(self.pause)


# ---------------------------------------------------------------------------
# The page


def find_chromium(given):
    for name in [given] if given else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    fail("no chromium found: apt-get install -y chromium (scripts/check_ui.sh does it)")


# What the page displays, read from its elements by id.
READ_PAGE = r"""
(() => {
  if (!document.getElementById("disconnected")) return null;  // not loaded yet
  const text = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
  const status = (id) => { const e = document.getElementById(id); return e ? e.dataset.status : null; };
  const voters = {};
  for (const row of document.querySelectorAll("#voters tr")) {
    const name = row.dataset.voter;
    voters[name] = { weight: text("weight-" + name), accuracy: text("accuracy-" + name) };
  }
  const components = {};
  for (const item of document.querySelectorAll("#components li")) {
    components[item.dataset.component] = item.dataset.status;
  }
  const ids = ["version", "model-version", "mode", "worker-state", "worker-restarts",
    "ring-depth", "ring-capacity", "wal-bytes", "accuracy", "labels-scored", "infer-rate",
    "label-rate", "p99", "overall", "error"];
  const values = {};
  for (const id of ids) values[id] = text(id);
  return {
    values, voters, components,
    overall_status: status("overall"),
    worker_status: status("worker-state"),
    refreshes: Number(document.body.dataset.refreshes),
    failures: Number(document.body.dataset.failures),
    disconnected: !document.getElementById("disconnected").hidden,
    chart_samples: Number(document.getElementById("accuracy-chart").dataset.samples),
    chart_points: document.getElementById("accuracy-line").getAttribute("points"),
    height: Math.ceil(document.querySelector("main").getBoundingClientRect().bottom),
  };
})()
"""


def wait_for(browser, what, predicate, timeout):
    deadline = time.monotonic() + timeout
    page = None
    while time.monotonic() < deadline:
        page = browser.evaluate(READ_PAGE)
        if page and predicate(page):
            return page
        browser.pump(0.25)
    fail(f"the page never showed {what} within {timeout} s; it showed:\n{json.dumps(page, indent=1)}")


# ---------------------------------------------------------------------------
# The comparison


def number(text):
    return float(text.replace(",", "").rstrip("%").strip())


def close_to(text, value, step):
    """`text` shows `value` at the displayed precision (`step` = one unit of it)."""
    if value is None:
        return text == "–"
    try:
        return abs(number(text) - value) <= step / 2 + 1e-9
    except ValueError:
        return False


def stable_view(status, health):
    """The fields that hold still on an idle server."""
    return {
        "version": status["version"],
        "model_version": status["model_version"],
        "mode": status["mode"],
        "weights": status["vote"]["weights"],
        "accuracy": status["vote"]["accuracy"],
        "labels": status["labels"]["accuracy"],
        "worker": (status["worker"]["state"], status["worker"]["restarts"]),
        "ring": (status["ring"]["depth"], status["ring"]["capacity"]),
        "wal": status["wal_bytes"],
        "health": health["status"],
        "components": {k: v["status"] for k, v in health["components"].items()},
    }


def mismatches(page, status, health):
    """Each displayed value that does not show what the server says, described."""
    v, out = page["values"], []

    def exact(label, shown, expected):
        if shown != expected:
            out.append(f"{label}: page shows {shown!r}, server says {expected!r}")

    def near(label, shown, value, scale, step):
        """`value` (or None) shown times `scale`, to `step`; a percentage ends in %."""
        expected = None if value is None else value * scale
        unmarked = scale == 100 and value is not None and not shown.endswith("%")
        if unmarked or not close_to(shown, expected, step):
            out.append(f"{label}: page shows {shown!r}, server says {value!r}")

    exact("version", v["version"], status["version"])
    exact("model version", v["model-version"], str(status["model_version"]))
    exact("mode", v["mode"], status["mode"])
    weights, accuracy = status["vote"]["weights"], status["vote"]["accuracy"]
    exact("voters", sorted(page["voters"]), sorted(set(weights) | set(accuracy)))
    for name, shown in page["voters"].items():
        near(f"{name} weight", shown["weight"], weights.get(name), 1, 0.001)
        near(f"{name} accuracy", shown["accuracy"], accuracy.get(name), 100, 0.1)
    exact("worker state", v["worker-state"], status["worker"]["state"])
    exact("worker restarts", v["worker-restarts"], f"{status['worker']['restarts']:,}")
    exact("ring depth", v["ring-depth"], f"{status['ring']['depth']:,}")
    exact("ring capacity", v["ring-capacity"], f"{status['ring']['capacity']:,}")
    exact("WAL bytes", v["wal-bytes"], f"{status['wal_bytes']:,}")
    near("accuracy", v["accuracy"], status["labels"]["accuracy"], 100, 0.1)
    exact("overall", (v["overall"], page["overall_status"]), (health["status"], health["status"]))
    exact("components", page["components"], {k: c["status"] for k, c in health["components"].items()})
    return out


def check_idle(browser, base):
    """Reads the page between two identical idle snapshots of the server."""
    deadline = time.monotonic() + 30
    problems, moving = ["no reading yet"], False
    while time.monotonic() < deadline:
        s1, h1 = http_json(f"{base}/v1/status")[1], http_json(f"{base}/health")[1]
        # A page refresh after s1 was taken: the display is at least that fresh.
        seen = browser.evaluate(READ_PAGE)["refreshes"]
        wait_for(browser, "a refresh", lambda p: p["refreshes"] >= seen + 2, 10)
        page = browser.evaluate(READ_PAGE)
        s2, h2 = http_json(f"{base}/v1/status")[1], http_json(f"{base}/health")[1]
        moving = stable_view(s1, h1) != stable_view(s2, h2)
        if moving:
            continue
        problems = mismatches(page, s2, h2)
        if not problems:
            return page, s2, h2
        browser.pump(1.0)
    detail = "\n  ".join(problems)
    if moving:
        fail(f"/v1/status never held still for a comparison in 30 s; last mismatches:\n  {detail}")
    fail(f"the page does not match /v1/status and /health on an idle server:\n  {detail}")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--screenshot", required=True, help="where to write the PNG")
    parser.add_argument("--traffic", action="store_true", help="send labelled traffic once the page is open")
    parser.add_argument("--chromium", help="the browser binary (default: chromium on PATH)")
    parser.add_argument("--width", type=int, default=1200)
    args = parser.parse_args()
    base = args.url.rstrip("/")
    task = Task()
    binary = find_chromium(args.chromium)
    with tempfile.TemporaryDirectory(prefix="check_ui-") as profile:
        browser = Browser(binary, profile)
        try:
            run(browser, base, task, args)
        except DevToolsError as e:
            fail(str(e))
        finally:
            browser.close()
    print("check_ui: ok")


def run(browser, base, task, args):
    try:
        with urllib.request.urlopen(f"{base}/ui", timeout=10) as r:
            kind = r.headers.get("content-type")
    except urllib.error.HTTPError as e:
        fail(f"GET /ui answered {e.code}: is {base} a build without the status page?")
    except urllib.error.URLError as e:
        fail(f"GET {base}/ui failed: {e.reason}")
    if kind != "text/html; charset=utf-8":
        fail(f"GET /ui answered {kind!r}, not HTML")
    browser.open(f"{base}/ui", args.width, 800)
    page = wait_for(browser, "three refreshes", lambda p: p["refreshes"] >= 3 and p["voters"], 30)
    if args.traffic:  # while the page watches, so its chart follows the accuracy
        send_traffic(base, task)
    page = browser.evaluate(READ_PAGE)
    if page["failures"]:
        fail(f"the page failed {page['failures']} fetches from a healthy server: {page['values']['error']}")

    page, status, health = check_idle(browser, base)
    print(
        f"check_ui: idle page matches /v1/status and /health: {health['status']}, "
        f"model version {status['model_version']}, mode {status['mode']}, "
        f"{len(page['voters'])} voters, {page['values']['wal-bytes']} WAL bytes, "
        f"accuracy {page['values']['accuracy']}, {page['chart_samples']} chart samples"
    )
    if status["labels"]["accuracy"] is not None and page["chart_samples"] < 3:
        fail(f"the accuracy chart holds {page['chart_samples']} samples after {page['refreshes']} refreshes")

    trickle = Trickle(base, task)
    trickle.start()
    try:
        page = wait_for(
            browser,
            "a request rate above zero and a p99 latency",
            lambda p: p["values"]["p99"] not in ("–", None)
            and p["values"]["infer-rate"] not in ("–", None)
            and number(p["values"]["infer-rate"]) > 0,
            30,
        )
        if trickle.error:
            fail(trickle.error)
        if not re.fullmatch(r"\d+\.\d\d ms", page["values"]["p99"]):
            fail(f"the p99 latency reads {page['values']['p99']!r}, not milliseconds")
        print(f"check_ui: live page shows {page['values']['infer-rate']} rows/s, p99 {page['values']['p99']}")
        height = browser.evaluate(READ_PAGE)["height"]
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": args.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.pump(0.3)
        shot = browser.call("Page.captureScreenshot", {"format": "png"})
    finally:
        trickle.stopped.set()
        trickle.join()
    png = base64.b64decode(shot["data"])
    if not png.startswith(b"\x89PNG"):
        fail("the screenshot is not a PNG")
    os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
    with open(args.screenshot, "wb") as f:
        f.write(png)
    print(f"check_ui: screenshot {args.screenshot} ({len(png)} bytes, {args.width}x{height})")

    # Chromium now fails the page's /v1/status fetches, as if the server were gone.
    browser.call("Fetch.enable", {"patterns": [{"urlPattern": "*/v1/status*"}]})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for event in browser.pump(0.25):
            if event["method"] == "Fetch.requestPaused":
                request = {"requestId": event["params"]["requestId"], "errorReason": "ConnectionRefused"}
                browser.call("Fetch.failRequest", request)
        page = browser.evaluate(READ_PAGE)
        if page["disconnected"]:
            break
    else:
        fail(f"the page never showed its disconnected banner while /v1/status failed: {page}")
    if page["overall_status"] != "unknown" or page["values"]["overall"] != "unreachable":
        shown = (page["overall_status"], page["values"]["overall"])
        fail(f"a disconnected page still shows a colour: {shown}")
    print(f"check_ui: with /v1/status failing the page shows: disconnected: {page['values']['error']}")
    browser.call("Fetch.disable")
    browser.events.clear()
    refreshes = page["refreshes"]
    wait_for(
        browser,
        "recovery after the fetches pass again",
        lambda p: not p["disconnected"]
        and p["refreshes"] > refreshes
        and p["overall_status"] in ("green", "yellow", "red"),
        15,
    )
    print("check_ui: the page recovered once /v1/status answered again")


if __name__ == "__main__":
    main()
