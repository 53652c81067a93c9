"""The synchronous client: one ``httpx.Client`` (keep-alive connections) per
``Client``, retries with backoff where they are safe (see ``_protocol``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from . import _protocol as p
from . import errors
from ._version import __version__
from .models import FeedbackReceipt, Health, InferResult, Status, SyncResult


class Client:
    """A connection to one adaptserve server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        timeout: seconds per attempt (or an ``httpx.Timeout``); ``None`` waits forever.
        retries: further attempts after a 429, a 503 or a failed connection, where a
            retry is safe (module ``adaptserve._protocol`` says which).
        backoff: the first wait in seconds; it doubles per retry, with jitter.
        max_backoff: the longest wait; a ``Retry-After`` beyond it is not waited
            for, the error is raised.
        admin_token: sent as ``Authorization: Bearer`` on the admin routes only.
        headers: extra headers on every request.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        *,
        timeout: p.TimeoutArg = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        admin_token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._policy = p.RetryPolicy(retries, backoff, max_backoff)
        self._admin_token = admin_token
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            headers=p.default_headers(headers, __version__),
        )

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        """Closes the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: p.Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    content=call.body,
                    headers=call.headers(self._admin_token),
                    timeout=call.timeout,
                )
            except httpx.TransportError as exc:
                wait = p.wait_after_exception(call, exc, attempt, self._policy)
                if wait is None:
                    raise p.error_from_exception(call, exc, attempt + 1) from exc
            else:
                if response.status_code in call.answers:
                    return response
                wait = p.wait_after_response(call, response, attempt, self._policy)
                if wait is None:
                    raise p.error_from_response(response, attempt + 1)
            time.sleep(wait)
            attempt += 1

    def infer(self, rows: p.Rows) -> InferResult:
        """Predicts each row: a 2-D numpy array, a list of rows, or one 1-D row.

        Raises ``ValidationError`` for a wrong dimension, an empty batch, more than
        ``max_client_batch`` rows or a non-finite value (nothing is stored)."""
        return p.parse(self._send(p.infer_call(rows)), InferResult.from_json)

    def feedback(
        self,
        request_id: int | None = None,
        label: p.Label | None = None,
        *,
        features: Any = None,
    ) -> FeedbackReceipt:
        """Sends a true label (class index or name): for a prediction by its
        ``request_id``, or with ``features`` for an example the server has not seen.

        Raises ``NotFoundError`` for an unknown, expired or already labelled id."""
        if label is None:
            raise errors.ValidationError("label is required", error_type="validation")
        call = p.feedback_call(request_id, features, label)
        return p.parse(self._send(call), FeedbackReceipt.from_json)

    def status(self) -> Status:
        """``/v1/status``."""
        return p.parse(self._send(p.status_call()), Status.from_json)

    def health(self) -> Health:
        """``/health``; a red report (503) is returned, not raised."""
        response = self._send(p.health_call())
        return p.parse(response, lambda d: Health.from_json(d, response.status_code))

    def live(self) -> bool:
        """``/health/live``: the process answers."""
        self._send(p.live_call())
        return True

    def ready(self) -> bool:
        """``/health/ready``: loaded, warm and not shutting down."""
        return self._send(p.ready_call()).status_code == 200

    def wait_until_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        """Polls ``/health/ready`` until it answers 200; raises ``RequestTimeoutError``
        if it has not within ``timeout`` seconds (a refused connection counts as not
        yet)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.ready():
                    return
            except errors.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise errors.RequestTimeoutError(f"{self.base_url} not ready within {timeout} s")
            time.sleep(interval)

    def sync(self, *, timeout: Any = p.CLIENT_DEFAULT) -> SyncResult:
        """``POST /v1/admin/sync``: returns once every update accepted before the call
        serves in the weights. Needs ``admin_token``. ``timeout`` overrides the
        client's for this call (the barrier may wait for a training step)."""
        return p.parse(self._send(p.admin_call("/v1/admin/sync", timeout)), SyncResult.from_json)

    def checkpoint(self, *, timeout: Any = p.CLIENT_DEFAULT) -> SyncResult:
        """``POST /v1/admin/checkpoint``: the sync barrier, then the update log fsynced."""
        return p.parse(self._send(p.admin_call("/v1/admin/checkpoint", timeout)), SyncResult.from_json)
