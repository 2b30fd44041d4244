"""Shadow judging through the server and the chat model, with a capturing cloud stand-in:
labels for sampled device turns and escalated turns, on the shadow money only, never for
what may not leave the device, never changing the user's answer or its record."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeLocal
from tests.unit_tests.learning_fakes import JudgingCloud, learning_services, sent_text
from tmo_graph.chat_model import TMOChatModel
from tmo_graph.context import Context
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import read_audit
from tmo_graph.learning.shadow import AnsweredTurn, ShadowJudge, parse_grade, sampled
from tmo_graph.server.app import create_app
from tmo_graph.threads.labels import MemoryLabels, TurnLabel

SURE, UNSURE = -0.01, -3.0  # the fake device model's log-prob: kept, or escalated
# A different answer each turn (a repeated one is not confident).
DEVICE = [
    "Red is a warm colour.",
    "Bananas grow in bunches.",
    "Mars looks reddish at night.",
    "Seven days make one week.",
    "Owls hunt mostly after dusk.",
]


def _wait_for(count: Callable[[], int], n: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while count() < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert count() >= n, f"{count()} of {n} labels after {timeout_s} s"


def test_sampling_is_deterministic_and_near_the_rate() -> None:
    picks = [sampled(f"t{i}", i % 7, 0.3) for i in range(4000)]
    assert picks == [sampled(f"t{i}", i % 7, 0.3) for i in range(4000)]
    assert 0.27 < sum(picks) / len(picks) < 0.33
    assert not any(sampled(f"t{i}", 0, 0.0) for i in range(100))
    assert all(sampled(f"t{i}", 0, 1.0) for i in range(100))


def test_grades_are_read_from_the_judges_reply() -> None:
    assert parse_grade("7") == 0.7 and parse_grade("Grade: 10.") == 1.0
    assert parse_grade("0") == 0.0
    assert parse_grade("eleven") is None and parse_grade("12") is None


def test_shadow_and_escalation_labels_through_the_server(tmp_path: Path) -> None:
    cloud = JudgingCloud(grade="6")
    local = FakeLocal(DEVICE, logprob=SURE)
    services = learning_services(tmp_path, local, cloud)
    labels = MemoryLabels()
    graph = build_graph(services, checkpointer=InMemorySaver())
    app = create_app(graph, services.settings, services=services, no_auth=True, labels=labels)
    with TestClient(app) as client:

        def ask(text: str, model: str, thread: str | None = None) -> Any:
            headers = {"x-tmo-thread-id": thread} if thread else {}
            reply = client.post(
                "/v1/chat/completions",
                headers=headers,
                json={"model": model, "messages": [{"role": "user", "content": text}]},
            )
            assert reply.status_code == 200, reply.text
            return reply

        first = ask("name a fruit", "tmo-always-local")  # always-local: never shadowed
        thread = first.headers["x-tmo-thread-id"]
        second = ask("name a colour", "tmo-cascade", thread)
        assert second.json()["tmo"]["route"] == "local"
        assert second.json()["choices"][0]["message"]["content"] == DEVICE[1]
        stored = lambda: len(client.portal.call(labels.of_thread, thread))  # noqa: E731
        _wait_for(stored, 1)
        local.logprob = UNSURE  # the next draft is unsure: escalated
        third = ask("name a planet", "tmo-cascade", thread)
        assert third.json()["tmo"]["escalated"]
        _wait_for(stored, 2)
        # The console matches each turn with its own requests (shadow and judge lines aside)
        # and shows the labels.
        shown = client.get(f"/console/api/threads/{thread}").json()["dialogue"]
        assert [t["cloud_usd"] is not None for t in shown] == [True, True, True]
        assert shown[1]["cloud_usd"] == 0 and shown[2]["cloud_usd"] > 0
        assert [[x["source"] for x in t["labels"]] for t in shown] == [
            [],
            ["shadow"],
            ["escalation"],
        ]
    got = asyncio.run(labels.of_thread(thread))
    assert [(x.turn, x.source, x.score, x.user_id) for x in got] == [
        (1, "shadow", 0.6, "anonymous"),
        (2, "escalation", 0.6, "anonymous"),
    ]
    # Questions asked of the cloud: turn 1's shadow and turn 2's escalation; nothing else.
    answers = [sent_text(m) for m in cloud.answers()]
    assert len(answers) == 2 and "name a colour" in answers[0] and "name a planet" in answers[1]
    gradings = [sent_text(m) for m in cloud.gradings()]
    assert len(gradings) == 2
    assert DEVICE[1] in gradings[0] and "the cloud's answer" in gradings[0]
    assert DEVICE[2] in gradings[1]  # the escalated turn's draft
    audit = read_audit(tmp_path / "audit.jsonl")
    assert [e.get("purpose") for e in audit] == ["shadow", "judge", None, "judge"]
    # Shadow money is its own: the dialogue's budget only paid for the escalation.
    shadow_usd = sum(e["cost_usd"] for e in audit if e.get("purpose"))
    assert shadow_usd > 0
    paid = sum(r.json()["tmo"]["cost_usd"] for r in (first, second, third))
    left = third.json()["tmo"]["budget_left"]["cost_usd"]
    assert left == pytest.approx(0.05 - paid, abs=1e-7)  # the turns' own costs, nothing more


def test_shadow_labels_through_the_chat_model(tmp_path: Path) -> None:
    cloud = JudgingCloud(grade="9")
    services = learning_services(tmp_path, FakeLocal(DEVICE, logprob=SURE), cloud)
    labels = MemoryLabels()
    model = TMOChatModel(
        graph=build_graph(services, checkpointer=InMemorySaver()),
        judge=ShadowJudge(services, labels),
        thread_id="cm",
        user_id="ann",
    )
    assert model.invoke("first question").content == DEVICE[0]
    _wait_for(lambda: len(asyncio.run(labels.since())), 1)
    reply = asyncio.run(model.ainvoke("second question"))
    assert reply.content == DEVICE[1]
    _wait_for(lambda: len(asyncio.run(labels.since())), 2)
    got = asyncio.run(labels.of_thread("cm"))
    assert [(x.turn, x.source, x.score, x.user_id) for x in got] == [
        (0, "shadow", 0.9, "ann"),
        (1, "shadow", 0.9, "ann"),
    ]
    # Feedback goes to the judge's table when the model has no other.
    assert model.feedback(1, -1).source == "feedback"


def test_a_failing_judge_stores_nothing_and_the_answer_stands(tmp_path: Path) -> None:
    cloud = JudgingCloud(grade="no idea")
    services = learning_services(tmp_path, FakeLocal(DEVICE, logprob=SURE), cloud)
    labels = MemoryLabels()
    judge = ShadowJudge(services, labels)
    model = TMOChatModel(graph=build_graph(services), judge=judge, thread_id="f")
    assert model.invoke("a question").content == DEVICE[0]
    _wait_for(lambda: len(cloud.gradings()), 1)
    time.sleep(0.1)
    assert asyncio.run(labels.since()) == []


def _counting_clock() -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: next(ticks) * 0.125


def _dialogue_records(tmp_path: Path, rate: float) -> list[dict[str, Any]]:
    """Four turns (device, device, escalated, device) on fakes with a counting clock."""
    cloud = JudgingCloud()
    local = FakeLocal(DEVICE, logprob=SURE)
    services = learning_services(tmp_path / str(rate), local, cloud, shadow_rate=rate)
    services.clock = _counting_clock()
    labels = MemoryLabels()
    model = TMOChatModel(
        graph=build_graph(services, checkpointer=InMemorySaver()),
        judge=ShadowJudge(services, labels),
        thread_id="same",
        context=Context(policy="cascade"),
    )
    records = []
    for i, logprob in enumerate((SURE, SURE, UNSURE, SURE)):
        local.logprob = logprob
        reply = model.invoke(f"question {i}")
        records.append({"content": reply.content, **reply.response_metadata})
    if rate > 0:
        _wait_for(lambda: len(asyncio.run(labels.since())), 4)
    else:
        assert asyncio.run(labels.since()) == []
    return records


def test_answers_and_records_are_the_same_with_and_without_shadowing(tmp_path: Path) -> None:
    off, on = _dialogue_records(tmp_path, 0.0), _dialogue_records(tmp_path, 1.0)
    keys = ("content", "route", "escalated", "latency_s", "cost_usd", "budget_left", "turn")
    assert [[r[k] for k in keys] for r in off] == [[r[k] for k in keys] for r in on]
    assert [r["escalated"] for r in on] == [False, False, True, False]


# ---- the property: nothing private, nothing beyond the shadow money --------------------------

SECRET = "PIN-4711"
# (private message, holds the secret, the device is unsure: escalated)
rarely = st.sampled_from([False, False, False, True])  # most dialogues may be shadowed
turn_st = st.tuples(rarely, st.booleans(), st.booleans())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    turns=st.lists(turn_st, min_size=1, max_size=4),
    private_view=rarely,
    # Mostly enough money (labels are made), sometimes none or about one request's worth.
    budget=st.sampled_from([1.0, 1.0, 1.0, 4e-5, 0.0]),
    daily_cap=st.sampled_from([1.0, 1.0, 1.0, 6e-5, 0.0]),
    keep_local_secret=rarely,
)
# Found by this test: the device's earlier answer held the value a later message revealed as a
# password; one redaction pass in order missed it in the earlier answer.
@example(
    turns=[(False, False, False), (False, True, False)],
    private_view=False,
    budget=1.0,
    daily_cap=1.0,
    keep_local_secret=False,
)
def test_no_shadow_call_for_what_may_not_leave_or_beyond_the_shadow_money(
    tmp_path_factory: Any,
    turns: list[tuple[bool, bool, bool]],
    private_view: bool,
    budget: float,
    daily_cap: float,
    keep_local_secret: bool,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    cloud = JudgingCloud()
    local = FakeLocal([f"{a} mentions {SECRET}" for a in DEVICE], logprob=SURE)
    services = learning_services(
        tmp,
        local,
        cloud,
        shadow_budget_usd=budget,
        shadow_daily_cap_usd=daily_cap,
    )
    if keep_local_secret:
        services.settings.privacy.keep_local = ["secret"]
    judge = ShadowJudge(services, MemoryLabels())
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "p"}}
    context = Context(user_id="pat", policy="always-local")
    cascade = Context(user_id="pat", policy="cascade")
    views = {"desk": {"description": "the desk with a note", "private": True}}
    made: list[TurnLabel | None] = []
    for i, (private, secret, unsure) in enumerate(turns):
        local.logprob = UNSURE if unsure else SURE
        text = f"my password is {SECRET}, question {i}" if secret else f"question {i}"
        message = HumanMessage(content=text, additional_kwargs={"private": True} if private else {})
        inputs: dict[str, Any] = {"messages": [message]}
        if private_view:
            inputs["views"] = views
        graph.invoke(inputs, config, context=cascade)
        state = graph.get_state(config).values
        record = state["turns"][-1]
        before = len(cloud.sent)
        label = judge.label(AnsweredTurn.of(record, state, "p", context))
        made.append(label)
        event(f"label: {label.source if label else 'none'}")  # --hypothesis-show-statistics
        shadow_sent = cloud.sent[before:]
        earlier_private = any(p for p, _, _ in turns[: i + 1])
        if earlier_private or private_view or (record["route"] != "local" and not unsure):
            assert shadow_sent == [] and label is None
        if keep_local_secret and any(s for _, s, _ in turns[: i + 1]):
            assert shadow_sent == [] and label is None
        if label is not None:
            assert label.source == ("escalation" if record["escalated"] else "shadow")
            assert len(shadow_sent) == (1 if record["escalated"] else 2)  # no extra answer
        revealed = any(s for _, s, _ in turns[: i + 1])  # the user typed it as a password
        for sent in shadow_sent:
            if revealed:  # a placeholder in the question and in both answers
                assert SECRET not in sent_text(sent)
            assert "the desk" not in sent_text(sent)
    lines = [e for e in _audit(tmp) if e.get("purpose")]
    spent = sum(e["cost_usd"] for e in lines)
    assert spent <= min(budget, daily_cap) + 1e-12
    if min(budget, daily_cap) == 0.0:
        assert lines == [] and all(x is None for x in made)


def _audit(tmp: Path) -> list[Any]:
    path = tmp / "audit.jsonl"
    return read_audit(path) if path.exists() else []


def test_a_judge_endpoint_needs_its_model() -> None:
    import pytest

    from tmo_graph.errors import TmoGraphError
    from tmo_graph.settings import Settings

    with pytest.raises((TmoGraphError, ValueError), match="judge_base_url and judge_model"):
        Settings(learning={"judge_base_url": "http://127.0.0.1:9/v1"})
    assert Settings().learning.shadow_rate == 0.0  # off by default
