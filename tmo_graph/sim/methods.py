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
}

# What `tmo-graph train --algo` trains: stable-baselines3's learners and the own planner.
ALGORITHMS = ("ppo", "a2c", "dqn", "own")
