#!/usr/bin/env python3
"""Builds tests/fixtures/numpy_mlp/: a small MLP exported the way a numpy or PyTorch
user would (PyTorch Linear layout, F16 safetensors), plus the probabilities numpy
computes for it, so tests/model_fixture.rs can check that our loader and forward pass
agree with an independent implementation.

Run from the repository root:  python3 scripts/make_numpy_fixture.py
Needs: pip install numpy safetensors. Seeded: reruns write identical files.
"""

import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

SEED = 20240607
INPUT_DIM, HIDDEN, NUM_CLASSES = 5, [8, 6], 3
ACTIVATION = "tanh"
LABELS = ["cat", "dog", "bird"]
PROBES = 20
EPS = 1e-8  # the standardiser's epsilon, as in crates/core/src/model/mlp.rs
VERSION = "3"

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "numpy_mlp"


def forward(tensors, x):
    """float64 forward pass: standardise, tanh hidden layers, softmax.
    Returns (probabilities, L2-normalised last hidden activations)."""
    h = (x - tensors["norm.mean"]) / np.sqrt(tensors["norm.var"] + EPS)
    n_layers = len(HIDDEN) + 1
    for i in range(n_layers):
        h_in = h
        h = h_in @ tensors[f"layers.{i}.weight"].T + tensors[f"layers.{i}.bias"]
        if i + 1 < n_layers:
            h = np.tanh(h)
        else:
            embeddings = h_in
    logits = h - h.max(axis=1, keepdims=True)
    e = np.exp(logits)
    probs = e / e.sum(axis=1, keepdims=True)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return probs, embeddings / np.where(norms > 0, norms, 1.0)


def main():
    rng = np.random.default_rng(SEED)
    dims = [INPUT_DIM] + HIDDEN + [NUM_CLASSES]
    exact = {}
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        bound = np.sqrt(6.0 / (fan_in + fan_out)) * 1.5
        exact[f"layers.{i}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in))
        exact[f"layers.{i}.bias"] = rng.uniform(-0.3, 0.3, fan_out)
    exact["norm.mean"] = rng.normal(0.0, 20.0, INPUT_DIM)
    exact["norm.var"] = rng.uniform(0.05, 50.0, INPUT_DIM)

    # What the file holds, and what the reference computes with: F16-rounded values.
    stored = {k: v.astype(np.float16) for k, v in exact.items()}
    rounded = {k: v.astype(np.float64) for k, v in stored.items()}

    z = rng.standard_normal((PROBES, INPUT_DIM))
    inputs = (rounded["norm.mean"] + z * np.sqrt(rounded["norm.var"])).astype(np.float32)
    x = inputs.astype(np.float64)
    probs, embeddings = forward(rounded, x)
    probs_exact, _ = forward(exact, x)

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(stored, str(OUT / "model.safetensors"), metadata={"version": VERSION})
    config = {
        "architecture": "mlp",
        "input_dim": INPUT_DIM,
        "hidden": HIDDEN,
        "num_classes": NUM_CLASSES,
        "activation": ACTIVATION,
        "labels": LABELS,
    }
    (OUT / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    expected = {
        "about": "Probabilities and embeddings computed by scripts/make_numpy_fixture.py "
        "in float64 from the F16-rounded weights (probs, embeddings) and from the "
        "unrounded weights (probs_unrounded).",
        "version": int(VERSION),
        "inputs": inputs.tolist(),
        "probs": probs.tolist(),
        "embeddings": embeddings.tolist(),
        "probs_unrounded": probs_exact.tolist(),
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
