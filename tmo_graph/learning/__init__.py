"""Learning from the graph's own traffic (docs/learning.md).

Labels of past turns, kept in the labels table beside the threads
(:mod:`tmo_graph.threads.labels`): a user's score (:mod:`tmo_graph.learning.feedback`) and a
judge's, on sampled device turns and on escalated turns (:mod:`tmo_graph.learning.shadow`).
"""
