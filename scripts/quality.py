#!/usr/bin/env python3
"""Learning quality against River, on the streams the field uses.

Three subcommands, run from the repository root:

  python3 scripts/quality.py streams --seed 42 --out out/quality/seed42
      Writes one CSV per stream (f0..f{d-1},label; labels are 0..K-1) and
      streams.json (dimension, classes, length and drift positions of each).

  python3 scripts/quality.py river --streams out/quality/seed42 [--label-every 10]
                                  [--delay 0] [--only NAME] --out FILE.json
      Runs River's learners test-then-train on those CSVs under the same label
      regime `adaptserve eval` uses, and writes their scores.

  python3 scripts/quality.py table --river A.json [--river B.json ...]
                                  --ours X.json [--ours Y.json ...]
      Prints the Markdown table of QUALITY.md: our score beside River's best.

Needs: pip install river (0.26). Seeded: the same seed writes the same streams.

The scores are defined once, here and in crates/lab/src/eval/score.rs, identically:
- accuracy over every prediction, and over the first 1000;
- accuracy in consecutive 1000-sample windows;
- Cohen's kappa of the predictions against the labels;
- recovery after each drift at position P: the pre-drift level is the accuracy on
  [P-500, P); recovery is the smallest n >= 100 for which the accuracy on the
  post-drift part of the trailing window, [max(P, P+n-500), P+n), is within 2 points
  of that level (null if the stream ends first).
The table adds one comparison the per-learner recovery cannot make: recovery to a
shared bar. A learner measured against its own pre-drift level is rewarded for a
low one (a learner at 0.74 before the drift is "back" as soon as it is at 0.72
again). So for ours beside HAT, the bar is 2 points under the better of the two
pre-drift levels, and each is timed to it with the same trailing window ("never"
if it does not get there).
Only predictions made before their label arrived are scored: every sample is
predicted once, before any label of it is learned.
"""

import argparse
import collections
import csv
import json
import pathlib
import sys
import time

WINDOW = 1000
RECOVERY_WINDOW = 500
RECOVERY_MIN = 100
RECOVERY_TOLERANCE = 0.02


def abrupt(before, after, position, n):
    """`before` up to `position`, then `after`: an abrupt drift. (River's
    ConceptDriftStream overflows at width 1, and any wider is not abrupt.)"""
    yield from before.take(position)
    yield from after.take(n - position)


def stream_specs(seed, n):
    """The streams: name -> (iterable of (x dict, y), drift positions)."""
    from river import datasets
    from river.datasets import synth

    half = n // 2
    return {
        # Rotating hyperplane: gradual drift everywhere, smooth boundary (LogReg's).
        "hyperplane": (
            synth.Hyperplane(seed=seed, n_features=10, n_drift_features=5,
                             mag_change=0.001, noise_percentage=0.05, sigma=0.1).take(n),
            [],
        ),
        # Moving RBF centroids, 4 classes: local structure that drifts (kNN's).
        "rbf_drift": (
            synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, n_classes=4,
                                 n_features=10, n_centroids=50, change_speed=0.001,
                                 n_drift_centroids=25).take(n),
            [],
        ),
        # Agrawal, function 1 then 4 from the middle on: an abrupt concept change
        # over axis-aligned rules (the trees').
        "agrawal": (
            abrupt(synth.Agrawal(classification_function=1, seed=seed),
                   synth.Agrawal(classification_function=4, seed=seed + 1), half, n),
            [half],
        ),
        # SEA with 10% label noise, variant 0 then 2: an abrupt threshold change.
        "sea": (
            abrupt(synth.SEA(variant=0, noise=0.1, seed=seed),
                   synth.SEA(variant=2, noise=0.1, seed=seed + 1), half, n),
            [half],
        ),
        # River's bundled real streams, in their own order (no seed applies).
        "image_segments": (datasets.ImageSegments(), []),
        "phishing": (datasets.Phishing(), []),
    }


def write_streams(seed, n, out):
    out.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, (stream, drifts) in stream_specs(seed, n).items():
        rows = [(x, y) for x, y in stream]
        keys = list(rows[0][0].keys())
        classes = sorted({y for _, y in rows}, key=lambda v: (str(type(v)), v))
        index = {c: i for i, c in enumerate(classes)}
        path = out / f"{name}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([f"f{i}" for i in range(len(keys))] + ["label"])
            for x, y in rows:
                w.writerow([float(x[k]) for k in keys] + [index[y]])
        meta[name] = {
            "csv": path.name,
            "dim": len(keys),
            "classes": len(classes),
            "samples": len(rows),
            "drifts": drifts,
            "features": keys,
            "seed": seed,
        }
        print(f"{name}: {len(rows)} samples, {len(keys)} features, {len(classes)} classes",
              file=sys.stderr)
    (out / "streams.json").write_text(json.dumps(meta, indent=2) + "\n")


def read_csv(path):
    with open(path, newline="") as f:
        r = csv.reader(f)
        header = next(r)
        dim = len(header) - 1
        for row in r:
            yield {f"f{i}": float(v) for i, v in enumerate(row[:dim])}, int(row[dim])


def learners(classes, seed):
    from river import forest, linear_model, multiclass, neighbors, preprocessing, tree

    def logreg():
        lr = linear_model.LogisticRegression()
        head = lr if classes == 2 else multiclass.OneVsRestClassifier(lr)
        return preprocessing.StandardScaler() | head

    return {
        "logreg": logreg,
        "hat": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=seed),
        "arf": lambda: forest.ARFClassifier(seed=seed),
        "knn": lambda: preprocessing.StandardScaler() | neighbors.KNNClassifier(
            n_neighbors=5, engine=neighbors.LazySearch(window_size=1000)),
    }


def score(predicted, truth, classes, drifts):
    """The scores of the module docstring, from the predictions in stream order."""
    n = len(truth)
    hits = [int(p == y) for p, y in zip(predicted, truth)]
    windows = [sum(hits[s:s + WINDOW]) / len(hits[s:s + WINDOW]) for s in range(0, n, WINDOW)]
    observed = sum(hits) / n
    pred_counts = collections.Counter(predicted)
    true_counts = collections.Counter(truth)
    expected = sum(pred_counts[c] * true_counts[c] for c in range(classes)) / (n * n)
    kappa = 0.0 if expected >= 1.0 else (observed - expected) / (1.0 - expected)
    recoveries = []
    for p in drifts:
        if p < RECOVERY_WINDOW or p >= n:
            recoveries.append(None)
            continue
        pre = pre_drift(hits, p)
        found = samples_to(hits, p, pre - RECOVERY_TOLERANCE)
        recoveries.append({"position": p, "pre_drift_accuracy": pre, "samples": found})
    first = hits[:WINDOW]
    out = {
        "samples": n,
        "accuracy": observed,
        "first_1000": sum(first) / len(first),
        "kappa": kappa,
        "windows": windows,
        "recoveries": recoveries,
    }
    if drifts:
        # Per-sample hits, for the shared-bar recovery of the table.
        out["hits"] = "".join(map(str, hits))
    return out


def pre_drift(hits, p):
    """Accuracy on [p - RECOVERY_WINDOW, p)."""
    return sum(hits[p - RECOVERY_WINDOW:p]) / RECOVERY_WINDOW


def samples_to(hits, p, bar):
    """The smallest n >= RECOVERY_MIN for which the accuracy on [max(p, p+n-500), p+n)
    reaches `bar`; None if the stream ends first."""
    for m in range(RECOVERY_MIN, len(hits) - p + 1):
        lo = max(p, p + m - RECOVERY_WINDOW)
        if sum(hits[lo:p + m]) / (p + m - lo) >= bar:
            return m
    return None


def our_hits(results_path):
    """Per-sample hits of one `adaptserve eval` run, from its predictions.csv."""
    path = pathlib.Path(results_path).parent / "predictions.csv"
    if not path.exists():
        return None
    with path.open(newline="") as f:
        r = csv.DictReader(f)
        return [int(row["predicted"] == row["label"]) for row in r]


def shared_bar(ours_hits, hat_hits, drifts):
    """Per drift: (bar, ours, HAT), both timed to 2 points under the better of the
    two pre-drift levels."""
    out = []
    for p in drifts:
        if p < RECOVERY_WINDOW or p >= min(len(ours_hits), len(hat_hits)):
            continue
        bar = max(pre_drift(ours_hits, p), pre_drift(hat_hits, p)) - RECOVERY_TOLERANCE
        out.append((bar, samples_to(ours_hits, p, bar), samples_to(hat_hits, p, bar)))
    return out


def run_learner(make, rows, label_every, delay):
    """Test-then-train with delayed, thinned labels; returns the predictions."""
    model = make()
    predicted = []
    waiting = collections.deque()
    for i, (x, y) in enumerate(rows):
        p = model.predict_one(x)
        predicted.append(-1 if p is None else int(p))
        if i % label_every == 0:
            waiting.append((i, x, y))
        while waiting and waiting[0][0] + delay <= i:
            _, lx, ly = waiting.popleft()
            model.learn_one(lx, ly)
    return predicted


def river(args):
    meta = json.loads((args.streams / "streams.json").read_text())
    results = {"label_every": args.label_every, "delay": args.delay, "streams": {}}
    for name, m in meta.items():
        if args.only and name not in args.only:
            continue
        rows = list(read_csv(args.streams / m["csv"]))
        truth = [y for _, y in rows]
        per = {}
        for lname, make in learners(m["classes"], m["seed"]).items():
            started = time.time()
            predicted = run_learner(make, rows, args.label_every, args.delay)
            s = score(predicted, truth, m["classes"], m["drifts"])
            s["seconds"] = round(time.time() - started, 1)
            per[lname] = s
            print(f"{name:15} {lname:7} acc {s['accuracy']:.4f} first1000 "
                  f"{s['first_1000']:.3f} kappa {s['kappa']:.3f} "
                  f"recovery {[r and r['samples'] for r in s['recoveries']]} "
                  f"({s['seconds']} s)", file=sys.stderr, flush=True)
        results["streams"][name] = per
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results) + "\n")


def table(args):
    """One row per stream and label regime: ours (pseudo-labels on, off) beside River."""
    river_runs = [json.loads(pathlib.Path(p).read_text()) for p in args.river]
    ours_runs = [dict(json.loads(pathlib.Path(p).read_text()), results_path=p)
                 for p in args.ours]
    print("| stream | labels | adaptserve | adaptserve, no pseudo-labels | River best "
          "| logreg | hat | arf | knn | recovery: ours / HAT | to a shared bar: ours / HAT |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in river_runs:
        for name, per in r["streams"].items():
            best = max(per, key=lambda k: per[k]["accuracy"])
            top = per[best]["accuracy"]

            def ours(pseudo):
                return next((o for o in ours_runs if o["stream"] == name
                             and o["label_every"] == r["label_every"]
                             and o["delay"] == r["delay"]
                             and o["pseudo_labels"] == pseudo), None)

            def cell(run):
                if run is None:
                    return "-"
                text = f"{run['accuracy']:.4f}"
                return f"**{text}**" if run["accuracy"] > top else text

            on, off = ours(True), ours(False)
            main = on or off
            rec_ours = [x and x["samples"] for x in main["recoveries"]] if main else []
            rec_hat = [x and x["samples"] for x in per["hat"]["recoveries"]]
            rec = f"{rec_ours} / {rec_hat}" if rec_hat else "-"
            shared = "-"
            hits = main and our_hits(main["results_path"])
            if rec_hat and hits and "hits" in per["hat"]:
                hat_hits = [int(c) for c in per["hat"]["hits"]]
                drifts = [x["position"] for x in per["hat"]["recoveries"] if x]
                shown = lambda n: "never" if n is None else str(n)  # noqa: E731
                shared = ", ".join(f"{shown(o)} / {shown(h)} (bar {b:.3f})"
                                   for b, o, h in shared_bar(hits, hat_hits, drifts))
            labels = "all" if r["label_every"] == 1 else f"1 in {r['label_every']}"
            cells = " | ".join(f"{per[k]['accuracy']:.4f}" for k in ("logreg", "hat", "arf", "knn"))
            print(f"| {name} | {labels} | {cell(on)} | {cell(off)} | {top:.4f} ({best}) "
                  f"| {cells} | {rec} | {shared} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("streams")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--samples", type=int, default=20000)
    s.add_argument("--out", type=pathlib.Path, required=True)
    r = sub.add_parser("river")
    r.add_argument("--streams", type=pathlib.Path, required=True)
    r.add_argument("--label-every", type=int, default=1)
    r.add_argument("--delay", type=int, default=0)
    r.add_argument("--only", nargs="*")
    r.add_argument("--out", type=pathlib.Path, required=True)
    t = sub.add_parser("table")
    t.add_argument("--river", nargs="+", required=True)
    t.add_argument("--ours", nargs="+", required=True)
    args = ap.parse_args()
    if args.cmd == "streams":
        write_streams(args.seed, args.samples, args.out)
    elif args.cmd == "river":
        river(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
