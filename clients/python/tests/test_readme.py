"""The examples in README.md ("Python client") and clients/python/README.md run as
written against a real server, so the documentation cannot drift from the API."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

from servers import ADMIN_TOKEN, INPUT_DIM, REPO, Server


def python_blocks(path: Path, after: str | None = None) -> list[str]:
    text = path.read_text()
    if after is not None:
        text = text.split(after, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)\n```", text, flags=re.S)


def run(block: str, server: Server, **names: object) -> str:
    code = block.replace("http://127.0.0.1:8080", server.url).replace('admin_token="T"', f'admin_token="{ADMIN_TOKEN}"')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<README example>", "exec"), {"__name__": "readme", **names})
    return out.getvalue()


def test_the_main_readme_example_runs(server: Server) -> None:
    blocks = python_blocks(REPO / "README.md", after="## Python client")
    assert len(blocks) == 1 and len(blocks[0].splitlines()) == 5
    printed = run(blocks[0], server)
    assert "cold_start" in printed or "normal" in printed


def test_the_client_readme_example_runs(server: Server) -> None:
    blocks = python_blocks(REPO / "clients" / "python" / "README.md")
    rows = np.random.default_rng(3).normal(size=(4, INPUT_DIM)).astype(np.float32)
    printed = run(blocks[0], server, rows=rows)
    assert len(printed.splitlines()) == len(rows)
