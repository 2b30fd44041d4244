"""The OpenAI-compatible API on the LangGraph server (langgraph.json ``http.app``): one process
serves ``/threads`` and ``/runs`` (Studio, agent-chat-ui, langgraph_sdk) and
``/v1/chat/completions`` (the openai client, Open WebUI), on one copy of the models.

The routes run on the services of the platform's graph (:mod:`tmo_graph.studio`) and remember
in the platform's store (``store.index`` of langgraph.json); their threads live in the app's
own thread store, as with ``tmo-graph serve``
(:func:`tmo_graph.server.app.create_platform_app`).
"""

from langgraph_api.store import get_store

from tmo_graph.server.app import create_platform_app
from tmo_graph.studio import provider, settings

app = create_platform_app(provider, settings, store=get_store)

__all__ = ["app"]
