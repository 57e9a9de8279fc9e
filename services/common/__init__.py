"""Plumbing every wmpo service shares: settings, auth, errors, logging, metrics, health, queues.

Nothing here knows about a model; the judge, optimizer and trainer services
reuse it as the simulator does.
"""
