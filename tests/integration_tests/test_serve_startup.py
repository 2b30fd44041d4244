"""The cold start of `tmo-graph serve` (bench/cold_start.py times it): the services load on a
thread of their own while the app is built, and the socket listens from launch. A request
that comes while they load waits and is answered by the loaded graph; ``/health`` answers only
once they are loaded; a load that fails stops the server with its one-line error (exit 2).

The services are fakes that take seconds to load (``slow_serve_worker.py``); the server is
the real CLI in a process of its own, on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.integration_tests.slow_serve_worker import ANSWER, FAILURE
from tmo_graph.errors import TmoGraphError
from tmo_graph.models.cloud import free_port
from tmo_graph.server.startup import listen

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("slow_serve_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _launch(tmp: Path, mode: str, delay_s: float) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "TMO_CLOUD__MODE": "off", "TMO_MEMORY__PERSIST_DIR": str(tmp / "mem")}
    serve = ["serve", "--port", str(port), "--no-auth", "--db", str(tmp / "t.sqlite")]
    process = subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(delay_s), str(tmp), "--", *serve],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return process, port, log


def _connected_while_loading(process: subprocess.Popen[bytes], port: int, tmp: Path) -> None:
    """Wait until the port accepts a connection, and check the load had begun and not ended."""
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, "the server exited before it listened"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.02)
    while not (tmp / "loading").exists():
        assert time.monotonic() < deadline, "the services never began to load"
        time.sleep(0.02)
    assert not (tmp / "loaded").exists(), "the load ended before a request could come"


def test_a_request_during_the_load_waits_and_is_answered(tmp_path: Path) -> None:
    process, port, log = _launch(tmp_path, "ok", delay_s=4.0)
    url = f"http://127.0.0.1:{port}"
    try:
        _connected_while_loading(process, port, tmp_path)
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "tmo-always-local", "messages": [{"role": "user", "content": "Hi?"}]},
            timeout=60,
        )
        assert (tmp_path / "loaded").exists()  # answered only once the services were there
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == ANSWER
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = log.read_text()
    assert text.index("loading models") < text.index("serving on")


def test_health_answers_only_once_the_services_are_loaded(tmp_path: Path) -> None:
    process, port, _ = _launch(tmp_path, "ok", delay_s=3.0)
    try:
        _connected_while_loading(process, port, tmp_path)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=60)
        assert (tmp_path / "loaded").exists()
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_load_that_fails_stops_the_server_with_its_error(tmp_path: Path) -> None:
    process, port, log = _launch(tmp_path, "fail", delay_s=2.0)
    _connected_while_loading(process, port, tmp_path)
    with pytest.raises(httpx.HTTPError):  # never an answer from a server without its models
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=60)
    assert process.wait(timeout=30) == 2
    text = log.read_text()
    assert f"error: {FAILURE}" in text
    assert "Traceback" not in text
    with pytest.raises(OSError):  # the port is given back
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_a_port_in_use_fails_before_any_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(TmoGraphError, match=f"cannot listen on 127.0.0.1:{port}.*free port"):
            listen("127.0.0.1", port)
        result = subprocess.run(
            [sys.executable, str(WORKER), "ok", "0", str(tmp_path), "--", "serve", "--no-auth"]
            + ["--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "loading").exists()  # refused before the load began
