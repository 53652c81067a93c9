"""The blocking client against a real server: every route, and each refusal as the
typed error with the server's status and error_type."""

from __future__ import annotations

import numpy as np
import pytest

import adaptserve
from adaptserve import Client
from servers import ADMIN_TOKEN, INPUT_DIM, Server


@pytest.fixture
def client(server: Server):
    with Client(server.url, admin_token=ADMIN_TOKEN) as c:
        yield c


def next_request_id(client: Client) -> int:
    return int(client.status().raw["request_ids"]["next"])


def check_prediction(p: adaptserve.Prediction) -> None:
    assert p.probabilities.dtype == np.float32
    assert p.probabilities.shape == (4,)
    assert abs(float(p.probabilities.sum()) - 1.0) < 1e-3
    assert p.label == int(np.argmax(p.probabilities))
    assert p.confidence == pytest.approx(float(p.probabilities.max()), abs=1e-6)
    assert p.label_name == f"class_{p.label}"
    assert p.path in {"cold_start", "ensemble", "fallback"}


def test_infer_a_list_of_rows(client: Client, rows: np.ndarray) -> None:
    result = client.infer(rows[:3].tolist())
    assert len(result) == 3
    ids = result.request_ids
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert result.probabilities.shape == (3, 4)
    assert result.labels.tolist() == [p.label for p in result]
    assert result.model_version >= 1
    assert result.timings.total_us >= result.timings.model_us >= 0
    for p in result:
        check_prediction(p)


def test_infer_a_numpy_batch(client: Client, rows: np.ndarray) -> None:
    result = client.infer(rows)
    assert len(result) == len(rows)
    assert result.probabilities.shape == (len(rows), 4)
    for p in result:
        check_prediction(p)


def test_infer_one_row(client: Client, rows: np.ndarray) -> None:
    for row in (rows[0], rows[0].tolist(), tuple(float(v) for v in rows[0])):
        result = client.infer(row)
        assert len(result) == 1
        check_prediction(result[0])


def test_a_label_joins_its_prediction_once(client: Client, rows: np.ndarray) -> None:
    prediction = client.infer(rows[0])[0]
    receipt = client.feedback(request_id=prediction.request_id, label=2)
    assert receipt.accepted and receipt.seq > 0
    with pytest.raises(adaptserve.NotFoundError) as e:
        client.feedback(request_id=prediction.request_id, label=2)
    assert e.value.status == 404 and e.value.error_type == "not_found"
    assert str(prediction.request_id) in e.value.message


def test_a_label_by_name_and_a_labelled_example(client: Client, rows: np.ndarray) -> None:
    prediction = client.infer(rows[1])[0]
    assert client.feedback(prediction.request_id, "class_1").accepted
    by_features = client.feedback(features=rows[2], label=3)
    also_list = client.feedback(features=rows[3].tolist(), label="class_0")
    assert by_features.accepted and also_list.seq > by_features.seq


def test_an_unknown_request_id_is_not_found(client: Client) -> None:
    with pytest.raises(adaptserve.NotFoundError) as e:
        client.feedback(request_id=10**12, label=0)
    assert (e.value.status, e.value.error_type) == (404, "not_found")
    assert e.value.attempts == 1


def test_a_wrong_dimension_is_refused_and_takes_no_id(client: Client) -> None:
    before = next_request_id(client)
    with pytest.raises(adaptserve.ValidationError) as e:
        client.infer([[1.0, 2.0]])
    assert (e.value.status, e.value.error_type) == (422, "validation")
    assert f"input_dim = {INPUT_DIM}" in e.value.message
    with pytest.raises(adaptserve.ValidationError):
        client.infer([[0.0] * INPUT_DIM, [0.0] * (INPUT_DIM + 1)])
    assert next_request_id(client) == before


def test_an_empty_or_oversized_batch_is_refused(client: Client) -> None:
    with pytest.raises(adaptserve.ValidationError) as e:
        client.infer([])
    assert e.value.status == 422
    with pytest.raises(adaptserve.ValidationError) as e:
        client.infer(np.zeros((257, INPUT_DIM)))
    assert e.value.status == 422 and "256" in e.value.message


def test_a_body_over_the_limit_is_413(client: Client) -> None:
    with pytest.raises(adaptserve.PayloadTooLargeError) as e:
        client.infer(np.full(150_000, 0.123456789))
    assert (e.value.status, e.value.error_type) == (413, "validation")
    assert isinstance(e.value, adaptserve.ValidationError)


def test_a_refused_label_leaves_the_prediction_waiting(client: Client, rows: np.ndarray) -> None:
    prediction = client.infer(rows[4])[0]
    with pytest.raises(adaptserve.ValidationError) as e:
        client.feedback(request_id=prediction.request_id, label=99)
    assert e.value.status == 422
    with pytest.raises(adaptserve.ValidationError):
        client.feedback(request_id=prediction.request_id, label="no_such_class")
    assert client.feedback(request_id=prediction.request_id, label=1).accepted


def test_input_json_cannot_carry_is_refused_before_sending(client: Client) -> None:
    row = [0.0] * INPUT_DIM
    row[3] = float("nan")
    with pytest.raises(adaptserve.ValidationError) as e:
        client.infer(row)
    assert e.value.status is None and "finite" in e.value.message
    with pytest.raises(adaptserve.ValidationError):
        client.infer(np.zeros((2, 2, INPUT_DIM)))
    with pytest.raises(adaptserve.ValidationError):
        client.infer("0.1, 0.2")
    with pytest.raises(adaptserve.ValidationError):
        client.feedback(request_id=1, features=row, label=0)
    with pytest.raises(adaptserve.ValidationError):
        client.feedback(label=0)


def test_status(client: Client) -> None:
    status = client.status()
    assert (status.input_dim, status.num_classes) == (INPUT_DIM, 4)
    assert status.mode in {"cold_start", "normal"}
    assert status.model_version >= 1 and status.uptime_seconds > 0
    assert status.worker.state == "running" and status.worker.pid
    assert "vote" in status.raw


def test_health_live_ready(client: Client) -> None:
    health = client.health()
    assert health.http_status == 200 and health.healthy
    assert health.status in {"green", "yellow"}
    assert health.components["model"].status == "green"
    assert set(health.components) >= {"model", "memory", "queue", "worker", "alerts"}
    assert health.worker is not None and health.worker.state == "running"
    assert client.live() is True
    assert client.ready() is True
    client.wait_until_ready(timeout=5)


def test_sync_serves_every_accepted_label(client: Client, rows: np.ndarray) -> None:
    prediction = client.infer(rows[0])[0]
    receipt = client.feedback(request_id=prediction.request_id, label=0)
    synced = client.sync(timeout=60)
    assert synced.applied_seq >= receipt.seq
    assert client.status().model_version == synced.model_version
    checkpoint = client.checkpoint()
    assert checkpoint.applied_seq >= synced.applied_seq


def test_admin_routes_need_the_token(server: Server) -> None:
    with Client(server.url) as anonymous:
        with pytest.raises(adaptserve.UnauthorizedError) as e:
            anonymous.sync()
    assert (e.value.status, e.value.error_type) == (401, "unauthorized")
    with Client(server.url, admin_token="not-the-token") as wrong:
        with pytest.raises(adaptserve.ForbiddenError) as e:
            wrong.sync()
    assert (e.value.status, e.value.error_type) == (403, "forbidden")


def test_close_and_context_manager(server: Server) -> None:
    c = Client(server.url)
    assert c.live()
    c.close()
    with pytest.raises(RuntimeError):
        c.live()
    with Client(server.url) as c2:
        assert c2.ready()
