"""tmo-graph: per-turn local / cloud routing of LLM answers, as a LangGraph graph."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "Context",
    "Services",
    "State",
    "TMOChatModel",
    "TmoGraphError",
    "build_graph",
    "load_settings",
]
__version__ = "0.1.0"

_WHERE = {
    "Context": "tmo_graph.context",
    "Services": "tmo_graph.services",
    "State": "tmo_graph.state",
    "TMOChatModel": "tmo_graph.chat_model",
    "TmoGraphError": "tmo_graph.errors",
    "build_graph": "tmo_graph.graph",
    "load_settings": "tmo_graph.settings",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import tmo_graph` stays light; the graph and its dependencies load on first use.
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tmo_graph' has no attribute {name!r}")
