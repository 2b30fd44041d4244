"""Configs, dialogue files and images: bad input gives one clear error with the fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.unit_tests.fakes import png_bytes
from tmo_graph.cli.dialogues import load_dialogues
from tmo_graph.context import Context
from tmo_graph.errors import TmoGraphError
from tmo_graph.media.images import check_image
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


def test_images_are_checked_and_non_images_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    good.write_bytes(png_bytes())
    check_image(str(good))
    check_image("https://example.com/not-fetched.png")
    bad = tmp_path / "b.png"
    bad.write_text("hello")
    with pytest.raises(TmoGraphError, match="not a readable image"):
        check_image(str(bad))
    with pytest.raises(TmoGraphError, match="does not exist"):
        check_image(str(tmp_path / "missing.png"))
    with pytest.raises(TmoGraphError, match="invalid base64"):
        check_image("data:image/png;base64,@@@")
    with pytest.raises(TmoGraphError, match="is empty"):
        check_image("  ")


def test_example_dialogue_loads() -> None:
    dialogues = load_dialogues(ROOT / "examples" / "kitchen.jsonl")
    demo = dialogues[0]
    assert set(demo.views) == {"first_person", "overhead", "side"}
    images = ROOT / "examples" / "images"
    # References, not pixels: absolute paths resolved against the file's folder.
    assert demo.views["overhead"]["image"] == str(images / "overhead.png")
    assert [t.images for t in demo.turns if t.images] == [[str(images / "banana.png")]]
    assert demo.context["policy"] == "rules" and demo.user_id == "alice"


def test_dialogue_images_stay_references_and_are_checked(tmp_path: Path) -> None:
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "top.png").write_bytes(png_bytes())
    line = {
        "turns": ["hi", {"text": "this?", "images": ["https://example.com/x.png"]}],
        "views": {"top": {"image": "cams/top.png", "private": True}},
    }
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(line) + "\n")
    dialogue = load_dialogues(path)[0]
    assert dialogue.views == {
        "top": {"image": str(tmp_path / "cams" / "top.png"), "description": "", "private": True}
    }
    assert dialogue.id == "d.jsonl:1"  # no id: the line names it
    assert dialogue.turns[1].content() == [
        {"type": "text", "text": "this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ]
    (tmp_path / "cams" / "top.png").write_text("not an image")
    with pytest.raises(
        TmoGraphError, match=r"d.jsonl:1: field `views.top.image`: .*not a readable"
    ):
        load_dialogues(path)


POLICY_NAMES = r"use one of: always-local, always-cloud, random, rules, cascade, learned"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"d.jsonl:1 is not valid JSON"),
        ("[1, 2]", r"d.jsonl:1: a dialogue must be a JSON object"),
        (json.dumps({"turns": []}), r"d.jsonl:1: `turns` must be a non-empty list"),
        (json.dumps({"id": "x"}), r"`turns` must be a non-empty list"),
        (json.dumps({"turns": ["  "]}), r"`turns\[0\]\.text`: the message is empty"),
        (json.dumps({"turns": ["hi", 3]}), r"`turns\[1\]`: a turn must be a string or an object"),
        (
            json.dumps({"turns": [{"text": "hi", "image": []}]}),
            r"unknown field `turns\[0\]\.image`",
        ),
        (json.dumps({"turns": ["hi"], "extra": 1}), r"unknown field `extra`. Fix: use id, user_id"),
        (
            json.dumps({"turns": ["hi"], "context": {"budget": 3}}),
            r"unknown context field `budget`",
        ),
        (
            json.dumps({"turns": ["hi"], "context": {"policy": "smart"}}),
            r"unknown policy 'smart'.*" + POLICY_NAMES,
        ),
        (
            json.dumps({"turns": ["hi"], "context": {"recall_k": "3"}}),
            r"`context.recall_k`: input should be a valid integer",
        ),
        (json.dumps({"turns": ["hi"], "context": {"user_id": "bob"}}), r"top-level user_id"),
        (json.dumps({"turns": ["hi"], "user_id": " "}), r"`user_id`: must not be empty"),
        (
            json.dumps({"turns": ["hi"], "views": {"top": "a.png"}}),
            r"`views.top`: a view must be an object",
        ),
        (
            json.dumps({"turns": ["hi"], "views": {"top": {"caption": "x"}}}),
            r"unknown field `views.top.caption`. Fix: use image, audio, description, private",
        ),
        (
            json.dumps({"turns": ["hi"], "views": {"top": {"image": "nope.png"}}}),
            r"`views.top.image`: image file .*nope.png does not exist",
        ),
        (
            json.dumps({"turns": [{"text": "hi", "images": ["nope.png"]}]}),
            r"`turns\[0\]\.images\[0\]`: image file .* does not exist",
        ),
    ],
)
def test_bad_dialogue_files(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TmoGraphError, match=message) as info:
        load_dialogues(path)
    assert "d.jsonl:1" in str(info.value) and "Fix:" in str(info.value)  # the line and the fix


def test_openai_config_points_at_a_priced_model() -> None:
    raw = yaml.safe_load((ROOT / "configs" / "openai.yaml").read_text())
    assert raw["cloud"]["price_as"] == "gpt-4o"
