"""Sampling: flow-matching schedule and solvers, autoregressive rollout, the WorldModel interface."""
