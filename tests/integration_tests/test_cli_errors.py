"""Start-up faults through the real CLI: one line naming the problem and the fix, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "tmo_graph.cli", *args],
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
