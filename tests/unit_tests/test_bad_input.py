"""Bad input: what a hostile new user tried, each refused in one line that names
the field and the fix (or, for input the graph can still use, kept with a warning)."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from tests.unit_tests.fakes import (
    FakeCloud,
    FakeLocal,
    Stats,
    WordTokenizer,
    fake_services,
    png_bytes,
)
from tmo_graph.cli import talk
from tmo_graph.cli.app import app
from tmo_graph.cli.common import write_json
from tmo_graph.cli.dialogues import load_dialogues
from tmo_graph.cli.turn_table import format_turn
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.models.local.model import LocalModel
from tmo_graph.services import Services
from tmo_graph.settings import Settings, load_settings

FIX_SEE_DOCS = 'correct that value; see "Dialogue file (JSONL)" in docs/file-formats.md'


def _load_error(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(TmoGraphError) as error:
        load_dialogues(path)
    return str(error.value)


def _run(services: Services, content: Any, context: Context, **extra: Any) -> dict[str, Any]:
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    return dict(graph.invoke({"messages": [("user", content)], **extra}, config, context=context))


# --- 1. a budget that is not a number -------------------------------------------------------


def test_a_word_for_a_budget_in_a_dialogue_file(tmp_path: Path) -> None:
    line = '{"turns": ["hi"], "context": {"cost_budget_usd": "lots"}}'
    assert _load_error(tmp_path, line) == (
        "d.jsonl:1: field `context.cost_budget_usd` must be a number (got 'lots'). "
        "Fix: write a number without quotes, e.g. cost_budget_usd: 0.05"
    )


def test_a_word_for_a_budget_in_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing: {cost_budget_usd: lots}\n")
    with pytest.raises(TmoGraphError) as error:
        load_settings(config)
    assert str(error.value) == (
        f"config {config}: `routing.cost_budget_usd` input should be a valid number, unable to "
        "parse string as a number (got 'lots'). "
        "Fix: correct that value; configs/default.yaml lists every setting"
    )


def test_a_word_for_a_budget_in_a_context() -> None:
    with pytest.raises(TmoGraphError) as error:
        Context(cost_budget_usd="lots")  # type: ignore[arg-type]
    assert str(error.value) == (
        "cost_budget_usd must be a number, got 'lots'. "
        "Fix: write a number without quotes, e.g. cost_budget_usd: 0.05"
    )


def test_a_word_for_a_budget_in_a_graph_context(tmp_path: Path) -> None:
    # Callers such as Studio hand the context over as plain JSON.
    with pytest.raises(TmoGraphError, match="^latency_budget_s must be a number, got 'lots'"):
        _run(fake_services(tmp_path), "hi", {"latency_budget_s": "lots"})  # type: ignore[arg-type]


# --- 2. views as a list ---------------------------------------------------------------------


def test_views_as_a_list_in_a_dialogue_file(tmp_path: Path) -> None:
    assert _load_error(tmp_path, '{"turns": ["hi"], "views": ["cam.png"]}') == (
        "d.jsonl:1: field `views` must be an object of named views, not a list "
        "(got ['cam.png']). "
        'Fix: write "views": {"overhead": {"image": "cam.png", "description": "what it shows"}}'
    )


def test_views_as_a_list_in_the_graph_input(tmp_path: Path) -> None:
    with pytest.raises(TmoGraphError) as error:
        _run(fake_services(tmp_path), "hi", Context(), views=["cam.png"])
    assert str(error.value) == (
        "`views` must be a mapping of view names to views, not list (got ['cam.png']). "
        "Fix: send {'views': {'overhead': {'image': PATH, 'description': TEXT, "
        "'private': False}}}"
    )


# --- 3. NaN and infinite numbers ------------------------------------------------------------


def test_a_nan_budget_in_a_dialogue_file(tmp_path: Path) -> None:
    line = '{"turns": ["hi"], "context": {"cost_budget_usd": NaN}}'  # json.loads reads NaN
    assert _load_error(tmp_path, line) == (
        "d.jsonl:1: field `context.cost_budget_usd` must be a finite number (got nan). "
        "Fix: write a finite number, e.g. cost_budget_usd: 0.05"
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("routing: {cost_budget_usd: .nan}", "routing.cost_budget_usd` input should be a finite "
         "number (got nan)"),
        ("routing: {latency_budget_s: .inf}", "routing.latency_budget_s` input should be a "
         "finite number (got inf)"),
        ("routing: {min_view_score: .nan}", "routing.min_view_score` input should be a finite "
         "number (got nan)"),
    ],
)  # fmt: skip
def test_nan_and_inf_in_a_config(tmp_path: Path, text: str, where: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text + "\n")
    with pytest.raises(TmoGraphError) as error:
        load_settings(config)
    assert str(error.value) == (
        f"config {config}: `{where}. "
        "Fix: correct that value; configs/default.yaml lists every setting"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"cost_budget_usd": math.nan},
            "cost_budget_usd must be a finite number, got nan. "
            "Fix: write a finite number, e.g. cost_budget_usd: 0.05",
        ),
        (
            {"latency_budget_s": math.inf},
            "latency_budget_s must be a finite number, got inf. "
            "Fix: write a finite number, e.g. latency_budget_s: 60.0",
        ),
        (
            {"min_view_score": math.nan},
            "min_view_score must be a finite number, got nan. "
            "Fix: write a finite number, e.g. min_view_score: 0.3",
        ),
        (
            {"min_recall_score": -math.inf},
            "min_recall_score must be a finite number, got -inf. "
            "Fix: write a finite number, e.g. min_recall_score: 0.3",
        ),
        (
            {"confidence_threshold": math.nan},
            "confidence_threshold must be in [0, 1], got nan. "
            "Fix: pick e.g. 0.5, or calibrate one with `tmo-graph calibrate`",
        ),
        (
            {"recall_k": 2.5},
            "recall_k must be a whole number, got 2.5. "
            "Fix: write a whole number without quotes, e.g. recall_k: 3",
        ),
    ],
)
def test_nan_inf_and_non_numbers_in_a_context(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TmoGraphError) as error:
        Context(**overrides)
    assert str(error.value) == message


def test_json_output_refuses_nan(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json(out, [{"cost_usd": math.nan}])
    assert not out.exists()  # no half-valid file left behind


# --- 4, 5, 8: a turn's images as a string, a numeric turn, a quoted boolean -----------------


def test_images_as_a_string(tmp_path: Path) -> None:
    line = '{"turns": [{"text": "What is this?", "images": "x.png"}]}'
    assert _load_error(tmp_path, line) == (
        "d.jsonl:1: field `turns[0].images` must be a list of images, not a string "
        "(got 'x.png'). "
        'Fix: write "images": ["x.png"]'
    )


def test_a_numeric_turn_says_what_is_wrong(tmp_path: Path) -> None:
    assert _load_error(tmp_path, '{"turns": ["hi", 42]}') == (
        "d.jsonl:1: field `turns[1]`: a turn must be a string or an object (got 42). "
        'Fix: write "..." or {"text": "...", "images": ["photo.png"]}'
    )


@pytest.mark.parametrize("value", ['"yes"', '"false"', "1"])
def test_private_must_be_a_real_boolean(tmp_path: Path, value: str) -> None:
    got = json.loads(value)
    line = json.dumps({"turns": ["hi"], "views": {"cam": {"description": "desk", "private": got}}})
    assert _load_error(tmp_path, line) == (
        f"d.jsonl:1: field `views.cam.private` must be true or false (got {got!r}). "
        'Fix: write "private": true or "private": false, without quotes around the value'
    )


def test_private_must_be_a_real_boolean_in_the_graph_input(tmp_path: Path) -> None:
    views = {"cam": {"description": "desk", "private": "false"}}
    with pytest.raises(TmoGraphError) as error:
        _run(fake_services(tmp_path), "hi", Context(), views=views)
    assert str(error.value) == (
        "view 'cam': field `private` must be True or False (got 'false'). "
        "Fix: send {'views': {'overhead': {'image': PATH, 'description': TEXT, "
        "'private': False}}}"
    )


# --- 6. two dialogues with one id -----------------------------------------------------------


def test_duplicate_dialogue_ids(tmp_path: Path) -> None:
    lines = ('{"id": "k1", "turns": ["a"]}', '{"id": "k2", "turns": ["b"]}')
    error = _load_error(tmp_path, *lines, '{"id": "k1", "turns": ["c"]}')
    assert error == (
        "d.jsonl:3: dialogue id 'k1' is already used on line 1. "
        "Fix: give every dialogue in the file its own id"
    )


def test_distinct_and_missing_ids_load(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "k1", "turns": ["a"]}\n{"turns": ["b"]}\n{"turns": ["c"]}\n')
    assert [d.id for d in load_dialogues(path)] == ["k1", "d.jsonl:2", "d.jsonl:3"]


# --- 7. a later dialogue fails: what finished is written ------------------------------------


def test_run_writes_the_finished_dialogues_when_a_later_one_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = fake_services(tmp_path, FakeLocal(["fine"]))

    @contextmanager
    def graph(settings: Settings, db: Path | None) -> Iterator[tuple[Any, Any]]:
        yield build_graph(services, checkpointer=InMemorySaver()), services

    monkeypatch.setattr(talk, "_graph", graph)
    missing = tmp_path / "nope.zip"
    dialogues = tmp_path / "d.jsonl"
    ok = {"id": "d1", "context": {"policy": "always-local"}, "turns": ["hi", "again"]}
    bad = {"id": "d2", "context": {"policy": "learned", "policy_file": str(missing)}}
    dialogues.write_text(json.dumps(ok) + "\n" + json.dumps({**bad, "turns": ["hi"]}) + "\n")
    out = tmp_path / "out" / "r.json"
    result = CliRunner().invoke(app, ["run", str(dialogues), "--json", str(out)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: dialogue d2, turn 0: policy {missing} (with nope.spec.json) not found "
        f"(the 1 dialogue(s) that finished were written to {out}). "
        "Fix: train one with `tmo-graph train ... -o FILE`"
    ]
    written = json.loads(out.read_text())
    assert [d["id"] for d in written] == ["d1"]
    assert [t["answer"] for t in written[0]["turns"]] == ["fine", "fine"]


# --- 9. more inline images than one cloud call takes ----------------------------------------


def _image_message(n: int) -> list[dict[str, Any]]:
    colours = ["red", "green", "blue", "white", "black", "yellow"]
    urls = [
        "data:image/png;base64," + base64.b64encode(png_bytes(colours[i % 6])).decode()
        for i in range(n)
    ]
    return [
        {"type": "text", "text": "What colours are these?"},
        *({"type": "image_url", "image_url": {"url": url}} for url in urls),
    ]


def test_images_beyond_the_cap_are_dropped_with_a_warning(tmp_path: Path) -> None:
    cloud = FakeCloud()
    cloud.sent = []
    settings = Settings.model_validate({"cloud": {"max_images_per_call": 3}})
    services = fake_services(tmp_path, FakeLocal(["x"]), cloud, scores={}, settings=settings)
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    context = Context(policy="always-cloud", cost_budget_usd=10.0)
    out = graph.invoke({"messages": [("user", _image_message(50))]}, config, context=context)
    record = out["turns"][-1]
    warning = (
        "47 of the message's 50 images were dropped: at most 3 go to the cloud with one "
        "message (cloud.max_images_per_call)"
    )
    assert record["warnings"] == [warning]
    assert set(record["association"]) == {"image_1", "image_2", "image_3"}
    assert set(record["views_sent"]) <= {"image_1", "image_2", "image_3"}
    assert f"      warning: {warning}" in format_turn(record).splitlines()
    # The warning belongs to that turn: the next one starts clean.
    nxt = graph.invoke({"messages": [("user", "thanks")]}, config, context=context)
    assert "warnings" not in nxt["turns"][-1]
    assert graph.get_state(config).values["warnings"] == []


def test_images_within_the_cap_give_no_warning(tmp_path: Path) -> None:
    services = fake_services(tmp_path, FakeLocal(["x"]), FakeCloud(), scores={})
    out = _run(services, _image_message(4), Context(policy="always-local"))
    record = out["turns"][-1]
    assert "warnings" not in record and len(record["association"]) == 4


def test_the_default_cap_is_four() -> None:
    assert Settings().cloud.max_images_per_call == 4


# --- 10. a message longer than the local model's context ------------------------------------


def _model(max_new_tokens: int = 10) -> LocalModel:
    return LocalModel(WordTokenizer(40), object(), Path("."), 0.0, max_new_tokens)


def test_a_short_prompt_is_left_alone() -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert _model().fit_to_context(messages) == (messages, [])


def test_history_goes_first_then_the_middle_of_the_message() -> None:
    long = " ".join(f"w{i}" for i in range(100))
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": long},
    ]
    model = _model()  # 40 tokens of context, 10 for the answer: 30 for the prompt
    fitted, warnings = model.fit_to_context(messages)
    assert [m["role"] for m in fitted] == ["system", "user"]
    assert fitted[0] == messages[0]
    head, tail = " ".join(long.split()[:12]), " ".join(long.split()[-12:])
    assert fitted[1] == {"role": "user", "content": f"{head} [...] {tail}"}
    assert len(model._prompt_ids(fitted)) <= 30
    assert warnings == [
        "the 2 oldest message(s) were left out of the local model's prompt to fit its "
        "context of 30 tokens",
        "the message was cut from 100 to 25 tokens for the local model",
    ]


def test_dropping_history_alone_may_be_enough() -> None:
    messages = [
        {"role": "user", "content": " ".join(["old"] * 40)},
        {"role": "assistant", "content": "sure"},
        {"role": "user", "content": "the question"},
    ]
    fitted, warnings = _model().fit_to_context(messages)
    assert fitted == messages[1:]  # the old question alone was too long
    assert warnings == [
        "the 1 oldest message(s) were left out of the local model's prompt to fit its "
        "context of 30 tokens"
    ]


@dataclass
class _CuttingLocal(FakeLocal):
    """A local backend that reports it cut the prompt, as LocalModel.answer does."""

    cut: list[str] = field(default_factory=list)

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        text, stats = super().answer(messages, max_new_tokens, tags)
        stats.warnings = list(self.cut)  # type: ignore[attr-defined]
        return text, stats


def test_a_cut_prompt_is_a_warning_in_the_turn_record(tmp_path: Path) -> None:
    cut = "the message was cut from 50000 to 8111 tokens for the local model"
    services = fake_services(tmp_path, _CuttingLocal(["short answer"], cut=[cut]), scores={})
    out = _run(services, "word " * 1000, Context(policy="always-local"))
    assert out["turns"][-1]["warnings"] == [cut]


def test_a_prompt_is_rendered_once_for_the_same_messages() -> None:
    model = _model()
    calls: list[int] = []
    render = model.tokenizer.apply_chat_template

    def counted(messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
        calls.append(len(messages))
        return render(messages, **kwargs)

    model.tokenizer.apply_chat_template = counted
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    first = model._prompt_ids(messages)
    assert model._prompt_ids([dict(m) for m in messages]) == first and len(calls) == 1
    model._prompt_ids(messages).append(99)  # a caller's list is its own
    assert model._prompt_ids(messages) == first
    changed = [messages[0], {"role": "user", "content": "hi there"}]  # one word more
    assert len(model._prompt_ids(changed)) == len(first) + 1 and len(calls) == 2
