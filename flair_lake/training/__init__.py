"""Training, evaluation and prediction loops, the official metric and checkpoints."""
