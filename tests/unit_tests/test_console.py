"""The console (/console) on create_app with fakes: who sees which thread (owner, admin, the
API's 404), its numbers against the turn records and the audit log, the chat box's stream
(drafts marked, then the final answer, then the record), the login cookie, and the pieces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.console_dialogue import (
    CAP_USD,
    EMAIL,
    PRIVATE_WORDS,
    SECRETS,
    Script,
    build,
    keys,
    run_script,
)
from tmo_graph.guards.audit import read_audit
from tmo_graph.policy.base import Action
from tmo_graph.policy.budget import CostModel
from tmo_graph.server.app import create_app
from tmo_graph.server.console.overview import percentile
from tmo_graph.threads.owners import MemoryOwners, SqliteOwners


def bearer(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {SECRETS[user]}"}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, Any, Script, Path]]:
    tmp = tmp_path_factory.mktemp("console")
    graph, services = build(tmp)
    with TestClient(create_app(graph, services=services, keys=keys())) as client:
        yield client, graph, run_script(client), tmp / "audit.jsonl"


def _records(graph: Any, thread: str) -> list[dict[str, Any]]:
    return list(graph.get_state({"configurable": {"thread_id": thread}}).values["turns"])


def test_a_user_lists_only_their_threads_with_the_records_numbers(served: Any) -> None:
    client, graph, script, audit = served
    listed = client.get("/console/api/threads", headers=bearer("alice")).json()
    assert listed["admin"] is False
    assert [t["thread_id"] for t in listed["threads"]] == [script.threads["alice"]]
    row = listed["threads"][0]
    records = _records(graph, script.threads["alice"])
    assert row["turns"] == len(records) == 6
    assert row["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records))
    lines = [e for e in read_audit(audit) if e["thread_id"] == script.threads["alice"]]
    assert row["cloud_usd"] == pytest.approx(sum(e["cost_usd"] for e in lines)) and lines
    assert row["route_mix"] == {"device": 2, "cloud text": 3, "cloud + views": 1}


def test_another_users_key_gets_the_apis_404_and_an_admin_sees_all(served: Any) -> None:
    client, _, script, _ = served
    alice = script.threads["alice"]
    for path in (f"/console/api/threads/{alice}", f"/console/threads/{alice}"):
        assert client.get(path, headers=bearer("bob")).status_code == 404
        assert client.get(path, headers=bearer("alice")).status_code == 200
        assert client.get(path, headers=bearer("root")).status_code == 200
    unknown = client.get("/console/api/threads/" + "0" * 32, headers=bearer("alice"))
    assert unknown.status_code == 404
    everyone = client.get("/console/api/threads", headers=bearer("root")).json()
    assert {(t["user"], t["thread_id"]) for t in everyone["threads"]} == {
        ("alice", alice),
        ("bob", script.threads["bob"]),
    }
    assert client.get("/console/api/threads").status_code == 401


def test_one_thread_shows_each_turn_as_its_record_says(served: Any) -> None:
    client, graph, script, audit = served
    thread = script.threads["alice"]
    dialogue = client.get(f"/console/api/threads/{thread}", headers=bearer("alice")).json()[
        "dialogue"
    ]
    records = _records(graph, thread)
    assert [d["route"] for d in dialogue] == [
        "device",
        "cloud text",
        "cloud + views",
        "cloud text",
        "device",
        "cloud text",
    ]
    for shown, record in zip(dialogue, records, strict=True):
        assert shown["latency_s"] == record["latency_s"]
        assert shown["cost_usd"] == record["cost_usd"]
        assert shown["budget_left"] == record["budget_left"]
        assert shown["escalated"] == record["escalated"]
        assert shown["views_sent"] == record["views_sent"]
        assert shown["budget_reached"] is False  # every turn here had budget left
    assert dialogue[3]["escalated"] and not any(
        d["escalated"] for i, d in enumerate(dialogue) if i != 3
    )
    assert dialogue[4]["private"] and dialogue[4]["question"] == PRIVATE_WORDS
    assert dialogue[5]["redactions"] == {"email": 1}
    # Each cloud turn's audit lines, in order: one request each here.
    lines = [e for e in read_audit(audit) if e["thread_id"] == thread]
    cloud = [d for d in dialogue if d["route"] != "device"]
    assert [d["cloud_usd"] for d in cloud] == pytest.approx([e["cost_usd"] for e in lines])
    image = dialogue[2]["images_sent"]
    assert [i["name"] for i in image] == ["image_1"] and image[0]["sha256"] == lines[1]["views"][0][
        "sha256"
    ]


def test_an_admin_sees_no_private_words_and_no_personal_values(served: Any) -> None:
    client, _, script, _ = served
    thread = script.threads["alice"]
    seen = client.get(f"/console/api/threads/{thread}", headers=bearer("root")).json()["dialogue"]
    assert seen[4]["private"] and seen[4]["question"] == "" and seen[4]["answer"] == ""
    assert seen[5]["question"] == "Send the summary to [EMAIL_1] please."
    page = client.get(f"/console/threads/{thread}", headers=bearer("root")).text
    assert PRIVATE_WORDS not in page and EMAIL not in page and SECRETS["root"] not in page
    assert "private: kept on the device" in page and "email x1 replaced by placeholders" in page
    # The owner sees their own words; a placeholder's value is never in any page.
    own = client.get(f"/console/threads/{thread}", headers=bearer("alice")).text
    assert PRIVATE_WORDS in own and "only its owner can continue it" not in own


def test_no_page_an_admin_reads_holds_a_private_word_or_a_personal_value(served: Any) -> None:
    client, _, script, _ = served
    pages = ["/console", "/console/overview", "/console/api/threads", "/console/api/overview"]
    for thread in script.threads.values():
        pages += [f"/console/threads/{thread}", f"/console/api/threads/{thread}"]
    for path in pages:
        page = client.get(path, headers=bearer("root"))
        assert page.status_code == 200, path
        for planted in (PRIVATE_WORDS, "4711", EMAIL, "alice.private"):
            assert planted not in page.text, (path, planted)


def test_the_media_of_a_thread_for_its_owner_and_an_admin_only(served: Any) -> None:
    client, _, script, _ = served
    thread = script.threads["alice"]
    sha = client.get(f"/console/api/threads/{thread}", headers=bearer("alice")).json()["dialogue"][
        2
    ]["images_sent"][0]["sha256"]
    url = f"/console/threads/{thread}/media/{sha}"
    assert client.get(url, headers=bearer("alice")).content.startswith(b"\x89PNG")
    assert client.get(url, headers=bearer("root")).status_code == 200
    assert client.get(url, headers=bearer("bob")).status_code == 404
    bob_thread = script.threads["bob"]
    assert (
        client.get(f"/console/threads/{bob_thread}/media/{sha}", headers=bearer("bob")).status_code
        == 404
    )


def test_the_overview_is_the_admins_and_adds_up_the_records_and_the_audit_log(served: Any) -> None:
    client, graph, script, audit = served
    assert client.get("/console/api/overview", headers=bearer("alice")).status_code == 404
    assert client.get("/console/overview", headers=bearer("alice")).status_code == 404
    view = client.get("/console/api/overview", headers=bearer("root")).json()
    records = [r for t in script.threads.values() for r in _records(graph, t)]
    lines = read_audit(audit)
    assert view["turns"] == len(records)
    assert view["escalations"] == sum(r["escalated"] for r in records)
    assert view["fallbacks"] == sum(r["fallback"] is not None for r in records)
    assert view["cloud_usd"] == pytest.approx(sum(e["cost_usd"] for e in lines))
    spend = {(s["user"], s["day"]): (s["usd"], s["cap_usd"]) for s in view["spend"]}
    day = lines[0]["time"][:10]
    alice = sum(e["cost_usd"] for e in lines if e["user_id"] == "alice")
    assert spend[("alice", day)] == pytest.approx((alice, CAP_USD))
    assert spend[("bob", day)][1] is None
    device = sorted(r["latency_s"] for r in records if r["route"] == "local")
    assert view["latency"]["device"] == [device[0], device[-1]]  # two turns: p50 and p95
    # Always-cloud: the cloud turns as paid, the private turn nothing, the local turn a text
    # call priced by the cost model on the dialogue's text so far.
    costs = CostModel.from_settings(graph_settings(client))
    first = records[0]
    chars = len("Hello there, what can you do?")
    local_as_cloud = costs.expected(
        Action("cloud", ()), chars, cloud_tokens=first["output_tokens"]
    ).cost_usd
    assert view["always_cloud_usd"] == pytest.approx(
        sum(e["cost_usd"] for e in lines) + local_as_cloud
    )
    assert view["always_cloud_usd"] > view["cloud_usd"]


def graph_settings(client: TestClient) -> Any:
    return client.app.state.server.settings  # type: ignore[attr-defined]


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_the_chat_box_streams_the_draft_marked_then_the_final_answer_once(served: Any) -> None:
    client, graph, script, _ = served
    thread = script.threads["alice"]
    body = {"message": "And in summer?", "model": "tmo-cascade", "thread_id": thread}
    assert client.post("/console/chat", headers=bearer("alice"), json=body).status_code == 400
    headers = {**bearer("alice"), "x-tmo-console": "1"}
    # Another user's thread: the API's 404, an admin's key too (no power beyond the pages).
    for user in ("bob", "root"):
        denied = client.post(
            "/console/chat", headers={**bearer(user), "x-tmo-console": "1"}, json=body
        )
        assert denied.status_code == 404
    events = _events(client.post("/console/chat", headers=headers, json=body).text)
    names = [n for n, _ in events]
    assert names[0] == "thread" and names[-1] == "done"
    drafts = "".join(d["text"] for n, d in events if n == "draft")
    final = "".join(d["text"] for n, d in events if n == "token")
    assert drafts == "a hesitant local draft" and final == "The cloud's considered answer."
    assert names.index("token") > max(i for i, n in enumerate(names) if n == "draft")
    done = events[-1][1]
    record = _records(graph, thread)[-1]
    assert done["escalated"] is True and done["cost_usd"] == record["cost_usd"]
    assert done["turn"] == record["turn"] == 6
    # Without a thread: a new one, the caller's.
    fresh = {"message": "A new topic.", "model": "tmo-always-local"}
    started = _events(client.post("/console/chat", headers=headers, json=fresh).text)
    new_thread = started[0][1]["thread_id"]
    assert new_thread != thread and started[-1][1]["route"] == "local"
    listed = client.get("/console/api/threads", headers=bearer("alice")).json()["threads"]
    assert listed[0]["thread_id"] == new_thread and listed[0]["turns"] == 1
    assert (
        client.get(f"/console/api/threads/{new_thread}", headers=bearer("bob")).status_code == 404
    )


def test_login_puts_the_key_in_a_strict_http_only_cookie_never_a_url(served: Any) -> None:
    client, _, _, _ = served
    bad = client.post("/console/login", data={"key": "tmo-wrong"}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text and "tmo-wrong" not in bad.text
    good = client.post("/console/login", data={"key": SECRETS["alice"]}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/console"
    cookie = good.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    page = client.get("/console")
    assert (
        page.status_code == 200
        and "Your threads" in page.text
        and SECRETS["alice"] not in page.text
    )
    client.post("/console/logout")
    client.cookies.clear()
    assert client.get("/console").status_code == 401  # the login form


def test_the_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_owners_list_their_threads_newest_first(tmp_path: Path) -> None:
    async def run(owners: Any) -> None:
        for thread, user in (("t1", "a"), ("t2", "b"), ("t3", "a")):
            await owners.claim(thread, user)
            await asyncio.sleep(0.01)
        assert [t.thread_id for t in await owners.threads("a")] == ["t3", "t1"]
        assert [t.user_id for t in await owners.threads()] == ["a", "b", "a"]
        await owners.aclose()

    asyncio.run(run(MemoryOwners()))
    asyncio.run(run(SqliteOwners(tmp_path / "owners.sqlite")))


def test_keys_add_admin_marks_the_key_an_admin_in_the_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tmo_graph.cli.app import app
    from tmo_graph.server.keys import read_key_file

    file = tmp_path / "keys.yaml"
    args = ["keys", "add", "--file", str(file), "--id"]
    out = CliRunner().invoke(app, [*args, "ops", "--user", "ops", "--admin"])
    assert out.exit_code == 0, out.output
    assert "admin" in out.output
    CliRunner().invoke(app, [*args, "plain", "--user", "ann"])
    assert [(k.id, k.admin) for k in read_key_file(file)] == [("ops", True), ("plain", False)]
    assert "admin: true" in file.read_text() and file.read_text().count("admin") == 1
    listed = CliRunner().invoke(app, ["keys", "list", "--file", str(file)])
    assert "active admin" in listed.output


def test_a_kept_draft_streams_marked_then_once_unmarked(tmp_path: Path) -> None:
    """astream_turn(drafts=True): the draft's pieces marked as they come; when the check
    keeps the draft, the same pieces again as the final answer (unmarked)."""
    from langgraph.checkpoint.memory import InMemorySaver

    from tests.console_dialogue import UnsureLocal
    from tests.unit_tests.fakes import FakeCloud, fake_services
    from tmo_graph.context import Context
    from tmo_graph.conversation import Done, Token, astream_turn
    from tmo_graph.graph import build_graph

    cloud = FakeCloud()  # there is a cloud to escalate to: the draft may be replaced
    cloud.sent = []
    services = fake_services(tmp_path, UnsureLocal("sure of it", logprob=-0.05), cloud)  # type: ignore[arg-type]
    graph = build_graph(services, checkpointer=InMemorySaver())

    async def run(drafts: bool) -> list[Any]:
        inputs = {"messages": [("user", "hi")]}
        context = Context(policy="cascade")
        return [e async for e in astream_turn(graph, inputs, f"t{drafts}", context, drafts=drafts)]

    events = asyncio.run(run(True))
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens if t.draft) == "sure of it"
    assert "".join(t.text for t in tokens if not t.draft) == "sure of it"
    assert max(i for i, t in enumerate(tokens) if t.draft) < min(
        i for i, t in enumerate(tokens) if not t.draft
    )
    assert isinstance(events[-1], Done) and events[-1].record["route"] == "local"
    assert not cloud.sent
    # Without drafts asked for (the OpenAI stream), no draft is ever yielded.
    assert not any(isinstance(e, Token) and e.draft for e in asyncio.run(run(False)))


def test_breaker_openings_count_turns_where_the_breaker_opened(tmp_path: Path) -> None:
    from tmo_graph.server.console.dialogue import TurnView, route_of
    from tmo_graph.server.console.overview import build_overview
    from tmo_graph.server.console.reading import ThreadData
    from tmo_graph.threads.owners import OwnedThread

    def turn(n: int, breaker: str | None, fallback: str | None = None) -> TurnView:
        record: dict[str, Any] = {"turn": n, "route": "cloud" if breaker else "local"}
        record |= {"latency_s": 1.0 + n, "fallback": fallback, "escalated": False}
        if breaker:
            record["breaker"] = breaker
        return TurnView(n, "", [], False, "", record, route_of(record), time=f"2026-01-0{n + 1}T00")

    states = ["closed", "open", "open", None, "half-open", "closed", "open"]
    turns = [turn(i, b, "timeout" if b == "open" else None) for i, b in enumerate(states)]
    view = build_overview([ThreadData(OwnedThread("t", "u", 0.0), turns, [])], [], [], None)
    assert view.breaker_openings == 2 and view.fallbacks == 3 and view.turns == 7
    assert sum(sum(m.values()) for m in view.routes_by_day.values()) == 7
    assert view.latency["device"] == (4.0, 4.0)


def test_on_the_sqlite_thread_store_turns_have_their_checkpoint_times(tmp_path: Path) -> None:
    """The app's own store (owners table, AsyncSqliteSaver): the same lists, each turn dated."""
    _, services = build(tmp_path)
    app = create_app(services=services, db=tmp_path / "threads.sqlite", keys=keys())
    with TestClient(app) as client:
        script = run_script(client)
        listed = client.get("/console/api/threads", headers=bearer("alice")).json()["threads"]
        assert [t["thread_id"] for t in listed] == [script.threads["alice"]]
        thread = client.get(
            f"/console/api/threads/{listed[0]['thread_id']}", headers=bearer("alice")
        )
        times = [t["time"] for t in thread.json()["dialogue"]]
    assert len(times) == 6 and all(times) and times == sorted(times)
    assert listed[0]["updated"] == times[-1]


def test_an_answer_the_budget_cut_is_badged_as_such() -> None:
    from tmo_graph.observe.metrics import BUDGET_REACHED_WARNING
    from tmo_graph.server.console.dialogue import TurnView

    record = {"route": "local", "warnings": [BUDGET_REACHED_WARNING], "latency_s": 0.0}
    cut = TurnView(
        0, "Remind me?", [], False, "This conversation has used up ...", record, "device"
    )
    assert cut.budget_reached
    assert not TurnView(1, "q", [], False, "a", {"route": "local"}, "device").budget_reached
