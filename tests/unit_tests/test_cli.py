"""The CLI: user errors as one line on stderr (exit 2), the policy a dialogue runs with, tables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langgraph.store.memory import InMemoryStore
from typer.testing import CliRunner

from tmo_graph.cli import talk
from tmo_graph.cli.app import app
from tmo_graph.cli.dialogues import Dialogue, Turn, dialogue_context
from tmo_graph.cli.turn_table import format_turn
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import Settings

runner = CliRunner()


def test_run_with_missing_file() -> None:
    result = runner.invoke(app, ["run", "/nonexistent.jsonl"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(
        "error: dialogue file /nonexistent.jsonl does not exist"
    )


def test_run_with_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing: {confidence_threshold: 3}")
    result = runner.invoke(app, ["run", "examples/kitchen.jsonl", "--config", str(config)])
    assert result.exit_code == 2
    assert "routing.confidence_threshold" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_with_unknown_view_caption(tmp_path: Path) -> None:
    result = runner.invoke(app, ["chat", "--caption", "top=a camera"], input="hi\n")
    assert result.exit_code == 2
    assert "unknown view(s) ['top']" in result.stderr


def test_chat_with_a_view_that_is_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_text("text")
    result = runner.invoke(app, ["chat", "--view", f"overhead={bad}"], input="hi\n")
    assert result.exit_code == 2
    assert "not a readable image" in result.stderr


def test_cli_method_list_matches_the_benchmark() -> None:
    from tmo_graph.cli.simulate import ALL_METHODS
    from tmo_graph.sim.bench import parse_methods

    assert parse_methods(ALL_METHODS) == ALL_METHODS.split(",")  # the default is valid
    help_text = runner.invoke(app, ["bench", "m4a1", "--help"], env={"COLUMNS": "400"}).output
    assert f"any of: {ALL_METHODS}" in help_text


def test_bench_with_an_unknown_method() -> None:
    result = runner.invoke(app, ["bench", "m4a1", "--methods", "local,magic"])
    assert result.exit_code == 2 and "unknown method(s) ['magic']" in result.stderr


def test_policy_help_lists_every_policy() -> None:
    from tmo_graph.sections import POLICIES

    for command in ("run", "chat"):
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).output
        assert all(name in help_text for name in POLICIES), command


M4A1_COMMANDS = [
    ["train"],
    ["bench", "m4a1"],
    ["bench", "generate", "--out", "out.json"],
    ["eval", "confidence"],
    ["eval", "answers"],
    ["eval", "gap"],
]


@pytest.mark.parametrize("command", M4A1_COMMANDS, ids=" ".join)
def test_m4a1_commands_without_data_say_how_to_pass_it(command: list[str]) -> None:
    result = runner.invoke(app, command, env={"TMO_GRAPH_M4A1": None})
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        "error: no M4A1 data file given. Fix: pass --data PATH/TO/M4A1.json, "
        "or set TMO_GRAPH_M4A1=PATH/TO/M4A1.json"
    ]


def test_m4a1_data_from_the_environment(tmp_path: Path) -> None:
    missing = tmp_path / "M4A1.json"
    env = {"TMO_GRAPH_M4A1": str(missing)}
    for command in (["eval", "gap"], ["bench", "generate", "--out", str(tmp_path / "o.json")]):
        result = runner.invoke(app, command, env=env)
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: dataset {missing} does not exist"), command


# --- `run`: which policy a dialogue runs with ------------------------------------------------


def _record(turn: int) -> dict[str, Any]:
    return {
        "turn": turn,
        "task": "Query",
        "policy": "always-local",
        "route": "local",
        "views_sent": [],
        "association": {},
        "confidence": 0.9,
        "escalated": False,
        "fallback": None,
        "latency_s": 0.5,
        "cost_usd": 0.0,
        "budget_left": {"latency_s": 59.5, "cost_usd": 0.05},
        "answer": "done",
        "local_answer": None,
    }


class _RecordingGraph:
    """Stands in for the compiled graph: records each call's context, answers locally."""

    def __init__(self) -> None:
        self.contexts: list[Context] = []
        self.inputs: list[dict[str, Any]] = []
        self.checkpointer = SimpleNamespace(delete_thread=lambda thread_id: None)

    def invoke(
        self, state: dict[str, Any], config: Any, context: Context, durability: str = "async"
    ) -> dict[str, Any]:
        self.contexts.append(context)
        self.inputs.append(state)
        return {"turns": [_record(len(self.inputs) - 1)]}


@pytest.fixture
def fake_graph(monkeypatch: pytest.MonkeyPatch) -> _RecordingGraph:
    graph = _RecordingGraph()
    services = SimpleNamespace(memory=InMemoryStore())

    @contextmanager
    def fake(settings: Settings, db: Path | None) -> Iterator[tuple[Any, Any]]:
        yield graph, services

    monkeypatch.setattr(talk, "_graph", fake)  # no models, no SQLite: only the CLI's own logic
    return graph


def _dialogue_file(tmp_path: Path, context: dict[str, Any]) -> Path:
    path = tmp_path / "d.jsonl"
    line = {"id": "d1", "user_id": "alice", "context": context, "turns": ["hi", "again"]}
    path.write_text(json.dumps(line) + "\n")
    return path


def test_run_keeps_the_dialogues_own_policy(tmp_path: Path, fake_graph: _RecordingGraph) -> None:
    # The bug: `--policy` defaulting to None replaced the dialogue's policy with the config's.
    path = _dialogue_file(tmp_path, {"policy": "always-local", "recall_k": 1})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    assert [c.policy for c in fake_graph.contexts] == ["always-local", "always-local"]
    assert {(c.user_id, c.recall_k) for c in fake_graph.contexts} == {("alice", 1)}
    assert "policy always-local" in result.stdout


def test_run_policy_flag_beats_the_dialogue(tmp_path: Path, fake_graph: _RecordingGraph) -> None:
    path = _dialogue_file(tmp_path, {"policy": "always-local"})
    result = runner.invoke(app, ["run", str(path), "--policy", "always-cloud"])
    assert result.exit_code == 0, result.output
    assert {c.policy for c in fake_graph.contexts} == {"always-cloud"}


def test_run_prints_a_row_per_turn(tmp_path: Path, fake_graph: _RecordingGraph) -> None:
    result = runner.invoke(app, ["run", str(_dialogue_file(tmp_path, {}))])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("turn"))
    columns = [
        "turn",
        "task",
        "route",
        "conf",
        "esc",
        "latency s",
        "cost USD",
        "left s",
        "left USD",
    ]
    assert re.split(r"\s{2,}", header.strip()) == columns
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert rows == [
        [str(t), "Query", "local", "0.90", "no", "0.50", "0.000000", "59.5", "0.05000"]
        for t in (0, 1)
    ]
    assert lines.count("      > done") == 2
    assert "\x1b[" not in result.stdout  # plain text off a terminal


def test_run_with_a_bad_context_value_fails_before_loading(
    tmp_path: Path, fake_graph: _RecordingGraph
) -> None:
    path = _dialogue_file(tmp_path, {"confidence_threshold": 1.5})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "dialogue d1: confidence_threshold must be in [0, 1]" in result.stderr
    assert fake_graph.contexts == []


@pytest.mark.parametrize(
    ("dialogue_context_", "cli_policy", "config_policy", "expected"),
    [
        ({}, None, "cascade", "cascade"),  # nothing else: the config's routing default
        ({"policy": "always-local"}, None, "cascade", "always-local"),  # the dialogue's own
        ({"policy": "always-local"}, "random", "cascade", "random"),  # an explicit --policy
        ({}, "always-cloud", "cascade", "always-cloud"),
    ],
)
def test_dialogue_context_precedence(
    dialogue_context_: dict[str, Any], cli_policy: str | None, config_policy: str, expected: str
) -> None:
    settings = Settings.model_validate({"routing": {"policy": config_policy, "recall_k": 5}})
    dialogue = Dialogue(id="d", turns=[Turn("hi")], user_id="bob", context=dialogue_context_)
    context = dialogue_context(settings, dialogue, cli_policy)
    assert (context.policy, context.user_id, context.recall_k) == (expected, "bob", 5)


def test_dialogue_context_names_the_dialogue_and_the_fix() -> None:
    dialogue = Dialogue(id="d7", turns=[Turn("hi")], context={"cost_budget_usd": -1.0})
    with pytest.raises(TmoGraphError, match=r"dialogue d7: cost_budget_usd must be > 0.*Fix:"):
        dialogue_context(Settings(), dialogue)
    with pytest.raises(TmoGraphError, match="unknown policy 'smart'"):
        dialogue_context(Settings(), Dialogue(id="d8", turns=[Turn("hi")]), "smart")


# --- the tables -------------------------------------------------------------------------------


def test_turn_rows_keep_every_field_and_fold_long_view_lists() -> None:
    record = _record(3) | {
        "route": "cloud",
        "views_sent": ["first_person", "overhead", "side_camera_by_the_door"],
        "escalated": True,
        "confidence": 0.11,
        "fallback": None,
        "local_answer": "a  bad\ndraft",
        "answer": "use [bold] as is",
    }
    text = format_turn(record, header=True)
    assert "cloud+first_person,overhead,si" in text and "de_camera_by_the_door" in text
    assert "      > use [bold] as is" in text  # no rich markup applied to answers
    assert "      escalated local draft: a bad draft" in text
    assert all(line == line.rstrip() for line in text.splitlines())
    fallback = format_turn(_record(0) | {"fallback": "timeout"})
    assert "local (cloud failed)" in fallback and "fallback: timeout" in fallback


def test_a_turn_shows_what_its_voice_notes_said_not_the_microphones() -> None:
    record = _record(1) | {
        "transcripts": {"voice_note_1": "how do i change the blade", "bench_mic": "drilling"},
        "audio_sent": [],
    }
    text = format_turn(record)
    assert '      heard in voice_note_1: "how do i change the blade"' in text
    assert "drilling" not in text


def test_the_m4a1_table_keeps_every_column_and_method() -> None:
    from tmo_graph.sim.report import COLUMNS, format_table

    row = {
        "mean": {key: 0.5 for key, _, _ in COLUMNS}
        | {"actions": {"local": 3, "cloud_text": 1, "cloud_views": 2}},
        "std": {key: 0.25 for key, _, _ in COLUMNS},
    }
    result = {
        "settings": {
            "seeds": [1, 2],
            "device": "Jetson TX2",
            "network": "Wired",
            "latency_budget_s": 30.0,
            "usage_budget_usd": 0.05,
            "protocol": "paper",
        },
        "methods": {"Local": row, "RC-PPO": row},
    }
    lines = format_table(result).splitlines()
    assert lines[0].startswith("M4A1, seeds [1, 2], Jetson TX2 / Wired, budgets 30.0 s")
    assert lines[1].split()[0] == "method" and lines[1].endswith("actions local/text/views")
    for title in ("reward", "assoc.", "usage USD", "over lat s", "% over"):
        assert title in lines[1]
    assert lines[2].split() == [
        "Local",
        "0.5000+-0.2500",
        "0.5000+-0.2500",
        "0.5000+-0.2500",
        "0.500+-0.250",
        "0.50000+-0.25000",
        "0.500+-0.250",
        "0.50000+-0.25000",
        "50.0+-25.0",  # a share, printed in percent
        "3/1/2",
    ]
    assert lines[3].split()[0] == "RC-PPO" and len(lines) == 4


def test_eval_answers_refuses_bad_input_before_loading_a_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval", "answers", "--data", "M4A1.json", "--limit", "0"])
    assert result.exit_code == 2 and "--limit 0 is not positive" in result.output
    result = runner.invoke(app, ["eval", "answers", "--data", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "none.json" in result.output


def test_a_chat_line_may_attach_an_image_or_a_voice_note(tmp_path: Path) -> None:
    from tests.unit_tests.fakes import png_bytes
    from tmo_graph.cli.dialogues import chat_message

    (tmp_path / "my photo.png").write_bytes(png_bytes())
    clip = Path("examples/audio/voice_note.wav").resolve()
    assert chat_message("  What is this?  ", tmp_path) == "What is this?"
    assert chat_message('/image "my photo.png" What fruit is this?', tmp_path) == [
        {"type": "text", "text": "What fruit is this?"},
        {"type": "image_url", "image_url": {"url": str(tmp_path / "my photo.png")}},
    ]
    assert chat_message(f"/audio {clip}", tmp_path) == [{"type": "audio", "url": str(clip)}]
    assert chat_message(f"/audio {clip} Please answer it.", tmp_path)[0] == {
        "type": "text",
        "text": "Please answer it.",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("/picture x.png hi", "unknown command '/picture'"),
        ("/audio", "/audio needs the path of a voice note"),
        ("/image 'x.png hi", "/image: No closing quotation"),
        ("/image missing.png What is it?", "does not exist"),
        ("/audio missing.wav", "does not exist"),
        ("/audio my.txt", "is not audio"),
    ],
)
def test_a_bad_chat_command_says_what_was_wrong(tmp_path: Path, line: str, problem: str) -> None:
    from tmo_graph.cli.dialogues import chat_message

    (tmp_path / "my.txt").write_text("not a clip")
    with pytest.raises(TmoGraphError, match=re.escape(problem)):
        chat_message(line, tmp_path)


def test_model_preparation_is_shown_on_the_stderr_of_the_moment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from tmo_graph.cli.common import show_model_preparation

    logger = logging.getLogger("tmo_graph.models")
    before = list(logger.handlers), logger.level
    try:
        show_model_preparation()
        show_model_preparation()  # twice: still one line per message
        logging.getLogger("tmo_graph.models.local.weights").info("converting x.gguf ...")
        logging.getLogger("tmo_graph.models.local.engine").debug("not shown")
        assert capsys.readouterr().err.splitlines() == ["converting x.gguf ..."]
    finally:
        logger.handlers[:] = before[0]
        logger.setLevel(before[1])
