"""Routing policies and the observation they share with the simulator."""
