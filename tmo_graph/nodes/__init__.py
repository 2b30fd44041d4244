"""The graph's nodes, one module each. Each takes ``(state, context, services)``:
:mod:`tmo_graph.graph` resolves the run's Context and gives it the services for the run, so
LangGraph sees ``(state, runtime)``. Nodes never import each other; what several need is in
:mod:`tmo_graph.turn`."""
