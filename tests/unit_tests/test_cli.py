"""The CLI turns user errors into one line on stderr and exit status 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tmo_graph.cli import app

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
    from tmo_graph.cli import ALL_METHODS
    from tmo_graph.sim.bench import METHOD_NAMES

    assert ALL_METHODS.split(",") == list(METHOD_NAMES)


def test_bench_with_an_unknown_method() -> None:
    result = runner.invoke(app, ["bench", "m4a1", "--methods", "local,magic"])
    assert result.exit_code == 2 and "unknown method(s) ['magic']" in result.stderr
