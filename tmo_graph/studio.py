"""The graph for a LangGraph server: ``"graphs": {"tmo": "tmo_graph.studio:graph"}`` in your
own langgraph.json (this repository's points at graphs/tmo.py, which re-exports it).

Compiled without a checkpointer: the LangGraph server persists threads itself. Models load
on the first run, not at import. ``TMO_GRAPH_CONFIG`` names a YAML config (default: the
built-in defaults, the same as configs/default.yaml); ``TMO_<SECTION>__<FIELD>`` variables
override single settings.
"""

import os

from tmo_graph.graph import build_graph
from tmo_graph.settings import load_settings

graph = build_graph(settings=load_settings(os.environ.get("TMO_GRAPH_CONFIG")))
