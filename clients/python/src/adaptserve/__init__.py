"""Python client for adaptserve, the online-learning inference server.

``Client`` (blocking) and ``AsyncClient`` (asyncio) send predictions, delayed labels
and admin barriers, and return typed results (``adaptserve.models``) or raise typed
errors (``adaptserve.errors``)::

    from adaptserve import Client

    with Client("http://127.0.0.1:8080") as client:
        result = client.infer([[0.1] * 16])
        client.feedback(request_id=result[0].request_id, label=2)

clients/python/README.md describes the retry rules and the errors.
"""

from ._version import __version__
from .aio import AsyncClient
from .client import Client
from .errors import (
    AdaptserveError,
    ConflictError,
    ConnectionFailedError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    ServerTimeoutError,
    TransportError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)
from .models import (
    Component,
    FeedbackReceipt,
    Health,
    InferResult,
    Prediction,
    Status,
    SyncResult,
    Timings,
    WorkerStatus,
)

__all__ = [
    "__version__",
    "AsyncClient",
    "Client",
    "AdaptserveError",
    "ConflictError",
    "ConnectionFailedError",
    "ForbiddenError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "ServerTimeoutError",
    "TransportError",
    "UnauthorizedError",
    "UnavailableError",
    "ValidationError",
    "Component",
    "FeedbackReceipt",
    "Health",
    "InferResult",
    "Prediction",
    "Status",
    "SyncResult",
    "Timings",
    "WorkerStatus",
]
