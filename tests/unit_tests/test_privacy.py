"""Personal data in text never reaches the cloud as typed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.cli.dialogues import load_dialogues
from tmo_graph.context import Context
from tmo_graph.conversation import stream_turn
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.guards.privacy import Redactor, find_personal, kinds_in
from tmo_graph.memory.recall import stored_turns
from tmo_graph.prompts import cloud_messages, cloud_texts
from tmo_graph.sections import PrivacySettings
from tmo_graph.settings import Settings

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


# Gaps the privacy fuzz found: (text, what is found as (kind, value)).
FUZZ_GAPS = [
    # 1. sentence punctuation after a secret is not part of it; punctuation inside is
    ("my password is hunter2.", [("secret", "hunter2")]),
    ("My password is hunter2! Thanks.", [("secret", "hunter2")]),
    ("Is it token: abc123?", [("secret", "abc123")]),
    ("(my password is hunter2) and more", [("secret", "hunter2")]),
    ("the password is pa.ss; thanks", [("secret", "pa.ss")]),
    ("the api key is ab(12); thanks", [("secret", "ab(12)")]),
    ("the password is hunter2: write it down", [("secret", "hunter2")]),
    ("my password is hunter2! and I live here", [("secret", "hunter2!")]),
    # 2. a PIN without a colon or "is"
    ("PIN 4821", [("secret", "4821")]),
    ("My PIN code 48213377 works.", [("secret", "48213377")]),
    ("my pin is 4711.", [("secret", "4711")]),
    # 3. pw, pwd and passphrase
    ("my pw is hunter2", [("secret", "hunter2")]),
    ("pwd: s3cr3t!x", [("secret", "s3cr3t!x")]),
    ("The passphrase is open-sesame.", [("secret", "open-sesame")]),
    # 4. a quoted value is the whole quoted text
    (
        'My password is "correct horse battery staple" now.',
        [("secret", "correct horse battery staple")],
    ),
    ("password: 'correct horse battery staple'.", [("secret", "correct horse battery staple")]),
    # 5. the "(0)" trunk prefix after a country code
    ("Call +44 (0)20 7946 0958 tonight.", [("phone", "+44 (0)20 7946 0958")]),
    ("Call +44(0)20 7946 0958.", [("phone", "+44(0)20 7946 0958")]),
    # 6. an IBAN in lowercase; a word after it is no part of it
    ("Pay gb82 west 1234 5698 7654 32 today", [("iban", "gb82 west 1234 5698 7654 32")]),
    ("IBAN es91 2100 0418 4502 0005 1332 for rent", [("iban", "es91 2100 0418 4502 0005 1332")]),
    ("IBAN ES9121000418450200051332 OK?", [("iban", "ES9121000418450200051332")]),
    # 7. a house number with a letter
    ("I live at 221B Baker Street.", [("address", "221B Baker Street")]),
    ("Deliver to 12a High Street.", [("address", "12a High Street")]),
]


@pytest.mark.parametrize(("text", "found"), FUZZ_GAPS, ids=[text for text, _ in FUZZ_GAPS])
def test_fuzz_found_gaps_are_closed(text: str, found: list[tuple[str, str]]) -> None:
    assert [(f.kind, f.value) for f in find_personal(text)] == found
    redacted = Redactor().redact(text)
    assert all(value not in redacted for _, value in found)


@pytest.mark.parametrize(
    "text",
    [
        "I have 3 kids.",
        "Meet me at 10 Downing",
        "Call me in 2 minutes",
        "my pin code is wrong",  # a PIN is digits
        "My PIN is 4 digits long.",
        "the token of appreciation",
        "Flight BA 2490 lands at 14:05",
        "We met at 3 the drive was long.",
        "12 baker street",  # a lowercase street name is not found (see the module docstring)
        "The password is ok.",  # two letters are no secret
        "pwdump and pw-protected files",
    ],
)
def test_ordinary_sentences_stay_untouched(text: str) -> None:
    assert find_personal(text) == []
    assert Redactor().redact(text) == text


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


# --- rules: privacy.keep_local and private messages ------------------------------

CARD = SECRETS["card"]


def _cloud_text(cloud: FakeCloud) -> str:
    return "\n".join(str(m.content) for request in cloud.sent for m in request)


def _rules_graph(
    tmp_path: Path,
    keep_local: list[str] | None = None,
    local: FakeLocal | None = None,
    scores: dict[str, float] | None = None,
) -> tuple[Any, FakeCloud, Any]:
    cloud = FakeCloud()
    cloud.sent = []
    settings = Settings(privacy=PrivacySettings(keep_local=keep_local or []))
    services = fake_services(
        tmp_path, local or FakeLocal(["local answer"]), cloud, scores=scores, settings=settings
    )
    return build_graph(services, checkpointer=InMemorySaver()), cloud, services


def _turn(graph: Any, message: Any, context: Context, thread: str = "t", **extra: Any) -> Any:
    config = {"configurable": {"thread_id": thread}}
    return graph.invoke({"messages": [message], **extra}, config, context=context)["turns"][-1]


def test_keep_local_answers_on_the_device_and_masks_every_cloud_action(tmp_path: Path) -> None:
    graph, cloud, _ = _rules_graph(tmp_path, keep_local=["card"], scores={"cam": 0.9})
    views = {"cam": {"image": str(_png(tmp_path)), "description": "desk"}}
    record = _turn(
        graph, ("user", f"Is {CARD} my card?"), Context(policy="always-cloud"), views=views
    )
    assert record["route"] == "local" and record["views_sent"] == []
    assert record["masked"] == ["cloud+cam", "cloud-text"]
    assert record["warnings"] == ["kept on the device: personal data (card)"]
    assert cloud.sent == []


def test_keep_local_only_for_the_kinds_listed(tmp_path: Path) -> None:
    graph, cloud, _ = _rules_graph(tmp_path, keep_local=["iban"])
    record = _turn(graph, ("user", f"Is {CARD} my card?"), Context(policy="always-cloud"))
    assert record["route"] == "cloud"
    assert not any("kept on the device" in w for w in record.get("warnings", []))
    assert CARD not in _cloud_text(cloud) and "[CARD_1]" in _cloud_text(cloud)


def test_keep_local_is_never_escalated(tmp_path: Path) -> None:
    unsure = FakeLocal(["dunno"], logprob=-5.0)  # the check escalates this one
    context = Context(policy="cascade", confidence_threshold=0.99)
    graph, cloud, _ = _rules_graph(tmp_path, keep_local=["card"], local=unsure)
    assert _turn(graph, ("user", "Hi?"), context, "plain")["escalated"]  # the control
    cloud.sent.clear()
    record = _turn(graph, ("user", f"Pay with {CARD}?"), context, "card")
    assert record["route"] == "local" and not record["escalated"] and record["fallback"] is None
    assert cloud.sent == []


def test_keep_local_holds_while_history_or_memory_carries_the_data(tmp_path: Path) -> None:
    graph, cloud, services = _rules_graph(tmp_path, keep_local=["card"])
    context = Context(
        policy="always-cloud", user_id="u", recent_turns=1, recall_k=5, min_recall_score=-1.0
    )
    routes = [
        _turn(graph, ("user", text), context)
        for text in [f"My card is {CARD}.", "Thanks.", "What else?"]
    ]
    # Turn 1 has the card in its history; by turn 2 it is in memory and recalled.
    assert [r["route"] for r in routes] == ["local", "local", "local"]
    assert all(r["warnings"] == ["kept on the device: personal data (card)"] for r in routes)
    assert len(stored_turns(services.memory, user_id="u")) == 1
    assert cloud.sent == []


def test_a_private_message_is_answered_locally_and_never_sent(tmp_path: Path) -> None:
    graph, cloud, services = _rules_graph(tmp_path, local=FakeLocal(["kept 4711 in mind"]))
    context = Context(
        policy="always-cloud", user_id="u", recent_turns=1, recall_k=5, min_recall_score=-1.0
    )
    private = HumanMessage(content="My door code is 4711.", additional_kwargs={"private": True})
    first = _turn(graph, private, context)
    assert first["route"] == "local" and first["warnings"] == [
        "kept on the device: private message"
    ]
    assert cloud.sent == []
    later = [_turn(graph, ("user", text), context) for text in ["Hello.", "Anything else?"]]
    assert [r["route"] for r in later] == ["cloud", "cloud"]
    sent = _cloud_text(cloud)
    assert len(cloud.sent) == 2 and "4711" not in sent and "door code" not in sent
    assert "Hello." in sent  # the shared turn still goes as history
    # The private turn left the window before the last turn and was not stored.
    assert stored_turns(services.memory, user_id="u") == []
    assert "4711" in str(services.local.seen[0])  # the device model saw it


def test_a_private_message_is_never_escalated(tmp_path: Path) -> None:
    graph, cloud, _ = _rules_graph(tmp_path, local=FakeLocal(["dunno"], logprob=-5.0))
    private = HumanMessage(content="Hm?", additional_kwargs={"private": True})
    record = _turn(graph, private, Context(policy="cascade", confidence_threshold=0.99))
    assert record["route"] == "local" and not record["escalated"]
    assert cloud.sent == []


def test_private_turns_are_not_recalled_into_a_cloud_request(tmp_path: Path) -> None:
    graph, cloud, services = _rules_graph(tmp_path)
    context = Context(
        policy="always-cloud", user_id="u", recent_turns=1, recall_k=5, min_recall_score=-1.0
    )
    private = HumanMessage(content="Secret: ring 0815", additional_kwargs={"private": True})
    for message in [("user", "Shared fact: the oven is new."), private, ("user", "Filler.")]:
        _turn(graph, message, context)
    _turn(graph, ("user", "What do you know?"), context)  # the private turn leaves the window
    last = "\n".join(str(m.content) for m in cloud.sent[-1])
    assert "the oven is new" in last  # recalled from memory: memory works
    assert "0815" not in _cloud_text(cloud)
    assert len(stored_turns(services.memory, user_id="u")) == 1  # the shared turn only


def test_cloud_messages_leave_out_private_messages_and_their_answers() -> None:
    messages = [
        SystemMessage(content="Be brief."),
        HumanMessage(content="one"),
        AIMessage(content="answer one"),
        HumanMessage(content="two", additional_kwargs={"private": True}),
        AIMessage(content="answer two"),
        AIMessage(content="more on two"),
        HumanMessage(content="three"),
        AIMessage(content="answer three", additional_kwargs={"private": True}),
        HumanMessage(content="now"),
    ]
    sent = cloud_messages(messages, [], "persona", "now", [])
    assert [m.content for m in sent[:-1]] == ["Be brief.", "one", "answer one", "three"]
    assert cloud_texts(messages, [], "persona", "now") == [
        "Be brief.",
        "one",
        "answer one",
        "three",
        "now",
    ]


def test_a_private_flag_must_be_a_real_boolean(tmp_path: Path) -> None:
    graph, cloud, _ = _rules_graph(tmp_path)
    message = HumanMessage(content="code 4711", additional_kwargs={"private": "yes"})
    expected = (
        "a message's additional_kwargs['private'] must be True or False (got 'yes'). Fix: mark "
        'a private message with HumanMessage(content=..., additional_kwargs={"private": True}), '
        "a Python bool, not a string"
    )
    with pytest.raises(TmoGraphError) as error:
        _turn(graph, message, Context(policy="always-cloud"))
    assert str(error.value) == expected
    assert cloud.sent == []
    # stream_turn refuses it before the thread stores the message.
    with pytest.raises(TmoGraphError, match=r"additional_kwargs\['private'\]"):
        list(stream_turn(graph, {"messages": [message]}, "fresh"))
    assert not graph.get_state({"configurable": {"thread_id": "fresh"}}).values


def test_kinds_in_and_its_bad_input() -> None:
    assert kinds_in([f"card {CARD}", f"mail {SECRETS['email']}"], ["email", "card", "iban"]) == [
        "email",
        "card",
    ]
    assert kinds_in(["nothing here"], ["card"]) == []
    with pytest.raises(TmoGraphError, match="texts must be a list of texts, not one string"):
        kinds_in("a text", ["card"])
    with pytest.raises(TmoGraphError, match=r"unknown personal-data kind\(s\) \['ssn'\]"):
        kinds_in(["x"], ["ssn"])
    with pytest.raises(TmoGraphError, match="kinds must be a list of kinds, not the string"):
        kinds_in(["x"], "card")
    with pytest.raises(TmoGraphError, match="must hold only strings"):
        kinds_in([None], ["card"])  # type: ignore[list-item]


# --- dialogue files: "private": true ---------------------------------------------------------


def test_a_dialogue_turn_may_be_private(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    line = {"turns": ["hi", {"text": "my PIN is 4711", "private": True}, {"text": "ok"}]}
    path.write_text(json.dumps(line) + "\n")
    (dialogue,) = load_dialogues(path)
    assert [t.private for t in dialogue.turns] == [False, True, False]
    messages = [inputs["messages"][0] for inputs in dialogue.turn_inputs()]
    assert [m.additional_kwargs for m in messages] == [{}, {"private": True}, {}]
    assert [m.content for m in messages] == ["hi", "my PIN is 4711", "ok"]


@pytest.mark.parametrize("value", ["yes", "true", 1])
def test_a_dialogue_turns_private_must_be_a_real_boolean(tmp_path: Path, value: Any) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"turns": ["hi", {"text": "x", "private": value}]}) + "\n")
    with pytest.raises(TmoGraphError) as error:
        load_dialogues(path)
    assert str(error.value) == (
        f"d.jsonl:1: field `turns[1].private` must be true or false (got {value!r}). "
        'Fix: write "private": true or "private": false, without quotes around the value'
    )


def test_a_private_dialogue_turn_runs_on_the_device(tmp_path: Path) -> None:
    graph, cloud, _ = _rules_graph(tmp_path)
    path = tmp_path / "d.jsonl"
    line = {"turns": [{"text": "my PIN is 4711", "private": True}, "and now?"]}
    path.write_text(json.dumps(line) + "\n")
    (dialogue,) = load_dialogues(path)
    config = {"configurable": {"thread_id": dialogue.id}}
    records = [
        graph.invoke(inputs, config, context=Context(policy="always-cloud"))["turns"][-1]
        for inputs in dialogue.turn_inputs()
    ]
    assert [r["route"] for r in records] == ["local", "cloud"]
    assert "4711" not in _cloud_text(cloud)


def _png(tmp_path: Path) -> Path:
    path = tmp_path / "cam.png"
    path.write_bytes(png_bytes())
    return path


def test_a_value_is_redacted_where_it_stands_before_the_words_that_reveal_it(
    tmp_path: Path,
) -> None:
    """An earlier message holds "PIN-4711" as plain words; a later one says it is a password:
    the request replaces both copies (one pass in order sent the earlier one as typed)."""
    graph, cloud = _graph(tmp_path)
    context = Context(policy="always-cloud", recent_turns=4)
    config = {"configurable": {"thread_id": "order"}}
    for text in ["Note this down: PIN-4711.", "By the way, my password is PIN-4711."]:
        out = graph.invoke({"messages": [("user", text)]}, config, context=context)  # type: ignore[attr-defined]
    last = "\n".join(str(m.content) for m in cloud.sent[-1])
    assert "PIN-4711" not in last and last.count("[SECRET_1]") == 2, last
    assert out["turns"][-1]["redactions"] == {"secret": 1}
    assert "PIN-4711" in str(cloud.sent[0][-1].content)  # turn 0 alone revealed nothing


def test_revealed_lists_each_value_the_texts_reveal_with_its_kind() -> None:
    from tmo_graph.guards.privacy import revealed

    texts = ["mail me at ada@example.com", "my password is hunter2!", "nothing here"]
    assert revealed(texts) == {"ada@example.com": "email", "hunter2": "secret"}
    assert revealed(texts, ["email"]) == {"ada@example.com": "email"}
