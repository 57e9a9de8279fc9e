"""Evaluation in the real simulator: the one trusted yardstick for policies and world models."""
