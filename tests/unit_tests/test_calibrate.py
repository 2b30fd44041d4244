"""Calibration: a threshold picked on one prompt set hits the target cloud rate on another."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tests.unit_tests.fakes import Stats
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.eval.calibrate import (
    cloud_rate,
    expected_quality,
    load_prompts,
    local_confidences,
    threshold_for_cloud_rate,
    threshold_for_quality,
)
from tmo_graph.settings import load_settings


class VaryingLocal:
    """A local model whose certainty depends on the prompt (a hash-seeded log-prob)."""

    def answer(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int | None = None,
        tags: list[str] | None = None,
        max_time_s: float | None = None,
    ) -> tuple[str, Stats]:
        rng = random.Random(messages[-1]["content"])
        logprob = -rng.expovariate(1.5)
        text = f"answer number {rng.randint(0, 10**6)} here"
        return text, Stats([logprob] * 4, [0.5 - 2.0 * logprob] * 4)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_threshold_hits_the_rate_on_held_out_prompts(rate: float) -> None:
    prompts = [f"prompt {i}" for i in range(2000)]
    values = local_confidences(prompts, VaryingLocal())
    fit, held_out = values[:1000], values[1000:]
    threshold = threshold_for_cloud_rate(fit, rate)
    assert cloud_rate(fit, threshold) == pytest.approx(rate, abs=0.01)  # ties: 4-decimal values
    assert cloud_rate(held_out, threshold) == pytest.approx(rate, abs=0.05)


def test_extremes_and_bad_rates() -> None:
    assert threshold_for_cloud_rate([0.2, 0.5], 0.0) == 0.0
    assert threshold_for_cloud_rate([0.2, 0.5], 1.0) == 1.0
    with pytest.raises(TmoGraphError, match="not in \\[0, 1\\]"):
        threshold_for_cloud_rate([0.2], 1.5)


def test_prompt_files(tmp_path: Path) -> None:
    text = tmp_path / "p.txt"
    text.write_text("one\n\ntwo\n")
    assert load_prompts(text) == ["one", "two"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"text": "a"}\n{"nope": 1}\n')
    with pytest.raises(TmoGraphError, match="p.jsonl:2"):
        load_prompts(jsonl)


def calibrate_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *options: str
) -> tuple[Any, Path]:
    """Run `tmo-graph calibrate` on 200 prompts with VaryingLocal as the local model."""
    from typer.testing import CliRunner

    import tmo_graph.models.local.model as local_models
    from tmo_graph.cli.app import app

    monkeypatch.setattr(local_models, "get_local_model", lambda *args, **kwargs: VaryingLocal())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"question {i}" for i in range(200)))
    out = tmp_path / "calibrated.yaml"
    args = ["calibrate", "--prompts", str(prompts), "-o", str(out), *options]
    return CliRunner().invoke(app, args), out


def test_the_calibrated_config_sets_the_graphs_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = calibrate_cli(tmp_path, monkeypatch, "--target-cloud-rate", "0.25")
    assert result.exit_code == 0, result.output
    assert "escalates 25% of these 200 prompts" in result.output
    context = Context.from_settings(load_settings(out))
    assert 0 < context.confidence_threshold < 1


@pytest.mark.parametrize("target", [0.6, 0.75, 0.8])
def test_threshold_for_a_target_quality_holds_on_held_out_prompts(target: float) -> None:
    values = local_confidences([f"prompt {i}" for i in range(2000)], VaryingLocal())
    fit, held_out = values[:1000], values[1000:]
    threshold = threshold_for_quality(fit, target, cloud_good=0.85)
    assert expected_quality(fit, threshold, 0.85) >= target
    # The cheapest such threshold: one answer fewer escalated falls short.
    rate = cloud_rate(fit, threshold)
    if rate > 0:
        lower = threshold_for_cloud_rate(fit, rate - 1 / len(fit))
        assert expected_quality(fit, lower, 0.85) < target
    assert expected_quality(held_out, threshold, 0.85) == pytest.approx(target, abs=0.02)


def test_quality_out_of_reach_and_bad_targets() -> None:
    values = [0.2, 0.4, 0.9]
    # Escalating both unsure answers gives (0.8 + 0.8 + 0.9) / 3 = 0.833 at most.
    assert expected_quality(values, 0.5, 0.8) == pytest.approx(2.5 / 3)
    assert threshold_for_quality(values, 0.8, 0.8) == pytest.approx(0.65)
    with pytest.raises(TmoGraphError, match="out of reach .*at most 0.83"):
        threshold_for_quality(values, 0.9, 0.8)
    with pytest.raises(TmoGraphError, match="not in \\[0, 1\\]"):
        threshold_for_quality(values, 1.2)


def test_calibrate_for_quality_reports_rate_cost_and_quality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, out = calibrate_cli(tmp_path, monkeypatch, "--target-quality", "0.7", "--report")
    assert result.exit_code == 0, result.output
    assert "target quality 70%" in result.output
    assert "cloud cost on the set ~$" in result.output
    reached = float(result.output.split("expected good answers ")[1].split("%")[0])
    assert 70.0 <= reached < 72.0
    assert Context.from_settings(load_settings(out)).confidence_threshold > 0
    bad, _ = calibrate_cli(
        tmp_path, monkeypatch, "--target-quality", "0.7", "--cloud-quality", "1.5"
    )
    assert bad.exit_code == 2 and "cloud quality 1.5 is not in [0, 1]" in bad.output


def test_help_does_not_load_the_evaluation() -> None:
    """`tmo-graph --help` stays fast: no eval module, scikit-learn or SciPy on import."""
    import subprocess
    import sys

    code = (
        "import sys, tmo_graph.cli.app\n"
        "print(sorted(m for m in sys.modules if m.startswith(('tmo_graph.eval', 'sklearn', "
        "'scipy'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_calibration_fails_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tmo_graph.models.local.model as local_models
    from tmo_graph.eval.calibrate import calibrate

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(local_models, "get_local_model", no_model)
    prompts = tmp_path / "p.txt"
    prompts.write_text("one\ntwo\n")
    settings = load_settings(None)
    for kwargs, message in (
        ({"target_cloud_rate": 1.5}, "target cloud rate 1.5 is not in"),
        ({"target_quality": -0.1}, "target quality -0.1 is not in"),
        ({"cloud_good": 2.0}, "cloud quality 2.0 is not in"),
    ):
        with pytest.raises(TmoGraphError, match=message):
            calibrate(prompts, settings, **kwargs)
    with pytest.raises(TmoGraphError, match="does not exist"):
        calibrate(tmp_path / "missing.txt", settings)
