"""Waiting for a server a test started as a subprocess."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest


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
