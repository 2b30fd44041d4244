"""The tmo-graph LangGraph: one dialogue turn from the user's message to a routed answer.

START -> detect_modality -> recall_memory -> route --local--> answer_local -> check_confidence
                                                 \\                          |-sure-> account -> END
                                                  \\--cloud--> answer_cloud <-escalate-/   ^
                                                               |--ok---------------------/
                                                               \\--failed--> answer_local (fallback)

Every decision is a conditional edge (routers return ``Literal``s), so Studio draws them all:
the policy's route, the escalation of an unsure local answer (at most once: the state says
so), and the fallback to a local answer when the cloud call fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from langgraph.config import get_config
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import BaseStore
from langgraph.types import Checkpointer

from tmo_graph.context import Context, named_fields
from tmo_graph.errors import TmoGraphError
from tmo_graph.nodes.account import account
from tmo_graph.nodes.answer_cloud import after_cloud, answer_cloud
from tmo_graph.nodes.answer_local import answer_local
from tmo_graph.nodes.check_confidence import after_confidence, check_confidence
from tmo_graph.nodes.detect_modality import detect_modality
from tmo_graph.nodes.recall_memory import recall_memory
from tmo_graph.nodes.route import after_route, route
from tmo_graph.services import ServiceProvider, Services
from tmo_graph.settings import Settings
from tmo_graph.state import InputState, OutputState, State

# A node: the state, the run's Context and the services for the run; a dict of updates.
NodeFn = Callable[[Any, Context, Services], dict[str, Any]]
NODES: tuple[NodeFn, ...] = (
    detect_modality,
    recall_memory,
    route,
    answer_local,
    check_confidence,
    answer_cloud,
    account,
)


def _run_context(
    given: Context | dict[str, Any] | None, default: Context, user: Mapping[str, Any] | None = None
) -> Context:
    """The run's Context: the fields its caller named over ``default`` (the config's
    ``routing:`` defaults); a run started without ``context=`` gets ``default``. LangGraph
    turns the plain JSON of Studio and the LangGraph server into ``Context(**given)``, so the
    fields a client left out are told apart by :func:`~tmo_graph.context.named_fields`.

    ``user``: who the LangGraph server's auth proved the caller to be (``graphs/auth.py``).
    It decides the user (recall, the daily cap's ledger, the audit log), the key id, and the
    key's cap and policies, whatever the client's Context says, as ``tmo-graph serve`` does.
    """
    if given is None:
        context = default
    elif isinstance(given, dict):
        context = dataclasses.replace(default, **given)
    else:  # the fields the caller left out take the config's defaults, not the class's
        named = named_fields(given)
        context = dataclasses.replace(default, **{name: getattr(given, name) for name in named})
    if user is None:
        return context
    policies = user.get("policies")
    if policies and context.policy not in policies:
        raise TmoGraphError(
            f"this API key may not use the policy {context.policy!r}",
            f"use one of: {', '.join(policies)}",
        )
    caps = [c for c in (context.daily_cost_cap_usd, user.get("daily_cost_cap_usd")) if c]
    return dataclasses.replace(
        context,
        user_id=str(user["identity"]),
        api_key_id=user.get("key_id"),
        daily_cost_cap_usd=min(caps) if caps else None,
    )


# The permission tmo_graph.server.platform_auth gives a request served without keys.
KEYLESS_PERMISSION = "tmo:keyless"


def _auth_user() -> Mapping[str, Any] | None:
    """The user the LangGraph server's auth set for this run (:func:`platform_user`)."""
    try:
        configurable = get_config().get("configurable", {})
    except RuntimeError:  # outside a LangGraph run: no server, no user
        return None
    return platform_user(configurable.get("langgraph_auth_user"))


def platform_user(user: Any) -> Mapping[str, Any] | None:
    """``langgraph_auth_user`` as a mapping, or None: no such auth, LangGraph Studio's
    developer, or a server without keys (the Context then stands, as with ``--no-auth``)."""
    dump = getattr(user, "dict", None)  # langgraph_api's user object; a plain dict as is
    data = dump() if callable(dump) else user
    if not isinstance(data, Mapping) or not data.get("identity"):
        return None
    keyless = KEYLESS_PERMISSION in (data.get("permissions") or ())  # trusted loopback
    return None if keyless or data.get("kind") == "StudioUser" else data


def _as_node(fn: NodeFn, provider: ServiceProvider) -> Callable[..., dict[str, Any]]:
    """A LangGraph node ``(state, runtime)`` calling ``fn`` with the run's Context, resolved
    once per call, and the services for the run: the process's own, or those with the models
    the Context names, with the run's store as their memory when the run has one (the
    compiled graph's, or the one a LangGraph server gives)."""

    def node(state: Any, runtime: Runtime[Context]) -> dict[str, Any]:
        services = provider.for_run(runtime.context)
        if runtime.store is not None:
            services = services.with_store(runtime.store)
        context = _run_context(runtime.context, services.default_context, _auth_user())
        return fn(state, context, services)

    node.__name__ = fn.__name__
    node.__doc__ = fn.__doc__
    return node


def make_builder(provider: ServiceProvider) -> StateGraph[Any, Any, Any, Any]:
    """The uncompiled graph; tests compile it with their own checkpointer."""
    builder = StateGraph(
        State, input_schema=InputState, output_schema=OutputState, context_schema=Context
    )
    for fn in NODES:
        builder.add_node(fn.__name__, _as_node(fn, provider))
    builder.add_edge(START, "detect_modality")
    builder.add_edge("detect_modality", "recall_memory")
    builder.add_edge("recall_memory", "route")
    # The routers return a decision's name; the maps label Studio's edges with it.
    builder.add_conditional_edges(
        "route", after_route, {"local": "answer_local", "cloud": "answer_cloud"}
    )
    builder.add_edge("answer_local", "check_confidence")
    builder.add_conditional_edges(
        "check_confidence", after_confidence, {"sure": "account", "escalate": "answer_cloud"}
    )
    builder.add_conditional_edges(
        "answer_cloud", after_cloud, {"answered": "account", "fall back": "answer_local"}
    )
    builder.add_edge("account", END)
    return builder


def mermaid() -> str:
    """The graph as the Mermaid text the README shows (no model is loaded)."""
    return build_graph().get_graph().draw_mermaid()


def build_graph(
    services: Services | None = None,
    settings: Settings | None = None,
    checkpointer: Checkpointer = None,
    store: BaseStore | None = None,
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The compiled graph.

    ``services``: ready resources (fakes in tests); without them the real ones are built from
    ``settings`` (default: configs/default.yaml's values) on the first run, not at import.
    ``store``: the memory (turns beyond the recent window); default: ``services.store``.
    Without either the graph is compiled with no store: a LangGraph server (``langgraph
    dev``, a deployment) gives its own, and elsewhere the lazily built services' store
    (``memory:`` in the settings) is used.
    Per run, ``context=Context(...)`` chooses the policy, budgets, persona and models; a run
    without it uses the config's ``routing:`` defaults.
    """
    if services is not None and not isinstance(services, Services):
        raise TmoGraphError(
            f"build_graph: services must be Services, got {type(services).__name__}",
            "pass tmo_graph.services.Services(...) or leave it out",
        )
    if settings is not None and not isinstance(settings, Settings):
        raise TmoGraphError(
            f"build_graph: settings must be Settings, got {type(settings).__name__}",
            "pass tmo_graph.settings.load_settings(...); a checkpointer goes in checkpointer=",
        )
    if store is not None and not isinstance(store, BaseStore):
        raise TmoGraphError(
            f"build_graph: store must be a LangGraph BaseStore, got {type(store).__name__}",
            "pass e.g. tmo_graph.memory.stores.open_store(settings, embeddings), "
            "langgraph.store.memory.InMemoryStore(index=...) or leave it out",
        )
    if store is None and services is not None:
        store = services.store
    provider = ServiceProvider(services=services, settings=settings)
    return make_builder(provider).compile(checkpointer=checkpointer, store=store, name="tmo-graph")
