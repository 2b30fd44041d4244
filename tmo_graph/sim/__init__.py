"""The M4A1 simulator: data, response model, gymnasium environment, baselines, evaluation."""
