"""Long-term dialogue memory: the turns that left a dialogue's recent window, in a LangGraph
store (``BaseStore``), searched by the store's semantic index.

- :mod:`~tmo_graph.memory.recall`: the namespaces (per user, per thread) and what the graph
  does with them: remember, recall, forget a thread, copy one into a fork;
- :mod:`~tmo_graph.memory.stores`: the store the settings name (``memory.backend``);
- :mod:`~tmo_graph.memory.chroma_store`: :class:`ChromaStore`, the embedded default
  (a folder, or a ``chroma run`` server: :mod:`~tmo_graph.memory.clients`);
- :mod:`~tmo_graph.memory.turns` and :mod:`~tmo_graph.memory.index`: the memory before the
  store, kept for ``bench/recall_scale.py``'s comparison of search methods.
"""
