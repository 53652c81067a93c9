"""The asyncio client against the same real server: the same routes and errors, and
many requests in flight over one connection pool."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import adaptserve
from adaptserve import AsyncClient
from servers import ADMIN_TOKEN, INPUT_DIM, Server


async def test_infer_feedback_and_errors(server: Server, rows: np.ndarray) -> None:
    async with AsyncClient(server.url, admin_token=ADMIN_TOKEN) as client:
        batch = await client.infer(rows.tolist())
        assert len(batch) == len(rows) and batch.probabilities.shape == (len(rows), 4)
        from_numpy = await client.infer(rows)
        assert len(from_numpy) == len(rows)
        one = (await client.infer(rows[0]))[0]
        assert one.probabilities.shape == (4,) and one.label_name == f"class_{one.label}"

        receipt = await client.feedback(request_id=one.request_id, label=1)
        assert receipt.accepted and receipt.seq > 0
        with pytest.raises(adaptserve.NotFoundError) as e:
            await client.feedback(request_id=one.request_id, label=1)
        assert (e.value.status, e.value.error_type) == (404, "not_found")
        assert (await client.feedback(features=rows[1], label="class_3")).accepted

        with pytest.raises(adaptserve.ValidationError) as e:
            await client.infer([[0.5] * (INPUT_DIM - 1)])
        assert (e.value.status, e.value.error_type) == (422, "validation")


async def test_status_health_and_sync(server: Server, rows: np.ndarray) -> None:
    async with AsyncClient(server.url, admin_token=ADMIN_TOKEN) as client:
        status = await client.status()
        assert status.input_dim == INPUT_DIM and status.worker.state == "running"
        health = await client.health()
        assert health.healthy and health.components["model"].status == "green"
        assert await client.live() and await client.ready()
        await client.wait_until_ready(timeout=5)

        prediction = (await client.infer(rows[2]))[0]
        receipt = await client.feedback(prediction.request_id, 2)
        synced = await client.sync(timeout=60)
        assert synced.applied_seq >= receipt.seq
    async with AsyncClient(server.url) as anonymous:
        with pytest.raises(adaptserve.UnauthorizedError):
            await anonymous.sync()


async def test_many_requests_at_once(server: Server, rows: np.ndarray) -> None:
    client = AsyncClient(server.url)
    try:
        results = await asyncio.gather(*(client.infer(rows[i % len(rows)]) for i in range(32)))
    finally:
        await client.close()
    ids = [r[0].request_id for r in results]
    assert len(set(ids)) == 32
