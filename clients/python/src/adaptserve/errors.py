"""The errors the client raises, one class per kind of refusal.

Every answer the server refuses has one shape, ``{"error": "...", "error_type": "..."}``
(``crates/server/src/http/error.rs``); :class:`AdaptserveError` carries both fields
and the HTTP status, and the subclass says what a caller can do about it: fix the
input (:class:`ValidationError`), stop asking for that id (:class:`NotFoundError`),
or wait and try again (:class:`RateLimitedError`, :class:`UnavailableError`), which
the clients already did ``retries`` times before raising it.

A request that got no answer at all raises a :class:`TransportError`; its ``status``
and ``error_type`` are ``None``.
"""

from __future__ import annotations

from typing import Any


class AdaptserveError(Exception):
    """A request the server refused, or one that got no answer.

    Attributes:
        message: the server's ``error`` text (or what went wrong on the way).
        status: the HTTP status, ``None`` when there was no answer.
        error_type: the server's ``error_type`` (``validation``, ``not_found``,
            ``overloaded``, ``timeout``, ``unavailable``, ``conflict``,
            ``unauthorized``, ``forbidden``, ``internal``), ``None`` when the answer
            did not carry one.
        body: the decoded JSON body of the answer, if it had one.
        attempts: how many times the request was sent (1 + retries made).
        retry_after: the seconds the server's ``Retry-After`` header asked for.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        body: Any = None,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.body = body
        self.attempts = attempts
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = " ".join(str(p) for p in (self.status, self.error_type) if p is not None)
        return f"[{where}] {self.message}" if where else self.message


class ValidationError(AdaptserveError, ValueError):
    """The request was malformed (400), of the wrong shape or values (422), too large
    (413) or not JSON (415); also raised before sending for input JSON cannot carry
    (NaN, infinity, a 3-D array). Nothing was stored; sending it again fails again."""


class PayloadTooLargeError(ValidationError):
    """The body exceeded the server's ``payload_limit_bytes`` (413): send fewer rows
    per request."""


class UnauthorizedError(AdaptserveError):
    """An admin route without a bearer token (401): pass ``admin_token``."""


class ForbiddenError(AdaptserveError):
    """An admin route with the wrong token, or on a server with no admin token (403)."""


class NotFoundError(AdaptserveError):
    """Unknown, expired or already labelled ``request_id``, unknown rollback version,
    or no such route (404)."""


class ConflictError(AdaptserveError):
    """The request conflicts with the server's state (409), e.g. a sync on a server
    that runs no update-worker."""


class RateLimitedError(AdaptserveError):
    """429 (``overloaded``): the per-client rate limit, the concurrency limit or a full
    queue. The server accepted nothing, so the request was retried; this is raised
    once the retries ran out."""


class UnavailableError(AdaptserveError):
    """503: the server cannot take the request now (update log unwritable, shutting
    down, sync barrier not reached in time) and accepted nothing. Retried before it
    is raised."""


class ServerTimeoutError(UnavailableError):
    """503 ``timeout``: the request ran past the server's ``request_timeout_ms``.

    For ``/v1/infer`` nothing was kept (the deadline can only strike while the row
    waits for the model, before any id is taken), so it is retried. For
    ``/v1/feedback`` the label may already be on its way into the update log, so it
    is not retried: sending the same ``request_id`` again could answer 404 for a
    label that was in fact accepted."""


class ServerError(AdaptserveError):
    """Any other 5xx: a bug in the server (500) or an answer from something in front
    of it (502, 504)."""


class TransportError(AdaptserveError):
    """No answer: the connection failed or the client's own timeout ran out."""


class ConnectionFailedError(TransportError, ConnectionError):
    """The connection could not be made, or broke before an answer came."""


class RequestTimeoutError(TransportError, TimeoutError):
    """The client's ``timeout`` ran out before the answer came. For ``infer`` and
    ``feedback`` the server may still have acted on the request."""


_BY_STATUS: dict[int, type[AdaptserveError]] = {
    400: ValidationError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: ValidationError,
    422: ValidationError,
    429: RateLimitedError,
    503: UnavailableError,
}


def class_for(status: int, error_type: str | None) -> type[AdaptserveError]:
    """The error class of an answer with this status and ``error_type``."""
    if status == 503 and error_type == "timeout":
        return ServerTimeoutError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return AdaptserveError
