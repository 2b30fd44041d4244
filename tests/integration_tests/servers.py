"""Servers a test starts as a subprocess: waiting for one, and ``langgraph dev``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def wait_until_answering(
    url: str, process: subprocess.Popen[bytes], log: Path, name: str, timeout_s: float
) -> None:
    """Return once ``GET url`` answers 200; fail with the server's log if it exits first or
    with a clear message if it does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{name} did not answer {url} within {timeout_s:g} s")
        time.sleep(0.3)


@dataclass(frozen=True)
class LangGraphDev:
    """A running ``langgraph dev``: its base URL and process id."""

    url: str
    pid: int


@contextmanager
def langgraph_dev(work: Path, env: Mapping[str, str]) -> Iterator[LangGraphDev]:
    """``langgraph dev`` on 127.0.0.1 serving the repository's langgraph.json, offline, with
    ``env`` over this process's environment and its log in ``work/server.log``; skipped when
    langgraph-cli is not installed. Waits up to 300 s: the mounted OpenAI routes
    (langgraph.json ``http.app``) load the models while the server starts."""
    from tmo_graph.models.cloud import free_port

    cli = Path(sys.executable).parent / "langgraph"
    if not cli.exists():
        pytest.skip("langgraph-cli is not installed (pip install 'tmo-graph[dev]')")
    port = free_port()
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    log_path = work / "server.log"
    command = [str(cli), "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answering(f"{url}/ok", process, log_path, "langgraph dev", 300)
            yield LangGraphDev(url, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)
            shutil.rmtree(ROOT / ".langgraph_api", ignore_errors=True)
