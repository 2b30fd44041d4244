"""Configs, dialogue files and images: bad input gives one clear error with the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.unit_tests.fakes import png_bytes
from tmo_graph.context import Context
from tmo_graph.dialogues import load_dialogues
from tmo_graph.errors import TmoGraphError
from tmo_graph.images import to_data_url
from tmo_graph.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_is_the_builtin_defaults() -> None:
    assert load_settings(ROOT / "configs" / "default.yaml") == Settings()


CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_repo_ships_its_configs() -> None:
    # Without this, an empty configs/ would make the parametrized check below vanish.
    assert {"default.yaml", "openai.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_in_the_repo_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("TMO_")]:
        monkeypatch.delenv(name)  # the file alone, not a developer's overrides
    loaded = load_settings(path).model_dump(mode="json")
    raw = yaml.safe_load(path.read_text()) or {}
    for section, values in raw.items():  # every value in the file made it into the settings
        for key, value in (values or {}).items():
            assert loaded[section][key] == value, f"{path.name}: {section}.{key}"


def test_context_defaults_come_from_the_config() -> None:
    settings = Settings.model_validate({"routing": {"policy": "cascade", "recall_k": 7}})
    context = Context.from_settings(settings, user_id="alice")
    assert (context.policy, context.recall_k, context.user_id) == ("cascade", 7, "alice")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("local: {max_new_tokens: -3}", "local.max_new_tokens"),
        ("cloud: {mode: satellite}", "cloud.mode"),
        ("colud: {}", "colud"),
        ("- a list", "must be a mapping"),
        ("local: [unclosed", "not valid YAML"),
    ],
)
def test_bad_config_values_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(TmoGraphError, match=message) as info:
        load_settings(path)
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(TmoGraphError, match="does not exist"):
        load_settings("/nonexistent/config.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"policy": "smart"}, "unknown policy"),
        ({"confidence_threshold": 1.5}, r"confidence_threshold must be in \[0, 1\]"),
        ({"cost_budget_usd": 0}, "cost_budget_usd must be > 0"),
        ({"user_id": ""}, "user_id is empty"),
    ],
)
def test_bad_context_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(TmoGraphError, match=message):
        Context(**overrides)  # type: ignore[arg-type]


def test_images_become_data_urls_and_non_images_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    good.write_bytes(png_bytes())
    assert to_data_url(str(good)).startswith("data:image/png;base64,")
    bad = tmp_path / "b.png"
    bad.write_text("hello")
    with pytest.raises(TmoGraphError, match="not a readable image"):
        to_data_url(str(bad))
    with pytest.raises(TmoGraphError, match="does not exist"):
        to_data_url(str(tmp_path / "missing.png"))
    with pytest.raises(TmoGraphError, match="invalid base64"):
        to_data_url("data:image/png;base64,@@@")


def test_example_dialogue_loads() -> None:
    dialogues = load_dialogues(ROOT / "examples" / "kitchen.jsonl")
    demo = dialogues[0]
    assert set(demo.views) == {"first_person", "overhead", "side"}
    assert any(turn.images for turn in demo.turns)
    assert all(view["image"].startswith("data:image/png") for view in demo.views.values())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"turns": []}), "non-empty list"),
        (json.dumps({"turns": ["  "]}), "turn 0: the message is empty"),
        (json.dumps({"turns": ["hi"], "extra": 1}), "unknown field"),
        (json.dumps({"turns": ["hi"], "context": {"budget": 3}}), "unknown context field"),
        (json.dumps({"turns": [{"text": "hi", "images": ["nope.png"]}]}), "does not exist"),
    ],
)
def test_bad_dialogue_files(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TmoGraphError, match=message):
        load_dialogues(path)


def test_openai_config_points_at_a_priced_model() -> None:
    raw = yaml.safe_load((ROOT / "configs" / "openai.yaml").read_text())
    assert raw["cloud"]["price_as"] == "gpt-4o"
