"""Personal data in text never reaches the cloud as typed."""

from __future__ import annotations

from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.privacy import Redactor, find_personal
from tmo_graph.settings import PrivacySettings, Settings

SECRETS = {
    "email": "anna.berg+home@example.co.uk",
    "phone": "+49 151 2345 6789",
    "card": "4111 1111 1111 1111",  # Luhn-valid test card
    "iban": "DE89 3704 0044 0532 0130 00",  # mod-97-valid example IBAN
    "secret": "hunter2!",
    "address": "221 Baker Street",
}
TEXT = (
    f"Mail me at {SECRETS['email']} or call {SECRETS['phone']}. My card is {SECRETS['card']}, "
    f"IBAN {SECRETS['iban']}, my password is {SECRETS['secret']} and I live at "
    f"{SECRETS['address']}."
)


def test_every_kind_is_found_once() -> None:
    found = {f.kind: f.value for f in find_personal(TEXT)}
    assert found == SECRETS


@pytest.mark.parametrize(
    "text",
    [
        "Boil the egg for 7 minutes at 100 degrees.",
        "Order 4111 1111 1111 1112 is not a card (Luhn fails).",
        "GB82 WEST 1234 5698 7654 33 fails mod 97.",
        "The year 2024 and 3 eggs.",
        "My password manager is great.",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert find_personal(text) == []


def test_one_value_one_placeholder_across_the_request() -> None:
    redactor = Redactor()
    first = redactor.redact(f"Write to {SECRETS['email']}.")
    again = redactor.redact(f"Did {SECRETS['email']} answer? Try bo@example.org")
    assert first == "Write to [EMAIL_1]."
    assert again == "Did [EMAIL_1] answer? Try [EMAIL_2]"
    assert redactor.counts == {"email": 2}


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(TmoGraphError, match="unknown personal-data kind"):
        find_personal("x", ["ssn"])


def _graph(tmp_path: Path, settings: Settings | None = None) -> tuple[object, FakeCloud]:
    cloud = FakeCloud()
    cloud.sent = []
    services = fake_services(tmp_path, FakeLocal(["ok"]), cloud, settings=settings)
    return build_graph(services, checkpointer=InMemorySaver()), cloud


def test_no_personal_data_reaches_the_cloud_from_prompt_history_or_memory(tmp_path: Path) -> None:
    graph, cloud = _graph(tmp_path)
    context = Context(
        policy="always-cloud", user_id="anna", recent_turns=1, recall_k=5, min_recall_score=-1
    )
    config = {"configurable": {"thread_id": "p"}}
    # Turn 0 carries every secret; by turn 2 it is in memory (recent_turns=1) and recalled.
    for text in [TEXT, "Thanks.", "What did I tell you at the start?"]:
        out = graph.invoke({"messages": [("user", text)]}, config, context=context)  # type: ignore[attr-defined]
    sent = "\n".join(str(m.content) for request in cloud.sent for m in request)
    assert len(cloud.sent) == 3
    for value in SECRETS.values():
        assert value not in sent
    assert "[EMAIL_1]" in sent and "[CARD_1]" in sent
    assert out["turns"][0]["redactions"] == dict.fromkeys(SECRETS, 1)
    assert out["turns"][2]["redactions"]["card"] == 1  # found again in the recalled turn


def test_redaction_can_be_turned_off_per_kind(tmp_path: Path) -> None:
    settings = Settings(privacy=PrivacySettings(redact=["card"]))
    graph, cloud = _graph(tmp_path, settings)
    graph.invoke(  # type: ignore[attr-defined]
        {"messages": [("user", TEXT)]},
        {"configurable": {"thread_id": "q"}},
        context=Context(policy="always-cloud"),
    )
    sent = str(cloud.sent[-1][-1].content)
    assert SECRETS["card"] not in sent and SECRETS["email"] in sent


def test_a_valid_iban_with_letters_is_found() -> None:
    assert [f.kind for f in find_personal("Pay GB82 WEST 1234 5698 7654 32 today")] == ["iban"]
