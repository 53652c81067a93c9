"""What the sync and async clients share: the requests each method sends, the answers
turned into results or errors, and when to retry.

Nothing here does I/O, so both clients make the same decisions and differ only in
how they send and sleep.

When a retry is safe (checked against the server's code, see README.md "Errors"):

- **429** (``overloaded``) refuses before anything is stored: the load shedder and the
  rate limit answer before the handler runs; a full model queue refuses before any
  request id is taken; a full update-log queue puts the prediction back, so the same
  ``request_id`` can be labelled again. Retried for every route.
- **503** ``unavailable`` (update log unwritable, ids not reserved, model gone,
  shutting down, sync barrier not reached in time) likewise stores nothing, and puts
  a label's prediction back. Retried for every route.
- **503** ``timeout`` (``request_timeout_ms``): for ``infer`` the only wait is the
  model's forward pass, before any id is taken or anything stored, so it is retried.
  For ``feedback`` the deadline can strike after the label was handed to the update
  log, which then still writes it while the prediction is gone from the waiting
  map: a retry would answer 404 for a label that was accepted. Not retried.
- **No connection** (refused, connect timeout, no free pooled connection): the
  request never left, so it is retried for every route.
- **A broken or timed-out exchange** after the request was sent: the server may have
  acted on it. ``infer`` would take new ids and may log another pseudo-label;
  ``feedback`` could log a label twice (features form) or answer 404 (request_id
  form). Retried only for reads and the admin barriers, which change nothing or are
  idempotent.
"""

from __future__ import annotations

import email.utils
import json
import logging
import numbers
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar, Union

import httpx
import numpy as np

from . import errors

log = logging.getLogger("adaptserve")

T = TypeVar("T")

#: Rows for ``infer``: a 2-D array, a sequence of rows, or a single 1-D row.
Rows = Union[np.ndarray, Sequence[Sequence[float]], Sequence[float]]
Label = Union[int, str, np.integer]
TimeoutArg = Union[float, httpx.Timeout, None]

CLIENT_DEFAULT: Any = httpx.USE_CLIENT_DEFAULT


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more attempts after the first, waiting ``backoff · 2^n`` seconds
    (capped at ``max_backoff``) with jitter, or what ``Retry-After`` asks."""

    retries: int = 3
    backoff: float = 0.1
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")

    def wait(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait after failed attempt number ``attempt`` (0-based), or
        ``None`` to give up: no retries left, or a ``Retry-After`` longer than
        ``max_backoff`` (the caller decides whether to wait that long)."""
        if attempt >= self.retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_backoff else None
        cap = min(self.max_backoff, self.backoff * (2**attempt))
        # "Equal jitter": at least half the step, so a rate-limited client does
        # back off, and clients that failed together spread out.
        return random.uniform(cap / 2, cap)


@dataclass(frozen=True)
class Call:
    """One request a client method sends, and how to read its answer."""

    method: str
    path: str
    #: The JSON body, encoded up front so bad input fails before anything is sent.
    body: bytes | None = None
    #: Send the admin bearer token.
    admin: bool = False
    #: Statuses that carry the route's document rather than an error (``/health``
    #: answers its report with 503 when something is red).
    answers: frozenset[int] = frozenset({200})
    #: Can a request the server may have received be sent again?
    idempotent: bool = False
    #: Can a 503 ``timeout`` be retried?
    retry_server_timeout: bool = False
    timeout: Any = field(default=CLIENT_DEFAULT)

    def headers(self, admin_token: str | None) -> dict[str, str]:
        headers = {}
        if self.body is not None:
            headers["content-type"] = "application/json"
        if self.admin and admin_token is not None:
            headers["authorization"] = f"Bearer {admin_token}"
        return headers


def _numpy_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a number")


def encode_json(body: Any) -> bytes:
    """Compact JSON; numpy values become plain numbers. NaN and infinity have no JSON
    form, so they are refused here rather than sent as invalid JSON."""
    try:
        text = json.dumps(body, allow_nan=False, default=_numpy_default, separators=(",", ":"))
    except ValueError as e:
        raise errors.ValidationError(
            f"every value must be a finite number (NaN and infinity cannot be sent as JSON): {e}",
            error_type="validation",
        ) from None
    except TypeError as e:
        raise errors.ValidationError(str(e), error_type="validation") from None
    return text.encode()


def _is_number(value: Any) -> bool:
    return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def rows_of(rows: Rows) -> list[Any]:
    """``infer``'s input as a list of rows. The server checks the dimension and each
    value and says which row is wrong; here only what JSON cannot express is refused."""
    if isinstance(rows, np.ndarray):
        if rows.dtype.kind not in "iuf":
            raise errors.ValidationError(
                f"rows must be numeric, got an array of dtype {rows.dtype}", error_type="validation"
            )
        if rows.ndim == 1:
            return [rows.tolist()]
        if rows.ndim == 2:
            return rows.tolist()
        raise errors.ValidationError(
            f"rows must be one row (1-D) or a batch (2-D), got a {rows.ndim}-D array",
            error_type="validation",
        )
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise errors.ValidationError(
            f"rows must be a list of rows, one row, or a numpy array, got {type(rows).__name__}",
            error_type="validation",
        )
    if len(rows) > 0 and _is_number(rows[0]):
        return [list(rows)]
    return list(rows)


def infer_call(rows: Rows) -> Call:
    return Call("POST", "/v1/infer", body=encode_json({"inputs": rows_of(rows)}), retry_server_timeout=True)


def label_of(label: Label) -> int | str:
    if isinstance(label, (bool, np.bool_)):
        raise errors.ValidationError(
            "label must be a class index or name, not a bool", error_type="validation"
        )
    if isinstance(label, (int, np.integer)):
        return int(label)
    if isinstance(label, str):
        return label
    raise errors.ValidationError(
        f"label must be a class index (int) or name (str), got {type(label).__name__}",
        error_type="validation",
    )


def feedback_call(request_id: int | None, features: Any, label: Label) -> Call:
    if (request_id is None) == (features is None):
        raise errors.ValidationError(
            "give exactly one of request_id (a delayed label for a prediction) "
            "or features (a labelled example)",
            error_type="validation",
        )
    body: dict[str, Any] = {"label": label_of(label)}
    if request_id is not None:
        body["request_id"] = int(request_id)
    else:
        if isinstance(features, np.ndarray) and features.ndim != 1:
            raise errors.ValidationError(
                f"features must be one row (1-D), got a {features.ndim}-D array",
                error_type="validation",
            )
        body["features"] = features
    return Call("POST", "/v1/feedback", body=encode_json(body), answers=frozenset({202}))


def status_call() -> Call:
    return Call("GET", "/v1/status", idempotent=True)


def health_call() -> Call:
    return Call("GET", "/health", idempotent=True, answers=frozenset({200, 503}))


def live_call() -> Call:
    return Call("GET", "/health/live", idempotent=True)


def ready_call() -> Call:
    # Not ready is an answer (503), not an error to retry.
    return Call("GET", "/health/ready", idempotent=True, answers=frozenset({200, 503}))


def admin_call(path: str, timeout: Any) -> Call:
    # Barriers: a second sync or checkpoint waits for the same thing again.
    return Call("POST", path, admin=True, idempotent=True, timeout=timeout)


def error_type_of(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error_type"), str):
        return body["error_type"]
    return None


def retry_after_of(response: httpx.Response) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), if given."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def wait_after_response(
    call: Call, response: httpx.Response, attempt: int, policy: RetryPolicy
) -> float | None:
    """Seconds before sending ``call`` again after this refusal, or ``None`` to raise."""
    status = response.status_code
    if status == 503 and error_type_of(response) == "timeout":
        retryable = call.retry_server_timeout or call.idempotent
    else:
        retryable = status in (429, 503)
    if not retryable:
        return None
    wait = policy.wait(attempt, retry_after_of(response))
    if wait is not None:
        log.info(
            "%s %s answered %d (%s); retry %d/%d in %.3f s",
            call.method, call.path, status, error_type_of(response), attempt + 1, policy.retries, wait,
        )
    return wait


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def wait_after_exception(
    call: Call, exc: httpx.TransportError, attempt: int, policy: RetryPolicy
) -> float | None:
    """Seconds before sending ``call`` again after this failure, or ``None`` to raise."""
    if not (isinstance(exc, _NOT_SENT) or call.idempotent):
        return None
    wait = policy.wait(attempt, None)
    if wait is not None:
        log.info(
            "%s %s failed (%s: %s); retry %d/%d in %.3f s",
            call.method, call.path, type(exc).__name__, exc, attempt + 1, policy.retries, wait,
        )
    return wait


def error_from_response(response: httpx.Response, attempts: int) -> errors.AdaptserveError:
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
        error_type = body.get("error_type") if isinstance(body.get("error_type"), str) else None
    else:
        message = response.text.strip()[:200] or response.reason_phrase or f"HTTP {status}"
        error_type = None
    cls = errors.class_for(status, error_type)
    return cls(
        message,
        status=status,
        error_type=error_type,
        body=body,
        attempts=attempts,
        retry_after=retry_after_of(response),
    )


def error_from_exception(call: Call, exc: httpx.TransportError, attempts: int) -> errors.TransportError:
    what = f"{call.method} {call.path}"
    if isinstance(exc, httpx.TimeoutException):
        return errors.RequestTimeoutError(f"{what}: no answer within the timeout ({exc})", attempts=attempts)
    return errors.ConnectionFailedError(f"{what}: {type(exc).__name__}: {exc}", attempts=attempts)


def parse(response: httpx.Response, build: Callable[[Any], T]) -> T:
    """The answer's JSON as a result; an answer of another shape is an error, not a
    half-filled result."""
    try:
        return build(response.json())
    except (ValueError, KeyError, TypeError) as e:
        raise errors.AdaptserveError(
            f"unexpected answer to {response.request.method} {response.request.url.path}: "
            f"{type(e).__name__}: {e}; body: {response.text[:200]!r}",
            status=response.status_code,
        ) from None


def default_headers(extra: Mapping[str, str] | None, version: str) -> dict[str, str]:
    headers = {"user-agent": f"adaptserve-python/{version}", "accept": "application/json"}
    headers.update(extra or {})
    return headers
