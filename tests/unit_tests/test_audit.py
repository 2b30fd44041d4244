"""The audit log: whole lines from concurrent writers, read back and checked line by line,
summarized (`tmo-graph audit`), and one line per cloud request of a graph run."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from tests.unit_tests.fakes import FakeCloud, FakeLocal, fake_services, png_bytes
from tmo_graph.cli.app import app
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.graph import build_graph
from tmo_graph.guards.audit import AuditEntry, AuditLog, format_summary, read_audit, summarize
from tmo_graph.settings import Settings

FIX = "Fix: each line must be one JSON object as AuditLog.append writes it; remove or repair it"


def _entry(**changes: Any) -> AuditEntry:
    entry = AuditEntry(
        time="2025-06-01T10:00:00.000+00:00",
        thread_id="kitchen-1",
        user_id="alice",
        model="gpt-4o-mini",
        endpoint="api.openai.com",
        attempt=1,
        views=[],
        redactions={},
        input_tokens=100,
        output_tokens=20,
        max_tokens=256,
        cost_usd=0.000027,
        seconds=0.8,
        outcome="ok",
    )
    entry.update(changes)  # type: ignore[typeddict-item]
    return entry


# --- many writers, one file -------------------------------------------------------------------

WRITERS, LINES_EACH = 4, 200


def _write_lines(path: str, writer: int) -> None:
    log = AuditLog(path)
    for i in range(LINES_EACH):
        # Every 10th line is longer than a pipe buffer (4 KB): one write still keeps it whole.
        views = [{"name": f"w{writer}-v{k}", "sha256": "ab" * 32} for k in range(i % 10 * 8)]
        log.append(_entry(thread_id=f"writer-{writer}", attempt=i + 1, views=views))


def test_lines_from_concurrent_processes_stay_whole(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_write_lines, args=(str(path), w)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == WRITERS * LINES_EACH
    assert max(len(line) for line in lines) > 4096
    entries = read_audit(path)  # every line parses and validates
    for w in range(WRITERS):  # each writer's lines, whole and in its own order
        attempts = [e["attempt"] for e in entries if e["thread_id"] == f"writer-{w}"]
        assert attempts == list(range(1, LINES_EACH + 1))
    assert path.stat().st_mode & 0o777 == 0o600


# --- the summary --------------------------------------------------------------------------------


def _known_log(path: Path) -> None:
    log = AuditLog(path)
    overhead = {"name": "overhead", "sha256": "a" * 64}
    side = {"name": "side", "sha256": "b" * 64}
    log.append(_entry(views=[overhead], redactions={"email": 1}))
    log.append(
        _entry(
            time="2025-06-01T10:05:00.000+00:00",
            outcome="timeout",
            input_tokens=0,
            output_tokens=0,
            cost_usd=0.0001,
            views=[overhead, side],
            redactions={"email": 1, "card": 2},
        )
    )
    log.append(
        _entry(
            time="2025-06-01T10:05:03.500+00:00",
            attempt=2,
            views=[overhead, side],
            redactions={"email": 1, "card": 2},
        )
    )
    log.append(  # written late (another process), but the earliest request
        _entry(
            time="2025-06-01T09:59:59.000+02:00",
            thread_id="garage",
            user_id="bob",
            model="gpt-4o",
            endpoint="gpu-box:8000",
            input_tokens=1000,
            output_tokens=50,
            cost_usd=0.003,
        )
    )


SUMMARY = {
    "requests": 4,
    "first": "2025-06-01T09:59:59.000+02:00",
    "last": "2025-06-01T10:05:03.500+00:00",
    "by_outcome": {"ok": 3, "timeout": 1},
    "by_model": [
        {
            "model": "gpt-4o-mini",
            "endpoint": "api.openai.com",
            "requests": 3,
            "cost_usd": 0.000154,
        },
        {"model": "gpt-4o", "endpoint": "gpu-box:8000", "requests": 1, "cost_usd": 0.003},
    ],
    "threads": 2,
    "users": 2,
    "input_tokens": 1200,
    "output_tokens": 90,
    "cost_usd": 0.003154,
    "views": {"overhead": 3, "side": 2},
    "redactions": {"card": 4, "email": 3},
}


def test_summary_of_a_known_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _known_log(path)
    summary = summarize(read_audit(path), path)
    assert summary == {"file": str(path), **SUMMARY}
    text = format_summary(summary)
    assert text.splitlines()[0] == f"{path}: 4 cloud request(s)"
    rows = [" ".join(line.split()) for line in text.splitlines()]
    for row in (
        "requests 4",
        "threads 2",
        "users 2",
        "input tokens 1200",
        "output tokens 90",
        "cost USD 0.003154",
        "first request 2025-06-01T09:59:59.000+02:00",
        "last request 2025-06-01T10:05:03.500+00:00",
        "ok 3",
        "timeout 1",
        "gpt-4o-mini api.openai.com 3 0.000154",
        "gpt-4o gpu-box:8000 1 0.003000",
        "overhead 3",
        "side 2",
        "card 4",
        "email 3",
    ):
        assert row in rows


# --- a bad log: one exact error -------------------------------------------------------------------


def _bad_log(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "audit.jsonl"
    path.write_text(json.dumps(_entry()) + "\n\n" + line + "\n" + json.dumps(_entry()) + "\n")
    return path  # the bad line is line 3 (line 2 is blank, and skipped)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"time": "2025-06-01', "not JSON (EOF while parsing a string at line 1 column 20)"),
        (
            json.dumps({k: v for k, v in _entry().items() if k != "cost_usd"}),
            "field `cost_usd` is missing",
        ),
        (
            json.dumps(_entry(input_tokens="lots")),  # type: ignore[arg-type]
            "field `input_tokens`: input should be a valid integer, unable to parse string as "
            "an integer (got 'lots')",
        ),
        (json.dumps(_entry(views=[{"name": "overhead"}])), "field `views.0.sha256` is missing"),
        (
            json.dumps(_entry(time="yesterday")),
            "field `time` is not an ISO 8601 time (got 'yesterday')",
        ),
        ("[1, 2]", "input should be an object (got [1, 2])"),
    ],
)
def test_a_bad_line_is_named_with_its_number(tmp_path: Path, line: str, problem: str) -> None:
    path = _bad_log(tmp_path, line)
    with pytest.raises(TmoGraphError) as caught:
        read_audit(path)
    assert str(caught.value) == f"audit log {path}:3: {problem}. {FIX}"


def test_a_missing_or_empty_log(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(TmoGraphError) as caught:
        read_audit(missing)
    assert str(caught.value) == (
        f"audit log {missing} does not exist. Fix: pass the file the graph writes "
        "(audit.path, default <cache>/audit.jsonl)"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(TmoGraphError) as caught:
        read_audit(empty)
    assert str(caught.value) == (
        f"audit log {empty} is empty. Fix: it gets a line once the graph makes a cloud request"
    )


# --- `tmo-graph audit FILE` -------------------------------------------------------------------

runner = CliRunner()


def test_cli_prints_the_summary_as_a_table_or_json(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _known_log(path)
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == format_summary(summarize(read_audit(path), path))
    result = runner.invoke(app, ["audit", str(path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"file": str(path), **SUMMARY}


def test_cli_a_bad_log_is_one_error_line(tmp_path: Path) -> None:
    path = _bad_log(tmp_path, "{not json")
    result = runner.invoke(app, ["audit", str(path)])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: audit log {path}:3: not JSON (key must be a string at line 1 column 2). {FIX}"
    ]
    result = runner.invoke(app, ["audit", str(tmp_path / "none.jsonl"), "--json"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: audit log {tmp_path / 'none.jsonl'} does not exist.")


# --- a graph run: one line per cloud request ----------------------------------------------------

API_KEY = "sk-unit-test-never-logged-0123"
PROMPT = "Is the pot boiling? Mail anna@example.org, my password is hunter2!"


class KeyedCloud(FakeCloud):
    """A fake cloud that carries an endpoint with credentials and an API key, as ChatOpenAI."""

    openai_api_base: str = f"https://anna:{API_KEY}@cloud.example.com:8443/v1?key={API_KEY}"
    openai_api_key: str = API_KEY
    model_name: str = "gpt-4o-mini"


def test_a_graph_run_writes_one_line_per_cloud_request(tmp_path: Path) -> None:
    cloud = KeyedCloud(answer="It is boiling.")
    cloud.sent = []
    services = fake_services(
        tmp_path, FakeLocal(["local says"]), cloud, scores={"overhead": 0.9, "bedroom": 0.9}
    )
    services.audit = AuditLog(tmp_path / "audit.jsonl")
    overhead, bedroom = tmp_path / "overhead.png", tmp_path / "bedroom.png"
    overhead.write_bytes(png_bytes("red"))
    bedroom.write_bytes(png_bytes("blue"))
    views = {
        "overhead": {"image": str(overhead), "description": "camera above the stove"},
        "bedroom": {"image": str(bedroom), "description": "bed camera", "private": True},
    }
    graph = build_graph(services, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "kitchen-7"}}
    context = Context(policy="always-cloud", user_id="anna")
    for text in (PROMPT, "And now?"):
        graph.invoke({"messages": [("user", text)], "views": views}, config, context=context)
    entries = read_audit(tmp_path / "audit.jsonl")
    assert len(entries) == len(cloud.sent) == 2
    sha = hashlib.sha256(overhead.read_bytes()).hexdigest()
    for entry in entries:
        assert entry["views"] == [{"name": "overhead", "sha256": sha}]
        assert (entry["thread_id"], entry["user_id"], entry["outcome"]) == (
            "kitchen-7",
            "anna",
            "ok",
        )
        assert (entry["model"], entry["endpoint"]) == ("gpt-4o-mini", "cloud.example.com:8443")
        # the fake's usage, plus the low-detail image the loopback stand-in does not bill
        assert (entry["input_tokens"], entry["output_tokens"]) == (100 + 2833, 20)
    assert entries[0]["redactions"] == {"email": 1, "secret": 1}
    text = (tmp_path / "audit.jsonl").read_text()
    for never in (API_KEY, "anna@example.org", "hunter2", "pot boiling", "It is boiling", "bed"):
        assert never not in text
    assert hashlib.sha256(bedroom.read_bytes()).hexdigest() not in text


def test_each_failed_attempt_is_a_line(tmp_path: Path) -> None:
    settings = Settings(cloud={"max_attempts": 2}, audit={"path": str(tmp_path / "a.jsonl")})
    services = fake_services(
        tmp_path, FakeLocal(["local says"]), FakeCloud(fail=True), settings=settings
    )
    assert services.audit is not None  # settings.audit.path opens the log
    graph = build_graph(services, checkpointer=InMemorySaver())
    out = graph.invoke(
        {"messages": [("user", "Hello there")]},
        {"configurable": {"thread_id": "f"}},
        context=Context(policy="always-cloud"),
    )
    assert out["turns"][-1]["route"] == "local"  # the device answered after two faults
    entries = read_audit(tmp_path / "a.jsonl")
    assert [(e["attempt"], e["outcome"]) for e in entries] == [(1, "connection"), (2, "connection")]
