"""What the server tells about its turns, for operators: Prometheus metrics
(:mod:`tmo_graph.observe.metrics`), OpenTelemetry spans (:mod:`tmo_graph.observe.traces`) and
the LangChain callback handler that times the graph's nodes for both
(:mod:`tmo_graph.observe.graph_events`).

Everything here reads turn records and the graph's call records, and keeps only what is the
same for every user: route, policy, counts, kinds, seconds, tokens and money. Never message
text, user or thread ids, view names or personal values (labels would also grow without
bound with them). A part: it imports the vocabulary and ``guards.faults``'s fault names, and
nothing of the graph, the models or the server (docs/architecture.md)."""
