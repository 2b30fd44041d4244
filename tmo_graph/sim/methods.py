"""The benchmark's method names and the trainable ones: read by the simulator and the CLI.

A module of its own, importing nothing, so `tmo-graph --help` can list the methods without
loading the simulator (numpy, the policies).
"""

from __future__ import annotations

# Command-line name -> the name in the benchmark's table, in the table's order.
METHOD_NAMES = {
    "local": "Local",
    "cloud": "Cloud",
    "random": "Random",
    "ppo": "PPO",
    "a2c": "A2C",
    "dqn": "DQN",
    "rc-ppo": "RC-PPO",
    "rc-a2c": "RC-A2C",
    "rc-dqn": "RC-DQN",
    "own": "own",
    "rules": "rules",
    "cascade": "cascade",
    "own-sim": "own-sim",
}

# Methods run only when asked for by name (``--methods``), never in the default table.
OPT_IN = ("own-sim",)
# The default ``--methods``: every method but the opt-in ones.
DEFAULT_METHODS = tuple(m for m in METHOD_NAMES if m not in OPT_IN)

# What a table prints under a method's row, when the row is in it.
METHOD_NOTES = {
    "own-sim": "own-sim: the own planner given the simulator's response model, as the RL "
    "policies are trained on it (the training split's 5-NN, which is also the paper "
    "protocol's judge); not the default: `own` is told nothing about its judge",
}

# What `tmo-graph train --algo` trains: stable-baselines3's learners and the own planner.
ALGORITHMS = ("ppo", "a2c", "dqn", "own")
