"""The servers the tests talk to: the real adaptserve binary, and a scripted stub.

The real server is the one under test for everything it can be made to do. The stub
exists only for the retry rules' corner cases a healthy server cannot be driven into
on demand (a 503 followed by a 200, a reply slower than the client's timeout).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
ADMIN_TOKEN = "client-test-token"
INPUT_DIM = 16  # the default model (models/default)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> Path:
    """``ADAPTSERVE_BIN``, else the debug build in ``$CARGO_TARGET_DIR`` (or
    ``target/``). A missing binary fails the run, saying how to build it."""
    given = os.environ.get("ADAPTSERVE_BIN")
    if given:
        path = Path(given)
    else:
        target = os.environ.get("CARGO_TARGET_DIR") or str(REPO / "target")
        path = Path(target) / "debug" / "adaptserve"
    if not path.is_file():
        pytest.fail(
            f"no adaptserve server binary at {path}: run `cargo build --workspace` "
            "or set ADAPTSERVE_BIN to one",
            pytrace=False,
        )
    if not (path.parent / "update-worker").is_file():
        pytest.fail(
            f"no update-worker next to {path} (the sync barrier needs it): run `cargo build --workspace`",
            pytrace=False,
        )
    return path


@dataclass
class Server:
    """A running ``adaptserve serve`` with its own state dir and port."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin_token: str | None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples on ``/metrics`` whose labels include these."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            series, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def start_server(workdir: Path, *, admin_token: str | None = None, config: str | None = None) -> Server:
    """Starts the real server on a free port and waits until ``/health/ready`` says so."""
    binary = server_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        str(binary), "serve",
        "--model", str(REPO / "models" / "default"),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--state-dir", str(workdir / "state"),
    ]
    if config is not None:
        (workdir / "config.toml").write_text(config)
        cmd += ["--config", str(workdir / "config.toml")]
    # Only what this test asks for: no ADAPTSERVE_* setting from the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTSERVE_")}
    env["NO_COLOR"] = "1"
    if admin_token is not None:
        env["ADAPTSERVE_ADMIN_TOKEN"] = admin_token
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    server = Server(f"http://127.0.0.1:{port}", process, log_path, admin_token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"adaptserve exited with {process.returncode} at start:\n{server.log_tail()}", pytrace=False)
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"adaptserve was not ready within 60 s:\n{server.log_tail()}", pytrace=False)


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    body: bytes


class Stub:
    """A scripted HTTP server: the n-th request gets ``replies[n]`` (the last reply
    repeats); every request is recorded in ``seen`` as it arrives."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with stub._lock:
                    stub.seen.append(Seen(self.command, self.path, body))
                    reply = stub.replies[min(len(stub.seen), len(stub.replies)) - 1]
                time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, (bytes, str)) else json.dumps(reply.body)
                data = payload.encode() if isinstance(payload, str) else payload
                try:
                    self.send_response(reply.status)
                    ctype = "application/json" if not isinstance(reply.body, (bytes, str)) else "text/html"
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout); nothing to answer

            do_GET = _handle
            do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Stub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def infer_reply(request_id: int = 1) -> dict[str, Any]:
    """A valid ``/v1/infer`` answer for one row, shaped as the server's."""
    return {
        "model_version": 3,
        "predictions": [
            {
                "request_id": request_id,
                "label": 2,
                "label_name": "class_2",
                "confidence": 0.75,
                "probabilities": [0.1, 0.05, 0.75, 0.1],
                "path": "ensemble",
                "neighbors_used": 5,
                "update_enqueued": True,
            }
        ],
        "timings": {"model_us": 40, "knn_us": 12, "total_us": 60},
    }


def error(message: str, error_type: str) -> dict[str, str]:
    return {"error": message, "error_type": error_type}
