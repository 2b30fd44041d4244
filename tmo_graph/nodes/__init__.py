"""The graph's nodes, one module each. Each takes ``(state, runtime, services)``;
:mod:`tmo_graph.graph` binds ``services`` so LangGraph sees ``(state, runtime)``."""
