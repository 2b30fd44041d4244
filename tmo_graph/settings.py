"""Process-wide settings: which models, where memory lives, prices, device profile.

:class:`Settings` is one section per YAML section (each a model of
:mod:`tmo_graph.sections`, where the fields and their defaults are declared), loaded by
:func:`load_settings` from a YAML file (``configs/default.yaml`` mirrors the defaults). Per-run
choices (user, policy, budgets, thresholds) live in :class:`tmo_graph.context.Context`;
``routing:`` in the YAML only gives their defaults.

Every setting can be overridden from the environment: ``TMO_<SECTION>__<FIELD>``, e.g.
``TMO_CLOUD__BASE_URL=http://gpu-box:8000/v1`` or ``TMO_LOCAL__MAX_NEW_TOKENS=32`` (a whole
section or ``prices`` also takes JSON: ``TMO_PRICES='{"my-model": {...}}'``; ``null`` sets
None). Precedence: environment > YAML file > built-in defaults. Variables are matched
case-insensitively, so price row names given through the environment are lower-cased.

``TMO_GRAPH_CACHE`` (cache folder), ``TMO_GRAPH_CONFIG`` (the YAML file LangGraph Studio
loads) and ``TMO_GRAPH_M4A1`` (the M4A1 file of the CLI's benchmark commands) share the prefix
but are plain variables, never settings: no section is called ``graph`` and they carry no
``__``, so pydantic-settings never reads them.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from tmo_graph.errors import TmoGraphError
from tmo_graph.sections import (
    AudioSettings,
    AuditSettings,
    CloudSettings,
    DeviceSettings,
    EmbeddingSettings,
    LearningSettings,
    LocalModelSettings,
    MemorySettings,
    PriceEntry,
    PrivacySettings,
    RoutingDefaults,
    ServerSettings,
    SpendingSettings,
    TelemetrySettings,
    ThreadSettings,
)

ENV_PREFIX = "TMO_"
ENV_DELIMITER = "__"
# Plain variables with the same prefix that are not settings (see the module docstring).
PLAIN_ENV_VARS = ("TMO_GRAPH_CACHE", "TMO_GRAPH_CONFIG", "TMO_GRAPH_M4A1")


def default_cache_dir() -> Path:
    """``$TMO_GRAPH_CACHE``, else ``$XDG_CACHE_HOME/tmo-graph``, else ``~/.cache/tmo-graph``."""
    if env := os.environ.get("TMO_GRAPH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tmo-graph"


# The YAML file's values for the Settings being built by load_settings (a source below the
# environment); a context variable so concurrent loads in threads do not see each other's.
_YAML_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("tmo_graph_yaml", default=None)


class _YamlValues(PydanticBaseSettingsSource):
    """The YAML file's mapping, as one pydantic-settings source."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ hands over the whole mapping

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_VALUES.get() or {})


class Settings(BaseSettings):
    """All settings; ``Settings()`` is the defaults with environment overrides applied."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        env_parse_none_str="null",  # as in YAML: TMO_CLOUD__BASE_URL=null unsets it
    )

    local: LocalModelSettings = LocalModelSettings()
    cloud: CloudSettings = CloudSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    memory: MemorySettings = MemorySettings()
    threads: ThreadSettings = ThreadSettings()
    device: DeviceSettings = DeviceSettings()
    privacy: PrivacySettings = PrivacySettings()
    audit: AuditSettings = AuditSettings()
    spending: SpendingSettings = SpendingSettings()
    server: ServerSettings = ServerSettings()
    audio: AudioSettings = AudioSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    prices: dict[str, PriceEntry] = Field(default_factory=dict, description="extra price rows")
    routing: RoutingDefaults = RoutingDefaults()
    learning: LearningSettings = LearningSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Python arguments > environment > YAML file > defaults; no .env or secrets files.
        return init_settings, env_settings, _YamlValues(settings_cls)

    def model_cache_dir(self) -> Path:
        return self.local.cache_dir or default_cache_dir() / "models"

    def memory_dir(self) -> Path:
        return self.memory.persist_dir or default_cache_dir() / "memory"

    def audit_path(self) -> Path:
        return self.audit.path or default_cache_dir() / "audit.jsonl"

    def ledger_path(self) -> Path:
        return self.spending.ledger or default_cache_dir() / "spend.sqlite"

    def shadow_ledger_path(self) -> Path:
        return self.learning.ledger or default_cache_dir() / "shadow_spend.sqlite"

    def device_state_path(self) -> Path:
        return self.device.state_path or default_cache_dir() / "device.json"


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from a YAML file (or the built-in defaults when ``path`` is None), with
    ``TMO_<SECTION>__<FIELD>`` environment variables overriding both."""
    raw = {} if path is None else _read_yaml(Path(path))
    _check_env_names()
    token = _YAML_VALUES.set(raw)
    try:
        return Settings()
    except SettingsError as exc:  # a JSON-valued variable that does not parse
        names = _env_vars_for(_field_in(str(exc)))
        raise TmoGraphError(
            f"environment variable {' / '.join(names) or ENV_PREFIX + '...'} is not valid JSON",
            f"write a JSON object, or set single values as {ENV_PREFIX}<SECTION>__<FIELD>",
        ) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        where = ".".join(loc)
        shown = "" if "sha256" in loc else f" (got {err.get('input')!r})"  # may be a key
        problem = f"`{where}` {err['msg'].lower()}{shown}"
        variable = _env_var_at(loc)
        if variable:
            raise TmoGraphError(
                f"environment variable {variable}: {problem}",
                f"correct or unset {variable}; configs/default.yaml lists every setting",
            ) from None
        raise TmoGraphError(
            f"config {path}: {problem}" if path is not None else f"settings: {problem}",
            "correct that value; configs/default.yaml lists every setting",
        ) from None
    finally:
        _YAML_VALUES.reset(token)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise TmoGraphError(
            f"config file {path} does not exist", "pass a YAML file such as configs/default.yaml"
        )
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TmoGraphError(f"config {path} is not valid YAML{where}", "fix the syntax") from None
    if not isinstance(raw, dict):
        raise TmoGraphError(f"config {path} must be a mapping", "see configs/default.yaml")
    return raw


def _settings_env_vars() -> dict[str, tuple[str, ...]]:
    """Environment variables meant as settings: name -> lower-cased path below the prefix."""
    out = {}
    for name in os.environ:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in PLAIN_ENV_VARS:
            out[name] = tuple(upper[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        # Other TMO_ names without the delimiter may be plain variables of other tools.
    return out


def _check_env_names() -> None:
    """A nested variable whose section does not exist is a typo, not silently ignored."""
    sections = set(Settings.model_fields)
    for name, parts in _settings_env_vars().items():
        if len(parts) > 1 and parts[0] not in sections:
            raise TmoGraphError(
                f"environment variable {name} names no settings section {parts[0]!r}",
                f"use {ENV_PREFIX}<SECTION>__<FIELD> with a section among "
                f"{', '.join(sorted(sections))}, or unset it",
            )


def _env_var_at(loc: tuple[str, ...]) -> str | None:
    """The variable that supplied the value at ``loc``, if the environment supplied it."""
    value: Any = EnvSettingsSource(Settings)()
    for part in loc:
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]  # an entry of a list given as JSON (server.keys)
            continue
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    # The longest variable path that is a prefix of loc (TMO_CLOUD__MODE before TMO_CLOUD).
    matches = [
        (len(parts), name)
        for name, parts in _settings_env_vars().items()
        if loc[: len(parts)] == parts
    ]
    return max(matches)[1] if matches else None


def _field_in(message: str) -> str:
    """The field name in pydantic-settings' 'error parsing value for field "x" ...'."""
    _, _, rest = message.partition('field "')
    return rest.partition('"')[0]


def _env_vars_for(field: str) -> list[str]:
    return sorted(name for name, parts in _settings_env_vars().items() if parts[0] == field)
