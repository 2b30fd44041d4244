"""The pieces of serve's cold start that need no network: the background load
(:class:`tmo_graph.server.startup.BackgroundLoad`). The socket and the whole start-up over HTTP
are tested in ``tests/integration_tests/test_serve_startup.py``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.server.startup import BackgroundLoad

ROOT = Path(__file__).resolve().parents[2]
# What the app and the graph import at start-up must leave out: a chat request with the cloud
# off needs none of these (the console's templates; the OpenAI client, about 0.5 s; the
# sentence-transformers backend). torch: the models load on a thread of their own.
NOT_AT_START = (
    "jinja2",
    "langchain_openai",
    "openai",
    "sentence_transformers",
    "torch",
)


def test_the_load_runs_beside_the_caller_and_gives_its_value() -> None:
    started, release = threading.Event(), threading.Event()

    def load() -> list[str]:
        started.set()
        release.wait(10)
        return ["loaded", threading.current_thread().name]

    loading = BackgroundLoad(load, name="test-load")
    assert started.wait(10)
    assert not loading.done()  # the caller goes on while it loads
    release.set()
    assert loading.result(10) == ["loaded", "test-load"]
    assert loading.done()


def test_a_failed_load_raises_its_own_error_in_the_waiting_thread() -> None:
    error = TmoGraphError("the model folder has no weights", "convert it again")

    def load() -> None:
        raise error

    with pytest.raises(TmoGraphError) as raised:
        BackgroundLoad(load).result(10)
    assert raised.value is error


def test_the_loading_thread_stays_alive_after_the_load() -> None:
    # torch answers far slower on other threads once the thread that loaded the model exits
    BackgroundLoad(lambda: 1, name="test-parked").result(10)
    time.sleep(0.05)
    assert any(t.name == "test-parked" and t.is_alive() for t in threading.enumerate())


def test_a_load_that_takes_too_long_says_so() -> None:
    release = threading.Event()
    loading = BackgroundLoad(lambda: release.wait(10))
    with pytest.raises(TmoGraphError, match="did not finish within 0.05 s"):
        loading.result(0.05)
    release.set()
    assert loading.result(10) is True


def test_the_server_starts_without_what_a_chat_request_does_not_need() -> None:
    code = (
        "import sys\n"
        "from tmo_graph.cli.app import app\n"
        "from tmo_graph.server.app import create_app\n"
        "from tmo_graph.settings import Settings\n"
        "import tmo_graph.graph, tmo_graph.services\n"
        "create_app(settings=Settings(), no_auth=True)\n"
        f"print(','.join(m for m in {NOT_AT_START!r} if m in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert found == "", f"imported at start-up: {found}"


def test_an_openai_cloud_is_still_told_its_timeout() -> None:
    # answer_cloud recognises LangChain's OpenAI model without importing it at start-up
    from langchain_openai import ChatOpenAI

    from tests.unit_tests.fakes import FakeCloud
    from tmo_graph.nodes.answer_cloud import _openai_chat

    openai_cloud = ChatOpenAI.model_construct()  # no client: the check reads the type only
    assert _openai_chat(openai_cloud)
    assert not _openai_chat(FakeCloud())
