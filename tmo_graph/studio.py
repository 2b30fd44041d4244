"""The graph for a LangGraph server: ``"graphs": {"tmo": "tmo_graph.studio:graph"}`` in your
own langgraph.json (this repository's points at graphs/tmo.py, which re-exports it).

Compiled without a checkpointer: the LangGraph server persists threads itself. Models load
on the first run, not at import. ``TMO_GRAPH_CONFIG`` names a YAML config (default: the
built-in defaults, the same as configs/default.yaml); ``TMO_<SECTION>__<FIELD>`` variables
override single settings.

``provider`` holds the graph's services: the OpenAI-compatible routes mounted on the same
server (``graphs/openai_app.py``) run on it, so the process loads one copy of each model.
"""

import os

from tmo_graph.graph import make_builder
from tmo_graph.services import ServiceProvider
from tmo_graph.settings import load_settings

settings = load_settings(os.environ.get("TMO_GRAPH_CONFIG"))
provider = ServiceProvider(settings=settings)
graph = make_builder(provider).compile(name="tmo-graph")
