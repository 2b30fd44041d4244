"""LangChain's agent-chat-ui against `langgraph dev`, driven in headless Chromium
(``agent_chat_ui.py`` says where the UI comes from and what the scenario does).

The checks' own tests run always (made-up observations, no browser). The scenario installs
the UI (npm, about 750 MB under .cache/agent-chat-ui, reused) and takes 3-10 minutes on
2 cores, so it runs only with ``TMO_TEST_AGENT_CHAT_UI=1``; it needs node, npm, Debian's
chromium and the ``playwright`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration_tests.agent_chat_ui import Report, TurnSeen, check, letters, run

pytestmark = pytest.mark.integration

ANSWER = "A heat pump moves heat: it costs $100 to $200 a year."


def _report(streamed: list[str], shown: str = ANSWER, at_once: int = 1) -> Report:
    """One cloud turn whose draft was replaced, and the page after it."""
    seen = TurnSeen(1, "What is a heat pump?", answer=ANSWER, route="cloud")
    seen.escalated_draft, seen.redactions = "I think it is a kind of fridge.", {"email": 1}
    seen.streamed, seen.max_answers_at_once = streamed, at_once
    report = Report(turns=[seen], image_reference="http://x/img.png", image_reference_width=48)
    report.final_bubbles = [
        {"role": "human", "text": "What is a heat pump?"},
        {"role": "ai", "text": shown},
    ]
    report.ui_images = [{"src": "http://x/img.png", "width": 48}]
    check(report)
    return report


def test_letters_ignore_markdown_and_math_letters() -> None:
    assert letters("**A** heat-pump\n1. moves") == letters("A heat pump moves")
    assert letters("𝑡𝑜") == "to"  # KaTeX's mathematical italic letters


def test_a_clean_turn_passes_every_check() -> None:
    assert _report(["A heat pump moves"]).failed() == []


def test_a_draft_on_screen_fails() -> None:
    report = _report(["I think it is a kind of fridge.", "A heat pump moves"], at_once=2)
    problems = report.checks["no_draft_while_streaming"]
    assert any("not the answer" in p for p in problems)
    assert any("escalated draft" in p for p in problems)
    assert any("2 answers at once" in p for p in problems)


def test_a_placeholder_on_screen_fails() -> None:
    report = _report(["A heat pump moves"])
    report.turns[0].placeholders = ["[email_1]"]
    check(report)
    assert report.failed() == ["no_placeholder"]


def test_a_placeholder_left_in_the_final_answer_fails() -> None:
    report = _report(["My address is"])
    report.turns[0].answer = "My address is [EMAIL_2]."
    report.final_bubbles[1]["text"] = "My address is [EMAIL_2]."
    check(report)
    assert report.checks["no_placeholder"] == [
        "turn 1: the final answer holds [EMAIL_2] (no value put back)"
    ]


def test_a_missing_answer_fails_the_history_check() -> None:
    report = _report(["A heat pump"], shown="A heat pump moves heat.")
    assert report.failed() == ["whole_history"]


def test_a_scenario_that_never_escalated_says_so() -> None:
    report = _report(["A heat pump"])
    report.turns[0].route = "local"
    check(report)
    assert report.failed() == ["scenario_exercised"]


@pytest.fixture(scope="module")
def scenario() -> Report:
    if os.environ.get("TMO_TEST_AGENT_CHAT_UI") != "1":
        pytest.skip("set TMO_TEST_AGENT_CHAT_UI=1 to install and drive agent-chat-ui")
    app = os.environ.get("TMO_AGENT_CHAT_UI_APP")  # a checkout of today's agent-chat-ui
    return run(app=Path(app) if app else None)


def _ok(report: Report, name: str) -> None:
    assert not report.checks[name], "\n".join(report.checks[name])


def test_the_scenario_escalated_a_draft_and_redacted_an_address(scenario: Report) -> None:
    _ok(scenario, "scenario_exercised")


def test_no_draft_while_an_answer_streams(scenario: Report) -> None:
    _ok(scenario, "no_draft_while_streaming")


def test_no_placeholder_on_screen(scenario: Report) -> None:
    _ok(scenario, "no_placeholder")


def test_the_whole_dialogue_is_on_screen_after_turn_6(scenario: Report) -> None:
    _ok(scenario, "whole_history")


def test_the_threads_image_reference_loads_in_the_browser(scenario: Report) -> None:
    _ok(scenario, "image_reference_loads")


def test_the_image_shows_in_the_conversation(scenario: Report) -> None:
    if scenario.image_sent_by == "sdk":
        # The npm package's older agent-chat-ui: no upload, and a human bubble shows only text.
        assert scenario.checks["image_in_ui"], "the npm version drew an image: drop this branch"
        pytest.xfail("create-agent-chat-app 0.1.6 draws only the text of a human message")
    _ok(scenario, "image_in_ui")
