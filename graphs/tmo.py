"""The graph LangGraph Studio and `langgraph dev` load from this repository (langgraph.json).

It is the installed package's :mod:`tmo_graph.studio` graph, so a project of your own can
point its langgraph.json at ``tmo_graph.studio:graph`` instead.
"""

from tmo_graph.studio import graph

__all__ = ["graph"]
