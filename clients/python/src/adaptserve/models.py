"""Typed results: what each route answers, as dataclasses.

Field names follow the server's JSON (``crates/server/src/engine/infer.rs``,
``crates/server/src/http/``), so the server's documentation in README.md reads the
same here. Probabilities come back as numpy arrays because that is what callers
compute with. ``/v1/status`` and ``/health`` carry many more figures than are typed
here; each keeps the whole document in ``raw``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """One row's answer from ``/v1/infer``."""

    #: The id to send the row's true label back with (``feedback(request_id=...)``).
    request_id: int
    #: The predicted class index.
    label: int
    #: The class name, when the model has names (the default model: ``class_0`` …).
    label_name: str | None
    #: The winning class's probability.
    confidence: float
    #: One probability per class (float32).
    probabilities: np.ndarray
    #: Which path answered: ``cold_start`` (model alone, memory still small),
    #: ``ensemble`` (model and neighbours voted) or ``fallback`` (k-NN unavailable).
    path: str
    #: Neighbours that voted.
    neighbors_used: int
    #: Whether a confident answer became a pseudo-label update.
    update_enqueued: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Prediction:
        return cls(
            request_id=int(d["request_id"]),
            label=int(d["label"]),
            label_name=d.get("label_name"),
            confidence=float(d["confidence"]),
            probabilities=np.asarray(d["probabilities"], dtype=np.float32),
            path=str(d["path"]),
            neighbors_used=int(d.get("neighbors_used", 0)),
            update_enqueued=bool(d.get("update_enqueued", False)),
        )


@dataclass(frozen=True)
class Timings:
    """Where the server's time went, in microseconds."""

    model_us: int
    knn_us: int
    total_us: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timings:
        return cls(int(d["model_us"]), int(d["knn_us"]), int(d["total_us"]))


@dataclass(frozen=True)
class InferResult:
    """The answer to one ``/v1/infer`` request: a prediction per row, in order."""

    model_version: int
    predictions: list[Prediction]
    timings: Timings

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InferResult:
        return cls(
            model_version=int(d["model_version"]),
            predictions=[Prediction.from_json(p) for p in d["predictions"]],
            timings=Timings.from_json(d["timings"]),
        )

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.predictions)

    def __getitem__(self, i: int) -> Prediction:
        return self.predictions[i]

    @property
    def request_ids(self) -> list[int]:
        return [p.request_id for p in self.predictions]

    @property
    def labels(self) -> np.ndarray:
        """Predicted class per row (int64)."""
        return np.array([p.label for p in self.predictions], dtype=np.int64)

    @property
    def probabilities(self) -> np.ndarray:
        """Rows × classes (float32)."""
        if not self.predictions:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([p.probabilities for p in self.predictions])


@dataclass(frozen=True)
class FeedbackReceipt:
    """``202 {"accepted": true, "seq": N}``: the label is in the update log as ``seq``."""

    accepted: bool
    seq: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FeedbackReceipt:
        return cls(accepted=bool(d["accepted"]), seq=int(d["seq"]))


@dataclass(frozen=True)
class SyncResult:
    """The sync barrier (or checkpoint) passed: ``model_version`` serves every update
    up to ``applied_seq``."""

    model_version: int
    applied_seq: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SyncResult:
        return cls(model_version=int(d["model_version"]), applied_seq=int(d["applied_seq"]))


@dataclass(frozen=True)
class WorkerStatus:
    """The update-worker as its supervisor sees it."""

    state: str
    pid: int | None
    restarts: int
    failed_attempts: int
    crash_streak: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WorkerStatus:
        pid = d.get("pid")
        return cls(
            state=str(d.get("state", "")),
            pid=int(pid) if pid is not None else None,
            restarts=int(d.get("restarts", 0)),
            failed_attempts=int(d.get("failed_attempts", 0)),
            crash_streak=int(d.get("crash_streak", 0)),
        )


@dataclass(frozen=True)
class Status:
    """``/v1/status``: the headline figures typed, everything in ``raw``."""

    #: The server's own version.
    version: str
    model_version: int
    #: ``cold_start`` or ``normal``.
    mode: str
    experiences: int
    input_dim: int
    num_classes: int
    uptime_seconds: float
    pending_predictions: int
    worker: WorkerStatus
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Status:
        return cls(
            version=str(d["version"]),
            model_version=int(d["model_version"]),
            mode=str(d["mode"]),
            experiences=int(d["experiences"]),
            input_dim=int(d["input_dim"]),
            num_classes=int(d["num_classes"]),
            uptime_seconds=float(d["uptime_seconds"]),
            pending_predictions=int(d.get("pending_predictions", 0)),
            worker=WorkerStatus.from_json(d.get("worker") or {}),
            raw=d,
        )


@dataclass(frozen=True)
class Component:
    """One component's light in ``/health``."""

    #: ``green``, ``yellow`` or ``red``.
    status: str
    detail: str


@dataclass(frozen=True)
class Health:
    """``/health``: the worst light overall and each component's.

    The server answers 503 when something is red; that is still a health report,
    returned here with ``http_status`` 503, not raised.
    """

    #: ``green``, ``yellow`` or ``red``.
    status: str
    mode: str
    components: dict[str, Component]
    worker: WorkerStatus | None
    #: The monitor's last sample (``update_rate``, ``queue_size`` …), ``None`` before
    #: its first.
    health_metrics: dict[str, Any] | None
    http_status: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def healthy(self) -> bool:
        """True unless something is red."""
        return self.status != "red"

    @classmethod
    def from_json(cls, d: dict[str, Any], http_status: int) -> Health:
        components = {
            name: Component(status=str(c["status"]), detail=str(c.get("detail", "")))
            for name, c in (d.get("components") or {}).items()
        }
        worker = d.get("worker")
        return cls(
            status=str(d["status"]),
            mode=str(d.get("mode", "")),
            components=components,
            worker=WorkerStatus.from_json(worker) if isinstance(worker, dict) else None,
            health_metrics=d.get("health_metrics"),
            http_status=http_status,
            raw=d,
        )
