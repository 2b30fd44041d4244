"""The LangGraph server's auth for this repository (langgraph.json ``auth``): tmo-graph's API
keys, the same ``tmo-graph serve`` checks, and each user's threads kept their own
(:mod:`tmo_graph.server.platform_auth`). The keys come from the settings:
``TMO_SERVER__KEYS_FILE`` (or ``server.keys_file`` in the ``TMO_GRAPH_CONFIG`` file)."""

from tmo_graph.server.platform_auth import platform_auth
from tmo_graph.studio import settings

auth = platform_auth(settings)

__all__ = ["auth"]
