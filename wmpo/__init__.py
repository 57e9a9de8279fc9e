"""wmpo core library: real simulators, episode data, models, sampling, RL, training and evaluation.

This package has no web dependencies; the services in ``services/`` wrap it.
"""

__version__ = "0.1.0"
