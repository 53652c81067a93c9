"""Fixtures: real adaptserve servers, started once per session (or module) on free
ports with fresh state dirs, and stopped after."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from servers import ADMIN_TOKEN, INPUT_DIM, Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default model, an admin token, no rate limit."""
    s = start_server(tmp_path_factory.mktemp("server"), admin_token=ADMIN_TOKEN)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose per-client rate limit really answers 429: 2 requests per second
    on /v1/infer and /v1/feedback, at most 1 at once."""
    config = "[server]\nrate_limit_per_sec = 2.0\nrate_limit_burst = 1.0\n"
    s = start_server(tmp_path_factory.mktemp("limited"), config=config)
    yield s
    s.stop()


@pytest.fixture
def rows() -> np.ndarray:
    """Rows of the default model's synthetic task, seeded."""
    return np.random.default_rng(7).normal(size=(5, INPUT_DIM)).astype(np.float32)
