"""wmpo services: simulator, judge, optimizer, trainer, over shared plumbing in `common`.

Services depend on the core library and on the light client package
(`wmpo_client`), never the other way round.
"""
