"""The console in a real browser: Debian's headless Chromium (driven by playwright, as
``openwebui.py`` launches it) against a real uvicorn on 127.0.0.1 serving a graph on fakes that
has answered a scripted dialogue (local, cloud text, cloud with an image, escalated, private,
an e-mail kept from the cloud). The pages' numbers are checked against the turn records and
the audit log, a user's key against another user's thread, and the chat box's greyed draft
then final answer. Screenshots go to ``.cache/console/`` (and, with ``TMO_CONSOLE_DOCS=1``,
to ``docs/img/`` for the README)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.console_dialogue import EMAIL, PRIVATE_WORDS, SECRETS, Script, build, keys, run_script
from tests.integration_tests.test_scale import postgres  # noqa: F401 (the fixture)
from tmo_graph.guards.audit import read_audit
from tmo_graph.models.cloud import free_port
from tmo_graph.server.app import create_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / ".cache" / "console"


def usd(value: float) -> str:
    return f"${value:.6f}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Script, Path]]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright", reason="playwright is in the dev extra")
    tmp = tmp_path_factory.mktemp("console-browser")
    # A slow draft and a slower cloud, so the greyed draft is on screen for a while.
    graph, services = build(tmp, delay=1.5)
    app = create_app(graph, services=services, keys=keys())
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=60) as client:
        script = run_script(client)
    yield url, graph, script, tmp / "audit.jsonl"
    uv.should_exit = True
    thread.join(timeout=20)


def _records(graph: Any, thread: str) -> list[dict[str, Any]]:
    return list(graph.get_state({"configurable": {"thread_id": thread}}).values["turns"])


def _log_in(page: Any, url: str, user: str) -> None:
    page.goto(f"{url}/console")
    page.screenshot(path=str(SHOTS / "login.png"))
    page.fill("#key", SECRETS[user])
    page.click("#login")
    page.wait_for_selector("#threads")
    assert SECRETS[user] not in page.url


def test_the_console_in_a_browser(server: Any) -> None:
    from playwright.sync_api import sync_playwright

    url, graph, script, audit = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    docs = os.environ.get("TMO_CONSOLE_DOCS") == "1"
    alice, bob = script.threads["alice"], script.threads["bob"]
    records = _records(graph, alice)
    lines = read_audit(audit)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        context = browser.new_context(viewport={"width": 1180, "height": 860})
        page = context.new_page()
        _log_in(page, url, "alice")

        # The threads page: alice's one thread, its numbers the records' and the audit log's.
        rows = page.locator("#threads tbody tr")
        assert rows.count() == 1 and rows.get_attribute("data-thread") == alice
        assert rows.locator(".turns").inner_text() == str(len(records))
        assert rows.locator(".cost").inner_text() == usd(sum(r["cost_usd"] for r in records))
        mine = sum(e["cost_usd"] for e in lines if e["thread_id"] == alice)
        assert rows.locator(".cloud").inner_text() == usd(mine)

        # One thread: a badge per turn as its record says; what left the device.
        page.click(f"a[href='/console/threads/{alice}']")
        page.wait_for_selector("#dialogue")
        turns = page.locator(".turn")
        assert turns.count() == len(records)
        routes = [turns.nth(i).locator(".badge.route").inner_text() for i in range(turns.count())]
        assert routes == [
            "device",
            "cloud text",
            "cloud + views",
            "cloud text",
            "device",
            "cloud text",
        ]
        for i, record in enumerate(records):
            turn = turns.nth(i)
            assert turn.locator(".stat.latency").inner_text() == f"{record['latency_s']:.2f} s"
            assert turn.locator(".stat.cost").inner_text() == usd(record["cost_usd"])
            assert (turn.locator(".badge.escalated").count() == 1) == record["escalated"]
        assert turns.nth(4).locator(".badge.private").inner_text() == "private: kept on the device"
        assert turns.nth(5).locator(".badge.redacted").inner_text() == (
            "email x1 replaced by placeholders"
        )
        sent = turns.nth(2).locator("figure.sent img")
        assert sent.count() == 1
        assert page.evaluate("(img) => img.naturalWidth", sent.element_handle()) == 8
        assert page.locator("svg.chart").count() == 2
        page.screenshot(path=str(SHOTS / "thread-before.png"), full_page=True)

        # The chat box: the draft greyed while the check may replace it, then the answer.
        page.fill("#message", "And how loud is it at night?")
        page.select_option("#model", "tmo-cascade")
        page.click("#send")
        draft = page.locator("#draft")
        page.wait_for_function(
            "() => (document.getElementById('draft') || {}).textContent?.length > 8"
        )
        grey = draft.evaluate("(el) => getComputedStyle(el).color")
        assert grey == "rgb(158, 158, 158)", grey
        assert page.locator("#final").inner_text() == ""
        page.wait_for_selector("#live.finished", timeout=20_000)
        assert page.locator("#draft").count() == 0
        assert page.locator("#final").inner_text() == "The cloud's considered answer."
        assert page.locator("#live .badge.route").inner_text() == "cloud text"
        assert page.locator("#live .badge.escalated").count() == 1
        page.screenshot(path=str(SHOTS / "thread-chat.png"), full_page=True)
        if docs:
            page.screenshot(path=str(ROOT / "docs/img/console-thread.png"), full_page=True)
        assert len(_records(graph, alice)) == len(records) + 1

        # Another user's thread, and the overview: the API's 404 for alice's key.
        assert page.goto(f"{url}/console/threads/{bob}").status == 404
        assert page.goto(f"{url}/console/overview").status == 404
        assert page.goto(f"{url}/console/threads/{alice}").status == 200
        context.close()

        # The admin: every thread, no private words, no e-mail, and the overview.
        context = browser.new_context(viewport={"width": 1180, "height": 860})
        page = context.new_page()
        _log_in(page, url, "root")
        assert page.locator("#threads tbody tr").count() == 2
        page.screenshot(path=str(SHOTS / "threads-admin.png"), full_page=True)
        assert page.goto(f"{url}/console/threads/{alice}").status == 200
        text = page.content()
        assert PRIVATE_WORDS not in text and EMAIL not in text and "[EMAIL_1]" in text
        page.goto(f"{url}/console/overview")
        everything = [r for t in (alice, bob) for r in _records(graph, t)]
        lines = read_audit(audit)
        assert page.inner_text("#ov-turns") == str(len(everything))
        assert page.inner_text("#ov-escalations") == str(sum(r["escalated"] for r in everything))
        assert page.inner_text("#ov-cloud") == usd(sum(e["cost_usd"] for e in lines))
        spend = page.locator("#spend tbody tr")
        assert spend.count() == 2
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
        if docs:
            page.screenshot(path=str(ROOT / "docs/img/console-overview.png"), full_page=True)
        context.close()
        browser.close()


def test_the_console_on_postgresql_lists_owners_and_dates_turns(
    tmp_path: Path,
    postgres: str,  # noqa: F811 (the fixture)
) -> None:
    """Workers sharing PostgreSQL: the owners table lists each user's threads, newest first,
    and the checkpoints date the turns."""
    from fastapi.testclient import TestClient

    _, services = build(tmp_path, threads_url=postgres)
    app = create_app(services=services, keys=keys())
    with TestClient(app) as client:
        first = run_script(client)
        second = run_script(client)
        headers = {"authorization": f"Bearer {SECRETS['alice']}"}
        listed = client.get("/console/api/threads", headers=headers).json()["threads"]
        assert [t["thread_id"] for t in listed] == [second.threads["alice"], first.threads["alice"]]
        admin = {"authorization": f"Bearer {SECRETS['root']}"}
        assert len(client.get("/console/api/threads", headers=admin).json()["threads"]) == 4
        dialogue = client.get(f"/console/api/threads/{listed[0]['thread_id']}", headers=headers)
        times = [t["time"] for t in dialogue.json()["dialogue"]]
    assert len(times) == 6 and all(times) and times == sorted(times)
