"""The Open Inference Protocol (/v2) routes, driven by the real third-party clients.

Why: a route that passes our own Rust tests can still trip a client that reads the
protocol differently. These tests run Triton's `tritonclient.http` and the `kserve`
SDK's async REST client against a running adaptserve, the way a user would, and
label a returned prediction through POST /v1/feedback.

Run through scripts/check_oip.sh, which starts the server and sets ADAPTSERVE_URL
(e.g. http://127.0.0.1:8080). The clients come from scripts/python_env.sh.
"""

import os
import urllib.parse

import httpx
import numpy as np
import pytest

try:
    import kserve
    import pytest_asyncio
    import tritonclient.http as triton
    from kserve.protocol.infer_type import RequestedOutput
    from tritonclient.utils import InferenceServerException
except ImportError as e:  # say what to install rather than skip
    raise ImportError(
        f"{e}: run these tests in the virtualenv of scripts/python_env.sh "
        "(tritonclient[http], kserve, numpy, pytest, pytest-asyncio)"
    ) from e

MODEL = "adaptserve"


@pytest.fixture(scope="module")
def url():
    value = os.environ.get("ADAPTSERVE_URL")
    if not value:
        pytest.fail("set ADAPTSERVE_URL to a running adaptserve (scripts/check_oip.sh does)")
    return value.rstrip("/")


@pytest.fixture(scope="module")
def client(url):
    # tritonclient takes host:port, without the scheme.
    c = triton.InferenceServerClient(urllib.parse.urlsplit(url).netloc)
    yield c
    c.close()


@pytest.fixture(scope="module")
def shape(client):
    """(input_dim, num_classes) as the model metadata declares them."""
    meta = client.get_model_metadata(MODEL)
    return int(meta["inputs"][0]["shape"][1]), int(meta["outputs"][0]["shape"][1])


def rows(n, dim, seed=0):
    """`n` rows of moderate values (FP16 holds them, unlike the task's raw features)."""
    return np.random.default_rng(seed).uniform(-3, 3, size=(n, dim)).astype(np.float32)


def triton_input(x, datatype="FP32"):
    i = triton.InferInput("input", list(x.shape), datatype)
    i.set_data_from_numpy(x, binary_data=False)
    return i


def check_answer(probabilities, labels, n, classes):
    assert probabilities.shape == (n, classes)
    assert probabilities.dtype == np.float32
    assert labels.shape == (n,)
    assert labels.dtype == np.int64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    # The label is the most probable class (any of them, on a tie).
    assert (probabilities[np.arange(n), labels] == probabilities.max(axis=1)).all()


# --- tritonclient.http -----------------------------------------------------------


def test_triton_health_and_readiness(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("no-such-model")


def test_triton_metadata(client, shape):
    server = client.get_server_metadata()
    assert server["name"] == "adaptserve"
    assert server["version"]
    meta = client.get_model_metadata(MODEL)
    dim, classes = shape
    assert meta["name"] == MODEL
    assert meta["versions"] and all(isinstance(v, str) for v in meta["versions"])
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, dim]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [
        ("probabilities", "FP32", [-1, classes]),
        ("label", "INT64", [-1]),
    ]
    # The versioned form answers for the version in service.
    version = meta["versions"][0]
    assert client.get_model_metadata(MODEL, model_version=version)["name"] == MODEL


def test_triton_infer_fp32(client, shape):
    dim, classes = shape
    x = rows(5, dim)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    result = client.infer(MODEL, [triton_input(x)], outputs=outputs, request_id="fp32-batch")
    response = result.get_response()
    assert response["id"] == "fp32-batch"
    assert response["model_name"] == MODEL
    check_answer(result.as_numpy("probabilities"), result.as_numpy("label"), 5, classes)
    ids = response["parameters"]["request_ids"].split(",")
    assert len(set(ids)) == 5, "each row gets its own request_id"


def test_triton_infer_fp16(client, shape):
    dim, classes = shape
    x = rows(3, dim, seed=1).astype(np.float16)
    # No outputs named: all of them come back.
    result = client.infer(MODEL, [triton_input(x, "FP16")])
    check_answer(result.as_numpy("probabilities"), result.as_numpy("label"), 3, classes)


def test_triton_requested_outputs_only(client, shape):
    dim, _ = shape
    result = client.infer(
        MODEL,
        [triton_input(rows(2, dim, seed=2))],
        outputs=[triton.InferRequestedOutput("label", binary_data=False)],
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    assert result.as_numpy("label").shape == (2,)


def footprint(url):
    """What a refused request must leave alone, from /v1/status: counters an answered
    request moves before it returns (the memory and the WAL catch up later, so an
    earlier test's answers could still move those)."""
    s = httpx.get(f"{url}/v1/status").json()
    return (
        s["request_ids"]["next"],
        s["pending_predictions"],
        s["labels"]["received"],
        s["pseudo_labels"],
        s["paths"],
    )


def test_triton_refusals(client, url, shape):
    dim, _ = shape
    x = rows(1, dim)
    before = footprint(url)
    with pytest.raises(InferenceServerException) as e:
        client.infer("no-such-model", [triton_input(x)])
    assert e.value.status() == "404"
    assert "unknown model" in e.value.message()

    wrong = triton.InferInput("input", [1, dim - 1], "FP32")
    wrong.set_data_from_numpy(x[:, :-1], binary_data=False)
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [wrong])
    assert e.value.status() == "422"
    assert f"[N, {dim}]" in e.value.message()

    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [triton_input(x)], outputs=[triton.InferRequestedOutput("logits", binary_data=False)])
    assert e.value.status() == "422"
    assert 'unknown output "logits"' in e.value.message()

    # tritonclient's default is the binary tensor extension, which is refused with
    # the way to send JSON instead.
    binary = triton.InferInput("input", [1, dim], "FP32")
    binary.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        client.infer(MODEL, [binary])
    assert e.value.status() == "415"
    assert "binary_data=False" in e.value.message()
    assert footprint(url) == before, "a refused request changed the server's state"


def test_triton_prediction_takes_a_delayed_label(client, url, shape):
    dim, _ = shape
    result = client.infer(MODEL, [triton_input(rows(1, dim, seed=3))])
    request_id = result.get_response()["parameters"]["request_id"]
    label = int(result.as_numpy("label")[0])
    before = httpx.get(f"{url}/v1/status").json()["labels"]["received"]
    r = httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, "label": label})
    assert r.status_code == 202, r.text
    after = httpx.get(f"{url}/v1/status").json()["labels"]["received"]
    assert after == before + 1
    # The same id cannot be labelled twice.
    again = httpx.post(f"{url}/v1/feedback", json={"request_id": request_id, "label": label})
    assert again.status_code == 404, again.text


# --- the kserve SDK ----------------------------------------------------------------


@pytest_asyncio.fixture
async def rest():
    c = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=20))
    yield c
    await c.close()


@pytest.mark.asyncio
async def test_kserve_health(rest, url):
    assert await rest.is_server_live(url)
    assert await rest.is_server_ready(url)
    assert await rest.is_model_ready(url, MODEL)
    assert not await rest.is_model_ready(url, "no-such-model")


@pytest.mark.asyncio
async def test_kserve_infer_flat_and_nested(rest, url, shape):
    dim, classes = shape
    x = rows(4, dim, seed=4)
    for data in (x, x.tolist()):  # an array goes flat, a list of rows nested
        request = kserve.InferRequest(
            model_name=MODEL,
            request_id="kserve-1",
            infer_inputs=[kserve.InferInput("input", [4, dim], "FP32", data=data)],
        )
        response = await rest.infer(url, request, model_name=MODEL)
        assert response.id == "kserve-1"
        assert response.model_name == MODEL
        by_name = {o.name: o.as_numpy() for o in response.outputs}
        check_answer(by_name["probabilities"], by_name["label"], 4, classes)
        assert len(response.parameters["request_ids"].split(",")) == 4


@pytest.mark.asyncio
async def test_kserve_requested_output_and_refusal(rest, url, shape):
    dim, _ = shape
    x = rows(1, dim, seed=5)
    request = kserve.InferRequest(
        model_name=MODEL,
        infer_inputs=[kserve.InferInput("input", [1, dim], "FP32", data=x)],
        request_outputs=[RequestedOutput("probabilities")],
    )
    response = await rest.infer(url, request, model_name=MODEL)
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert isinstance(response.parameters["request_id"], int)

    unknown = kserve.InferRequest(
        model_name="no-such-model",
        infer_inputs=[kserve.InferInput("input", [1, dim], "FP32", data=x)],
    )
    with pytest.raises(httpx.HTTPStatusError) as e:
        await rest.infer(url, unknown, model_name="no-such-model")
    assert e.value.response.status_code == 404
    assert "unknown model" in str(e.value)
