"""The heavy resources a graph needs, built once per process and settings.

Unit tests pass fakes (``Services(...)`` directly); the real ones come from
:func:`build_services`, which loads the local model, starts or checks the cloud endpoint,
and opens the memory's store (:func:`tmo_graph.memory.stores.open_store`). A run may choose
other models through its Context (``local_model``, ``cloud_model``, ``cloud_base_url``):
:meth:`ServiceProvider.for_run` resolves them through factories cached per process, so
each is loaded once.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langgraph.store.base import BaseStore

from tmo_graph.context import Context
from tmo_graph.costs.device import LiveResources, live_resources
from tmo_graph.errors import TmoGraphError
from tmo_graph.guards.audit import AuditLog
from tmo_graph.guards.spending import SpendLedger
from tmo_graph.memory.recall import FIELDS
from tmo_graph.memory.stores import QueryCache, check_memory, open_store
from tmo_graph.models.base import GapPredictor, LocalBackend
from tmo_graph.models.scoring import AssociationScorer, TaskClassifier, TextAssociationScorer
from tmo_graph.models.speech import Recogniser, recogniser_for
from tmo_graph.policy.budget import CostModel
from tmo_graph.settings import Settings, default_cache_dir

_LEDGER_LOCK = threading.Lock()


@dataclass
class Services:
    settings: Settings
    local: LocalBackend
    cloud: BaseChatModel | None  # None: no cloud; every cloud action is masked
    embeddings: Embeddings
    # The memory (turns beyond the recent window) of a graph compiled without a store and
    # run where none is given; a run's own store (runtime.store: the compiled graph's, or
    # the LangGraph server's) comes first. Not given: an InMemoryStore over ``embeddings``
    # (tests); build_services opens the one settings.memory names.
    store: BaseStore | None = None
    association: AssociationScorer | None = None
    # Quality gap (cloud - local) before generating, a feature of the route; None: not used.
    gap_predictor: GapPredictor | None = None
    # Where the turns' images and audio clips are kept, named by content hash (a data URL's
    # bytes are written there once and the state keeps the path).
    media_dir: Path = field(default_factory=lambda: default_cache_dir() / "media")
    # One line per cloud request. build_services opens settings.audit_path(); Services made
    # by hand log only when given one or when settings.audit.path is set explicitly.
    audit: AuditLog | None = None
    # Each user's daily cloud spend; opened whenever spending.daily_cost_cap_usd is set.
    ledger: SpendLedger | None = None
    # How the model nodes measure and wait (a simulation passes its own clock).
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep
    # Speech to text for audio clips; not given: the one audio.recogniser names (built once
    # per process; tests pass a fake). None after construction: audio.recogniser is none.
    recogniser: Recogniser | None = None
    # The device's measured speeds and its reading each turn. build_services shares the
    # process's estimates kept in settings.device_state_path(); Services made by hand keep
    # their own in memory unless settings.device.state_path is set explicitly.
    device: LiveResources | None = None
    tasks: TaskClassifier = field(init=False)
    # The configured cost model; :attr:`costs` is it with the measured speeds.
    base_costs: CostModel = field(init=False)
    default_context: Context = field(init=False)  # a run without context= gets this

    def __post_init__(self) -> None:
        self.tasks = TaskClassifier(self.embeddings)
        if self.association is None:
            self.association = TextAssociationScorer(self.embeddings)
        self.base_costs = CostModel.from_settings(self.settings)
        if self.device is None:
            path = self.settings.device.state_path
            self.device = (
                LiveResources.from_settings(self.settings)
                if path is None
                else live_resources(self.settings, path)
            )
        if self.audit is None and self.settings.audit.enabled and self.settings.audit.path:
            self.audit = AuditLog(self.settings.audit.path)
        if self.ledger is None and self.settings.spending.daily_cost_cap_usd is not None:
            self.ledger = SpendLedger(self.settings.ledger_path())
        if self.recogniser is None:
            self.recogniser = recogniser_for(self.settings.audio)
        self.default_context = Context.from_settings(self.settings)
        # Query vectors cached: several nodes and the store's search embed the same prompt.
        self.query_embeddings = QueryCache(self.embeddings)
        if self.store is None:
            from langgraph.store.memory import InMemoryStore

            # InMemoryStore does not read dims; the vectors' own size is used.
            self.store = InMemoryStore(
                index={"embed": self.query_embeddings, "dims": 0, "fields": list(FIELDS)}
            )

    @property
    def costs(self) -> CostModel:
        """The cost model with the speeds the device and the cloud show now (the budget mask
        and the local answer's length use it); read it once per decision."""
        assert self.device is not None  # set in __post_init__
        return self.base_costs.at(self.device.measured_speeds())

    def spend_ledger(self) -> SpendLedger:
        """The daily spend ledger, opened at ``settings.ledger_path()`` the first time a cap
        needs it (a run's own cap, e.g. an API key's, may need it without a config cap)."""
        with _LEDGER_LOCK:
            if self.ledger is None:
                self.ledger = SpendLedger(self.settings.ledger_path())
            return self.ledger

    def with_models(self, local: LocalBackend, cloud: BaseChatModel | None) -> Services:
        """The same services with other models (embeddings, memory and caches shared)."""
        other = copy.copy(self)
        other.local, other.cloud = local, cloud
        return other

    def with_store(self, store: BaseStore) -> Services:
        """The same services with the run's own memory store (everything else shared)."""
        if store is self.store:
            return self
        other = copy.copy(self)
        other.store = store
        return other

    @property
    def memory(self) -> BaseStore:
        """The memory store (set in ``__post_init__``, so never None)."""
        assert self.store is not None
        return self.store

    def embed(self, text: str) -> Sequence[float]:
        """The query embedding of ``text``, cached: several nodes need the same prompt's."""
        return self.query_embeddings.query_vector(text)


def _remote_cloud(
    settings: Settings, base_url: str | None = None, model: str | None = None
) -> BaseChatModel:
    """ChatOpenAI for an endpoint (default: the config's), checked to answer before use."""

    cfg = settings.cloud
    api_key = os.environ.get(cfg.api_key_env)
    base_url = base_url or cfg.base_url or ("https://api.openai.com/v1" if api_key else None)
    if base_url is None:
        raise TmoGraphError(
            f"cloud.mode is 'remote' but neither cloud.base_url nor ${cfg.api_key_env} is set",
            f"export {cfg.api_key_env}=... or set cloud.base_url in the config",
        )
    model = model or cfg.model
    if not model:
        raise TmoGraphError("cloud.model is not set", "name the model, e.g. gpt-4o")
    return _checked_cloud(base_url, model, api_key, cfg.timeout_s, cfg.max_tokens)


@lru_cache(maxsize=16)
def _checked_cloud(
    base_url: str, model: str, api_key: str | None, timeout_s: float, max_tokens: int
) -> BaseChatModel:
    from tmo_graph.models.cloud import check_endpoint, make_cloud_chat_model

    check_endpoint(base_url, api_key=api_key)
    return make_cloud_chat_model(base_url, model, api_key, timeout_s, max_tokens)


def build_services(settings: Settings) -> Services:
    """Real resources from settings: local model, cloud endpoint, embeddings, Chroma."""
    from tmo_graph.models.cloud import (
        get_loopback_server,
        loopback_generation_config,
        make_cloud_chat_model,
    )
    from tmo_graph.models.embeddings import local_embeddings
    from tmo_graph.models.local.model import configured_local_model
    from tmo_graph.models.local.weights import resolve_local_model

    cfg = settings.cloud
    # Cheap checks first: a bad endpoint or memory server should fail before a model loads.
    cloud = _remote_cloud(settings) if cfg.mode == "remote" else None
    check_memory(settings)
    gap_predictor = None
    if settings.embeddings.gap_predictor is not None:
        from tmo_graph.models.gap import QualityGapPredictor

        gap_predictor = QualityGapPredictor.load(settings.embeddings.gap_predictor)
    folder = resolve_local_model(settings.local.source, settings.model_cache_dir())
    local = configured_local_model(settings, folder)
    if cfg.mode == "loopback":
        serve_folder = (
            resolve_local_model(cfg.serve_source, settings.model_cache_dir())
            if cfg.serve_source
            else folder
        )
        server = get_loopback_server(serve_folder)
        # The stand-in is the same small model: it gets the same guard against loops.
        cloud = make_cloud_chat_model(
            server.base_url,
            server.model_name,
            None,
            cfg.timeout_s,
            cfg.max_tokens,
            extra_body=loopback_generation_config(serve_folder, settings.local.decoding()),
        )
    emb = settings.embeddings
    embeddings = local_embeddings(
        emb.source, backend=emb.backend, dtype=emb.dtype, threads=emb.threads
    )
    if gap_predictor is not None:
        gap_predictor.check_dim(
            len(embeddings.embed_query("dimension check")), str(settings.embeddings.gap_predictor)
        )
    services = Services(
        settings=settings,
        local=local,
        cloud=cloud,
        embeddings=embeddings,
        gap_predictor=gap_predictor,
        audit=AuditLog(settings.audit_path()) if settings.audit.enabled else None,
        device=live_resources(settings, settings.device_state_path()),
    )
    # The store embeds through the services' query cache: a prompt is embedded once a turn.
    services.store = open_store(settings, services.query_embeddings)
    return services


class ServiceProvider:
    """Gives nodes their Services: the ones passed in, or real ones built on first use;
    a run whose Context names other models gets those, each built once per process."""

    def __init__(self, services: Services | None = None, settings: Settings | None = None):
        self._services = services
        self._settings = settings or (services.settings if services else Settings())
        self._per_models: dict[tuple[str | None, str | None, str | None], Services] = {}
        self._lock = threading.Lock()

    def get(self) -> Services:
        if self._services is None:
            with self._lock:
                if self._services is None:
                    self._services = build_services(self._settings)
        return self._services

    def for_run(self, context: Context | dict[str, Any] | None) -> Services:
        """The services for a run: the defaults, or with the models its Context names."""
        base = self.get()
        if context is None:
            return base
        # LangGraph hands over a Context; a plain dict (raw JSON) is read the same way.
        raw = context if isinstance(context, dict) else vars(context)
        key = (raw.get("local_model"), raw.get("cloud_model"), raw.get("cloud_base_url"))
        if key == (None, None, None):
            return base
        with self._lock:
            if key not in self._per_models:
                self._per_models[key] = base.with_models(
                    _local_for(base, key[0]), _cloud_for(base, key[1], key[2])
                )
            return self._per_models[key]


def _local_for(base: Services, source: str | None) -> LocalBackend:
    if source is None:
        return base.local
    from tmo_graph.models.local.model import configured_local_model

    return configured_local_model(base.settings, source)


def _cloud_for(base: Services, model: str | None, base_url: str | None) -> BaseChatModel | None:
    if model is None and base_url is None:
        return base.cloud
    if base_url is None and base.settings.cloud.mode != "remote":
        raise TmoGraphError(
            f"cloud_model {model!r} needs an endpoint, and cloud.mode is "
            f"{base.settings.cloud.mode!r}",
            "also pass cloud_base_url, or set cloud.mode: remote with cloud.base_url",
        )
    return _remote_cloud(base.settings, base_url=base_url, model=model)
