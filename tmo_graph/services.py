"""The heavy resources a graph needs, built once per process and settings.

Unit tests pass fakes (``Services(...)`` directly); the real ones come from
:func:`build_services`, which loads the local model, starts or checks the cloud endpoint,
and opens the Chroma memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel

from tmo_graph.errors import TmoGraphError
from tmo_graph.memory import TurnMemory
from tmo_graph.scoring import AssociationScorer, TaskClassifier, TextAssociationScorer
from tmo_graph.settings import Settings


class TokenStats(Protocol):
    logprobs: list[float]
    entropies: list[float]


class GapPredictor(Protocol):
    """Predicts, from the prompt alone, how much better the cloud answer would score."""

    def predict_gap(
        self,
        prompt_vector: Sequence[float],
        task: str,
        previous_vector: Sequence[float] | None = None,
    ) -> float: ...


class LocalBackend(Protocol):
    """The on-device model: answers with per-token scores; scores any given answer."""

    def answer(
        self, messages: list[dict[str, str]], max_new_tokens: int | None = None
    ) -> tuple[str, TokenStats]: ...

    def score_answer(self, messages: list[dict[str, str]], answer: str) -> TokenStats: ...


@dataclass
class Services:
    settings: Settings
    local: LocalBackend
    cloud: BaseChatModel | None  # None: no cloud; every cloud action is masked
    embeddings: Embeddings
    memory: TurnMemory
    association: AssociationScorer | None = None
    # Quality gap (cloud - local) before generating, a feature of the route; None: not used.
    gap_predictor: GapPredictor | None = None
    tasks: TaskClassifier = field(init=False)

    def __post_init__(self) -> None:
        self.tasks = TaskClassifier(self.embeddings)
        if self.association is None:
            self.association = TextAssociationScorer(self.embeddings)
        self._embed = lru_cache(maxsize=64)(self._embed_uncached)

    def _embed_uncached(self, text: str) -> tuple[float, ...]:
        return tuple(self.embeddings.embed_query(text))

    def embed(self, text: str) -> Sequence[float]:
        """The query embedding of ``text``, cached: several nodes need the same prompt's."""
        return self._embed(text)


def _remote_cloud(settings: Settings) -> BaseChatModel:
    """ChatOpenAI for a configured endpoint, checked to answer before any dialogue starts."""
    from tmo_graph.models.cloud import check_endpoint, make_cloud_chat_model

    cfg = settings.cloud
    api_key = os.environ.get(cfg.api_key_env)
    base_url = cfg.base_url or ("https://api.openai.com/v1" if api_key else None)
    if base_url is None:
        raise TmoGraphError(
            f"cloud.mode is 'remote' but neither cloud.base_url nor ${cfg.api_key_env} is set",
            f"export {cfg.api_key_env}=... or set cloud.base_url in the config",
        )
    if not cfg.model:
        raise TmoGraphError("cloud.model is not set", "name the model, e.g. gpt-4o")
    check_endpoint(base_url, api_key=api_key)
    return make_cloud_chat_model(base_url, cfg.model, api_key, cfg.timeout_s, cfg.max_tokens)


def build_services(settings: Settings) -> Services:
    """Real resources from settings: local model, cloud endpoint, embeddings, Chroma."""
    from tmo_graph.models.cloud import get_loopback_server, make_cloud_chat_model
    from tmo_graph.models.embeddings import local_embeddings
    from tmo_graph.models.local import get_local_model, resolve_local_model

    cfg = settings.cloud
    # Cheap checks first: a bad endpoint should fail before a model is loaded.
    cloud = _remote_cloud(settings) if cfg.mode == "remote" else None
    gap_predictor = None
    if settings.embeddings.gap_predictor is not None:
        from tmo_graph.quality_gap import QualityGapPredictor

        gap_predictor = QualityGapPredictor.load(settings.embeddings.gap_predictor)
    folder = resolve_local_model(settings.local.source, settings.model_cache_dir())
    local = get_local_model(folder, settings.local.max_new_tokens)
    if cfg.mode == "loopback":
        serve_folder = (
            resolve_local_model(cfg.serve_source, settings.model_cache_dir())
            if cfg.serve_source
            else folder
        )
        server = get_loopback_server(serve_folder)
        cloud = make_cloud_chat_model(
            server.base_url, server.model_name, None, cfg.timeout_s, cfg.max_tokens
        )
    embeddings = local_embeddings(settings.embeddings.source)
    if gap_predictor is not None:
        gap_predictor.check_dim(
            len(embeddings.embed_query("dimension check")), str(settings.embeddings.gap_predictor)
        )
    return Services(
        settings=settings,
        local=local,
        cloud=cloud,
        embeddings=embeddings,
        memory=TurnMemory(settings.memory_dir(), settings.memory.collection),
        gap_predictor=gap_predictor,
    )


class ServiceProvider:
    """Gives nodes their Services: the ones passed in, or real ones built on first use."""

    def __init__(self, services: Services | None = None, settings: Settings | None = None):
        self._services = services
        self._settings = settings or (services.settings if services else Settings())
        self._lock = threading.Lock()

    def get(self) -> Services:
        if self._services is None:
            with self._lock:
                if self._services is None:
                    self._services = build_services(self._settings)
        return self._services
