"""`tmo-graph calibrate` and `tmo-graph eval`: measurements of the router's parts on data.

`calibrate` sets the escalation threshold from prompts like a user's; `eval` measures the
confidence estimators, the device model's answers and the quality-gap predictor on M4A1.
The evaluation code (scikit-learn, SciPy, the models) is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tmo_graph.cli.common import (
    ConfigOption,
    DataOption,
    fail,
    m4a1_file,
    show_model_preparation,
    write_json,
)
from tmo_graph.errors import TmoGraphError
from tmo_graph.settings import load_settings


def calibrate(
    prompts: Annotated[Path, typer.Option(help="prompts like yours: text (one a line) or JSONL")],
    target_cloud_rate: Annotated[
        float, typer.Option(help="share of answers to escalate to the cloud, 0..1")
    ] = 0.3,
    config: ConfigOption = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="config to write, with the threshold set")
    ] = Path("configs/calibrated.yaml"),
    target_quality: Annotated[
        float | None,
        typer.Option(help="instead of a cloud rate: expected share of good answers to reach, 0..1"),
    ] = None,
    cloud_quality: Annotated[
        float | None,
        typer.Option(
            help="share of the cloud model's answers that are good, 0..1 "
            "(default: the share of M4A1's cloud answers beating the median local one)"
        ),
    ] = None,
    report: Annotated[
        bool, typer.Option(help="print the cloud rate, cost and quality estimates on the set")
    ] = False,
) -> None:
    """Set the escalation threshold for a target cloud rate (or a target answer quality)."""
    from tmo_graph.eval import calibrate as calibration

    try:
        settings = load_settings(config)
        result = calibration.calibrate(
            prompts,
            settings,
            target_cloud_rate,
            target_quality,
            calibration.M4A1_CLOUD_GOOD_SHARE if cloud_quality is None else cloud_quality,
            lambda done, total: typer.echo(f"{done}/{total}", err=True),
        )
        calibration.write_config(settings, result.threshold, output)
    except TmoGraphError as error:
        fail(error)
    typer.echo(calibration.summary(result, output))
    if report:
        typer.echo(calibration.report(result, settings))


eval_app = typer.Typer(help="Measurements of the router's parts.", no_args_is_help=True)


@eval_app.command("confidence")
def eval_confidence(
    data: DataOption = None,
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="seed of the dialogue split")] = 9139,
    limit: Annotated[int | None, typer.Option(help="score only the first N local turns")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    scored: Annotated[
        Path | None,
        typer.Option(help="cache of the model's token scores: read if it exists, else written"),
    ] = None,
    fit_out: Annotated[
        Path | None, typer.Option(help="write the combination refit on the train part here")
    ] = None,
    sampling: Annotated[
        int, typer.Option(help="also measure sampling agreement with K samples (held-out part)")
    ] = 0,
) -> None:
    """AUROC / Spearman of each confidence estimator against M4A1's answer scores."""
    from tmo_graph.eval.estimators import format_report, run_confidence_eval

    show_model_preparation()
    try:
        result = run_confidence_eval(
            m4a1_file(data),
            load_settings(config),
            seed,
            limit,
            scored,
            sampling,
            lambda line: typer.echo(line, err=True),
        )
    except TmoGraphError as error:
        fail(error)
    typer.echo(format_report(result))
    if json_out:
        write_json(json_out, result)
    if fit_out:
        write_json(fit_out, result["refit"])


@eval_app.command("answers")
def eval_answers(
    data: DataOption = None,
    config: ConfigOption = None,
    limit: Annotated[int | None, typer.Option(help="answer only the first N local turns")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    answers_out: Annotated[
        Path | None, typer.Option(help="write every generated answer here (JSON), to read them")
    ] = None,
) -> None:
    """Loops, length and confidence of the device model's own answers to M4A1's prompts."""
    from tmo_graph.eval.answers import format_report, run_answers_eval

    show_model_preparation()
    try:
        result = run_answers_eval(
            m4a1_file(data),
            load_settings(config),
            limit,
            answers_out,
            lambda line: typer.echo(line, err=True),
        )
    except TmoGraphError as error:
        fail(error)
    typer.echo(format_report(result))
    if json_out:
        write_json(json_out, result)


@eval_app.command("gap")
def eval_gap(
    data: DataOption = None,
    config: ConfigOption = None,
    seed: Annotated[int, typer.Option(help="seed of the dialogue split")] = 9139,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures here")] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="write a predictor fit on every dialogue (embeddings.gap_predictor)",
        ),
    ] = None,
) -> None:
    """Quality-gap predictor (cloud minus local score, from the prompt): held-out figures."""
    from tmo_graph.eval.gap_fit import format_report, run_gap_eval

    try:
        result, _ = run_gap_eval(m4a1_file(data), load_settings(config), seed, output)
    except TmoGraphError as error:
        fail(error)
    typer.echo(format_report(result))
    if json_out:
        write_json(json_out, result)
    if output:
        d = result["dialogues"]
        typer.echo(
            f"wrote {output} (fit on all {d['train'] + d['test']} dialogues; point "
            "embeddings.gap_predictor at it in a config)"
        )
