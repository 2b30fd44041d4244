"""The graph LangGraph Studio and `langgraph dev` load (see langgraph.json).

Compiled without a checkpointer: the LangGraph server persists threads itself. Models load
on the first run, not at import. ``TMO_GRAPH_CONFIG`` names a YAML config (default: the
built-in defaults, the same as configs/default.yaml).
"""

import os

from tmo_graph.graph import build_graph
from tmo_graph.settings import load_settings

graph = build_graph(settings=load_settings(os.environ.get("TMO_GRAPH_CONFIG")))
