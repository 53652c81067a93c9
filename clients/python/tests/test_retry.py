"""Retries: a real server's rate limit answers 429 and the client rides it out; a
scripted stub covers what a healthy server cannot be made to do on demand (503 then
200, Retry-After, an answer slower than the client's timeout). Each test also checks
what must *not* be retried."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

import adaptserve
from adaptserve import AsyncClient, Client
from adaptserve._protocol import RetryPolicy
from servers import Reply, Server, Stub, error, free_port, infer_reply

ROW = [0.25] * 16


def wait_for_a_full_bucket() -> None:
    # The limited server refills 2 tokens a second up to 1: after 0.6 s one is there.
    time.sleep(0.6)


def retries_logged(caplog: pytest.LogCaptureFixture, status: int) -> int:
    return sum(f"answered {status}" in r.getMessage() for r in caplog.records if r.name == "adaptserve")


# --- a real server's rate limit -----------------------------------------------------


def test_over_the_rate_limit_without_retries_is_rate_limited(limited_server: Server) -> None:
    wait_for_a_full_bucket()
    with Client(limited_server.url, retries=0) as client:
        client.infer(ROW)
        with pytest.raises(adaptserve.RateLimitedError) as e:
            for _ in range(5):
                client.infer(ROW)
    assert (e.value.status, e.value.error_type) == (429, "overloaded")
    assert "rate limit" in e.value.message and e.value.attempts == 1


def test_retries_ride_out_the_rate_limit(limited_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adaptserve")
    refused_before = limited_server.metric("adaptserve_http_requests_total", route="/v1/infer", status="429")
    wait_for_a_full_bucket()
    with Client(limited_server.url, retries=10, backoff=0.2, max_backoff=2.0) as client:
        results = [client.infer(ROW) for _ in range(5)]
    ids = [r[0].request_id for r in results]
    assert len(set(ids)) == 5
    retried = retries_logged(caplog, 429)
    assert retried >= 1
    refused = limited_server.metric("adaptserve_http_requests_total", route="/v1/infer", status="429")
    # Every retry the client logged answers a 429 the server counted.
    assert refused - refused_before == retried


def test_a_rate_limited_label_changed_nothing(limited_server: Server) -> None:
    wait_for_a_full_bucket()
    with Client(limited_server.url, retries=0) as once, Client(
        limited_server.url, retries=10, backoff=0.2, max_backoff=2.0
    ) as patient:
        prediction = once.infer(ROW)[0]  # takes the only token
        with pytest.raises(adaptserve.RateLimitedError):
            once.feedback(request_id=prediction.request_id, label=1)
        # The 429 kept nothing: the prediction still waits for its label.
        assert patient.feedback(request_id=prediction.request_id, label=1).accepted


async def test_async_retries_ride_out_the_rate_limit(limited_server: Server) -> None:
    wait_for_a_full_bucket()
    async with AsyncClient(limited_server.url, retries=12, backoff=0.2, max_backoff=2.0) as client:
        results = await asyncio.gather(*(client.infer(ROW) for _ in range(4)))
    assert len({r[0].request_id for r in results}) == 4


# --- the scripted stub ----------------------------------------------------------------

UNAVAILABLE = error("updates cannot be accepted right now; retry later", "unavailable")
SERVER_TIMEOUT = error("the request timed out", "timeout")


def test_a_503_then_200_is_retried_honouring_retry_after() -> None:
    with Stub([Reply(503, UNAVAILABLE, {"retry-after": "1"}), Reply(200, infer_reply(7))]) as stub:
        started = time.monotonic()
        with Client(stub.url, retries=3, backoff=0.001) as client:
            result = client.infer(np.array(ROW))
        elapsed = time.monotonic() - started
    assert result[0].request_id == 7 and result.model_version == 3
    assert result[0].probabilities.tolist() == pytest.approx([0.1, 0.05, 0.75, 0.1])
    assert len(stub.seen) == 2 and stub.seen[0].body == stub.seen[1].body
    assert elapsed >= 0.95  # the server asked for a second; backoff alone is 1 ms


def test_a_retry_after_beyond_max_backoff_is_raised_not_waited() -> None:
    with Stub([Reply(429, error("too many concurrent requests", "overloaded"), {"retry-after": "30"})]) as stub:
        with Client(stub.url, retries=3, max_backoff=5) as client:
            with pytest.raises(adaptserve.RateLimitedError) as e:
                client.infer(ROW)
    assert e.value.retry_after == 30 and e.value.attempts == 1 and len(stub.seen) == 1


def test_retries_run_out() -> None:
    with Stub([Reply(503, UNAVAILABLE)]) as stub:
        with Client(stub.url, retries=2, backoff=0.01) as client:
            with pytest.raises(adaptserve.UnavailableError) as e:
                client.feedback(request_id=5, label=1)
    assert (e.value.status, e.value.error_type, e.value.attempts) == (503, "unavailable", 3)
    assert len(stub.seen) == 3


def test_a_server_timeout_is_retried_for_infer_but_not_for_feedback() -> None:
    with Stub([Reply(503, SERVER_TIMEOUT), Reply(200, infer_reply(9))]) as stub:
        with Client(stub.url, backoff=0.01) as client:
            assert client.infer(ROW)[0].request_id == 9
    assert len(stub.seen) == 2
    with Stub([Reply(503, SERVER_TIMEOUT), Reply(202, {"accepted": True, "seq": 4})]) as stub:
        with Client(stub.url, backoff=0.01) as client:
            with pytest.raises(adaptserve.ServerTimeoutError) as e:
                client.feedback(request_id=9, label=2)
    # The label may already be in the update log: the client says so rather than resend.
    assert len(stub.seen) == 1 and e.value.error_type == "timeout"
    assert isinstance(e.value, adaptserve.UnavailableError)


def test_refusals_other_than_429_and_503_are_not_retried() -> None:
    cases = [
        (422, error("inputs[0] has 2 values, the model expects input_dim = 16", "validation"), adaptserve.ValidationError),
        (404, error("request_id 5 is unknown, expired, or already labelled", "not_found"), adaptserve.NotFoundError),
        (409, error("no update-worker is configured", "conflict"), adaptserve.ConflictError),
        (500, error("internal error", "internal"), adaptserve.ServerError),
        (502, "<html>bad gateway</html>", adaptserve.ServerError),
    ]
    for status, body, cls in cases:
        with Stub([Reply(status, body)]) as stub:
            with Client(stub.url, backoff=0.01) as client:
                with pytest.raises(cls) as e:
                    client.feedback(request_id=5, label=1)
        assert len(stub.seen) == 1 and e.value.status == status
    assert e.value.error_type is None and "bad gateway" in e.value.message


def test_a_refused_connection_is_retried() -> None:
    port = free_port()  # nothing listens on it
    started = time.monotonic()
    with Client(f"http://127.0.0.1:{port}", retries=2, backoff=0.05) as client:
        with pytest.raises(adaptserve.ConnectionFailedError) as e:
            client.infer(ROW)
    assert e.value.attempts == 3 and e.value.status is None
    assert time.monotonic() - started >= 0.025 + 0.05  # two waits of at least half a step
    assert isinstance(e.value, ConnectionError)


def test_the_client_timeout_retries_reads_but_not_infer() -> None:
    with Stub([Reply(200, infer_reply(), delay=1.0)]) as stub:
        with Client(stub.url, timeout=0.2, retries=2, backoff=0.01) as client:
            with pytest.raises(adaptserve.RequestTimeoutError) as e:
                client.infer(ROW)
            # The server may have acted on it: not sent again.
            assert e.value.attempts == 1 and len(stub.seen) == 1
            with pytest.raises(adaptserve.RequestTimeoutError) as e:
                client.status()
            assert e.value.attempts == 3 and len(stub.seen) == 4
    assert isinstance(e.value, TimeoutError)


async def test_async_retry_and_timeout() -> None:
    with Stub([Reply(503, UNAVAILABLE, {"retry-after": "0.3"}), Reply(200, infer_reply(11))]) as stub:
        async with AsyncClient(stub.url, backoff=0.001) as client:
            started = time.monotonic()
            assert (await client.infer(ROW))[0].request_id == 11
            assert time.monotonic() - started >= 0.28
    assert len(stub.seen) == 2
    with Stub([Reply(200, infer_reply(), delay=1.0)]) as stub:
        async with AsyncClient(stub.url, timeout=0.2, retries=2) as client:
            with pytest.raises(adaptserve.RequestTimeoutError) as e:
                await client.feedback(request_id=1, label=0)
    assert e.value.attempts == 1 and len(stub.seen) == 1


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy(retries=6, backoff=0.1, max_backoff=0.5)
    for attempt, cap in enumerate([0.1, 0.2, 0.4, 0.5, 0.5, 0.5]):
        waits = [policy.wait(attempt, None) for _ in range(200)]
        assert all(w is not None and cap / 2 <= w <= cap for w in waits)
        assert max(waits) - min(waits) > cap / 10  # jittered, not fixed
    assert policy.wait(6, None) is None
    assert policy.wait(0, 0.4) == 0.4 and policy.wait(0, 0.6) is None
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)


def test_a_red_health_report_and_not_ready_are_answers_not_retried() -> None:
    red = {
        "status": "red",
        "mode": "normal",
        "worker": {"pid": None, "state": "suspended", "restarts": 3, "failed_attempts": 3, "crash_streak": 3},
        "health_metrics": None,
        "components": {"model": {"status": "red", "detail": "not ready"}},
    }
    with Stub([Reply(503, red)]) as stub:
        with Client(stub.url, backoff=0.01) as client:
            health = client.health()
    assert len(stub.seen) == 1
    assert (health.http_status, health.status, health.healthy) == (503, "red", False)
    assert health.components["model"].detail == "not ready"
    assert health.worker is not None and health.worker.pid is None and health.worker.state == "suspended"
    with Stub([Reply(503, {"status": "not_ready"})]) as stub:
        with Client(stub.url, backoff=0.01) as client:
            assert client.ready() is False
    assert len(stub.seen) == 1


def test_an_answer_of_the_wrong_shape_is_an_error() -> None:
    with Stub([Reply(200, {"predictions": "nope"})]) as stub:
        with Client(stub.url) as client:
            with pytest.raises(adaptserve.AdaptserveError) as e:
                client.infer(ROW)
    assert e.value.status == 200 and "unexpected answer" in e.value.message
