"""The graph's nodes, one module each. Each takes ``(state, runtime, services)``;
:mod:`tmo_graph.graph` gives every run its ``services`` so LangGraph sees
``(state, runtime)``. Nodes never import each other; what several need is in
:mod:`tmo_graph.turn`."""
